//! A minimal slab: stable indices, O(1) insert and remove, no allocation once warm.
//!
//! Each scope keeps its registrations (children, waiting futures, callbacks) in one of these so
//! that a registration can be removed by the index it was given, without a search.
//!
//! The first entry is kept inline, in the scope itself: a scope with one registration
//! allocates none (a chain of 1,000 contexts: 1,872 -> 936 allocations). Tried first with the
//! 232-byte scope, this made the cancellation of a root with 100,000 waiting children 50-80%
//! slower (a memory-layout effect: see the scope's size test in `tree.rs`) and was taken out;
//! with the slimmer scope it is faster there too: 60.8 -> 53.5 ms, and `CancelTree` at depth
//! 1,000 `Background` 99.7 -> 80.1 us, `OpenCanceler` 141.4 -> 110.5 us (medians of 3
//! alternating runs).

/// The most entries [`Slab::clear`] keeps room for.
const KEPT_CAPACITY: usize = 16;

pub(crate) struct Slab<T> {
    /// Entry 0, inline: most slabs hold one entry at a time (a link of a chain has one child,
    /// a context awaited by one task one waiter), and those then allocate nothing.
    first: Entry<T>,
    /// Entries 1 and up: entry `i` is `rest[i - 1]`.
    rest: Vec<Entry<T>>,
    /// Index of the first vacant entry, or `1 + rest.len()` when there is none.
    next_free: usize,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab::new()
    }
}

enum Entry<T> {
    Full(T),
    Vacant { next_free: usize },
}

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Slab {
            first: Entry::Vacant { next_free: 1 },
            rest: Vec::new(),
            next_free: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn entry_mut(&mut self, index: usize) -> Option<&mut Entry<T>> {
        match index.checked_sub(1) {
            None => Some(&mut self.first),
            Some(i) => self.rest.get_mut(i),
        }
    }

    // Inlined into each registration: 14 instructions less per scope in a chain of 10. (The
    // value is still built in a stack slot before the vector's growth check and copied from
    // it with wider loads, a store-forwarding stall `perf` shows and safe code cannot avoid.)
    #[inline(always)]
    pub(crate) fn insert(&mut self, value: T) -> usize {
        let index = self.next_free;
        match self.entry_mut(index) {
            None => {
                self.rest.push(Entry::Full(value));
                self.next_free = 1 + self.rest.len();
            }
            Some(entry) => match std::mem::replace(entry, Entry::Full(value)) {
                Entry::Vacant { next_free } => self.next_free = next_free,
                Entry::Full(_) => unreachable!("the free list only links vacant entries"),
            },
        }
        self.len += 1;
        index
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        match self.entry_mut(index)? {
            Entry::Full(value) => Some(value),
            Entry::Vacant { .. } => None,
        }
    }

    /// Removes the entry at `index` if it is full and `pred` accepts it.
    pub(crate) fn remove_if(&mut self, index: usize, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let next_free = self.next_free;
        let entry = self.entry_mut(index)?;
        match entry {
            Entry::Full(value) if pred(value) => {}
            _ => return None,
        }
        let Entry::Full(value) = std::mem::replace(entry, Entry::Vacant { next_free }) else {
            unreachable!("checked full above")
        };
        self.next_free = index;
        self.len -= 1;
        if self.len == 0 {
            // Forget the free list but keep the capacity: the next insert starts at index 0.
            self.reset_free_list();
        }
        Some(value)
    }

    /// Empties the free list, for a slab that holds nothing.
    fn reset_free_list(&mut self) {
        if !self.rest.is_empty() {
            self.rest.clear();
        }
        self.first = Entry::Vacant { next_free: 1 };
        self.next_free = 0;
        self.len = 0;
    }

    /// Drops every value. The capacity stays, unless it is larger than a reused scope needs.
    pub(crate) fn clear(&mut self) {
        // A slab that holds nothing is already reset (`remove_if` and `drain` leave it so):
        // the common case, a reused scope that never registered anything, writes nothing.
        if self.len != 0 {
            self.reset_free_list();
        }
        debug_assert!(
            matches!(self.first, Entry::Vacant { next_free: 1 })
                && self.rest.is_empty()
                && self.next_free == 0
        );
        // An emptied slab keeps its room (see `remove_if`), unless it is more than a reused
        // scope needs.
        if self.rest.capacity() > KEPT_CAPACITY {
            self.rest = Vec::new();
        }
    }

    /// The room for entries beyond the inline one.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.rest.capacity()
    }

    /// Whether this slab has more room than [`Slab::clear`] keeps: a done scope lets it go.
    pub(crate) fn has_surplus_room(&self) -> bool {
        self.rest.capacity() > KEPT_CAPACITY
    }

    /// Consumes the slab, handing every value to `f`: no iterator adapter, so that a slab
    /// with only its inline entry costs a check or two.
    pub(crate) fn for_each(self, mut f: impl FnMut(T)) {
        if let Entry::Full(value) = self.first {
            f(value);
        }
        if !self.rest.is_empty() {
            for entry in self.rest {
                if let Entry::Full(value) = entry {
                    f(value);
                }
            }
        }
    }

    /// Hands every value to `f` and leaves the slab empty, with its capacity.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(T)) {
        let first = std::mem::replace(&mut self.first, Entry::Vacant { next_free: 1 });
        if let Entry::Full(value) = first {
            f(value);
        }
        if !self.rest.is_empty() {
            for entry in self.rest.drain(..) {
                if let Entry::Full(value) = entry {
                    f(value);
                }
            }
        }
        self.next_free = 0;
        self.len = 0;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.first)
            .chain(&self.rest)
            .filter_map(|entry| match entry {
                Entry::Full(value) => Some(value),
                Entry::Vacant { .. } => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn indices_are_stable_and_reused() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        let b = slab.insert("b");
        let c = slab.insert("c");
        assert_eq!(slab.remove_if(b, |_| true), Some("b"));
        assert_eq!(slab.remove_if(b, |_| true), None);
        let d = slab.insert("d");
        assert_eq!(d, b, "a vacant entry is reused");
        assert_eq!(slab.get_mut(a).copied(), Some("a"));
        assert_eq!(slab.get_mut(c).copied(), Some("c"));
        assert_eq!(
            slab.remove_if(c, |v| *v == "x"),
            None,
            "the predicate is honoured"
        );
        assert_eq!(slab.len(), 3);
        let mut all = Vec::new();
        slab.for_each(|value| all.push(value));
        all.sort();
        assert_eq!(all, ["a", "c", "d"]);
    }

    #[test]
    fn draining_keeps_the_room_and_restarts_the_indices() {
        let mut slab = Slab::new();
        let ids: Vec<_> = (0..5).map(|i| slab.insert(i)).collect();
        slab.remove_if(ids[1], |_| true);
        let mut all = Vec::new();
        slab.drain(|value| all.push(value));
        assert_eq!(all, [0, 2, 3, 4]);
        assert_eq!((slab.len(), slab.iter().count()), (0, 0));
        assert!(
            slab.rest.capacity() >= 4 && !slab.has_surplus_room(),
            "four beyond the inline one"
        );
        assert_eq!(
            slab.remove_if(ids[2], |_| true),
            None,
            "an old index finds nothing"
        );
        assert_eq!(slab.insert(9), 0);
    }

    #[test]
    fn emptying_resets_the_free_list() {
        let mut slab = Slab::new();
        let ids: Vec<_> = (0..10).map(|i| slab.insert(i)).collect();
        for id in ids.into_iter().rev() {
            slab.remove_if(id, |_| true);
        }
        assert_eq!(slab.len(), 0);
        assert_eq!(slab.insert(42), 0);
        assert_eq!(slab.iter().copied().collect::<Vec<_>>(), [42]);
    }
}
