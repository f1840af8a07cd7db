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

/// One deadline slot per timer: the deadlines side by side and a bit per armed timer, 96
/// bytes where an `Option<Mono>` per timer took 176 (two cache lines instead of three at
/// the head of the machine's state, read by every input).
#[derive(Clone, PartialEq)]
pub(super) struct Timers {
    /// Each timer's deadline; `Mono::ZERO` while it is not armed (so that equal tables
    /// compare equal).
    at: [Mono; TIMER_COUNT],
    /// Bit `t as usize` is set while timer `t` is armed.
    armed: u16,
}

const _: () = assert!(TIMER_COUNT <= u16::BITS as usize, "a bit per timer");

impl Default for Timers {
    fn default() -> Self {
        Timers {
            at: [Mono::ZERO; TIMER_COUNT],
            armed: 0,
        }
    }
}

impl std::fmt::Debug for Timers {
    /// As the `[Option<Mono>; N]` table it was printed as.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots: Vec<Option<Mono>> = Timer::ALL.iter().map(|&t| self.get(t)).collect();
        f.debug_tuple("Timers").field(&slots).finish()
    }
}

impl Timers {
    pub(super) fn set(&mut self, t: Timer, at: Mono) {
        self.at[t as usize] = at;
        self.armed |= 1 << t as usize;
    }

    pub(super) fn clear(&mut self, t: Timer) {
        self.at[t as usize] = Mono::ZERO;
        self.armed &= !(1 << t as usize);
    }

    pub(super) fn get(&self, t: Timer) -> Option<Mono> {
        (self.armed & (1 << t as usize) != 0).then_some(self.at[t as usize])
    }

    /// The armed timers' slots, in declaration order.
    fn armed(&self) -> impl Iterator<Item = usize> {
        let armed = self.armed;
        (0..TIMER_COUNT).filter(move |i| armed & (1 << i) != 0)
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Mono> {
        self.armed().map(|i| self.at[i]).min()
    }

    /// The earliest expired timer (ties: declaration order), cleared. One pass over the
    /// slots: it runs twice per input of every worker, and the iterator chain it replaced
    /// (a `min_by_key` over `(deadline, timer)` pairs) compiled to a loop of partial stack
    /// stores and reloads that was ~3 % of a large simulation.
    fn pop_expired(&mut self, now: Mono) -> Option<Timer> {
        let mut earliest: Option<(Mono, usize)> = None;
        for i in self.armed() {
            let at = self.at[i];
            // Strictly earlier only: of equal deadlines the first slot (declaration order)
            // stays.
            if at <= now && earliest.is_none_or(|(e, _)| at < e) {
                earliest = Some((at, i));
            }
        }
        let (_, i) = earliest?;
        let t = Timer::ALL[i];
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> Mono {
        Mono::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn expired_timers_pop_earliest_first_ties_in_declaration_order() {
        let mut t = Timers::default();
        t.set(Timer::JobDeadline, at(5));
        t.set(Timer::ReadIdle, at(7));
        t.set(Timer::Heartbeat, at(7));
        t.set(Timer::LogFlush, at(9));
        t.set(Timer::Reconnect, at(20));
        let mut popped = Vec::new();
        while let Some(timer) = t.pop_expired(at(10)) {
            popped.push(timer);
        }
        assert_eq!(
            popped,
            [
                Timer::JobDeadline,
                Timer::Heartbeat,
                Timer::ReadIdle,
                Timer::LogFlush
            ]
        );
        // Each popped timer is cleared; the one not yet due stays.
        assert!(Timer::ALL[..]
            .iter()
            .all(|&x| t.get(x).is_none() || x == Timer::Reconnect));
        assert_eq!(t.next(), Some(at(20)));
        assert_eq!(t.pop_expired(at(19)), None);
        assert_eq!(t.pop_expired(at(20)), Some(Timer::Reconnect));
        assert_eq!(t.next(), None);
        // Disarmed, the table is the empty one again (equality sees armed timers only).
        assert_eq!(t, Timers::default());
        assert_eq!(
            format!("{t:?}"),
            format!("Timers({:?})", [None::<Mono>; TIMER_COUNT])
        );
    }
}
