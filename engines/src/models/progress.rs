//! Download progress: a bar on a terminal, throttled `tracing` lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::disk::human;
use crate::job_log::{self, JobLogLevel};

/// A log line is written each time the download crosses another multiple of this many
/// percent of the file ...
pub const PROGRESS_LOG_PERCENT_STEP: u64 = 10;
/// ... or when this long passed since the last line (also the only rule when the size is
/// unknown), so a slow multi-GB download still shows it is alive without flooding the
/// shipped log queue.
pub const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The terminal bar is redrawn at most this often.
pub const PROGRESS_BAR_INTERVAL: Duration = Duration::from_millis(200);
/// The bar's width in characters.
const BAR_WIDTH: usize = 30;

/// How download progress is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// A bar on stderr.
    Bar,
    /// Info lines of the job log (`tracing` target `studio_engines`, shipped with the job's logs).
    Log,
    /// Only the start and end lines.
    Off,
}

impl ProgressMode {
    /// `Auto` decided: `Bar` on a terminal, else `Log`.
    pub fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Log,
            other => other,
        }
    }
}

/// The throttle: decides when a progress report is due. Pure (time is passed in).
#[derive(Clone, Debug)]
pub(crate) struct Throttle {
    total: Option<u64>,
    interval: Duration,
    step_percent: u64,
    last_at: Instant,
    last_step: u64,
}

impl Throttle {
    pub(crate) fn new(
        total: Option<u64>,
        done: u64,
        interval: Duration,
        step_percent: u64,
        now: Instant,
    ) -> Throttle {
        let mut t = Throttle {
            total,
            interval,
            step_percent: step_percent.max(1),
            last_at: now,
            last_step: 0,
        };
        t.last_step = t.step_of(done);
        t
    }

    fn step_of(&self, done: u64) -> u64 {
        match self.total {
            Some(total) if total > 0 => {
                (u128::from(done) * 100 / u128::from(total)) as u64 / self.step_percent
            }
            _ => 0,
        }
    }

    /// Whether a report is due at `done` bytes and time `now` (and if so, records it).
    pub(crate) fn due(&mut self, done: u64, now: Instant) -> bool {
        let step = self.step_of(done);
        if step > self.last_step || now.duration_since(self.last_at) >= self.interval {
            self.last_step = step;
            self.last_at = now;
            true
        } else {
            false
        }
    }
}

/// The progress of one file's download.
pub(crate) struct Progress {
    label: String,
    total: Option<u64>,
    resumed_at: u64,
    started: Instant,
    mode: ProgressMode,
    /// When the next log line / shipped job log line is due.
    log: Throttle,
    /// When the bar is redrawn next.
    bar: Throttle,
    drawn: bool,
}

impl Progress {
    /// Starts reporting `label` (already `done` bytes of `total`).
    pub(crate) fn start(
        label: String,
        total: Option<u64>,
        done: u64,
        mode: ProgressMode,
    ) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            total,
            resumed_at: done,
            started: now,
            mode: mode.resolve(),
            log: Throttle::new(
                total,
                done,
                PROGRESS_LOG_INTERVAL,
                PROGRESS_LOG_PERCENT_STEP,
                now,
            ),
            // The bar redraws on time alone.
            bar: Throttle::new(total, done, PROGRESS_BAR_INTERVAL, 100, now),
            drawn: false,
        }
    }

    /// `done` bytes of the file are on disk. On a terminal the bar is redrawn and the log
    /// lines only shipped (the bar shows them already); otherwise they are logged too.
    pub(crate) fn update(&mut self, done: u64) {
        if self.mode == ProgressMode::Off {
            return;
        }
        let now = Instant::now();
        if self.mode == ProgressMode::Bar && self.bar.due(done, now) {
            self.draw(done);
        }
        if self.log.due(done, now) {
            let line = format!("{}: {}", self.label, self.summary(done));
            match self.mode {
                ProgressMode::Bar => job_log::ship(JobLogLevel::Info, &line),
                _ => job_log::info(&line),
            }
        }
    }

    /// Ends the bar's line (the caller logs the outcome).
    pub(crate) fn finish(&mut self, done: u64) {
        if self.mode == ProgressMode::Bar {
            self.draw(done);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err);
            self.drawn = false;
        }
    }

    /// `45% of 27.0 MiB (12.2 MiB), 3.2 MiB/s` / `12.2 MiB, 3.2 MiB/s`.
    fn summary(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (done.saturating_sub(self.resumed_at) as f64 / secs) as u64;
        match self.total {
            Some(total) if total > 0 => format!(
                "{}% of {} ({}), {}/s",
                u128::from(done) * 100 / u128::from(total),
                human(total),
                human(done),
                human(rate)
            ),
            _ => format!("{}, {}/s", human(done), human(rate)),
        }
    }

    fn draw(&mut self, done: u64) {
        let bar = match self.total {
            Some(total) if total > 0 => {
                let filled =
                    (u128::from(done.min(total)) * BAR_WIDTH as u128 / u128::from(total)) as usize;
                format!(
                    "[{}{}] ",
                    "#".repeat(filled),
                    "-".repeat(BAR_WIDTH - filled)
                )
            }
            _ => String::new(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{} {bar}{}\x1b[K", self.label, self.summary(done));
        let _ = err.flush();
        self.drawn = true;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A failed download leaves the terminal on a fresh line for the error.
        if self.drawn {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_step_of_ten_percent() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(1000), 0, Duration::from_secs(3600), 10, t0);
        let due: Vec<u64> = (0..=1000)
            .step_by(25)
            .filter(|&done| t.due(done, t0))
            .collect();
        assert_eq!(due, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
    }

    #[test]
    fn reports_on_time_when_the_size_is_unknown_or_progress_is_slow() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Throttle::new(None, 0, PROGRESS_LOG_INTERVAL, 10, t0);
        assert!(!t.due(10, t0 + s));
        assert!(t.due(20, t0 + PROGRESS_LOG_INTERVAL));
        assert!(!t.due(30, t0 + PROGRESS_LOG_INTERVAL + s));
        let mut t = Throttle::new(Some(1 << 40), 0, PROGRESS_LOG_INTERVAL, 10, t0);
        assert!(!t.due(1, t0 + s));
        assert!(t.due(2, t0 + PROGRESS_LOG_INTERVAL));
    }

    #[test]
    fn a_resumed_download_starts_at_its_step() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(100), 55, Duration::from_secs(3600), 10, t0);
        assert!(!t.due(59, t0));
        assert!(t.due(60, t0));
    }

    #[test]
    fn modes_resolve() {
        assert_eq!(ProgressMode::Log.resolve(), ProgressMode::Log);
        assert_eq!(ProgressMode::Off.resolve(), ProgressMode::Off);
        assert_ne!(ProgressMode::Auto.resolve(), ProgressMode::Auto);
        assert_eq!(PROGRESS_LOG_PERCENT_STEP, 10);
    }
}
