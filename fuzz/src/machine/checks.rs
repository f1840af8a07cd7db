//! The invariants checked after every step of the `worker_machine` target (listed in the
//! module docs of [`super`]).

use studio_core::trace;
use studio_core::wire;
use studio_core::worker::{Command, HttpRequest, HttpResult, Input, Now, UsageError};

use super::Harness;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Redaction {
    /// The machine only copies or hashes the secret into masked places (or redacts it
    /// itself, as it does with peer bodies in messages): replays exactly.
    ByDesign,
    /// Any other input with a secret-like key: the documented limit of the trace format.
    Limit,
}

impl Harness {
    /// Why redacting `input` changes it (called only when it does).
    pub(super) fn redaction(&self, input: &Input) -> Redaction {
        match input {
            Input::Minted { .. } => Redaction::ByDesign,
            // An approved registration status: the token goes into `Persist` and
            // `Connect`, both masked.
            Input::Http {
                id,
                result: HttpResult::Response { status, .. },
            } if (200..300).contains(status) && self.poll_ids.contains(&id.0) => {
                Redaction::ByDesign
            }
            // Any other body (an error, an upgrade failure): the machine redacts it before
            // clipping it into notices and `fail` errors, so only masked text reaches them.
            Input::Http { .. } | Input::ConnectFailed { .. } => Redaction::ByDesign,
            _ => Redaction::Limit,
        }
    }

    pub(super) fn check_result(
        &self,
        input: &Input,
        result: &Result<(), UsageError>,
    ) -> Result<(), String> {
        match (input, result) {
            (_, Err(UsageError::TimeWentBackwards { .. })) => {
                Err("TimeWentBackwards although time only moved forward".into())
            }
            (Input::JobFinished { job_id, .. }, Err(UsageError::UnknownJob(_))) => {
                if self.running.as_ref() == Some(job_id) && !self.exited {
                    Err(format!(
                        "JobFinished for {job_id}, dispatched and never cancelled, was refused: \
                         the machine forgot a running job without CancelJob"
                    ))
                } else {
                    Ok(())
                }
            }
            (Input::JobFinished { job_id, run, .. }, Ok(()))
                if self.running.as_ref() != Some(job_id) && self.cancelled != Some(*run) =>
            {
                Err(format!(
                    "JobFinished for {job_id} ({run}) accepted, but the shell is not running it \
                     (never dispatched or already finished) and the machine did not cancel it"
                ))
            }
            (Input::SetThreshold { gb }, r) => {
                let valid = gb.is_finite() && *gb >= 0.0;
                match (valid, r) {
                    (true, Err(e)) => Err(format!("valid threshold {gb} refused: {e:?}")),
                    (false, Ok(())) => Err(format!("invalid threshold {gb} accepted")),
                    _ => Ok(()),
                }
            }
            (Input::Minted { secret, .. }, Err(UsageError::EmptySecret)) if secret.is_empty() => {
                Ok(())
            }
            (Input::Minted { secret, .. }, Ok(())) if secret.is_empty() => {
                Err("an empty minted secret was accepted".into())
            }
            (_, Ok(())) => Ok(()),
            (_, Err(e)) => Err(format!("unexpected usage error {e:?}")),
        }
    }

    /// What the shell learns from feeding an input the machine accepted.
    pub(super) fn shell_view_of_input(&mut self, input: &Input) {
        match input {
            Input::Connected { conn } if self.open.contains(&conn.0) => {
                self.connected.insert(conn.0);
            }
            // A failure report for a connection already upgraded is a driver mistake the
            // machine ignores (the fuzzer sends it anyway); a real shell still has it open.
            Input::ConnectFailed { conn, .. } if !self.connected.contains(&conn.0) => {
                self.open.remove(&conn.0);
            }
            Input::Disconnected { conn, .. } => {
                self.open.remove(&conn.0);
                self.connected.remove(&conn.0);
            }
            Input::JobFinished { job_id, .. } if self.running.as_ref() == Some(job_id) => {
                self.running = None;
            }
            _ => {}
        }
    }

    pub(super) fn check_drain(
        &mut self,
        now: Now,
        cmds: &[Command],
        refused: bool,
    ) -> Result<(), String> {
        let (last, body) = cmds.split_last().expect("a drain has at least its Wait");
        let Command::Wait { until } = last else {
            return Err("the drain does not end in Wait".into());
        };
        if self.exited {
            if !body.is_empty() || until.is_some() {
                return Err("commands after Exit".into());
            }
            return Ok(());
        }
        if refused {
            // "On Err nothing changed": the drain is the previous drain's Wait again. Its
            // deadline may have passed meanwhile (the refused input ran no timer), so the
            // after-now check applies to accepted inputs only.
            if !body.is_empty() || Some(last) != self.last_wait.as_ref() {
                return Err(format!(
                    "a refused input changed the drain: previous Wait {:?}",
                    self.last_wait
                ));
            }
            return Ok(());
        }
        self.last_wait = Some(last.clone());
        if let Some(u) = until {
            if *u <= now.mono {
                return Err(format!("deadline {u} is not after now {}", now.mono));
            }
        }
        if *until != self.driver.worker.deadline() {
            return Err(format!(
                "Wait {{ until: {until:?} }} but deadline() = {:?}",
                self.driver.worker.deadline()
            ));
        }
        let again = self.driver.worker.poll();
        if again != *last {
            return Err(format!("a second poll gave {again:?}, not the same Wait"));
        }
        for (i, c) in body.iter().enumerate() {
            match c {
                Command::Connect { conn, .. } => {
                    if self.last_conn.is_some_and(|l| conn.0 <= l) {
                        return Err(format!("Connect {conn} does not increase the conn id"));
                    }
                    if let Some(open) = self.open.first() {
                        return Err(format!(
                            "Connect {conn} while conn#{open} is still open (two connections)"
                        ));
                    }
                    self.last_conn = Some(conn.0);
                    self.open.insert(conn.0);
                }
                Command::Close { conn, .. } => {
                    self.open.remove(&conn.0);
                    self.connected.remove(&conn.0);
                }
                Command::Send { conn, text } => {
                    if !self.connected.contains(&conn.0) {
                        return Err(format!(
                            "Send on {conn}, which is not an open, connected connection"
                        ));
                    }
                    if let Err(e) = wire::decode_worker_frame(text, wire::MAX_FRAME_BYTES) {
                        return Err(format!("sent a frame the studio cannot decode: {e}"));
                    }
                }
                Command::Http { id, request } => {
                    if self.last_http.is_some_and(|l| id.0 <= l) {
                        return Err(format!("HTTP id {} does not increase", id.0));
                    }
                    if matches!(**request, HttpRequest::PollRegistration { .. }) {
                        self.poll_ids.insert(id.0);
                    }
                    self.prev_http = self.last_http;
                    self.last_http = Some(id.0);
                }
                Command::Dispatch { run, claim } => {
                    if let Some(r) = &self.running {
                        return Err(format!(
                            "Dispatch {} while {r} is still running (two jobs)",
                            claim.job_id
                        ));
                    }
                    self.running = Some(claim.job_id.clone());
                    self.last_dispatched = Some(claim.job_id.clone());
                    self.run_of.insert(claim.job_id.clone(), *run);
                }
                Command::ApplyUpdate { version } => {
                    if let Some(r) = &self.running {
                        return Err(format!("ApplyUpdate {version} while {r} is running"));
                    }
                }
                Command::CancelJob { job_id } if self.running.as_ref() == Some(job_id) => {
                    self.cancelled = self.run_of.get(job_id).copied();
                    self.running = None;
                }
                Command::Exit { .. } => {
                    if i + 1 != body.len() {
                        return Err("Exit is not the last command before Wait".into());
                    }
                    if until.is_some() {
                        return Err("Wait after Exit has a deadline".into());
                    }
                    self.exited = true;
                }
                Command::Wait { .. } => return Err("Wait in the middle of a drain".into()),
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn check_status(&self) -> Result<(), String> {
        let st = self.driver.worker.status();
        if let Some((log, jobs, logs)) = self.caps {
            if st.log_queue_len > log {
                return Err(format!("log queue {} > cap {log}", st.log_queue_len));
            }
            if st.recent_jobs.len() > jobs || st.recent_logs.len() > logs {
                return Err(format!(
                    "a ring exceeded its cap: recent jobs {} (cap {jobs}), recent logs {} (cap {logs})",
                    st.recent_jobs.len(),
                    st.recent_logs.len()
                ));
            }
        }
        if let Some(r) = &self.running {
            if !self.exited && st.current_job_id.as_ref() != Some(r) {
                return Err(format!(
                    "the shell runs {r} but status() names {:?}",
                    st.current_job_id
                ));
            }
        }
        if st.exited != self.exited {
            return Err(format!(
                "status().exited = {} but Exit {} emitted",
                st.exited,
                if self.exited { "was" } else { "was not" }
            ));
        }
        Ok(())
    }

    pub(super) fn check_replay(&self) -> Result<(), String> {
        let Some((_, text)) = &self.recording else {
            return Ok(());
        };
        if !self.replay_safe {
            return Ok(());
        }
        match trace::replay(text) {
            Err(e) => Err(format!("the recorded trace does not parse: {e}\n{text}")),
            Ok(report) if !report.is_ok() => Err(format!(
                "the recorded trace does not replay: {report}\n{text}"
            )),
            Ok(_) => Ok(()),
        }
    }
}
