//! Time as values: the core never reads a clock.
//!
//! [`Mono`] is a monotonic instant in microseconds from an arbitrary origin chosen by the
//! shell (or the simulation). [`WallMs`] is wall-clock time in milliseconds since the Unix
//! epoch, passed beside it only where a frame needs a timestamp (a log entry's `ts`, the
//! studio's `serverTime`). Both machines take the two together as [`Now`], and both apply
//! the same rule to it ([`Now::after`]): the monotonic clock never goes backwards (a driver
//! that says otherwise gets a usage error and nothing changes), the wall clock may (NTP) and
//! is held monotone.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The time of an input to either machine: monotonic for every decision, wall clock for
/// timestamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Now {
    pub mono: Mono,
    pub wall: WallMs,
}

impl Now {
    /// A `Now` from both clocks.
    pub fn new(mono: Mono, wall: WallMs) -> Now {
        Now { mono, wall }
    }

    /// The time a machine takes for an input at `self` when its previous input came at
    /// `last`: an error when the monotonic clock went backwards; otherwise `self` with the
    /// wall clock held at or after `last`'s (it may step back, NTP; timestamps stay ordered).
    pub fn after(self, last: Now) -> Result<Now, TimeWentBackwards> {
        if self.mono < last.mono {
            return Err(TimeWentBackwards {
                last: last.mono,
                now: self.mono,
            });
        }
        Ok(Now {
            mono: self.mono,
            wall: WallMs(self.wall.0.max(last.wall.0)),
        })
    }
}

/// A driver passed a monotonic time earlier than the previous input's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWentBackwards {
    pub last: Mono,
    pub now: Mono,
}

impl fmt::Display for TimeWentBackwards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "time went backwards: {} < {}", self.now, self.last)
    }
}

impl std::error::Error for TimeWentBackwards {}

/// A monotonic instant, in microseconds from the driver's origin.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Mono(pub u64);

impl Mono {
    /// The origin.
    pub const ZERO: Mono = Mono(0);

    /// An instant `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Mono {
        Mono(secs * 1_000_000)
    }

    /// An instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Mono {
        Mono(ms * 1_000)
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Mono) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(micros(d)))
    }
}

impl Sub<Duration> for Mono {
    type Output = Mono;
    fn sub(self, d: Duration) -> Mono {
        Mono(self.0.saturating_sub(micros(d)))
    }
}

impl fmt::Display for Mono {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (UTC).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct WallMs(pub u64);

impl WallMs {
    /// RFC 3339 UTC with milliseconds and `Z` (`2026-05-25T12:00:00.000Z`), the format of
    /// a log entry's `ts`.
    pub fn to_rfc3339(self) -> String {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let (sod, days) = (secs % 86_400, secs / 86_400);
        let (h, m, s) = (sod / 3600, (sod % 3600) / 60, sod % 60);
        let (y, mo, d) = civil_from_days(days as i64);
        if y > 9999 {
            return format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z");
        }
        // Performance only (two per job, on the loop thread): the same text without the
        // formatting machinery.
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, y as u64);
        put(5, 2, mo.into());
        put(8, 2, d.into());
        put(11, 2, h);
        put(14, 2, m);
        put(17, 2, s);
        put(20, 3, ms);
        String::from_utf8(out.to_vec()).expect("ASCII digits and separators")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// well-known algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(WallMs(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        // 2026-05-25T12:00:00.000Z
        assert_eq!(
            WallMs(1_779_710_400_000).to_rfc3339(),
            "2026-05-25T12:00:00.000Z"
        );
        assert_eq!(
            WallMs(951_782_400_123).to_rfc3339(),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            WallMs(253_402_300_799_999).to_rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
        // Past year 9999 the year takes the digits it needs.
        assert_eq!(
            WallMs(253_402_300_800_000).to_rfc3339(),
            "10000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn rfc3339_matches_the_formatted_fields() {
        let mut ms = 7u64;
        while ms < 300_000_000_000_000 {
            let secs = ms / 1000;
            let (sod, days) = (secs % 86_400, secs / 86_400);
            let (y, mo, d) = civil_from_days(days as i64);
            let expected = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3600,
                (sod % 3600) / 60,
                sod % 60,
                ms % 1000
            );
            assert_eq!(WallMs(ms).to_rfc3339(), expected);
            ms = ms * 3 + 1;
        }
    }

    #[test]
    fn mono_time_may_not_go_back_wall_time_is_held() {
        let last = Now::new(Mono(10), WallMs(500));
        assert_eq!(
            Now::new(Mono(9), WallMs(600)).after(last),
            Err(TimeWentBackwards {
                last: Mono(10),
                now: Mono(9)
            })
        );
        assert_eq!(
            Now::new(Mono(10), WallMs(400)).after(last),
            Ok(Now::new(Mono(10), WallMs(500)))
        );
        assert_eq!(
            Now::new(Mono(11), WallMs(700)).after(last),
            Ok(Now::new(Mono(11), WallMs(700)))
        );
    }

    #[test]
    fn mono_arithmetic_saturates() {
        let t = Mono::from_secs(1);
        assert_eq!(t + Duration::from_millis(500), Mono(1_500_000));
        assert_eq!(Mono::ZERO - Duration::from_secs(1), Mono::ZERO);
        assert_eq!(Mono(5).saturating_since(Mono(9)), Duration::ZERO);
        assert_eq!(Mono(u64::MAX) + Duration::from_secs(1), Mono(u64::MAX));
    }
}
