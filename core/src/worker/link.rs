//! The WebSocket link: connect, hello, welcome, the frames of a session, its end, and the
//! jittered reconnect.

use crate::wire::{
    self, close_code, close_reason, DecodeError, StudioFrame, WorkerErrorCode, WorkerFrame,
};

use super::jobs::Offered;
use super::state::{Link, Stop};
use super::timers::Timer;
use super::{
    clip, clip_body, Command, ConnId, ConnectError, ExitCode, LogCategory, LogLevel, Notice,
    SessionState, Worker, STUDIO_TEXT_CLIP, UPGRADE_BODY_CLIP,
};

impl Worker {
    pub(super) fn connect(&mut self) {
        let Some(creds) = self.cfg.credentials.clone() else {
            return;
        };
        let url = match wire::ws_url(&self.cfg.api_base_url, &creds.worker_id) {
            Ok(u) => u,
            Err(e) => {
                self.exit(
                    ExitCode::Fatal,
                    format!("{e}; fix api_base_url in the config file"),
                );
                return;
            }
        };
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.link = Link::Connecting { conn };
        self.session_state = SessionState::Connecting;
        let at = self.now.mono + self.cfg.timings.connect_timeout;
        self.timers.set(Timer::ConnectTimeout, at);
        self.emit(Command::Connect {
            conn,
            url,
            auth_token: creds.auth_token,
        });
    }

    pub(super) fn on_connected(&mut self, conn: ConnId) {
        if self.link.conn() == Some(conn) && !matches!(self.link, Link::Connecting { .. }) {
            // A repeated `Connected` for the current connection: nothing new.
            return;
        }
        if self.link != (Link::Connecting { conn }) {
            // A connection we no longer want finished late: close it.
            if conn.0 < self.next_conn {
                self.emit(Command::Close {
                    conn,
                    code: close_code::NORMAL,
                    reason: close_reason::SESSION_ENDED.into(),
                });
            }
            return;
        }
        self.timers.clear(Timer::ConnectTimeout);
        let Some(creds) = self.cfg.credentials.clone() else {
            return;
        };
        self.link = Link::AwaitWelcome { conn };
        let caps = self.capabilities();
        if let Some(warning) =
            vram_threshold_warning(self.cfg.vram_threshold_gb, self.cfg.host.vram_total_gb)
        {
            self.log(LogLevel::Warn, LogCategory::Ws, warning, None);
        }
        self.log(
            LogLevel::Info,
            LogCategory::Ws,
            format!(
                "capabilities: engine={} kinds=[{}] models={} vram={}GB threshold={}GB",
                caps.engine,
                caps.task_kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                caps.supported_models.len(),
                caps.vram_total_gb,
                caps.vram_threshold_gb
            ),
            None,
        );
        self.send_frame(&WorkerFrame::Hello {
            auth_token: creds.auth_token,
            capabilities: caps,
        });
        let at = self.now.mono + self.cfg.timings.read_idle;
        self.timers.set(Timer::ReadIdle, at);
    }

    pub(super) fn on_connect_failed(&mut self, conn: ConnId, error: ConnectError) {
        if self.link != (Link::Connecting { conn }) {
            return;
        }
        self.timers.clear(Timer::ConnectTimeout);
        self.link = Link::Down;
        match error {
            ConnectError::Unauthorized { body } => {
                self.exit(
                    ExitCode::AuthFailed,
                    format!(
                        "the studio refused this worker's token (HTTP 401 on websocket upgrade: {}); \
                         re-register with `studio-worker register --reset` and approve it again",
                        clip_body(&body, UPGRADE_BODY_CLIP)
                    ),
                );
            }
            ConnectError::Status { status, body } => self.schedule_reconnect(&format!(
                "HTTP {status} on websocket upgrade: {}",
                clip_body(&body, UPGRADE_BODY_CLIP)
            )),
            ConnectError::Transport(e) => self.schedule_reconnect(&format!("connect failed: {e}")),
        }
    }

    pub(super) fn on_disconnected(&mut self, conn: ConnId, code: Option<u16>, reason: String) {
        if self.link.conn() != Some(conn) {
            return;
        }
        let reason = clip(&reason, STUDIO_TEXT_CLIP);
        if code == Some(close_code::AUTH_FAILED) {
            self.teardown();
            self.exit(
                ExitCode::AuthFailed,
                format!(
                    "the studio closed the session with 4001 (auth failed: {reason}); \
                     re-register with `studio-worker register --reset` and approve it again"
                ),
            );
            return;
        }
        let what = match code {
            Some(c) => format!("studio closed the connection ({c} {reason})"),
            None => format!("connection lost ({reason})"),
        };
        self.teardown();
        self.after_session_end(&what);
    }

    /// Tears the session down on our side (peer misbehaved or a timer fired) and
    /// schedules a reconnect.
    pub(super) fn drop_session(&mut self, close_reason: &str, why: &str) {
        self.close_current(close_reason);
        self.after_session_end(why);
    }

    /// Closes the current connection (if any) with code 1000 and forgets it.
    pub(super) fn close_current(&mut self, reason: &str) {
        if let Some(conn) = self.link.conn() {
            self.emit(Command::Close {
                conn,
                code: close_code::NORMAL,
                reason: reason.into(),
            });
        }
        self.teardown();
    }

    /// Forgets the session: timers off, unconfirmed logs back to the queue, unacked results
    /// queued for the next session.
    pub(super) fn teardown(&mut self) {
        let was_welcomed = matches!(self.link, Link::Live { .. });
        self.link = Link::Down;
        for t in [
            Timer::Heartbeat,
            Timer::LogFlush,
            Timer::ReadIdle,
            Timer::ConnectTimeout,
        ] {
            self.timers.clear(t);
        }
        self.hb_outstanding.clear();
        // Before the counts reset: they tell which results this session's studio read.
        self.requeue_unacked();
        self.heartbeats_sent = 0;
        self.heartbeats_acked = 0;
        // A parked offer dies with its session; the studio requeues it on disconnect.
        self.parked_offer = None;
        self.timers.clear(Timer::ParkedOffer);
        let batches: Vec<_> = self.logs_unconfirmed.drain(..).collect();
        for batch in batches.into_iter().rev() {
            self.logs.restore_front(batch);
        }
        if was_welcomed {
            self.attempt = 0;
        }
    }

    /// While draining for shutdown the reconnect still happens, so a running job's
    /// result can ship within the grace window.
    pub(super) fn after_session_end(&mut self, why: &str) {
        self.schedule_reconnect(why);
    }

    pub(super) fn schedule_reconnect(&mut self, why: &str) {
        self.link = Link::Backoff;
        self.attempt = self.attempt.saturating_add(1);
        let max = self.cfg.reconnect_attempts;
        if max > 0 && self.attempt > max {
            self.link = Link::Down;
            self.exit(
                ExitCode::Fatal,
                format!("gave up after {max} reconnect attempts (last: {why})"),
            );
            return;
        }
        let delay = self.backoff.delay(self.attempt);
        self.stats.reconnects += 1;
        self.session_state = SessionState::Reconnecting {
            attempt: self.attempt,
        };
        self.log(
            LogLevel::Warn,
            LogCategory::Ws,
            format!(
                "{why}; reconnect attempt {} in {}ms",
                self.attempt,
                delay.as_millis()
            ),
            None,
        );
        self.timers.set(Timer::Reconnect, self.now.mono + delay);
    }

    // --------------------------------------------------------------------------------
    // Frames
    // --------------------------------------------------------------------------------

    pub(super) fn on_frame(&mut self, conn: ConnId, text: &str) {
        if self.link.conn() != Some(conn) {
            return;
        }
        if matches!(self.link, Link::Connecting { .. }) {
            // A frame before `Connected` is a driver ordering slip: dropped.
            self.emit(Command::Report(Notice {
                level: LogLevel::Warn,
                category: LogCategory::Ws,
                message: format!("frame on {conn} before it was connected; dropped"),
                job_id: None,
            }));
            return;
        }
        self.stats.frames_in += 1;
        let frame = match wire::decode_studio_frame_limited(text, self.cfg.limits.max_frame_bytes) {
            Ok(f) => f,
            Err(e) => {
                // An offer whose job id can be read is answered (PROTOCOL.md §10): dropping
                // the session would only have the studio offer it again, to every worker,
                // forever.
                let job_id = match &e {
                    DecodeError::Invalid(_) => wire::undecodable_offer_job_id(text),
                    DecodeError::TooLarge { .. } => None,
                };
                if let Some(job_id) = job_id {
                    self.arm_read_idle();
                    let error = clip(&e.to_string(), STUDIO_TEXT_CLIP).into_owned();
                    match self.link {
                        Link::Live { .. } => {
                            self.on_offer(Offered::Undecodable { job_id, error });
                        }
                        _ => self.log(
                            LogLevel::Warn,
                            LogCategory::Ws,
                            format!("unexpected undecodable offer frame before welcome ({error}); dropped"),
                            Some(job_id),
                        ),
                    }
                    return;
                }
                self.drop_session(
                    close_reason::PROTOCOL_VIOLATION,
                    &format!("protocol error: {}", clip(&e.to_string(), STUDIO_TEXT_CLIP)),
                );
                return;
            }
        };
        self.arm_read_idle();
        match self.link {
            Link::AwaitWelcome { .. } => self.on_frame_before_welcome(frame),
            Link::Live { .. } => self.on_frame_live(frame),
            _ => {}
        }
    }

    /// A frame arrived: the connection is alive for another `read_idle`.
    fn arm_read_idle(&mut self) {
        let at = self.now.mono + self.cfg.timings.read_idle;
        self.timers.set(Timer::ReadIdle, at);
    }

    pub(super) fn on_frame_before_welcome(&mut self, frame: StudioFrame) {
        match frame {
            StudioFrame::Welcome {
                worker_id,
                server_time,
            } => {
                let Some(conn) = self.link.conn() else { return };
                self.link = Link::Live { conn };
                self.session_state = SessionState::Connected;
                self.attempt = 0;
                self.stats.sessions += 1;
                self.log(
                    LogLevel::Info,
                    LogCategory::Ws,
                    format!(
                        "server welcomed {} server_time={}",
                        clip(&worker_id, STUDIO_TEXT_CLIP),
                        clip(&server_time, STUDIO_TEXT_CLIP)
                    ),
                    None,
                );
                // Results the last session may have lost go first, so the studio never sees
                // an idle heartbeat while it still waits for one of our results. Then the
                // heartbeat right away, then every interval; queued logs one flush interval
                // later (the flush timer runs only while entries wait: an idle worker wakes
                // for its heartbeat alone).
                self.redeliver();
                self.send_heartbeat();
                self.arm_log_flush();
                self.on_welcomed_for_update();
                if self.stop == Stop::Draining {
                    self.maybe_finish_shutdown();
                }
            }
            StudioFrame::Error { code, message } => self.on_error_frame(code, message),
            other => {
                self.log(
                    LogLevel::Warn,
                    LogCategory::Ws,
                    format!(
                        "unexpected {} frame before welcome; dropped",
                        other.type_name()
                    ),
                    offer_job_id(&other),
                );
            }
        }
    }

    pub(super) fn on_frame_live(&mut self, frame: StudioFrame) {
        match frame {
            StudioFrame::Welcome { server_time, .. } => {
                self.log(
                    LogLevel::Info,
                    LogCategory::Ws,
                    format!(
                        "second welcome ignored server_time={}",
                        clip(&server_time, STUDIO_TEXT_CLIP)
                    ),
                    None,
                );
            }
            StudioFrame::HeartbeatAck => {
                self.last_heartbeat_ack = Some(self.now.mono);
                self.heartbeats_acked = (self.heartbeats_acked + 1).min(self.heartbeats_sent);
                if let Some(batches_before) = self.hb_outstanding.pop_front() {
                    for _ in 0..batches_before.min(self.logs_unconfirmed.len()) {
                        self.logs_unconfirmed.pop_front();
                    }
                    for n in self.hb_outstanding.iter_mut() {
                        *n = n.saturating_sub(batches_before);
                    }
                }
            }
            StudioFrame::CompleteAck { job_id } => {
                self.on_result_acked(&job_id);
                self.log(
                    LogLevel::Info,
                    LogCategory::Ws,
                    format!("studio confirmed completion of job {job_id}"),
                    Some(job_id),
                );
            }
            StudioFrame::FailAck { job_id } => {
                self.on_result_acked(&job_id);
                self.log(
                    LogLevel::Info,
                    LogCategory::Ws,
                    format!("studio confirmed failure of job {job_id}"),
                    Some(job_id),
                );
            }
            StudioFrame::Error { code, message } => self.on_error_frame(code, message),
            StudioFrame::Offer { claim } => self.on_offer(Offered::Claim(claim)),
        }
    }

    pub(super) fn on_error_frame(&mut self, code: WorkerErrorCode, message: String) {
        let (exit, reason) = match code {
            WorkerErrorCode::AuthFailed => (ExitCode::AuthFailed, close_reason::AUTH_FAILED),
            _ => (ExitCode::Fatal, close_reason::PROTOCOL_VIOLATION),
        };
        self.close_current(reason);
        let message = clip(&message, STUDIO_TEXT_CLIP);
        let text = match code {
            WorkerErrorCode::AuthFailed => format!(
                "the studio rejected this worker's credentials (auth_failed: {message}); \
                 re-register with `studio-worker register --reset` and approve it again"
            ),
            WorkerErrorCode::DuplicateWorker => format!(
                "another worker connected with this worker id (duplicate_worker: {message}); \
                 stop the other instance or register this one separately"
            ),
            WorkerErrorCode::WorkerDeleted => format!(
                "the studio deleted this worker (worker_deleted: {message}); \
                 re-register with `studio-worker register --reset`"
            ),
            other => format!(
                "studio ended the session with {}: {message}",
                other.as_str()
            ),
        };
        self.exit(exit, text);
    }
}

/// The §9.4 check, decided here only: the warning a VRAM threshold above the detected GPU
/// memory deserves (none while the memory is unknown, `0`). The machine logs it at every
/// connect; a shell shows it where no machine runs (`set-threshold`).
pub fn vram_threshold_warning(threshold_gb: f32, vram_total_gb: f32) -> Option<String> {
    (vram_total_gb > 0.0 && threshold_gb > vram_total_gb).then(|| {
        format!(
            "vram_threshold_gb {threshold_gb} exceeds the detected VRAM {vram_total_gb} GB; \
             the studio may offer jobs this GPU cannot hold"
        )
    })
}

fn offer_job_id(frame: &StudioFrame) -> Option<String> {
    match frame {
        StudioFrame::Offer { claim } => Some(claim.job_id.clone()),
        _ => None,
    }
}
