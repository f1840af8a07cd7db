//! What the figures were measured on.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The machine and toolchain, as far as they can be read without privileges.
#[derive(Clone, Debug)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo (first CPU).
    pub cpu_model: String,
    /// `processor` entries of /proc/cpuinfo (or `available_parallelism`).
    pub logical_cpus: usize,
    /// What this process may run on (`available_parallelism`: affinity, cgroup quota).
    pub available_parallelism: usize,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    pub os: String,
    pub arch: String,
    /// `MemTotal` of /proc/meminfo.
    pub mem_total_kib: Option<u64>,
    /// `rustc --version`, if a rustc is on the PATH.
    pub rustc: Option<String>,
    /// The run's UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date_utc: String,
    /// /proc/loadavg's 1/5/15-minute load averages when probed: other work on the machine
    /// skews every figure, the echo baseline first.
    pub loadavg: Option<String>,
}

/// The 1/5/15-minute load averages of /proc/loadavg.
pub fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let available_parallelism = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let listed = cpuinfo
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
            .count();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| crate::procfs::field_kib(&m, "MemTotal"));
        let rustc = Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Machine {
            cpu_model,
            logical_cpus: if listed > 0 {
                listed
            } else {
                available_parallelism
            },
            available_parallelism,
            kernel,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            mem_total_kib,
            rustc,
            date_utc: utc_now(),
            loadavg: loadavg(),
        }
    }

    /// The date part of [`Machine::date_utc`].
    pub fn date(&self) -> &str {
        self.date_utc.get(..10).unwrap_or(&self.date_utc)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "logical_cpus": self.logical_cpus,
            "available_parallelism": self.available_parallelism,
            "kernel": self.kernel,
            "os": self.os,
            "arch": self.arch,
            "mem_total_kib": self.mem_total_kib,
            "rustc": self.rustc,
            "date_utc": self.date_utc,
            "loadavg_at_start": self.loadavg,
        })
    }
}

/// The workspace's git revision, `+ uncommitted changes` when the tree is dirty (None
/// without git or outside a checkout).
pub fn source_revision() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{rev} + uncommitted changes")
    } else {
        rev
    })
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day), by counting 400-year eras of 146097 days
/// from 0000-03-01 (a March-based year puts the leap day last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_798_000_000), "2026-12-23T04:26:40Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
