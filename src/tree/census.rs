//! Counting what lives below a scope: the census behind `taskctx::testing`.
//!
//! Reads the registrations under each scope's lock (then its shards', in index order), the
//! lone counts and the task counts, which are relaxed counters: a census taken while the tree
//! changes is a snapshot of no single instant, exact once the tree is quiet.

use std::fmt;
use std::sync::Arc;

use crate::source::Source;
use crate::sync::Ordering;

use super::lone::is_waiter_link;
use super::once::lock_inner;
use super::{ERR, LIVE, Reg, Scope};

/// What is alive at and below a context, as counted by [`census`](crate::testing::census).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::{Context, testing::census};
///
/// let (root, _cancel) = Context::background().with_cancel();
/// let (_child, _cancel_child) = root.with_timeout(Duration::from_secs(5));
/// let counted = census(&root);
/// assert_eq!((counted.contexts, counted.timers, counted.tasks), (1, 1, 0));
/// println!("{counted}"); // 1 contexts, 1 timers, 0 token watches, 0 tasks, 0 waiters, 0 callbacks
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Census {
    /// Cancellable contexts derived from the root (directly or not) that still follow it: not
    /// yet done, and still held by someone. Value and `without_cancel` contexts follow their
    /// parent's scope rather than being one, and are not counted.
    pub contexts: usize,
    /// Deadline timers armed by those contexts.
    pub timers: usize,
    /// Token watches of those contexts (from [`Context::with_token`](crate::Context::with_token)).
    pub token_watches: usize,
    /// Tasks started with [`Context::spawn`](crate::Context::spawn) or [`Context::spawn_graceful`](crate::Context::spawn_graceful) on the root or
    /// below it that have not ended (a graceful task's grace included), including those below
    /// a [`Context::without_cancel`](crate::Context::without_cancel): work detached from a request still counts in the
    /// request's census until it ends.
    pub tasks: usize,
    /// `done()` futures waiting on the root or below it.
    pub waiters: usize,
    /// `after_func` callbacks registered on the root or below it.
    pub callbacks: usize,
}

impl Census {
    /// Whether nothing that would outlive the work is left: no derived context, timer, token
    /// watch, task or waiter. Callbacks registered on the root itself do not count.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, testing::census};
    ///
    /// let (root, _cancel) = Context::background().with_cancel();
    /// assert!(census(&root).is_clean());
    /// let (_child, _cancel_child) = root.with_cancel();
    /// assert!(!census(&root).is_clean());
    /// ```
    pub fn is_clean(&self) -> bool {
        self.contexts == 0
            && self.timers == 0
            && self.token_watches == 0
            && self.tasks == 0
            && self.waiters == 0
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} contexts, {} timers, {} token watches, {} tasks, {} waiters, {} callbacks",
            self.contexts,
            self.timers,
            self.token_watches,
            self.tasks,
            self.waiters,
            self.callbacks
        )
    }
}

impl Scope {
    /// How many lone children this scope has: its own count and its shards'.
    #[inline]
    pub(super) fn lone_children(&self) -> usize {
        let shards = self.shards.get();
        let in_shards = shards.iter().flat_map(|shards| shards.0.iter());
        let counts = in_shards.map(|shard| shard.1.load(Ordering::Relaxed));
        counts.fold(self.lone.load(Ordering::Relaxed), u32::wrapping_add) as usize
    }

    /// Counts a task started on a context this scope governs, in this scope and every scope
    /// above it (along link 0, and across `without_cancel`), so that a census of any ancestor
    /// sees the task until it ends, even after this scope is done and has left its parent.
    pub(crate) fn task_started(self: &Arc<Self>) {
        self.for_each_ancestor(|scope| {
            // A `u32`: four billion live tasks would need far more memory than a machine has.
            scope.tasks.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Undoes [`Scope::task_started`].
    pub(crate) fn task_ended(self: &Arc<Self>) {
        self.for_each_ancestor(|scope| {
            scope.tasks.fetch_sub(1, Ordering::Relaxed);
        });
    }

    pub(super) fn for_each_ancestor(self: &Arc<Self>, mut f: impl FnMut(&Scope)) {
        let mut current = Some(&**self);
        while let Some(scope) = current {
            f(scope);
            current = scope.parent.counting_scope().map(|parent| &**parent);
        }
    }

    /// Counts what is alive at and below this scope: registered descendant scopes, their armed
    /// timers and token watches, the waiters and callbacks of all of them, and the tasks
    /// started at or below this scope that have not ended.
    pub(crate) fn census(self: &Arc<Self>) -> Census {
        let mut census = Census::default();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(self.clone(), true)];
        while let Some((scope, is_root)) = stack.pop() {
            if !seen.insert(Arc::as_ptr(&scope)) {
                continue; // a merge is registered in two parents
            }
            // A scope that never made its lock holds nothing there; counting makes none.
            let inner = scope.inner.get().map(lock_inner);
            let held = scope.shards.get();
            let shards = held
                .as_ref()
                .map_or_else(Vec::new, |shards| shards.lock_all());
            let sharded = shards.iter().flat_map(|shard| shard.iter());
            let regs = inner.iter().flat_map(|inner| inner.regs.iter());
            for reg in regs.chain(sharded) {
                match reg {
                    Reg::Child(child) => stack.extend(child.upgrade().map(|c| (c, false))),
                    Reg::Waiter(_) => census.waiters += 1,
                    Reg::Callback(_) => census.callbacks += 1,
                }
            }
            drop(shards);
            if is_root && is_waiter_link(scope.link.load(Ordering::Acquire)) {
                census.waiters += 1; // a lone scope's, waiting in its parent
            }
            if scope.state.load(Ordering::Acquire) & ERR == LIVE {
                // Lone children are leaves with nothing registered: counted, not visited.
                census.contexts += scope.lone_children();
            }
            if !is_root {
                census.contexts += 1;
                match inner.as_ref().and_then(|inner| inner.source()) {
                    Some(Source::Token { .. }) => census.token_watches += 1,
                    Some(_) => census.timers += 1,
                    None => {}
                }
            }
        }
        census.tasks = self.tasks.load(Ordering::Relaxed) as usize;
        census
    }
}
