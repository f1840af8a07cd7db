//! The timer table: one slot per timer, the machine's deadline is the earliest
//! (quinn-proto's idea). The list of timers is written once, in [`timers!`]: the enum, its
//! [`Timer::ALL`] and the table's size all come from it, so adding a timer is one line
//! there plus its handler in [`Worker::on_timer`].

use crate::time::Mono;
use crate::wire::{close_code, close_reason};

use super::state::{JobStage, Link, Slot, Stop};
use super::{Command, Worker};

/// Defines [`Timer`] and [`Timer::ALL`] from one list.
macro_rules! timers {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The machine's timers. The declaration order breaks ties between timers due at
        /// the same instant.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub(super) enum Timer {
            $($(#[$doc])* $name,)*
        }

        impl Timer {
            /// Every timer, in declaration order.
            pub(super) const ALL: &'static [Timer] = &[$(Timer::$name,)*];
        }
    };
}

timers! {
    /// The next heartbeat of the live session.
    Heartbeat,
    /// The next log batch (armed only while entries wait).
    LogFlush,
    /// No frame from the studio for `read_idle`: the connection is dead.
    ReadIdle,
    /// The upgrade did not finish within `connect_timeout`.
    ConnectTimeout,
    /// The end of the reconnect backoff.
    Reconnect,
    /// The next registration request or poll.
    Registration,
    /// The next auto-update check.
    UpdateCheck,
    /// The end of the pause before an upload retry.
    UploadRetry,
    /// The end of the shutdown grace for the in-flight job.
    ShutdownGrace,
    /// The longest an offer parked behind our own upload waits (`parked_offer`).
    ParkedOffer,
    /// The running job's deadline (`job_deadlines`): the watchdog.
    JobDeadline,
}

/// How many timers there are.
const TIMER_COUNT: usize = Timer::ALL.len();

/// One deadline slot per timer.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Timers([Option<Mono>; TIMER_COUNT]);

impl Default for Timers {
    fn default() -> Self {
        Timers([None; TIMER_COUNT])
    }
}

impl Timers {
    pub(super) fn set(&mut self, t: Timer, at: Mono) {
        self.0[t as usize] = Some(at);
    }

    pub(super) fn clear(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }

    pub(super) fn get(&self, t: Timer) -> Option<Mono> {
        self.0[t as usize]
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Mono> {
        self.0.iter().flatten().min().copied()
    }

    /// The earliest expired timer (ties: declaration order), cleared.
    fn pop_expired(&mut self, now: Mono) -> Option<Timer> {
        let t = Timer::ALL
            .iter()
            .copied()
            .filter(|t| self.get(*t).is_some_and(|at| at <= now))
            .min_by_key(|t| (self.get(*t), *t))?;
        self.clear(t);
        Some(t)
    }
}

impl Worker {
    pub(super) fn run_timers(&mut self) {
        // Each expired timer runs once; a handler may re-arm its own timer for a later
        // instant, never for `now` or earlier, so this loop ends.
        let mut guard = 0;
        while let Some(t) = self.timers.pop_expired(self.now.mono) {
            guard += 1;
            assert!(guard <= 64, "timer storm: {t:?} re-armed at or before now");
            if self.stop == Stop::Exited {
                return;
            }
            self.on_timer(t);
        }
    }

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Heartbeat => {
                if matches!(self.link, Link::Live { .. }) {
                    self.send_heartbeat();
                }
            }
            Timer::LogFlush => {
                if matches!(self.link, Link::Live { .. }) {
                    // Entries logged from here on, or left over by a full batch, re-arm the
                    // timer (`arm_log_flush`).
                    self.flush_logs();
                }
            }
            Timer::ReadIdle => {
                let secs = self.cfg.timings.read_idle.as_secs();
                self.drop_session(
                    close_reason::SESSION_ENDED,
                    &format!("no frames from server for {secs}s; treating connection as dead"),
                );
            }
            Timer::ConnectTimeout => {
                if let Link::Connecting { conn } = self.link {
                    self.emit(Command::Close {
                        conn,
                        code: close_code::NORMAL,
                        reason: close_reason::CONNECT_TIMEOUT.into(),
                    });
                    self.link = Link::Down;
                    let secs = self.cfg.timings.connect_timeout.as_secs();
                    self.schedule_reconnect(&format!("connect timed out after {secs}s"));
                }
            }
            Timer::Reconnect => {
                if self.link == Link::Backoff {
                    self.connect();
                }
            }
            Timer::Registration => self.on_registration_timer(),
            Timer::UpdateCheck => self.on_update_timer(),
            Timer::UploadRetry => {
                if let Slot::Job(job) = &self.slot {
                    if let JobStage::UploadBackoff { ext, attempt } = job.stage.clone() {
                        self.start_upload(ext, attempt);
                    }
                }
            }
            Timer::ShutdownGrace => self.on_shutdown_grace_expired(),
            Timer::ParkedOffer => self.decide_parked(),
            Timer::JobDeadline => self.on_job_deadline(),
        }
    }
}
