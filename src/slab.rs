//! A minimal slab: stable indices, O(1) insert and remove, no allocation once warm.
//!
//! Each scope keeps its registrations (children, waiting futures, callbacks) in one of these so
//! that a registration can be removed by the index it was given, without a search.
//!
//! The first entry is kept inline, next to the scope's lock (in the allocation the scope makes
//! on its first registration): a scope with one registration allocates no room for more (a
//! chain of 1,000 contexts: 1,872 -> 936 allocations, when the lock was in the scope). Tried first with the
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
    /// Index of the first vacant entry, or `1 + rest.len()` when there is none. Vacant
    /// entries are linked through their `next_free`; some of `rest`'s may never have been
    /// filled (see [`Slab::grow`]). It and `len` are 32 bits wide, which keeps a scope's lock
    /// in a 96-byte glibc chunk (see `Inner` in `tree.rs`); [`Slab::grow`] stops at that size.
    next_free: u32,
    len: u32,
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
        self.len as usize
    }

    #[inline(always)]
    fn entry_mut(&mut self, index: usize) -> Option<&mut Entry<T>> {
        match index.checked_sub(1) {
            None => Some(&mut self.first),
            Some(i) => self.rest.get_mut(i),
        }
    }

    /// Stores `value` in a vacant entry and returns its index.
    #[inline(always)]
    pub(crate) fn insert(&mut self, value: T) -> usize {
        self.insert_with(|| value)
    }

    /// [`Slab::insert`] with the value built only once its entry is known, in place: what a
    /// registration does. Every insert fills a vacant entry, the vector's end included, which
    /// [`Slab::grow`] links in ahead of time: so nothing is called between building the value
    /// and storing it. (`Vec::push` took the value across its growth check: built in a stack
    /// slot, it was copied into the vector by a load wider than the stores that wrote it, a
    /// store-forwarding stall on which `perf` put 40% of a registration's samples.
    /// `ScaleMemoryPerContext/derive=with_cancel` in a loop of its own, 100,000 children:
    /// 36.6 -> 29.9 ns per derive; 1,000 children, all in cache: 26.4 -> 21.4.)
    #[inline(always)]
    pub(crate) fn insert_with(&mut self, make: impl FnOnce() -> T) -> usize {
        let index = self.next_free as usize;
        if index > self.rest.len() {
            self.grow();
        }
        let Some(entry) = self.entry_mut(index) else {
            unreachable!("the free list only links entries that exist")
        };
        let Entry::Vacant { next_free } = *entry else {
            unreachable!("the free list only links vacant entries")
        };
        *entry = Entry::Full(make());
        // `grow` keeps every index within 32 bits.
        self.next_free = next_free as u32;
        self.len += 1;
        index
    }

    /// Appends a few vacant entries, linked in order, for a slab whose free list is empty.
    // A few at a time (at most 32, 768 bytes of `Reg`s), so that they are still in the cache
    // when filled: the whole room at once, as many as the slab already held, made the same
    // 100,000-child loop 34.4 ns per derive rather than 29.9. Within the room the vector has,
    // then as many as it holds (its growth doubles it, as one more push would): so the room
    // follows the most entries ever held as it did with `Vec::push`, which `clear`'s
    // `KEPT_CAPACITY` relies on.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        debug_assert_eq!(self.next_free as usize, 1 + self.rest.len());
        let start = self.rest.len();
        let room = self.rest.capacity() - start;
        let add = if room > 0 { room } else { start.max(1) };
        let end = start + add.min(32);
        // Entry `end`'s index, the "none" the last new entry links to, must fit in 32 bits:
        // 4 billion registrations in one scope (100 GB of them) is no program's.
        assert!(
            end < u32::MAX as usize,
            "more than 4 billion registrations in one slab"
        );
        // `rest[i]` is entry `i + 1`; the last links to `1 + rest.len()`, "none".
        self.rest
            .extend((start..end).map(|i| Entry::Vacant { next_free: i + 2 }));
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        match self.entry_mut(index)? {
            Entry::Full(value) => Some(value),
            Entry::Vacant { .. } => None,
        }
    }

    /// Removes the entry at `index` if it is full and `pred` accepts it.
    pub(crate) fn remove_if(&mut self, index: usize, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let next_free = self.next_free as usize;
        let entry = self.entry_mut(index)?;
        match entry {
            Entry::Full(value) if pred(value) => {}
            _ => return None,
        }
        let Entry::Full(value) = std::mem::replace(entry, Entry::Vacant { next_free }) else {
            unreachable!("checked full above")
        };
        // An index the slab handed out: within 32 bits.
        self.next_free = index as u32;
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

    /// Any sequence of inserts and removals, against a map from index to value: indices stay
    /// unique while held, every value stays where it was put, and the vacant entries that
    /// `grow` links in ahead of time are reused before the slab grows again.
    #[test]
    fn random_inserts_and_removals_agree_with_a_map() {
        use std::collections::BTreeMap;
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut slab = Slab::new();
        let mut model = BTreeMap::new();
        let mut most = 0;
        for step in 0..20_000u64 {
            // Mostly inserts early on, mostly removals later: the slab grows, then empties.
            let insert_odds = if step < 10_000 { 3 } else { 1 };
            if model.is_empty() || next() % 4 < insert_odds {
                let index = slab.insert(step);
                assert!(
                    model.insert(index, step).is_none(),
                    "index {index} given twice"
                );
                // The slab grows only when every entry is full, by at most 32.
                most = most.max(model.len());
                assert!(index <= slab.rest.len() && slab.rest.len() < most + 32);
            } else {
                let nth = (next() % model.len() as u64) as usize;
                let (&index, &value) = model.iter().nth(nth).unwrap();
                assert_eq!(slab.remove_if(index, |v| *v == value), Some(value));
                model.remove(&index);
                assert_eq!(slab.remove_if(index, |_| true), None, "removed once");
            }
            assert_eq!(slab.len(), model.len());
        }
        for (&index, &value) in &model {
            assert_eq!(slab.get_mut(index).copied(), Some(value));
        }
        let mut all = Vec::new();
        slab.for_each(|value| all.push(value));
        let mut expected: Vec<_> = model.into_values().collect();
        all.sort();
        expected.sort();
        assert_eq!(all, expected);
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
