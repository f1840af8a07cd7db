//! The studio machine's host: feeding it, acting on its commands, answering the workers'
//! HTTP requests through the core's bridge ([`testing::studio_http`]), and submitting jobs.

use studio_core::studio::{JobSpec, StudioCommand, StudioInput};
use studio_core::testing;
use studio_core::wire::TaskKind;
use studio_core::worker::{HttpId, HttpRequest, HttpResult, Input};

use crate::world::{Event, World};
use crate::STORM_LIMIT;

impl World {
    /// Feeds `input` to the studio now and carries out its commands.
    pub(crate) fn studio_handle(&mut self, input: StudioInput) {
        if self.hasher.is_some() {
            let s = format!("{input:?}");
            self.hash_str("si", &s);
        }
        self.report.studio_steps += 1;
        if let Err(e) = self.studio.handle(self.time(), input) {
            self.violation(format!("studio: usage error {e}"));
        }
        self.drain_studio();
    }

    /// The studio's deadline passed: a tick (more than [`STORM_LIMIT`] at one instant is a
    /// timer storm).
    pub(crate) fn studio_tick(&mut self) {
        if self.studio_instant == self.now {
            self.studio_ticks += 1;
            if self.studio_ticks == STORM_LIMIT + 1 {
                self.violation("studio: timer storm".into());
            }
        } else {
            self.studio_instant = self.now;
            self.studio_ticks = 1;
        }
        self.studio_handle(StudioInput::Tick);
    }

    /// Carries out the studio's commands up to its `Wait`, then checks what its events
    /// named.
    fn drain_studio(&mut self) {
        loop {
            let cmd = self.studio.poll();
            if self.hasher.is_some() {
                let s = format!("{cmd:?}");
                self.hash_str("sc", &s);
            }
            match cmd {
                StudioCommand::Wait { until } => {
                    if let Some(u) = until {
                        if u < self.now {
                            self.violation(format!("studio: deadline {u} before now"));
                        }
                    }
                    if self.studio_timer != until {
                        self.studio_timer = until;
                        self.studio_timer_version += 1;
                        if let Some(u) = until {
                            let version = self.studio_timer_version;
                            self.at(u.max(self.now), Event::StudioTimer { version });
                        }
                    }
                    break;
                }
                StudioCommand::Send { conn, text } => self.studio_sends(conn, text),
                StudioCommand::Close { conn, code, reason } => {
                    self.studio_closes(conn, code, reason)
                }
                StudioCommand::Event(e) => self.observe(e),
            }
        }
        self.check_studio_step();
    }

    /// Worker `w`'s HTTP request `id` reaches the studio: refused while it is down, an
    /// upload perhaps failed by a storage fault, else answered by the studio machine. The
    /// answer reaches the worker a latency later.
    pub(crate) fn http(&mut self, w: usize, id: HttpId, request: HttpRequest) {
        if !self.studio_up {
            let result = HttpResult::Transport(testing::REFUSED.into());
            return self.respond(w, id, result);
        }
        self.report.studio_steps += 1;
        let fault = match request {
            HttpRequest::Upload { .. } => self.upload_fault(),
            _ => None,
        };
        // Whether the request reaches the studio machine (which then has commands to
        // drain) or a fault answers it first.
        let reached = fault.is_none();
        if let (true, HttpRequest::Upload { job_id, .. }) = (reached, &request) {
            self.results_pending.remove(&(job_id.clone(), w));
        }
        let (status, body) = match fault {
            Some(HttpResult::Response { status, body }) => (status, body),
            Some(transport) => return self.respond(w, id, transport),
            None => {
                let now = self.time();
                testing::studio_http(&mut self.studio, now, request, testing::RESULT_BYTES)
            }
        };
        if self.hasher.is_some() {
            let s = format!("http {w} {status} {body}");
            self.hash_str("sh", &s);
        }
        // The studio machine may have work to do after a request (offer the next job).
        if reached {
            self.drain_studio();
        }
        self.respond(w, id, HttpResult::Response { status, body });
    }

    fn respond(&mut self, w: usize, id: HttpId, result: HttpResult) {
        let d = self.latency();
        let input = Input::Http { id, result };
        self.input_later(w, d, input);
    }

    /// Submits the next job: a random kind, a synthetic task.
    pub(crate) fn submit(&mut self) {
        let n = self.submitted.len();
        let kind = TaskKind::ALL[self.rng.below(5) as usize];
        let task = testing::task(kind, &format!("sim prompt {n}"));
        match self.studio.submit(self.time(), JobSpec::synthetic(task)) {
            Ok(id) => {
                self.hash_str("submit", &id);
                if self.poison_job() {
                    self.poisoned.insert(id.clone());
                }
                self.submitted.push(id);
            }
            Err(e) => self.violation(format!("submit refused: {e}")),
        }
        self.drain_studio();
    }
}
