//! A seeded pseudo-random generator, so that a randomised test or harness does the same work
//! on every run (thread interleavings aside).

/// xorshift64*: small, deterministic, good enough to shuffle work; not for anything that must
/// be unpredictable.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`; every seed, 0 included, gives a usable sequence.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Puts `items` in a random order (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// Busy-spins a random number of iterations below `max`, to vary where threads meet.
    pub fn spin(&mut self, max: usize) {
        for _ in 0..self.below(max) {
            std::hint::spin_loop();
        }
    }
}
