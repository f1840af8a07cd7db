//! Auto-update: check the feed at an interval, install only while the slot is free, exit
//! to restart into the new version.

use crate::wire::close_reason;

use super::state::Link;
use super::state::Slot;
use super::state::Stop;
use super::timers::Timer;
use super::{Command, ExitCode, LogCategory, LogLevel, Worker};

impl Worker {
    pub(super) fn on_update_timer(&mut self) {
        let at = self.now.mono + self.cfg.timings.update_interval;
        self.timers.set(Timer::UpdateCheck, at);
        if self.update_check_in_flight
            || self.pending_update.is_some()
            || self.stop != Stop::Running
        {
            return;
        }
        if self.slot != Slot::Free {
            // Checked again at the next interval; never during a job.
            return;
        }
        self.update_check_in_flight = true;
        self.emit(Command::CheckUpdate);
    }

    pub(super) fn on_update_checked(&mut self, result: Result<Option<String>, String>) {
        if !self.update_check_in_flight {
            return;
        }
        self.update_check_in_flight = false;
        match result {
            Ok(None) => self.log(
                LogLevel::Info,
                LogCategory::AutoUpdate,
                format!("up to date at {}", self.cfg.host.agent_version),
                None,
            ),
            Ok(Some(v)) => {
                self.log(
                    LogLevel::Info,
                    LogCategory::AutoUpdate,
                    format!("update available: {} -> {v}", self.cfg.host.agent_version),
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
