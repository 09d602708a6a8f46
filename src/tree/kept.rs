//! A scope proven unreachable, to be written without `Arc::get_mut`.
//!
//! Keeps invariant 14's last step by privacy: a [`Kept`] is made only by [`Kept::new`], which
//! checks with `Arc::get_mut` that no other `Arc` and no `Weak` exists, and lends its `Arc` to
//! nobody, so [`Kept::get`] can hand out `&mut Scope` without checking again. That second check
//! is a compare-and-swap on the weak count for every reused scope
//! (`CancelTree/depth=1/Root=Background` and `Root=ClosedCanceler` in `benches/go_suite.rs`).

use std::sync::Arc;

use super::Scope;

/// A scope that nothing else can reach: no other `Arc` to it and no `Weak`. Made only by
/// [`Kept::new`], which checks it, and never cloned or downgraded while it is a `Kept`, so it
/// stays so: what lets a reused scope be written without [`Arc::get_mut`].
pub(super) struct Kept(Arc<Scope>);

impl Kept {
    /// `scope` as a `Kept`, if nothing else holds it; otherwise `scope` back.
    pub(super) fn new(mut scope: Arc<Scope>) -> Result<Kept, Arc<Scope>> {
        match Arc::get_mut(&mut scope) {
            Some(_) => Ok(Kept(scope)),
            None => Err(scope),
        }
    }

    /// The scope, to write, without the compare-and-swap `Arc::get_mut` would make again (see
    /// the module's header).
    #[allow(unsafe_code)] // the reborrow, argued below
    #[inline(always)]
    pub(super) fn get(&mut self) -> &mut Scope {
        // SAFETY: `Kept::new` saw this `Arc` unique: `Arc::get_mut` succeeded, so there was no
        // other `Arc` and no `Weak`, and its acquire ordered every access made through them
        // before this one. A `Kept` lends its `Arc` to nobody, so no `Arc` or `Weak` has been
        // made from it since, and none can be made while this borrow lives: `&mut self` makes
        // it the only access to the scope. The pointer is the allocation's own (as
        // `Arc::get_mut` returns it), valid for as long as `self`.
        unsafe { &mut *Arc::as_ptr(&self.0).cast_mut() }
    }

    pub(super) fn into_arc(self) -> Arc<Scope> {
        self.0
    }
}
