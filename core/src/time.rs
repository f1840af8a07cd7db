//! Time as values: the core never reads a clock.
//!
//! [`Mono`] is a monotonic instant in microseconds from an arbitrary origin chosen by the
//! shell (or the simulation). [`WallMs`] is wall-clock time in milliseconds since the Unix
//! epoch, passed beside it only where a frame needs a timestamp (log `ts`).

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
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
