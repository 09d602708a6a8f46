//! The chain a context is a handle to, and its release.
//!
//! A `Context` is a [`Node`]: a root (`Background`, `Todo`), a [`Scope`], a value layer
//! ([`ValueNode`]) or a `without_cancel` layer ([`Detached`]). Each layer owns its parent
//! (a scope owns its merge's second parent too), and value lookups, `Display` and the census
//! walk that chain upward.
//!
//! Keeps invariant 9 (see the contract in `tree/mod.rs`): a chain is released iteratively,
//! whatever its length, by [`release`], and a panicking `Drop` of one layer's contents stops
//! neither the release of the rest nor is lost.

use std::any::{Any, TypeId};
use std::sync::Arc;

use tokio::time::Instant;

use super::Scope;

/// What a context is: where it sits in the chain, and what it carries.
#[derive(Clone, Default)]
pub(crate) enum Node {
    #[default]
    Background,
    Todo,
    Scope(Arc<Scope>),
    Value(Arc<ValueNode>),
    Detached(Arc<Detached>),
}

/// A `without_cancel` layer: the parent's values, none of its cancellation.
pub(crate) struct Detached {
    pub(crate) parent: Node,
}

impl Drop for Detached {
    fn drop(&mut self) {
        release(std::mem::take(&mut self.parent));
    }
}

impl Node {
    /// The scope that decides when this node is done, if anything can.
    #[inline]
    pub(crate) fn scope(&self) -> Option<&Arc<Scope>> {
        match self {
            Node::Scope(scope) => Some(scope),
            Node::Value(node) => node.scope.as_ref(),
            Node::Background | Node::Todo | Node::Detached(_) => None,
        }
    }

    /// The nearest scope at or above this node, across `without_cancel` layers: where the
    /// census counts a task started on it.
    pub(crate) fn counting_scope(&self) -> Option<&Arc<Scope>> {
        let mut current = self;
        loop {
            if let Some(scope) = current.scope() {
                return Some(scope);
            }
            current = current.parent()?;
        }
    }

    /// The node this one was derived from, along the chain values are looked up in.
    #[inline]
    pub(crate) fn parent(&self) -> Option<&Node> {
        match self {
            Node::Scope(scope) => Some(scope.parent()),
            Node::Value(node) => Some(&node.parent),
            Node::Detached(node) => Some(&node.parent),
            Node::Background | Node::Todo => None,
        }
    }

    /// The earliest deadline of the scope that governs this node, if any.
    #[inline]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.scope().and_then(|scope| scope.deadline())
    }

    /// Lets go of a context's node: a scope whose last reference it holds is offered for reuse
    /// (see `recycle.rs`), as a cancel handle's last reference is, whichever of the pair is
    /// dropped last; anything else is left to the node's own drop. A scope shared between
    /// threads is not asked, as in [`release`].
    #[inline(always)] // the check only: `let (ctx, _cancel) = …` drops the context last
    pub(crate) fn let_go(&mut self) {
        if let Node::Scope(scope) = self
            && !scope.is_sharded()
            && Arc::strong_count(scope) == 1
            && let Node::Scope(scope) = std::mem::take(self)
        {
            Scope::recycle(scope);
        }
    }
}

/// How a value node was keyed, for `Display`: names only, never contents.
pub(crate) enum Label {
    Type(&'static str),
    Key(&'static str),
}

/// A context that carries one value. The header is sized and the value boxed, so that a
/// lookup walks fixed offsets: one dependent load per layer.
pub(crate) struct ValueNode {
    /// One bit for each key held by this layer or any layer above it (bit `key_bit` of the
    /// key): a lookup of a key whose bit is clear stops here. 64 bits, so with a dozen keys in
    /// a chain a missing key is let through to the full walk about one time in six.
    pub(crate) keys: u64,
    pub(crate) parent: Node,
    /// The scope that governs this context, cached so that queries need no walk.
    pub(crate) scope: Option<Arc<Scope>>,
    pub(crate) key: TypeId,
    pub(crate) label: Label,
    pub(crate) value: Box<dyn Any + Send + Sync>,
}

impl Drop for ValueNode {
    fn drop(&mut self) {
        // The cached scope first: the parent's scope may then be released by its last
        // reference, and reused (see `recycle`).
        self.scope = None;
        release(std::mem::take(&mut self.parent));
    }
}

/// Drops a context without recursing down its chain of parents.
///
/// Each node owns its parent, so letting the last handle to a long chain drop would recurse once
/// per node and overflow the stack. Instead, every node that this drop is the last owner of is
/// emptied of its parents before it is dropped, and the parents are handled in this loop.
#[inline]
pub(crate) fn release(node: Node) {
    // Roots own nothing. Each scope on the way up has its reference count read before
    // `Arc::into_inner` changes it, to offer it for reuse if this was the last
    // (`CommonParentCancel` checks that a shared parent does not pay for the read).
    match &node {
        Node::Background | Node::Todo => {}
        _ => release_chain(node),
    }
}

/// Lets go of `scope`; if that was the last reference, frees it and returns its parent
/// (queueing a merge's other parent in `others`) for the caller to let go of next.
#[inline(always)] // its result returned through memory stalled the loop below
fn free(scope: Arc<Scope>, others: &mut Vec<Node>, panic: &mut Option<Panic>) -> Option<Node> {
    Arc::into_inner(scope).map(|mut scope| {
        let (parent, other) = scope.detach_parents();
        if let Some(other) = other {
            others.push(other);
        }
        // A cause or callback it still holds is the user's, and may panic in its drop.
        drop_caught(scope, panic);
        parent
    })
}

/// A panic caught while releasing a chain, to be resumed once the chain is released.
type Panic = Box<dyn Any + Send + 'static>;

/// Drops `node`, which may run the user's `Drop` code, and keeps the first panic in `panic`.
///
/// Whatever the node held that the release goes on with (its parents) must already be taken
/// out of it: a panic here must not take them along. Pinned by
/// `value_whose_drop_panics_midway_down_a_chain_does_not_stop_its_release`.
#[inline(always)]
fn drop_caught<T>(node: T, panic: &mut Option<Panic>) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(node))) {
        // Any later panic is dropped: only one can be resumed.
        panic.get_or_insert(payload);
    }
}

fn release_chain(node: Node) {
    let mut next = Some(node);
    let mut others = Vec::new(); // only merges put anything here
    // The rest of the chain is released whatever one node's drop does: a panic is caught where
    // user code runs (the drop of a value node, or of a freed scope) and resumed at the end.
    let mut panic = None;
    while let Some(node) = next.take().or_else(|| others.pop()) {
        next = match node {
            Node::Background | Node::Todo => None,
            // A scope whose last reference this was is kept for reuse where it can be (see
            // `recycle.rs`), and freed otherwise; a parent still held elsewhere, the common
            // case, goes straight to the last arm. A parent shared between threads (one with
            // shards) is not asked: reading its counts just before the drop writes them would
            // move their cache line between the cores twice, where the drop alone moves it once
            // (`CommonParentCancel`).
            Node::Scope(scope) if !scope.is_sharded() && Arc::strong_count(&scope) == 1 => {
                match Scope::try_recycle(scope) {
                    Ok((parent, other)) => {
                        if let Some(other) = other {
                            others.push(other);
                        }
                        Some(parent)
                    }
                    Err(scope) => free(scope, &mut others, &mut panic),
                }
            }
            Node::Scope(scope) => free(scope, &mut others, &mut panic),
            // `get_mut` succeeds only for the sole owner (these nodes have no weak references).
            Node::Value(mut node) => {
                let parent = Arc::get_mut(&mut node).map(|node| std::mem::take(&mut node.parent));
                drop_caught(node, &mut panic);
                parent
            }
            Node::Detached(mut node) => {
                Arc::get_mut(&mut node).map(|node| std::mem::take(&mut node.parent))
            }
        };
    }
    if let Some(payload) = panic {
        // Resuming while this thread unwinds from another panic (this release runs in a drop
        // during that unwinding) would abort the process: the panic already under way is the
        // one the user sees.
        if !std::thread::panicking() {
            std::panic::resume_unwind(payload);
        }
    }
}
