//! The walk's lists: a few items inline, then room kept per thread.
//!
//! A [`Batch`] keeps its first four items inline, so that waking a few waiters or walking a
//! few scopes allocates nothing; when it spills, it takes room another walk on this thread
//! gave back ([`Room`]), so that the walk of a long chain allocates nothing once warm. Pinned
//! by `walk_stack_is_last_in_first_out_across_the_spill` and
//! `the_room_a_batch_spilled_into_is_kept_for_the_next_walk`.

use std::mem;

/// A list that keeps its first few items inline, so that waking a few waiters or walking a few
/// scopes allocates nothing: popped last in first out (the walk), consumed in insertion order
/// (what a cancellation releases). Invariant: `spilled` is empty unless `inline` is full.
pub(super) struct Batch<T: Room> {
    inline: [Option<T>; 4],
    len: usize,
    spilled: Vec<T>,
}

impl<T: Room> Default for Batch<T> {
    fn default() -> Self {
        Batch {
            inline: [None, None, None, None],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl<T: Room> Batch<T> {
    pub(super) fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
            }
            // Room already there (a long walk's, or one kept from the last): no call.
            None if self.spilled.len() < self.spilled.capacity() => self.spilled.push(item),
            None => self.spill(item),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn spill(&mut self, item: T) {
        if self.spilled.capacity() == 0 {
            self.spilled = T::take_room();
        }
        self.spilled.push(item);
    }

    /// Gives the room the batch spilled into back to the thread, for the next walk's batch of
    /// the same kind (see [`Room`]). The batch must be empty.
    pub(super) fn give_back_room(&mut self) {
        debug_assert_eq!(self.len(), 0);
        if self.spilled.capacity() != 0 {
            T::keep_room(mem::take(&mut self.spilled));
        }
    }

    pub(super) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spilled.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline[self.len].take()
    }

    /// How many items the batch holds.
    pub(super) fn len(&self) -> usize {
        self.len + self.spilled.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0 // nothing spills before the inline slots are full
    }

    /// Hands the items pushed since the batch held `mark` of them to `f`, in insertion order,
    /// and keeps the first `mark`.
    pub(super) fn drain_from(&mut self, mark: usize, mut f: impl FnMut(T)) {
        if mark >= self.len() {
            return;
        }
        let cut = mark.min(self.len);
        let len = mem::replace(&mut self.len, cut);
        self.inline[cut..len]
            .iter_mut()
            .filter_map(Option::take)
            .for_each(&mut f);
        let from = mark.saturating_sub(self.inline.len());
        if from < self.spilled.len() {
            self.spilled.drain(from..).for_each(f);
        }
    }

    /// Where the room it spilled into is, and how much: what a test compares across batches.
    #[cfg(all(test, not(loom)))]
    pub(super) fn spilled_room(&self) -> (*const T, usize) {
        (self.spilled.as_ptr(), self.spilled.capacity())
    }

    /// Whether the batch is empty and has no spilled room: then it owns nothing, and
    /// forgetting it leaks nothing.
    pub(super) fn owns_nothing(&self) -> bool {
        let empty = self.len == 0 && self.spilled.capacity() == 0;
        debug_assert!(!empty || self.inline.iter().all(Option::is_none));
        empty
    }

    pub(super) fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        items.into_iter().for_each(|item| self.push(item));
    }

    /// Hands every item to `f`, in insertion order, and leaves the batch empty. Plain loops
    /// rather than an iterator adapter: most batches are empty or hold one item, and then
    /// this is a check or two.
    pub(super) fn drain(&mut self, f: impl FnMut(T)) {
        self.drain_from(0, f);
    }
}

/// Where the walk's batches of one kind find room when they spill: a vector another walk on
/// this thread used and gave back, so that a cancellation of a chain allocates nothing once
/// warm. A chain's walk holds a `Leave` step and a reached scope per link, past the four of
/// each a batch holds inline (`CancelTree/depth=10/Root=OpenCanceler` in
/// `benches/go_suite.rs` allocates nothing per operation with the room kept).
pub(super) trait Room: Sized {
    /// Room for a batch that spills: an empty vector, with capacity if one was kept.
    fn take_room() -> Vec<Self> {
        Vec::new()
    }

    /// Keeps `room` (empty) for the next [`Room::take_room`], or frees it.
    fn keep_room(room: Vec<Self>) {
        drop(room);
    }
}

/// The most entries of room a thread keeps per kind: the walk of a chain of a thousand.
#[cfg(not(loom))]
pub(super) const KEPT_ROOM: usize = 1024;

/// [`Room`] kept in a thread-local, for the batches that spill in the walk of a chain.
macro_rules! kept_room {
    ($t:ty, $kept:ident) => {
        #[cfg(not(loom))]
        std::thread_local! {
            static $kept: std::cell::Cell<Vec<$t>> = const { std::cell::Cell::new(Vec::new()) };
        }

        impl Room for $t {
            #[cfg(not(loom))]
            fn take_room() -> Vec<Self> {
                $kept.try_with(std::cell::Cell::take).unwrap_or_default()
            }

            #[cfg(not(loom))]
            fn keep_room(room: Vec<Self>) {
                debug_assert!(room.is_empty());
                if room.capacity() <= $crate::tree::batch::KEPT_ROOM {
                    // Whatever was kept before (another batch's) is freed.
                    let _ = $kept.try_with(|kept| kept.set(room));
                }
            }
        }
    };
}

pub(super) use kept_room;

#[cfg(test)]
impl Room for i32 {}
