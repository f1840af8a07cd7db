//! The simulation's randomness: one seed drives every draw of a run through the project's
//! one seeded generator ([`studio_core::splitmix::SplitMix64`]), so the same seed gives the
//! same run. The draws are made in a fixed order; a change that adds, drops or reorders a
//! draw changes the run (and its report hash).

use std::time::Duration;

use studio_core::splitmix::SplitMix64;

/// Mixed into the seed, so the simulation's stream for seed `s` is not the stream other
/// users of the generator get for `s` (and seed 0 does not start from state 0).
const SEED_MIX: u64 = 0x5851_f42d_4c95_7f2d;

/// The simulation's random source.
#[derive(Clone, Debug)]
pub struct Rng(SplitMix64);

impl Rng {
    /// The stream of the run with this seed.
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed ^ SEED_MIX))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (no modulo bias to speak of).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p` (never when `p <= 0`; a draw is made either way, so the
    /// stream does not depend on `p`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.next_f64() <= p && p > 0.0
    }

    /// Uniform duration in `[lo, hi]` with microsecond resolution.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (a, b) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(a + self.below(b - a + 1))
    }

    /// Exponentially distributed with the given mean (the gaps of a Poisson process).
    pub fn exp(&mut self, mean: Duration) -> Duration {
        let u = ((self.next_u64() >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
        Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let d = r.between(Duration::from_millis(1), Duration::from_millis(40));
            assert!((Duration::from_millis(1)..=Duration::from_millis(40)).contains(&d));
            assert!(!r.chance(0.0));
            assert!(r.chance(1.0));
        }
    }

    #[test]
    fn the_stream_is_the_cores_generator_on_the_mixed_seed() {
        let mut ours = Rng::new(42);
        let mut core = SplitMix64::new(42 ^ SEED_MIX);
        for _ in 0..100 {
            assert_eq!(ours.next_u64(), core.next_u64());
        }
    }
}
