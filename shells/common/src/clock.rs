//! The process clocks: the only place the shells read time.
//!
//! [`Clock`] gives the core's time values (a monotonic [`Mono`] and the wall clock's
//! [`WallMs`]); [`wait_duration`] turns the core's deadline into a sleep, rounded **up** to
//! whole milliseconds so a non-zero wait never becomes a zero-timeout busy loop.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use studio_core::worker::Now;
use studio_core::{Mono, WallMs};

/// The process clocks, as the core's time values: [`Mono`] = microseconds since the clock
/// was created (create one at process start), [`WallMs`] = milliseconds since the Unix
/// epoch. The shells read time only through this type.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose `Mono` origin is now.
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// The monotonic time now.
    pub fn mono(&self) -> Mono {
        self.mono_at(Instant::now())
    }

    /// `at` as a `Mono` (instants before the origin map to the origin).
    pub fn mono_at(&self, at: Instant) -> Mono {
        let micros = at.saturating_duration_since(self.origin).as_micros();
        Mono(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The `Instant` of a `Mono` (for runtimes that sleep until an instant).
    pub fn instant_at(&self, mono: Mono) -> Instant {
        let offset = Duration::from_micros(mono.0);
        self.origin
            .checked_add(offset)
            .unwrap_or_else(|| self.origin + Duration::from_secs(86_400 * 365 * 100))
    }

    /// The wall clock now (0 if the system clock is before 1970).
    pub fn wall(&self) -> WallMs {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        WallMs(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// Both clocks now.
    pub fn now(&self) -> Now {
        Now::new(self.mono(), self.wall())
    }
}

/// How long to sleep until `until`, seen at `now`: `None` when there is no deadline
/// (sleep until IO), zero when it has passed, otherwise the remaining time rounded **up**
/// to whole milliseconds (1 µs left -> 1 ms), so a pending deadline never turns into a
/// zero-timeout poll.
///
/// ```
/// use std::time::Duration;
/// use studio_core::Mono;
/// use studio_shell::wait_duration;
///
/// assert_eq!(wait_duration(None, Mono(0)), None);
/// assert_eq!(wait_duration(Some(Mono(1)), Mono(0)), Some(Duration::from_millis(1)));
/// assert_eq!(wait_duration(Some(Mono(2_500)), Mono(0)), Some(Duration::from_millis(3)));
/// assert_eq!(wait_duration(Some(Mono(5)), Mono(9)), Some(Duration::ZERO));
/// ```
pub fn wait_duration(until: Option<Mono>, now: Mono) -> Option<Duration> {
    let until = until?;
    let micros = until.0.saturating_sub(now.0);
    Some(Duration::from_millis(micros.div_ceil(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_duration_rounds_up_to_whole_milliseconds() {
        let now = Mono(1_000_000);
        assert_eq!(wait_duration(None, now), None);
        assert_eq!(
            wait_duration(Some(Mono(999_000)), now),
            Some(Duration::ZERO)
        );
        assert_eq!(wait_duration(Some(now), now), Some(Duration::ZERO));
        assert_eq!(
            wait_duration(Some(Mono(1_000_001)), now),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            wait_duration(Some(Mono(1_000_999)), now),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            wait_duration(Some(Mono(1_001_000)), now),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            wait_duration(Some(Mono(1_001_001)), now),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            wait_duration(Some(Mono(u64::MAX)), Mono(0)),
            Some(Duration::from_millis(u64::MAX.div_ceil(1000)))
        );
    }

    #[test]
    fn clock_maps_instants_and_moves_forward() {
        let clock = Clock::new();
        let a = clock.mono();
        let b = clock.mono();
        assert!(b >= a);
        let at = Instant::now() + Duration::from_millis(1500);
        let m = clock.mono_at(at);
        let back = clock.instant_at(m);
        let diff = if back > at { back - at } else { at - back };
        assert!(diff < Duration::from_micros(2), "{diff:?}");
        assert_eq!(clock.mono_at(clock.origin - Duration::from_millis(1)).0, 0);
        // 2020-01-01 < wall < 2200-01-01
        let w = clock.wall().0;
        assert!(w > 1_577_836_800_000 && w < 7_258_118_400_000, "{w}");
        let now = clock.now();
        assert!(now.mono >= b);
    }
}
