//! Registration (PROTOCOL.md §4.1): requests deduplicated by install id, the operator's
//! decision, token minting on an approved poll.

use crate::secret::{ct_eq, Secret};
use crate::time::{Mono, Now};
use crate::wire::WorkerCapabilities;
use crate::wire::{sha256_hex, AutoRegisterRequest, RegisterRequestResponse, RegisterStatus};

use super::state::WorkerRec;
use super::{HttpError, PendingRequest, Studio, StudioEvent, MAX_INSTALL_ID_BYTES};

/// Domain tag mixed into minted tokens.
pub(super) const TOKEN_DOMAIN: &str = "studio-core/token/v1";
/// Domain-separation prefix of the random part of registration request ids.
pub(super) const REQUEST_ID_DOMAIN: &str = "studio-core/request-id/v1";

#[derive(Clone, Debug, PartialEq)]
pub(super) enum RegState {
    Pending,
    Approved { worker_id: String },
    Rejected { reason: String },
}

#[derive(Clone, Debug)]
pub(super) struct RegRequest {
    pub(super) install_id: String,
    pub(super) secret_hash: String,
    pub(super) capabilities: WorkerCapabilities,
    pub(super) user_agent: String,
    pub(super) requested_at: Mono,
    pub(super) state: RegState,
}

impl Studio {
    /// `POST /workers/register-request`.
    pub fn register_request(
        &mut self,
        now: Now,
        req: AutoRegisterRequest,
    ) -> Result<RegisterRequestResponse, HttpError> {
        self.advance(now)?;
        let result = self.register_request_inner(req);
        self.finish();
        result
    }

    pub(super) fn register_request_inner(
        &mut self,
        req: AutoRegisterRequest,
    ) -> Result<RegisterRequestResponse, HttpError> {
        if req.install_id.is_empty() || req.install_id.len() > MAX_INSTALL_ID_BYTES {
            return Err(HttpError::bad_request(format!(
                "installId must be 1..={MAX_INSTALL_ID_BYTES} bytes"
            )));
        }
        if !is_hex64(&req.registration_secret_hash) {
            return Err(HttpError::bad_request(
                "registrationSecretHash must be 64 hex characters",
            ));
        }
        let hash = req.registration_secret_hash.to_ascii_lowercase();
        let pending = |id: String| RegisterRequestResponse {
            request_id: id,
            status: "pending".into(),
        };
        if let Some(id) = self.pending_by_install.get(&req.install_id).cloned() {
            if let Some(r) = self.requests.get_mut(&id) {
                r.secret_hash = hash;
                r.capabilities = req.capabilities;
                r.user_agent = req.user_agent;
                self.event(StudioEvent::RegistrationRequested {
                    request_id: id.clone(),
                    install_id: req.install_id,
                    deduplicated: true,
                });
                return Ok(pending(id));
            }
        }
        if self.requests.len() >= self.cfg.max_registration_requests && !self.evict_one_request() {
            return Err(HttpError::new(
                429,
                "too many pending registration requests",
            ));
        }
        self.next_request += 1;
        let seq = self.next_request;
        // The sequence number keeps ids unique, the seeded hash makes them unguessable: an
        // operator action names a request by an id only its requester was told.
        let nonce =
            sha256_hex(format!("{REQUEST_ID_DOMAIN}|{}|{seq}", self.cfg.token_seed).as_bytes());
        let id = format!("rr-{seq}-{}", &nonce[..16]);
        self.requests.insert(
            id.clone(),
            RegRequest {
                install_id: req.install_id.clone(),
                secret_hash: hash,
                capabilities: req.capabilities,
                user_agent: req.user_agent,
                requested_at: self.now,
                state: RegState::Pending,
            },
        );
        self.request_order.insert(seq, id.clone());
        self.pending_by_install
            .insert(req.install_id.clone(), id.clone());
        self.event(StudioEvent::RegistrationRequested {
            request_id: id.clone(),
            install_id: req.install_id,
            deduplicated: false,
        });
        if self.cfg.auto_approve {
            // Cannot fail: the request was just inserted as pending.
            let _ = self.approve_inner(&id);
        }
        Ok(pending(id))
    }

    /// Forgets the oldest decided request; false when every request is pending.
    pub(super) fn evict_one_request(&mut self) -> bool {
        let victim = self.request_order.iter().find_map(|(seq, id)| {
            let r = self.requests.get(id)?;
            (r.state != RegState::Pending).then(|| (*seq, id.clone()))
        });
        match victim {
            Some((seq, id)) => {
                self.request_order.remove(&seq);
                self.requests.remove(&id);
                true
            }
            None => false,
        }
    }

    /// `GET /workers/register-requests/:id` with `Authorization: Bearer <raw secret>`.
    pub fn register_status(
        &mut self,
        now: Now,
        request_id: &str,
        bearer: &str,
    ) -> Result<RegisterStatus, HttpError> {
        self.advance(now)?;
        let result = self.register_status_inner(request_id, bearer);
        self.finish();
        result
    }

    pub(super) fn register_status_inner(
        &mut self,
        request_id: &str,
        bearer: &str,
    ) -> Result<RegisterStatus, HttpError> {
        let req = self
            .requests
            .get(request_id)
            .ok_or_else(|| HttpError::not_found("unknown registration request"))?;
        if !ct_eq(&req.secret_hash, &sha256_hex(bearer.as_bytes())) {
            return Err(HttpError::unauthorized(
                "registration secret does not match",
            ));
        }
        match req.state.clone() {
            RegState::Pending => Ok(RegisterStatus::Pending),
            RegState::Rejected { reason } => Ok(RegisterStatus::Rejected { reason }),
            RegState::Approved { worker_id } => {
                if !self.workers.contains_key(&worker_id) {
                    return Err(HttpError::not_found("the approved worker was deleted"));
                }
                let token = self.mint_token();
                if let Some(w) = self.workers.get_mut(&worker_id) {
                    w.token_hash = Some(sha256_hex(token.as_bytes()));
                }
                self.event(StudioEvent::TokenIssued {
                    worker_id: worker_id.clone(),
                });
                Ok(RegisterStatus::Approved {
                    worker_id,
                    auth_token: Secret::new(token),
                })
            }
        }
    }

    pub(super) fn mint_token(&mut self) -> String {
        self.token_counter += 1;
        sha256_hex(
            format!(
                "{TOKEN_DOMAIN}|{}|{}",
                self.cfg.token_seed, self.token_counter
            )
            .as_bytes(),
        )
    }

    /// Operator approval. 404 unknown, 409 already rejected, idempotent when approved.
    pub fn approve(&mut self, request_id: &str) -> Result<(), HttpError> {
        let result = self.approve_inner(request_id);
        self.finish();
        result
    }

    pub(super) fn approve_inner(&mut self, request_id: &str) -> Result<(), HttpError> {
        let req = self
            .requests
            .get(request_id)
            .ok_or_else(|| HttpError::not_found("unknown registration request"))?;
        match &req.state {
            RegState::Approved { .. } => return Ok(()),
            RegState::Rejected { .. } => {
                return Err(HttpError::conflict("request was already rejected"))
            }
            RegState::Pending => {}
        }
        let install_id = req.install_id.clone();
        let caps = req.capabilities.clone();
        let worker_id = match self.install_workers.get(&install_id) {
            Some(w) if self.workers.contains_key(w) => w.clone(),
            _ => {
                let id = loop {
                    self.next_worker += 1;
                    let id = format!("w-{}", self.next_worker);
                    if !self.workers.contains_key(&id) {
                        break id;
                    }
                };
                self.caps_gen += 1;
                self.workers.insert(
                    id.clone(),
                    WorkerRec {
                        capabilities: Some(caps),
                        caps_gen: self.caps_gen,
                        ..WorkerRec::default()
                    },
                );
                id
            }
        };
        if let Some(r) = self.requests.get_mut(request_id) {
            r.state = RegState::Approved {
                worker_id: worker_id.clone(),
            };
        }
        self.pending_by_install.remove(&install_id);
        self.install_workers.insert(install_id, worker_id.clone());
        self.event(StudioEvent::RegistrationApproved {
            request_id: request_id.to_string(),
            worker_id,
        });
        Ok(())
    }

    /// Operator rejection. 404 unknown, 409 already approved, idempotent when rejected.
    pub fn reject(&mut self, request_id: &str, reason: &str) -> Result<(), HttpError> {
        let result = self.reject_inner(request_id, reason);
        self.finish();
        result
    }

    pub(super) fn reject_inner(&mut self, request_id: &str, reason: &str) -> Result<(), HttpError> {
        let req = self
            .requests
            .get_mut(request_id)
            .ok_or_else(|| HttpError::not_found("unknown registration request"))?;
        match &req.state {
            RegState::Rejected { .. } => return Ok(()),
            RegState::Approved { .. } => {
                return Err(HttpError::conflict("request was already approved"))
            }
            RegState::Pending => {}
        }
        req.state = RegState::Rejected {
            reason: reason.to_string(),
        };
        let install = req.install_id.clone();
        self.pending_by_install.remove(&install);
        self.event(StudioEvent::RegistrationRejected {
            request_id: request_id.to_string(),
            reason: reason.to_string(),
        });
        Ok(())
    }

    /// Requests awaiting the operator, oldest first.
    pub fn pending_requests(&self) -> Vec<PendingRequest> {
        self.request_order
            .values()
            .filter_map(|id| {
                let r = self.requests.get(id)?;
                (r.state == RegState::Pending).then(|| PendingRequest {
                    request_id: id.clone(),
                    install_id: r.install_id.clone(),
                    user_agent: r.user_agent.clone(),
                    capabilities: r.capabilities.clone(),
                    requested_at: r.requested_at,
                })
            })
            .collect()
    }
}

pub(super) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
