//! xorshift64*: a small deterministic generator, for random offsets and data where speed,
//! spread and reproducibility matter and cryptographic quality does not.
//!
//! One file serves three crates: this one, the daemon's tests and the crash test's guest
//! workload, which include it with `#[path]` (the guest workload is a static program of its
//! own and cannot depend on this crate).

pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence `seed` decides (any seed: a zero state would stick).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("below n, a usize")
    }

    /// Fills `buf` with the next values' bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}
