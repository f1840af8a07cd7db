//! Auto-update: when to check the feed, when to install, what happens meanwhile.
//!
//! * With `auto_update_enabled`, the first check goes out right after the process's first
//!   `welcome` (a later session's welcome does not check again), then one every
//!   `update_interval`. A due check is skipped while a job holds the slot (checked again at
//!   the next interval), while one is out, and while stopping.
//! * The operator may ask for a check at any time (`Input::CheckUpdateNow`), even with
//!   auto-update off; with auto-update off what it finds is reported, never installed.
//! * A newer release installs only while the slot is free: found during a job (a manual
//!   check), it waits for the slot; a job in flight is never interrupted. While it installs
//!   the slot is `Updating`, so offers are rejected `busy`.
//! * Installed: the session is closed and the machine exits with `ExitCode::Restart`; the
//!   shell re-executes the new binary. Failed: the slot is free again, the reason logged,
//!   and the same version is not retried until a later check finds it again.
//! * Every answer is kept as the last check ([`UpdateCheck`], in the status snapshot).

use crate::wire::close_reason;

use super::state::Link;
use super::state::Slot;
use super::state::Stop;
use super::timers::Timer;
use super::{Command, ExitCode, LogCategory, LogLevel, UpdateCheck, UpdateOutcome, Worker};

impl Worker {
    /// After a `welcome`: the first of the process starts the update schedule.
    pub(super) fn on_welcomed_for_update(&mut self) {
        if self.stats.sessions != 1 || !self.cfg.auto_update_enabled {
            return;
        }
        self.arm_update_timer();
        self.start_update_check();
    }

    fn arm_update_timer(&mut self) {
        let at = self.now.mono + self.cfg.timings.update_interval;
        self.timers.set(Timer::UpdateCheck, at);
    }

    /// Sends `CheckUpdate` unless one is out, an install is under way or the worker stops.
    fn start_update_check(&mut self) -> bool {
        if self.update_check_in_flight
            || matches!(self.slot, Slot::Updating { .. })
            || self.stop != Stop::Running
        {
            return false;
        }
        self.update_check_in_flight = true;
        self.emit(Command::CheckUpdate);
        true
    }

    pub(super) fn on_update_timer(&mut self) {
        self.arm_update_timer();
        if self.pending_update.is_some() || self.slot != Slot::Free {
            // Checked again at the next interval; never during a job.
            return;
        }
        self.start_update_check();
    }

    pub(super) fn on_check_update_now(&mut self) {
        if !self.started {
            return;
        }
        if self.start_update_check() {
            self.log(
                LogLevel::Info,
                LogCategory::AutoUpdate,
                "checking for updates now (operator)".into(),
                None,
            );
        }
    }

    pub(super) fn on_update_checked(&mut self, result: Result<Option<String>, String>) {
        if !self.update_check_in_flight {
            return;
        }
        self.update_check_in_flight = false;
        let current = self.cfg.host.agent_version.clone();
        let outcome = match &result {
            Ok(None) => UpdateOutcome::UpToDate,
            Ok(Some(v)) => UpdateOutcome::Available(v.clone()),
            Err(e) => UpdateOutcome::Failed(e.clone()),
        };
        self.last_update_check = Some(UpdateCheck {
            seq: self.last_update_check.as_ref().map_or(0, |c| c.seq) + 1,
            at: self.now.wall,
            current: current.clone(),
            outcome,
        });
        match result {
            Ok(None) => self.log(
                LogLevel::Info,
                LogCategory::AutoUpdate,
                format!("up to date: {current}"),
                None,
            ),
            Ok(Some(v)) if !self.cfg.auto_update_enabled => self.log(
                LogLevel::Info,
                LogCategory::AutoUpdate,
                format!("update available: {current} -> {v} (auto-update is off: not installing)"),
                None,
            ),
            Ok(Some(v)) => {
                let wait = if self.slot == Slot::Free {
                    ""
                } else {
                    " (installs when the current job is done)"
                };
                self.log(
                    LogLevel::Info,
                    LogCategory::AutoUpdate,
                    format!("update available: {current} -> {v}{wait}"),
                    None,
                );
                self.pending_update = Some(v);
                self.maybe_apply_update();
            }
            Err(e) => self.log(
                LogLevel::Warn,
                LogCategory::AutoUpdate,
                format!("update check failed: {e}"),
                None,
            ),
        }
    }

    pub(super) fn maybe_apply_update(&mut self) {
        if self.slot != Slot::Free || self.stop != Stop::Running {
            return;
        }
        let Some(version) = self.pending_update.take() else {
            return;
        };
        self.slot = Slot::Updating {
            version: version.clone(),
        };
        self.log(
            LogLevel::Info,
            LogCategory::AutoUpdate,
            format!("installing {version}; offers are rejected busy meanwhile"),
            None,
        );
        self.emit(Command::ApplyUpdate { version });
    }

    pub(super) fn on_update_applied(&mut self, result: Result<(), String>) {
        let Slot::Updating { version } = self.slot.clone() else {
            return;
        };
        match result {
            Ok(()) => {
                self.log(
                    LogLevel::Info,
                    LogCategory::AutoUpdate,
                    format!("installed {version}; restarting"),
                    None,
                );
                if matches!(self.link, Link::Live { .. }) {
                    self.flush_logs();
                }
                self.close_current(close_reason::SESSION_ENDED);
                self.slot = Slot::Free;
                self.exit(ExitCode::Restart, format!("restarting into {version}"));
            }
            Err(e) => {
                self.slot = Slot::Free;
                self.log(
                    LogLevel::Error,
                    LogCategory::AutoUpdate,
                    format!(
                        "installing {version} failed: {e}; staying on {}",
                        self.cfg.host.agent_version
                    ),
                    None,
                );
            }
        }
    }
}
