//! Reading another process's memory and per-thread scheduler counters from /proc (Linux).

use std::collections::BTreeMap;
use std::fs;
use std::io;

use serde_json::{json, Value};

/// A `Key:   123 kB` line of a /proc status-like file, in KiB.
pub fn field_kib(text: &str, key: &str) -> Option<u64> {
    field(text, key)?.split_whitespace().next()?.parse().ok()
}

/// The value of a `Key:\tvalue` line.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// Memory of a process (/proc/<pid>/status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident set so far.
    pub hwm_kib: u64,
    /// `RssAnon` (heap, stacks) and `RssFile` (the mapped binary and libraries).
    pub rss_anon_kib: Option<u64>,
    pub rss_file_kib: Option<u64>,
    /// `Threads`.
    pub threads: u64,
}

impl Memory {
    pub fn read(pid: u32) -> io::Result<Memory> {
        let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let need = |k: &str| {
            field_kib(&s, k)
                .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status has no {k}")))
        };
        Ok(Memory {
            rss_kib: need("VmRSS")?,
            hwm_kib: need("VmHWM")?,
            rss_anon_kib: field_kib(&s, "RssAnon"),
            rss_file_kib: field_kib(&s, "RssFile"),
            threads: field(&s, "Threads")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "vm_rss_kib": self.rss_kib,
            "vm_hwm_kib": self.hwm_kib,
            "rss_anon_kib": self.rss_anon_kib,
            "rss_file_kib": self.rss_file_kib,
            "threads": self.threads,
        })
    }
}

/// One thread's counters (/proc/<pid>/task/<tid>/{status,comm,schedstat}).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadCounters {
    pub tid: u32,
    /// `comm` (at most 15 bytes).
    pub name: String,
    /// Sleeps it went into itself (blocking in epoll_wait, read, futex, ...).
    pub voluntary: u64,
    /// Preemptions.
    pub nonvoluntary: u64,
    /// CPU time on record (schedstat's first field), when the kernel has schedstats.
    pub cpu_ns: Option<u64>,
}

/// Every thread of `pid` right now, by tid. Threads that exit while being read are
/// skipped.
pub fn threads(pid: u32) -> io::Result<BTreeMap<u32, ThreadCounters>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(status) = fs::read_to_string(dir.join("status")) else {
            continue; // exited meanwhile
        };
        let count = |k: &str| field(&status, k).and_then(|v| v.parse::<u64>().ok());
        let (Some(voluntary), Some(nonvoluntary)) = (
            count("voluntary_ctxt_switches"),
            count("nonvoluntary_ctxt_switches"),
        ) else {
            continue;
        };
        let name = fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu_ns = fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        out.insert(
            tid,
            ThreadCounters {
                tid,
                name,
                voluntary,
                nonvoluntary,
                cpu_ns,
            },
        );
    }
    Ok(out)
}

/// What one thread did between two samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadDelta {
    pub tid: u32,
    pub name: String,
    pub voluntary: u64,
    pub nonvoluntary: u64,
    pub cpu_ns: Option<u64>,
    /// Present in the first sample (false: born during the window, counted from 0).
    pub existed_at_start: bool,
}

impl ThreadDelta {
    pub fn switches(&self) -> u64 {
        self.voluntary + self.nonvoluntary
    }
}

/// Per-thread differences of two samples; threads gone by `after` are returned apart (their
/// counts in the window are lost).
pub fn delta(
    before: &BTreeMap<u32, ThreadCounters>,
    after: &BTreeMap<u32, ThreadCounters>,
) -> (Vec<ThreadDelta>, Vec<ThreadCounters>) {
    let mut rows = Vec::new();
    for (tid, a) in after {
        let b = before.get(tid);
        rows.push(ThreadDelta {
            tid: *tid,
            name: a.name.clone(),
            voluntary: a.voluntary - b.map_or(0, |b| b.voluntary.min(a.voluntary)),
            nonvoluntary: a.nonvoluntary - b.map_or(0, |b| b.nonvoluntary.min(a.nonvoluntary)),
            cpu_ns: match (a.cpu_ns, b.map(|b| b.cpu_ns)) {
                (Some(x), Some(Some(y))) => Some(x.saturating_sub(y)),
                (Some(x), None) => Some(x),
                _ => None,
            },
            existed_at_start: b.is_some(),
        });
    }
    let gone = before
        .iter()
        .filter(|(tid, _)| !after.contains_key(tid))
        .map(|(_, c)| c.clone())
        .collect();
    (rows, gone)
}

/// Whole-process counters of /proc/<pid>/stat: they include threads that already exited
/// (engine and HTTP threads live for one job).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStat {
    /// Minor page faults.
    pub minflt: u64,
    /// utime + stime, in clock ticks (see [`clock_ticks_per_sec`]).
    pub cpu_ticks: u64,
}

impl ProcessStat {
    pub fn read(pid: u32) -> io::Result<ProcessStat> {
        let s = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name is in parentheses and may contain spaces: split after the last ')'.
        let rest = s
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); minflt is field 10, utime 14, stime 15.
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        match (num(10), num(14), num(15)) {
            (Some(minflt), Some(u), Some(s)) => Ok(ProcessStat {
                minflt,
                cpu_ticks: u + s,
            }),
            _ => Err(io::Error::other("malformed /proc/<pid>/stat")),
        }
    }
}

/// The machine's CPU time (the `cpu` line of /proc/stat), in clock ticks summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// Everything but idle and iowait.
    pub busy: u64,
    pub total: u64,
}

impl MachineCpu {
    pub fn read() -> io::Result<MachineCpu> {
        let s = fs::read_to_string("/proc/stat")?;
        let line = s
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| io::Error::other("/proc/stat has no cpu line"))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Ok(MachineCpu {
            busy: total.saturating_sub(idle),
            total,
        })
    }

    /// The busy share of all CPUs since `earlier` (0..=1; None when no tick passed).
    pub fn busy_since(&self, earlier: &MachineCpu) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        (total > 0).then(|| self.busy.saturating_sub(earlier.busy) as f64 / total as f64)
    }
}

/// Machine-wide CPU use with this process's and the worker's own share, to tell what
/// other processes took (they skew every latency on a small machine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadSample {
    machine: MachineCpu,
    /// utime + stime of this process (the bench, its studio-local thread, the tap).
    own_ticks: u64,
    /// utime + stime of the worker.
    worker_ticks: u64,
}

/// Shares of all CPUs' time between two [`LoadSample`]s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadShare {
    /// Busy, whoever it was.
    pub machine: f64,
    /// Busy, neither this process nor the worker.
    pub others: f64,
}

impl LoadSample {
    pub fn read(worker: u32) -> io::Result<LoadSample> {
        Ok(LoadSample {
            machine: MachineCpu::read()?,
            own_ticks: ProcessStat::read(std::process::id())?.cpu_ticks,
            worker_ticks: ProcessStat::read(worker)?.cpu_ticks,
        })
    }

    pub fn share_since(&self, earlier: &LoadSample) -> Option<LoadShare> {
        let total = self.machine.total.checked_sub(earlier.machine.total)?;
        if total == 0 {
            return None;
        }
        let busy = self.machine.busy.saturating_sub(earlier.machine.busy);
        let ours = self.own_ticks.saturating_sub(earlier.own_ticks)
            + self.worker_ticks.saturating_sub(earlier.worker_ticks);
        Some(LoadShare {
            machine: busy as f64 / total as f64,
            others: busy.saturating_sub(ours) as f64 / total as f64,
        })
    }
}

impl LoadShare {
    pub fn to_json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({"machine_busy_share": r(self.machine), "other_processes_share": r(self.others)})
    }
}

/// `sysconf(_SC_CLK_TCK)` (100 almost everywhere).
pub fn clock_ticks_per_sec() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            return t as u64;
        }
    }
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let m = Memory::read(pid).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib && m.threads >= 1);
        let t = threads(pid).unwrap();
        assert!(t.contains_key(&pid));
        let (rows, gone) = delta(&t, &t);
        assert!(gone.is_empty());
        assert!(rows.iter().all(|r| r.existed_at_start));
        ProcessStat::read(pid).unwrap();
        let a = MachineCpu::read().unwrap();
        assert!(a.total >= a.busy && a.total > 0);
        let l0 = LoadSample::read(pid).unwrap();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        std::thread::sleep(std::time::Duration::from_millis(30));
        if let Some(s) = LoadSample::read(pid).unwrap().share_since(&l0) {
            assert!((0.0..=1.0).contains(&s.machine) && (0.0..=s.machine).contains(&s.others));
        }
        assert!(clock_ticks_per_sec() > 0);
    }

    #[test]
    fn parses_fields() {
        let s = "Name:\tx\nVmRSS:\t  1234 kB\nThreads:\t3\n";
        assert_eq!(field_kib(s, "VmRSS"), Some(1234));
        assert_eq!(field(s, "Threads"), Some("3"));
        assert_eq!(field_kib(s, "VmHWM"), None);
    }
}
