//! Making a scope: one constructor per kind, and the allocation it lives in.
//!
//! Keeps invariant 3: a new scope is linked into its parents under their locks through their
//! claim ([`Scope::attach`]), or born done with a done parent's error and cause, and a scope
//! with one parent scope and no timer is born lone instead (invariant 4: its parent is linked
//! first). Pinned by `loom_cancel_races_deriving_a_child` and
//! `loom_merge_links_while_a_parent_is_cancelled`.

use std::mem;
use std::sync::Arc;

use crate::error::Cause;
use crate::sync::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inner::{Extra, Outside};
use super::lone::{HOME_THREAD, LONE_LINK};
use super::once::OnceInner;
use super::recycle::spare;
use super::shards::{OnceShards, this_thread};
use super::{BUSY, CUSTOM_CAUSE, ERR, Kind, LIVE, LONE, Node, Scope, earliest};

impl Scope {
    /// A `with_cancel` scope under `parent` (also `with_cancel_cause`'s, and a timeout's that
    /// does not fit in an `Instant`).
    #[inline(always)]
    pub(crate) fn with_cancel(parent: &Node) -> Arc<Scope> {
        Scope::new(parent, || Kind::Cancel, None, None, None, None)
    }

    /// A `with_deadline` scope under `parent`, done at `at`, reporting `fire_cause` (or the
    /// error) when its deadline fires. `now`, if the caller has just read the clock.
    #[inline(always)]
    pub(crate) fn with_deadline(
        parent: &Node,
        at: Instant,
        fire_cause: Option<Cause>,
        now: Option<Instant>,
    ) -> Arc<Scope> {
        Scope::new(
            parent,
            || Kind::Deadline { at },
            None,
            Some(at),
            fire_cause,
            now,
        )
    }

    /// A `merge` scope: done when `parent` or `other` is.
    #[inline(always)]
    pub(crate) fn merge(parent: &Node, other: &Node) -> Arc<Scope> {
        Scope::new(
            parent,
            || Kind::merge(other.clone()),
            Some(other),
            None,
            None,
            None,
        )
    }

    /// A `with_token` scope under `parent`, also done when `token` is cancelled, reporting
    /// `fire_cause` (or the error) then.
    pub(crate) fn with_token(
        parent: &Node,
        token: CancellationToken,
        fire_cause: Option<Cause>,
    ) -> Arc<Scope> {
        let scope = Scope::new(parent, || Kind::Token, None, None, fire_cause, None);
        if !scope.is_done() {
            scope.watch_token(token);
        }
        scope
    }

    /// Creates a scope under `parent` and links it into the tree. The scope is born done if a
    /// parent already is, or if its own deadline has passed. `make_kind` builds the kind that
    /// `other` (a merge's second parent) and `own` (its own deadline) describe; `fire_cause` is
    /// what the deadline reports when it fires, if not the error; `now`, if the caller has just
    /// read the clock, saves reading it again.
    // The kind is built only where it is stored, and the whole is inlined into each caller: a
    // kind passed in and held across the calls below would live in a stack slot, written with
    // narrower stores than the copy that reads it back, a store-forwarding stall.
    #[inline(always)]
    fn new(
        parent: &Node,
        make_kind: impl FnOnce() -> Kind,
        other: Option<&Node>,
        own: Option<Instant>,
        fire_cause: Option<Cause>,
        now: Option<Instant>,
    ) -> Arc<Scope> {
        let inherited = earliest(parent.deadline(), other.and_then(Node::deadline));
        // A deadline no earlier than an inherited one would only fire after the ancestor's
        // timer has already cancelled this scope: no timer of its own is needed. Unless it has
        // passed: the ancestor's timer may not have run yet, and a deadline in the past means
        // done at once.
        let mut now = now;
        let arm_at = own.filter(|&at| {
            inherited.is_none_or(|inherited| at < inherited)
                || at <= *now.get_or_insert_with(Instant::now)
        });
        let is_merge = other.is_some();
        // Looked up once: a context's scope is a match on its node.
        let parent_scope = parent.scope();
        let other_scope = other.and_then(Node::scope);
        // A parent links into its own parent before it has children (see `lone.rs`), and
        // a parent seen done stays done: the scope is born done with its reason, without
        // taking the parent's lock or linking (a parent being cancelled right now is seen live
        // here and refuses the link below instead).
        let born_done = parent_scope
            .and_then(Scope::link_and_inherit)
            .or_else(|| other_scope.and_then(Scope::link_and_inherit));
        let is_born_done = born_done.is_some();
        // The causes go into an `Extra` here, out of the way: an empty cause carried further
        // would be written as a tag and read back by a wider copy, a store-forwarding stall.
        // A scope with one parent and no timer is born lone, unless that parent cannot be
        // cancelled (nothing to follow) or is done.
        let lone_in = parent_scope.filter(|_| !is_merge && arm_at.is_none());
        let (state, extra) = match born_done {
            Some((state, None)) => (state, fire_cause.and_then(Extra::with_fire_cause)),
            Some((state, cause)) => (state, Extra::with_causes(cause, fire_cause)),
            None => {
                let extra = fire_cause.and_then(Extra::with_fire_cause);
                let state = match (is_merge, lone_in) {
                    (true, _) => BUSY,
                    (false, Some(_)) => LONE,
                    (false, None) => LIVE,
                };
                (state, extra)
            }
        };
        let link = if state & LONE != 0 { LONE_LINK } else { 0 };
        let deadline = earliest(inherited, own);
        // One read of this thread's number: the new scope's home, and the count a lone one
        // joins in its parent.
        let me = this_thread();
        let scope = Scope::alloc(parent, make_kind, deadline, state, link, extra, me);
        // `other` and `own` describe the kind built: a second parent only for a merge, an own
        // deadline (which arms a timer) only for a deadline.
        debug_assert_eq!(scope.link_parent(1).is_some(), other_scope.is_some());
        debug_assert!(own.is_none() || matches!(scope.kind, Kind::Deadline { .. }));
        if is_born_done {
            return scope;
        }
        if let (Some(parent), LONE) = (lone_in, state) {
            // Counted, not registered: a parent cancelled from here on is seen by the child's
            // own queries, which look at it (see `lone.rs`).
            parent.count_lone_on(me, 1);
            return scope;
        }

        let refused = {
            // A merge links into two parents while holding its own lock (see "Lock order" in `tree/mod.rs`).
            let _linking = is_merge.then(|| scope.lock());
            (0..2).find_map(|link| scope.link_parent(link)?.attach(&scope, link, false).err())
        };
        if let Some((err, cause)) = refused {
            scope.cancel_quietly(err, cause);
        } else if let Some(at) = arm_at {
            scope.arm(at, now);
        }
        scope
    }

    /// Links the parent `scope` first if it is lone ([`Scope::link_first`]), then, if it is
    /// done: the state and custom cause a scope born under it starts with. One load of its
    /// state for both when it is not lone.
    #[inline(always)]
    pub(super) fn link_and_inherit(scope: &Arc<Scope>) -> Option<(u8, Option<Cause>)> {
        let mut state = scope.state.load(Ordering::Acquire);
        if state & LONE != 0 {
            scope.link_now();
            state = scope.state.load(Ordering::Acquire);
        }
        if state & ERR == LIVE {
            return None;
        }
        if state & CUSTOM_CAUSE == 0 {
            return Some((state & ERR, None)); // the cause is the error
        }
        Some((state & (ERR | CUSTOM_CAUSE), scope.cause()))
    }

    /// A new scope: a spare allocation this thread kept (see `recycle.rs`), or a fresh one.
    #[inline(always)] // as `Scope::new`: the kind stays a constant
    pub(super) fn alloc(
        parent: &Node,
        make_kind: impl FnOnce() -> Kind,
        deadline: Option<Instant>,
        state: u8,
        link: usize,
        extra: Option<Box<Extra>>,
        home: u32,
    ) -> Arc<Scope> {
        if let Some(mut spare) = spare::take() {
            let scope = spare.get();
            // `reset` left a background parent and a plain kind, which own nothing: no drop
            // glue to run for them.
            debug_assert!(scope.parent.scope().is_none() && matches!(scope.kind, Kind::Cancel));
            mem::forget(mem::replace(&mut scope.parent, parent.clone()));
            mem::forget(mem::replace(&mut scope.kind, make_kind()));
            scope.deadline = deadline;
            scope.state.store(state, Ordering::Relaxed);
            scope.link.store(link, Ordering::Relaxed);
            scope.home.store(home & HOME_THREAD, Ordering::Relaxed);
            if let Some(extra) = extra {
                // Rare: a cause from the start (it replaces an `Extra` the scope kept).
                scope.inner.get_mut_or_init().outside = Outside::Extra(extra);
            }
            return spare.into_arc();
        }
        Scope::fresh(|| Scope {
            parent: parent.clone(),
            kind: make_kind(),
            deadline,
            state: AtomicU8::new(state),
            link: AtomicUsize::new(link),
            lone: AtomicU32::new(0),
            shards: OnceShards::new(),
            tasks: AtomicU32::new(0),
            home: AtomicU32::new(home & HOME_THREAD),
            inner: OnceInner::holding(extra),
            _apart: [0; 4],
        })
    }

    /// What `make` builds (a fresh scope; generic only so that a test can count drops), in an
    /// allocation of its own whose counts are set by plain stores.
    ///
    /// `Arc::new` builds the value on the stack and copies it in with `memcpy`, whose wide
    /// loads stall on the narrow stores just made; `Arc::new_uninit` with `Arc::get_mut`
    /// checks uniqueness with a compare-and-swap on the weak count; `Arc::new_cyclic` makes and
    /// forgets a `Weak` and sets the strong count with a locked add. This writes the value in
    /// place with none of these. Every derive that finds no spare scope to reuse pays it:
    /// `ScaleMemoryPerContext/derive=with_cancel` in `benches/go_suite.rs` is the row to
    /// re-measure, side by side, before replacing it. Pinned by
    /// `a_fresh_allocation_has_one_reference_and_a_panic_drops_only_what_was_built`.
    #[allow(unsafe_code)] // the write in place, argued below
    #[inline(always)]
    pub(super) fn fresh<T>(make: impl FnOnce() -> T) -> Arc<T> {
        // An uninitialized value: nothing to copy, and the allocator called with a constant
        // layout (`Arc::new_uninit` computed it out of line on every call).
        let fresh = Arc::new(mem::MaybeUninit::<T>::uninit());
        // SAFETY: `fresh` was made just above and not shared: no other `Arc` or `Weak` to it
        // exists, no reference to its value has been made, and `make` cannot reach it, so
        // nothing else reads or writes the value. `Arc::as_ptr` derives the pointer from the
        // allocation's own pointer, not through `Deref`, so it may be written through; it is
        // valid and aligned for a `T`. The slot holds no value, so writing it drops nothing; if
        // `make` panics, nothing is written and `fresh` frees the allocation as a
        // `MaybeUninit`, without dropping a value.
        unsafe { Arc::as_ptr(&fresh).cast_mut().cast::<T>().write(make()) };
        // SAFETY: the value was written just above (a panic in `make` unwinds before this).
        unsafe { fresh.assume_init() }
    }
}
