//! What the VMM's fuzz tests share: stable Rust, no fuzzing engine, so a
//! seeded xorshift drives the inputs (a failure names its round and
//! replays), and `EC2LAB_FUZZ_ITERATIONS` sets how many each test feeds:
//! 20,000 in a normal run; `EC2LAB_FUZZ_ITERATIONS=1000000 cargo test
//! --release -p ec2lab-vmm fuzz` for the long run.

/// Inputs per fuzz test: `EC2LAB_FUZZ_ITERATIONS`, or 20,000.
pub fn iterations() -> u32 {
    std::env::var("EC2LAB_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// xorshift64: reproducible from its seed.
pub struct Rand(u64);

impl Rand {
    /// A generator from a seed (made odd, so never zero).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
