//! A minimal slab: stable indices, O(1) insert and remove, no allocation once warm.
//!
//! Each scope keeps its registrations (children, waiting futures, callbacks) in one of these so
//! that a registration can be removed by the index it was given, without a search.
//!
//! Entry 0 lives inline and the rest on the heap. Most scopes hold at most one registration at
//! a time (each link of a chain has one child; a context awaited by one task has one waiter),
//! and those then cost no allocation: a chain of 1,000 cancellable contexts went from 1,999 to
//! 1,000 allocations.

pub(crate) struct Slab<T> {
    /// Entry 0.
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

impl<T> Entry<T> {
    fn full(&self) -> Option<&T> {
        match self {
            Entry::Full(value) => Some(value),
            Entry::Vacant { .. } => None,
        }
    }
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

    fn entry_mut(&mut self, index: usize) -> Option<&mut Entry<T>> {
        match index.checked_sub(1) {
            None => Some(&mut self.first),
            Some(i) => self.rest.get_mut(i),
        }
    }

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
        if !entry.full().is_some_and(pred) {
            return None;
        }
        let Entry::Full(value) = std::mem::replace(entry, Entry::Vacant { next_free }) else {
            unreachable!("checked full above")
        };
        self.next_free = index;
        self.len -= 1;
        if self.len == 0 {
            // Forget the free list but keep the capacity: the next insert starts at index 0.
            self.rest.clear();
            self.first = Entry::Vacant { next_free: 1 };
            self.next_free = 0;
        }
        Some(value)
    }

    /// Consumes the slab, handing every value to `f`: no iterator adapter, so that a slab with
    /// only its inline entry costs a check or two.
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

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.first)
            .chain(&self.rest)
            .filter_map(Entry::full)
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
        let mut all: Vec<_> = Vec::new();
        slab.for_each(|value| all.push(value));
        all.sort();
        assert_eq!(all, ["a", "c", "d"]);
    }

    #[test]
    fn one_entry_at_a_time_stays_inline() {
        let mut slab = Slab::new();
        for round in 0..3 {
            let a = slab.insert(round);
            assert_eq!(a, 0);
            assert_eq!(slab.get_mut(a).copied(), Some(round));
            assert_eq!(slab.remove_if(a, |_| true), Some(round));
        }
        assert_eq!(slab.rest.capacity(), 0, "no heap allocation for one entry");
        let a = slab.insert(1);
        let b = slab.insert(2);
        assert_eq!((a, b), (0, 1));
        assert_eq!(slab.remove_if(a, |_| true), Some(1));
        assert_eq!(slab.insert(3), 0, "the inline entry is reused first");
        assert_eq!(slab.get_mut(usize::MAX), None);
        let mut all: Vec<_> = Vec::new();
        slab.for_each(|value| all.push(value));
        all.sort();
        assert_eq!(all, [2, 3]);
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
