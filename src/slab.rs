//! A minimal slab: stable indices, O(1) amortised insert and remove, no allocation once warm,
//! and room given back once it is well below what the slab holds at its peak.
//!
//! Each scope keeps its registrations (children, waiting futures, callbacks) in one of these so
//! that a registration can be removed by the index it was given, without a search.
//!
//! The first entry is kept inline, next to the scope's lock (in the allocation the scope makes
//! on its first registration): a scope with one registration allocates no room for more.
//! Whether this pays depends on the scope's size class (see
//! `a_scope_allocation_stays_at_120_bytes` in `tree/tests.rs`): re-measure
//! `ScaleCancelFanout` and `CancelTree/depth=1000` in `benches/go_suite.rs` before changing
//! either.
//!
//! # Invariants
//!
//! "The room" is `rest`'s capacity; its upper half, the entries with an index above half of it.
//!
//! 1. An index names one entry from the insert that returns it to the removal that ends it:
//!    entries never move (a wheel's lists and a scope's link hold indices). So only the vacant
//!    tail of `rest` can be given back, and a full entry pins the room below it until it goes.
//! 2. Every vacant entry is either free, linked once into the list that `next_free` heads and
//!    [`NONE`] ends, or parked: linked nowhere and marked [`PARKED`], so that it can be dropped
//!    from the tail without a search of the list. Only a sparse slab parks entries.
//! 3. A slab is sparse (`SPARSE` set in `len`) from a removal that leaves it at most a quarter
//!    full of a room larger than [`MIN_ROOM`] until it empties, fills its lower half (then
//!    [`Slab::grow`] frees what is parked), or a [`Slab::settle`] finds it fuller. While it is,
//!    every vacant entry in its upper half is parked and the room does not change: inserts
//!    fill the lower half and the upper half only empties. Once its last full entry goes, the
//!    tail is dropped down to the lower half and `settle` shrinks the room to half or less. So
//!    live entries drift to the front as they are replaced, and the room follows them down
//!    (`a_steady_load_after_a_burst_drifts_to_the_front_and_gives_the_room_back`).
//! 4. The room shrinks to no less than twice the entries held and [`MIN_ROOM`], and to nothing
//!    below the last full entry (`a_slab_emptied_to_a_few_entries_gives_its_room_back`).
//!
//! Why it cannot thrash: each step that visits the whole room (a settle, the unparking of a
//! sparse slab whose lower half is full, a growth or a shrink) follows a quarter of the room's
//! worth of inserts or removals since the room last changed, or halves the room, and halvings
//! add up to less than twice the first. A shrink leaves the slab at most half full, so growing
//! back takes as many inserts as it holds, and shrinking again as many removals
//! (`shrinking_costs_a_bounded_amount_of_work_per_operation`).

/// The most entries [`Slab::clear`] keeps room for.
const KEPT_CAPACITY: usize = 16;

/// The room a slab never gives back: below it, a slab stays as it is.
const MIN_ROOM: usize = 64;

/// The end of the free list: above every index (see [`Slab::grow`]).
const NONE: u32 = u32::MAX;

/// The link of a parked entry (invariant 2): never followed.
const PARKED: usize = usize::MAX;

/// In `len`, the flag of a sparse slab (invariant 3); the count is the bits below.
const SPARSE: u32 = 1 << 31;

pub(crate) struct Slab<T> {
    /// Entry 0, inline: most slabs hold one entry at a time (a link of a chain has one child,
    /// a context awaited by one task one waiter), and those then allocate nothing.
    first: Entry<T>,
    /// Entries 1 and up: entry `i` is `rest[i - 1]`.
    rest: Vec<Entry<T>>,
    /// Index of the first free entry, or [`NONE`]. Free entries are linked through their
    /// `next_free`; some of `rest`'s may never have been filled (see [`Slab::grow`]). It and
    /// `len` are 32 bits wide, which keeps a scope's lock in a 96-byte glibc chunk (see
    /// `Inner` in `tree/inner.rs`); [`Slab::grow`] stops at that size.
    next_free: u32,
    /// How many entries are full, and [`SPARSE`].
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
            first: Entry::Vacant {
                next_free: NONE as usize,
            },
            rest: Vec::new(),
            next_free: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        (self.len & !SPARSE) as usize
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
    /// and storing it: a value built in a stack slot and carried across a growth check is
    /// copied by a load wider than the stores that wrote it, a store-forwarding stall.
    /// `ScaleMemoryPerContext` in `benches/go_suite.rs` shows it.
    #[inline(always)]
    pub(crate) fn insert_with(&mut self, make: impl FnOnce() -> T) -> usize {
        if self.next_free == NONE {
            self.grow();
        }
        let index = self.next_free as usize;
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
    // when filled (`ScaleMemoryPerContext` shows the difference). Within the room the vector has,
    // then as many as it holds (its growth doubles it, as one more push would): so the room
    // follows the most entries ever held as it did with `Vec::push`, which `clear`'s
    // `KEPT_CAPACITY` relies on.
    // A sparse slab whose lower half is full frees its parked entries first (invariant 3).
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        debug_assert_eq!(self.next_free, NONE);
        if self.len & SPARSE != 0 {
            self.len &= !SPARSE;
            self.relink(usize::MAX);
            if self.next_free != NONE {
                return;
            }
        }
        let start = self.rest.len();
        let room = self.rest.capacity() - start;
        let add = if room > 0 { room } else { start.max(1) };
        let end = start + add.min(32);
        // The last index, `end`, must stay below [`NONE`], and the count, at most `end + 1`,
        // below [`SPARSE`]: 2 billion registrations in one scope (50 GB of them) is no
        // program's.
        assert!(
            end + 1 < SPARSE as usize,
            "more than 2 billion registrations in one slab"
        );
        // `rest[i]` is entry `i + 1`; the last links to [`NONE`].
        self.rest.extend((start..end).map(|i| Entry::Vacant {
            next_free: if i + 1 < end { i + 2 } else { NONE as usize },
        }));
        self.next_free = start as u32 + 1;
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
            // Forget the free list: the next insert starts at index 0.
            self.reset_free_list();
        } else if self.rest.capacity() > MIN_ROOM
            && (self.len & SPARSE != 0 || 4 * self.len as usize <= self.rest.capacity())
        {
            self.removed_from_sparse(index);
        }
        Some(value)
    }

    /// After a removal (of `index`, now the free list's head) from a slab at most a quarter
    /// full: makes it sparse, or keeps it so (invariant 3).
    #[cold]
    #[inline(never)]
    fn removed_from_sparse(&mut self, index: usize) {
        if self.len & SPARSE == 0 {
            return self.settle();
        }
        if self.len() == 0 {
            return self.reset_free_list();
        }
        let half = self.rest.capacity() / 2;
        if index <= half {
            return;
        }
        let Some(Entry::Vacant { next_free }) = self.entry_mut(index) else {
            unreachable!("just removed")
        };
        let next = std::mem::replace(next_free, PARKED);
        self.next_free = next as u32;
        if index == self.rest.len() {
            while let Some(Entry::Vacant { next_free: PARKED }) = self.rest.last() {
                self.rest.pop();
                #[cfg(test)]
                tests::visited(1);
            }
            if self.rest.len() <= half {
                self.settle();
            }
        }
    }

    /// Drops the vacant tail, shrinks the room to what is left if that halves it, and links
    /// the free list anew, lowest index first, parking the upper half if the slab is still
    /// sparse (invariants 3 and 4).
    #[cold]
    #[inline(never)]
    fn settle(&mut self) {
        #[cfg(test)]
        tests::visited(self.rest.len());
        while let Some(Entry::Vacant { .. }) = self.rest.last() {
            self.rest.pop();
        }
        let len = self.len();
        let target = self.rest.len().max(2 * len).max(MIN_ROOM);
        if target <= self.rest.capacity() / 2 {
            self.rest.shrink_to(target);
        }
        let room = self.rest.capacity();
        let sparse = room > MIN_ROOM && 4 * len <= room;
        // `len` is below `SPARSE` (see `grow`).
        self.len = len as u32 | if sparse { SPARSE } else { 0 };
        self.relink(if sparse { room / 2 } else { usize::MAX });
    }

    /// Links every vacant entry with an index up to `bound` into the free list, in order, and
    /// parks the others.
    fn relink(&mut self, bound: usize) {
        #[cfg(test)]
        tests::visited(self.rest.len());
        let mut head = NONE as usize;
        for (i, entry) in self.rest.iter_mut().enumerate().rev() {
            if let Entry::Vacant { next_free } = entry {
                // `rest[i]` is entry `i + 1`.
                *next_free = if i < bound {
                    std::mem::replace(&mut head, i + 1)
                } else {
                    PARKED
                };
            }
        }
        if let Entry::Vacant { next_free } = &mut self.first {
            *next_free = std::mem::replace(&mut head, 0);
        }
        // An index below `NONE`, or `NONE`.
        self.next_free = head as u32;
    }

    /// Empties the free list, for a slab that holds nothing, and gives back its room beyond
    /// [`MIN_ROOM`].
    fn reset_free_list(&mut self) {
        if !self.rest.is_empty() {
            self.rest.clear();
        }
        if self.rest.capacity() > MIN_ROOM {
            self.rest.shrink_to(MIN_ROOM);
        }
        self.first = Entry::Vacant {
            next_free: NONE as usize,
        };
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
            matches!(self.first, Entry::Vacant { next_free } if next_free == NONE as usize)
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
        let first = std::mem::replace(
            &mut self.first,
            Entry::Vacant {
                next_free: NONE as usize,
            },
        );
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
    use std::cell::Cell;

    use super::{Entry, MIN_ROOM, NONE, PARKED, SPARSE, Slab};

    std::thread_local! {
        /// How many entries this thread's slabs visited in steps that may visit the whole room.
        static VISITED: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn visited(entries: usize) {
        VISITED.with(|visited| visited.set(visited.get() + entries));
    }

    /// Checks invariants 2 to 4: the free list links vacant entries only, each once; the rest
    /// of the vacant entries are parked, only in a sparse slab's upper half, and in a sparse
    /// slab every vacant entry there is; the count is right.
    fn check<T>(slab: &Slab<T>) {
        let entry = |index: usize| match index.checked_sub(1) {
            None => &slab.first,
            Some(i) => &slab.rest[i],
        };
        let entries = 1 + slab.rest.len();
        let mut free = vec![false; entries];
        let mut index = slab.next_free as usize;
        while index != NONE as usize {
            assert!(!free[index], "entry {index} linked twice");
            free[index] = true;
            let Entry::Vacant { next_free } = *entry(index) else {
                panic!("full entry {index} in the free list")
            };
            index = next_free;
        }
        let sparse = slab.len & SPARSE != 0;
        let half = slab.rest.capacity() / 2;
        let mut full = 0;
        for (index, is_free) in free.into_iter().enumerate() {
            match *entry(index) {
                Entry::Full(_) => full += 1,
                Entry::Vacant { next_free } if next_free == PARKED => {
                    assert!(sparse && index > half, "entry {index} parked out of place");
                }
                Entry::Vacant { .. } => {
                    assert!(is_free, "vacant entry {index} is neither free nor parked");
                    assert!(
                        !sparse || index <= half,
                        "free entry {index} in the upper half"
                    );
                }
            }
        }
        assert_eq!(full, slab.len());
        assert!(!matches!(
            slab.rest.last(),
            Some(Entry::Vacant { next_free: PARKED })
        ));
    }

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
    #[cfg_attr(
        miri,
        ignore = "a scale test, too slow under Miri; smaller tests reach the same code"
    )]
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
            if step % 97 == 0 {
                check(&slab);
            }
        }
        check(&slab);
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

    /// A deterministic shuffle (xorshift), so that removals come in no particular order.
    fn shuffle<T>(items: &mut [T], mut seed: u64) {
        for i in (1..items.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            items.swap(i, (seed % (i as u64 + 1)) as usize);
        }
    }

    /// After a burst of 100,000, the few entries that stay (scattered among the first ones,
    /// with holes between them) hold room within a small factor of their number.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "a scale test, too slow under Miri; smaller tests reach the same code"
    )]
    fn a_slab_emptied_to_a_few_entries_gives_its_room_back() {
        let mut slab = Slab::new();
        let ids: Vec<usize> = (0..100_000).map(|i| slab.insert(i)).collect();
        assert!(slab.capacity() >= 100_000 - 1, "entry 0 is inline");
        let (kept, mut gone): (Vec<_>, Vec<_>) =
            ids.into_iter().partition(|&i| i < 96 && i % 3 == 0);
        shuffle(&mut gone, 0x9E37_79B9_7F4A_7C15);
        for index in gone {
            assert_eq!(slab.remove_if(index, |_| true), Some(index));
        }
        assert_eq!(slab.len(), kept.len());
        assert!(
            slab.capacity() <= 4 * slab.len(),
            "{} entries of room for {}",
            slab.capacity(),
            slab.len()
        );
        for index in kept {
            assert_eq!(
                slab.get_mut(index).copied(),
                Some(index),
                "indices are stable"
            );
        }
    }

    /// Entries that stay after a burst are scattered over its whole room, and pin it; but as
    /// they are replaced (a steady load of 100 entries, each living for 100 operations), the
    /// new ones go to the front, and the room follows them down.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "a scale test, too slow under Miri; smaller tests reach the same code"
    )]
    fn a_steady_load_after_a_burst_drifts_to_the_front_and_gives_the_room_back() {
        use std::collections::VecDeque;
        let mut slab = Slab::new();
        let ids: Vec<usize> = (0..100_000).map(|i| slab.insert(i)).collect();
        let (kept, mut gone): (Vec<_>, Vec<_>) = ids.into_iter().partition(|&i| i % 1_000 == 999);
        shuffle(&mut gone, 0x2545_F491_4F6C_DD1D);
        for index in gone {
            slab.remove_if(index, |_| true);
        }
        let mut live: VecDeque<(usize, usize)> = kept.into_iter().map(|i| (i, i)).collect();
        shuffle(live.make_contiguous(), 0x1234_5678_9ABC_DEF1);
        assert!(
            slab.capacity() >= 99_999,
            "the last entry pins the room below it"
        );
        for value in 100_000..100_000 + 100 * 20 {
            let (index, old) = live.pop_front().unwrap();
            assert_eq!(slab.remove_if(index, |_| true), Some(old));
            live.push_back((slab.insert(value), value));
        }
        assert!(
            slab.capacity() <= 4 * slab.len().max(MIN_ROOM),
            "{} entries of room for {}",
            slab.capacity(),
            slab.len()
        );
        for (index, value) in live {
            assert_eq!(slab.get_mut(index).copied(), Some(value));
        }
    }

    /// The steps that visit the whole room stay within a few entries per insert or removal,
    /// even where a naive rule would repeat them at every operation: a slab that hovers at a
    /// quarter full while its last entry pins the room, and one whose evenly spread entries
    /// go from the last down, each leaving only three vacant entries behind it.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "a scale test, too slow under Miri; smaller tests reach the same code"
    )]
    fn shrinking_costs_a_bounded_amount_of_work_per_operation() {
        let mut operations = 0;
        let mut next = {
            let mut seed: u64 = 0x0DDB_1A5E_5BAD_5EED;
            move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            }
        };
        VISITED.with(|visited| visited.set(0));

        // Hovering: the last entry pinned, about a quarter full.
        let mut slab = Slab::new();
        let mut ids: Vec<usize> = (0..100_000).map(|i| slab.insert(i)).collect();
        let last = ids.pop().unwrap();
        shuffle(&mut ids, next());
        let quarter = slab.rest.capacity() / 4;
        while slab.len() > quarter + 1 {
            slab.remove_if(ids.pop().unwrap(), |_| true).unwrap();
        }
        for step in 0..100_000 {
            if step % 2 == 0 {
                let at = (next() % ids.len() as u64) as usize;
                slab.remove_if(ids.swap_remove(at), |_| true).unwrap();
            } else {
                ids.push(slab.insert(step));
            }
        }
        assert!(slab.get_mut(last).is_some());
        check(&slab);
        operations += 200_000;

        // Evenly spread, going from the last down.
        let mut slab = Slab::new();
        let mut ids: Vec<usize> = (0..100_000).map(|i| slab.insert(i)).collect();
        let (mut kept, mut gone): (Vec<_>, Vec<_>) = ids.drain(..).partition(|i| i % 4 == 0);
        shuffle(&mut gone, next());
        kept.sort_unstable();
        for index in gone.into_iter().chain(kept.into_iter().rev()) {
            slab.remove_if(index, |_| true).unwrap();
            if index % 1_000 == 0 {
                check(&slab);
            }
        }
        operations += 200_000;

        let visited = VISITED.with(Cell::get);
        assert!(
            visited <= 8 * operations,
            "{visited} entries visited in {operations} operations"
        );
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
