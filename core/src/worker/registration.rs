//! Registration (PROTOCOL.md §4.1, §1.2 steps 1-2): mint a secret, request approval, poll
//! until the operator decides, persist what the config file must keep.

use crate::secret::Secret;
use crate::wire::{self, AutoRegisterRequest, RegisterRequestResponse, RegisterStatus};

use super::timers::Timer;
use super::{
    clip, Command, Credentials, ExitCode, HttpId, HttpRequest, HttpResult, LogCategory, LogLevel,
    PersistedState, Worker, STUDIO_TEXT_CLIP,
};

/// Registration progress (PROTOCOL.md §4.1, §1.2 steps 1-2).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Registration {
    /// Credentials exist; nothing to do.
    Done,
    /// Waiting for the shell to mint an install id / secret.
    Minting,
    /// `POST register-request` in flight (or waiting to be retried at the poll timer).
    Requesting { req: Option<HttpId> },
    /// Request accepted; polling its status.
    Polling { req: Option<HttpId> },
}

impl Worker {
    pub(super) fn begin_registration(&mut self) {
        let reg = &self.cfg.registration;
        if reg.request_id.is_some() && reg.secret.is_some() {
            self.registration = Registration::Polling { req: None };
            self.poll_registration();
        } else if reg.install_id.is_some() && reg.secret.is_some() {
            self.registration = Registration::Requesting { req: None };
            self.send_register_request();
        } else {
            self.registration = Registration::Minting;
            self.emit(Command::MintSecret {
                need_install_id: reg.install_id.is_none(),
            });
        }
    }

    pub(super) fn on_minted(&mut self, install_id: Option<String>, secret: Secret) {
        if self.registration != Registration::Minting {
            return;
        }
        if self.cfg.registration.install_id.is_none() {
            let Some(id) = install_id.filter(|s| !s.is_empty()) else {
                // Asked for an install id and got none: ask again.
                self.emit(Command::MintSecret {
                    need_install_id: true,
                });
                return;
            };
            self.cfg.registration.install_id = Some(id);
        }
        self.cfg.registration.secret = Some(secret);
        self.cfg.registration.request_id = None;
        self.persist();
        self.registration = Registration::Requesting { req: None };
        self.send_register_request();
    }

    pub(super) fn send_register_request(&mut self) {
        let (Some(install_id), Some(secret)) = (
            self.cfg.registration.install_id.clone(),
            self.cfg.registration.secret.clone(),
        ) else {
            return;
        };
        let Some(url) = wire::http_url(&self.cfg.api_base_url, "/workers/register-request") else {
            self.exit(
                ExitCode::Fatal,
                format!(
                    "api_base_url `{}` is not a valid URL; fix it in the config file",
                    self.cfg.api_base_url
                ),
            );
            return;
        };
        let body = AutoRegisterRequest {
            install_id,
            registration_secret_hash: wire::sha256_hex(secret.expose().as_bytes()),
            capabilities: self.capabilities(),
            user_agent: format!("studio-worker/{}", self.cfg.host.agent_version),
        };
        let id = self.http_id();
        self.registration = Registration::Requesting { req: Some(id) };
        self.emit(Command::Http {
            id,
            request: Box::new(HttpRequest::RegisterRequest { url, body }),
        });
    }

    pub(super) fn poll_registration(&mut self) {
        let (Some(rr), Some(secret)) = (
            self.cfg.registration.request_id.clone(),
            self.cfg.registration.secret.clone(),
        ) else {
            return;
        };
        let Some(url) = wire::http_url(
            &self.cfg.api_base_url,
            &format!("/workers/register-requests/{rr}"),
        ) else {
            return;
        };
        let id = self.http_id();
        self.registration = Registration::Polling { req: Some(id) };
        self.emit(Command::Http {
            id,
            request: Box::new(HttpRequest::PollRegistration {
                url,
                bearer: secret,
            }),
        });
    }

    pub(super) fn schedule_registration_retry(&mut self) {
        let at = self.now.mono + self.cfg.timings.registration_poll;
        self.timers.set(Timer::Registration, at);
    }

    pub(super) fn on_registration_timer(&mut self) {
        match self.registration {
            Registration::Requesting { req: None } => self.send_register_request(),
            Registration::Polling { req: None } => self.poll_registration(),
            _ => {}
        }
    }

    pub(super) fn on_register_response(&mut self, result: HttpResult) {
        match result {
            HttpResult::Response { status, body } if (200..300).contains(&status) => {
                match serde_json::from_str::<RegisterRequestResponse>(&body) {
                    Ok(resp) => {
                        self.log(
                            LogLevel::Info,
                            LogCategory::Ws,
                            format!(
                                "registration requested ({}); waiting for operator approval",
                                clip(&resp.request_id, STUDIO_TEXT_CLIP)
                            ),
                            None,
                        );
                        self.cfg.registration.request_id = Some(resp.request_id);
                        self.persist();
                        self.registration = Registration::Polling { req: None };
                        self.schedule_registration_retry();
                    }
                    Err(e) => {
                        self.registration = Registration::Requesting { req: None };
                        self.log(
                            LogLevel::Warn,
                            LogCategory::Ws,
                            format!(
                                "register-request answered with an unreadable body ({e}); retrying"
                            ),
                            None,
                        );
                        self.schedule_registration_retry();
                    }
                }
            }
            other => {
                self.registration = Registration::Requesting { req: None };
                self.log(
                    LogLevel::Warn,
                    LogCategory::Ws,
                    format!("register-request failed: {}; retrying", other.describe()),
                    None,
                );
                self.schedule_registration_retry();
            }
        }
    }

    pub(super) fn on_poll_response(&mut self, result: HttpResult) {
        self.registration = Registration::Polling { req: None };
        match result {
            HttpResult::Response { status: 404, .. } => {
                self.log(LogLevel::Warn, LogCategory::Ws,
                    "registration request is unknown to the studio (stale); requesting again with a fresh secret".into(),
                    None,
                );
                self.cfg.registration.request_id = None;
                self.cfg.registration.secret = None;
                self.persist();
                self.registration = Registration::Minting;
                self.emit(Command::MintSecret {
                    need_install_id: false,
                });
            }
            HttpResult::Response { status, body } if (200..300).contains(&status) => {
                match serde_json::from_str::<RegisterStatus>(&body) {
                    Ok(RegisterStatus::Pending) => self.schedule_registration_retry(),
                    Ok(RegisterStatus::Approved {
                        worker_id,
                        auth_token,
                    }) => {
                        self.log(
                            LogLevel::Info,
                            LogCategory::Ws,
                            format!(
                                "registration approved as {}",
                                clip(&worker_id, STUDIO_TEXT_CLIP)
                            ),
                            None,
                        );
                        self.cfg.credentials = Some(Credentials {
                            worker_id,
                            auth_token,
                        });
                        self.cfg.registration.request_id = None;
                        self.cfg.registration.secret = None;
                        self.registration = Registration::Done;
                        self.timers.clear(Timer::Registration);
                        self.persist();
                        self.connect();
                    }
                    Ok(RegisterStatus::Rejected { reason }) => {
                        self.cfg.registration.request_id = None;
                        self.cfg.registration.secret = None;
                        self.registration = Registration::Done;
                        self.timers.clear(Timer::Registration);
                        self.persist();
                        let why = if reason.is_empty() {
                            "no reason given".to_string()
                        } else {
                            clip(&reason, STUDIO_TEXT_CLIP).into_owned()
                        };
                        self.exit(
                            ExitCode::Rejected,
                            format!(
                                "the studio operator rejected this worker's registration ({why}); \
                                 ask the operator, then run `studio-worker register --reset` and \
                                 `studio-worker run` to request approval again"
                            ),
                        );
                    }
                    Err(e) => {
                        self.log(
                            LogLevel::Warn,
                            LogCategory::Ws,
                            format!("registration poll answered with an unreadable body ({e})"),
                            None,
                        );
                        self.schedule_registration_retry();
                    }
                }
            }
            other => {
                self.log(
                    LogLevel::Warn,
                    LogCategory::Ws,
                    format!(
                        "registration poll failed: {}; still waiting",
                        other.describe()
                    ),
                    None,
                );
                self.schedule_registration_retry();
            }
        }
    }

    pub(super) fn persist(&mut self) {
        self.emit(Command::Persist(PersistedState {
            install_id: self.cfg.registration.install_id.clone(),
            registration_request_id: self.cfg.registration.request_id.clone(),
            registration_secret: self.cfg.registration.secret.clone(),
            worker_id: self.cfg.credentials.as_ref().map(|c| c.worker_id.clone()),
            auth_token: self.cfg.credentials.as_ref().map(|c| c.auth_token.clone()),
        }));
    }
}
