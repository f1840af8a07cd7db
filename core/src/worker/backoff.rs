//! Reconnect backoff with seeded jitter.
//!
//! The nominal delay of attempt `n` (1-based) is `base * 2^(n-1)` capped at `cap`
//! (1, 2, 4, 8, 16, 30, 30 ... s with the defaults, as the reference worker). We add
//! **equal jitter**: the actual delay is uniform in `[nominal/2, nominal]`, drawn from a
//! splitmix64 stream seeded by the shell. After a studio restart, a fleet that lost its
//! sessions at the same instant therefore spreads its first reconnects over half a second,
//! its sixth and later ones over 15 s, instead of arriving as one thundering herd; no
//! worker ever waits longer than the reference schedule.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Backoff schedule with a deterministic jitter stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    state: u64,
}

impl Backoff {
    /// A schedule starting at `base`, capped at `cap`, jittered from `seed`.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            state: seed,
        }
    }

    /// The un-jittered delay of attempt `attempt` (1-based; 0 is treated as 1).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        let d = self.base.saturating_mul(1u32 << shift);
        d.min(self.cap)
    }

    /// The jittered delay of attempt `attempt`: uniform in `[nominal/2, nominal]`.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let half = nominal / 2;
        let span = u64::try_from((nominal - half).as_micros()).unwrap_or(u64::MAX);
        let r = self.next_u64();
        let extra = if span == 0 { 0 } else { r % (span + 1) };
        half + Duration::from_micros(extra)
    }

    fn next_u64(&mut self) -> u64 {
        crate::splitmix::splitmix64_next(&mut self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(seed: u64) -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30), seed)
    }

    #[test]
    fn nominal_schedule_doubles_to_the_cap() {
        let s: Vec<u64> = (1..=8).map(|n| b(0).nominal(n).as_secs()).collect();
        assert_eq!(s, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b(0).nominal(0), Duration::from_secs(1));
        assert_eq!(b(0).nominal(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_half_to_full_nominal() {
        let mut x = b(42);
        for n in 1..200 {
            let d = x.delay(n % 9 + 1);
            let nominal = x.nominal(n % 9 + 1);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
        }
    }

    #[test]
    fn same_seed_same_delays_different_seed_spreads() {
        let a: Vec<_> = (1..10).map(|n| b(7).delay(n)).collect();
        let c: Vec<_> = (1..10).map(|n| b(7).delay(n)).collect();
        assert_eq!(a, c);
        // 100 workers reconnecting after the same outage spread over the window.
        let firsts: std::collections::BTreeSet<_> = (0..100).map(|s| b(s).delay(6)).collect();
        assert!(
            firsts.len() > 90,
            "jitter does not spread: {}",
            firsts.len()
        );
        let min = firsts.iter().next().unwrap();
        let max = firsts.iter().next_back().unwrap();
        assert!(*max - *min > Duration::from_secs(10));
    }
}
