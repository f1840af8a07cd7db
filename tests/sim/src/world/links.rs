//! The simulated network: one [`Link`] per WebSocket a worker opened, carrying frames and
//! closes between a worker machine and the studio machine with latency, in order, and
//! under the link faults of [`crate::world::faults`].
//!
//! A link is the core's [`testing::Link`] (the socket's id on each side, and the input each
//! side's action becomes on the other) plus what the network does to it: whether each side
//! still has it open, and the faults on it. Frames of one direction arrive in the order they
//! were sent: a frame's delivery time is at least the previous one's on that link and
//! direction (and after any stall), so order holds under delays and stalls. The studio's
//! id of a link is its index in [`World::links`].

use studio_core::studio::{ConnId as StudioConnId, StudioInput};
use studio_core::testing;
use studio_core::worker::{ConnId, ConnectError, Input};
use studio_core::Mono;

use crate::world::faults::is_result_frame;
use crate::world::{Event, World};

/// One simulated WebSocket.
pub(crate) struct Link {
    /// The socket's id on each side.
    pub ids: testing::Link,
    /// The worker (index) that opened it.
    pub worker: usize,
    /// The worker has not closed it nor seen it end.
    pub worker_open: bool,
    /// The studio has not closed it nor seen it end.
    pub studio_open: bool,
    /// Reset (or the studio went down): nothing more is carried.
    pub dead: bool,
    /// Fault: both directions are silently lost.
    pub half_open: bool,
    /// Fault: a frame was lost; everything after it is lost too until the reset.
    pub dropping: bool,
    /// Fault: frames from the worker are lost.
    pub cut_to_studio: bool,
    /// Fault: frames to the worker are lost.
    pub cut_to_worker: bool,
    /// Fault: nothing arrives before this.
    pub stall_until: Mono,
    /// When the last frame sent each way arrives (the order guarantee).
    pub last_to_studio: Mono,
    pub last_to_worker: Mono,
    /// The worker has sent a frame on it (the duplicate fault strikes at the first).
    pub first_sent: bool,
}

impl Link {
    fn new(worker: usize, conn: ConnId, index: usize) -> Link {
        Link {
            ids: testing::Link {
                worker: conn,
                studio: StudioConnId(index as u64),
            },
            worker,
            worker_open: true,
            studio_open: true,
            dead: false,
            half_open: false,
            dropping: false,
            cut_to_studio: false,
            cut_to_worker: false,
            stall_until: Mono::ZERO,
            last_to_studio: Mono::ZERO,
            last_to_worker: Mono::ZERO,
            first_sent: false,
        }
    }

    /// Whether a frame the worker sends now is carried (rather than lost).
    fn carries_to_studio(&self) -> bool {
        !(self.dead || self.half_open || self.dropping || self.cut_to_studio)
    }

    /// Whether a frame the studio sends now is carried (rather than lost).
    fn carries_to_worker(&self) -> bool {
        !(self.dead || self.half_open || self.dropping || self.cut_to_worker) && self.worker_open
    }

    /// Whether a frame arriving now at the studio is delivered.
    fn delivers_to_studio(&self) -> bool {
        !(self.dead || !self.studio_open || self.half_open || self.cut_to_studio)
    }

    /// Whether a frame arriving now at the worker is delivered.
    fn delivers_to_worker(&self) -> bool {
        !(self.dead || !self.worker_open || self.half_open || self.cut_to_worker)
    }

    /// Open on both sides with no fault on it.
    pub fn clean(&self) -> bool {
        self.worker_open
            && self.studio_open
            && !self.dead
            && !self.half_open
            && !self.cut_to_studio
            && !self.cut_to_worker
    }

    /// Every fault lifted (at heal, just before the link is reset clean).
    pub fn heal(&mut self) {
        self.half_open = false;
        self.cut_to_worker = false;
        self.cut_to_studio = false;
        self.dropping = false;
        self.stall_until = Mono::ZERO;
        self.dead = false;
    }
}

/// What a link carries to a worker, as it waits in the event queue: a frame (nearly every
/// one) as its connection and text, anything else (the upgrade, a close) boxed. An
/// [`Input`] is 120 bytes and every queued event is as large as the largest; this keeps an
/// event within one cache line.
#[derive(Debug)]
pub(crate) enum LinkInput {
    Frame { conn: ConnId, text: String },
    Other(Box<Input>),
}

impl From<Input> for LinkInput {
    fn from(input: Input) -> LinkInput {
        match input {
            Input::Frame { conn, text } => LinkInput::Frame { conn, text },
            other => LinkInput::Other(Box::new(other)),
        }
    }
}

impl From<LinkInput> for Input {
    fn from(input: LinkInput) -> Input {
        match input {
            LinkInput::Frame { conn, text } => Input::Frame { conn, text },
            LinkInput::Other(input) => *input,
        }
    }
}

/// What one worker's connections are: `(its connection id, link)` for each link still open
/// on either side. A few at most, so a list beside the worker's state beats a fleet-wide
/// map.
#[derive(Default)]
pub(crate) struct ConnLinks(Vec<(ConnId, usize)>);

impl ConnLinks {
    pub fn get(&self, conn: ConnId) -> Option<usize> {
        self.0
            .iter()
            .find(|&&(c, _)| c == conn)
            .map(|&(_, link)| link)
    }

    fn insert(&mut self, conn: ConnId, link: usize) {
        self.remove(conn);
        self.0.push((conn, link));
    }

    fn remove(&mut self, conn: ConnId) {
        self.0.retain(|&(c, _)| c != conn);
    }

    /// Forgets `conn` if it is still `link` (a restarted process may reuse the number).
    fn remove_link(&mut self, conn: ConnId, link: usize) {
        self.0.retain(|&(c, l)| !(c == conn && l == link));
    }

    /// Forgets every connection (the process died), returning their links.
    pub fn take(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.0)
            .into_iter()
            .map(|(_, link)| link)
            .collect()
    }
}

impl World {
    /// The worker's upgrade request reaches the studio: refused while it is down, else
    /// authorised by the studio machine (a new link, open on both sides: the studio is told
    /// now, the worker a latency later) or failed.
    pub(crate) fn connect_arrives(&mut self, w: usize, conn: ConnId, url: &str, token: &str) {
        if !self.studio_up {
            let d = self.latency();
            let error = ConnectError::Transport(testing::REFUSED.into());
            let input = Input::ConnectFailed { conn, error };
            self.input_later(w, d, input);
            return;
        }
        match testing::studio_upgrade(&self.studio, url, token) {
            Ok(worker_id) => {
                if !self.wid_index.contains_key(&worker_id) {
                    self.wid_index.insert(worker_id.clone(), w);
                }
                let link = self.links.len();
                self.links.push(Link::new(w, conn, link));
                self.live.insert(link);
                self.workers[w].conn_links.insert(conn, link);
                self.current_link[w] = Some(link);
                let (to_worker, to_studio) = self.links[link].ids.opened(worker_id);
                self.studio_handle(to_studio);
                self.send_to_worker(link, to_worker);
            }
            Err(error) => {
                let d = self.latency();
                let input = Input::ConnectFailed { conn, error };
                self.input_later(w, d, input);
            }
        }
    }

    /// Puts what the worker did on `link` on the wire to the studio (or loses it).
    fn send_to_studio(&mut self, link: usize, input: StudioInput) {
        if !self.links[link].carries_to_studio() {
            return;
        }
        let d = self.latency();
        let l = &mut self.links[link];
        let t = (self.now + d).max(l.last_to_studio).max(l.stall_until);
        l.last_to_studio = t;
        self.at(t, Event::ToStudio { link, input });
    }

    /// Puts what the studio did on `link` on the wire to the worker (or loses it).
    fn send_to_worker(&mut self, link: usize, input: Input) {
        if !self.links[link].carries_to_worker() {
            return;
        }
        let d = self.latency();
        let l = &mut self.links[link];
        let t = (self.now + d).max(l.last_to_worker).max(l.stall_until);
        l.last_to_worker = t;
        let input = input.into();
        self.at(t, Event::ToWorker { link, input });
    }

    /// The worker sends `text` on `conn`. The first frame on a new link may be followed by
    /// the last result frame of an earlier link (the duplicate fault).
    pub(crate) fn worker_sends(&mut self, w: usize, conn: ConnId, text: String) {
        let Some(link) = self.workers[w].conn_links.get(conn) else {
            return;
        };
        if !self.links[link].worker_open {
            return;
        }
        let first = !self.links[link].first_sent;
        self.links[link].first_sent = true;
        // Only the first frame on a link may repeat the last result (a copy per frame was
        // an allocation per heartbeat of every worker that had finished a job).
        let previous = if first {
            self.workers[w].last_result_frame.clone()
        } else {
            None
        };
        if is_result_frame(&text) {
            self.workers[w].last_result_frame = Some((link, text.clone()));
        }
        let ids = self.links[link].ids;
        if let Some(input) = ids.worker_sent(conn, text) {
            self.send_to_studio(link, input);
        }
        if first && self.duplicate_result() {
            let again = previous.filter(|(old, _)| *old != link);
            if let Some(input) = again.and_then(|(_, text)| ids.worker_sent(conn, text)) {
                self.send_to_studio(link, input);
            }
        }
    }

    /// The worker closes `conn`.
    pub(crate) fn worker_closes(&mut self, w: usize, conn: ConnId) {
        let Some(link) = self.workers[w].conn_links.get(conn) else {
            return;
        };
        if self.links[link].worker_open {
            self.links[link].worker_open = false;
            if let Some(input) = self.links[link].ids.worker_closed(conn) {
                self.send_to_studio(link, input);
            }
            self.retire_if_closed(link);
        }
    }

    /// The studio sends `text` on `conn`; an offer is noted as offered to that worker (the
    /// dispatch check), and under [`crate::Sabotage::CrossWireOffers`] sometimes also
    /// delivered to another worker.
    pub(crate) fn studio_sends(&mut self, conn: StudioConnId, text: String) {
        let link = conn.0 as usize;
        let worker = self.links[link].worker;
        let mut text = text;
        if text.starts_with(r#"{"type":"offer""#) {
            self.note_offer(worker, &text);
            let offer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let job_id = offer["claim"]["jobId"].as_str().unwrap_or_default();
            if self.poisoned.contains(job_id) {
                // An unknown task kind: the frame no longer decodes, its job id still reads.
                text = text.replacen(r#""kind":""#, r#""kind":"sculpt","was":""#, 1);
                self.report.poison_offers += 1;
            }
            if self.cross_wired() {
                let other = (worker + 1) % self.cfg.workers;
                if let Some(wrong) = self.current_link[other] {
                    let ids = self.links[wrong].ids;
                    if let Some(input) = ids.studio_sent(ids.studio, text.clone()) {
                        self.send_to_worker(wrong, input);
                    }
                }
            }
        }
        if let Some(input) = self.links[link].ids.studio_sent(conn, text) {
            self.send_to_worker(link, input);
        }
    }

    /// The studio closes `conn` with `code` and `reason`.
    pub(crate) fn studio_closes(&mut self, conn: StudioConnId, code: u16, reason: String) {
        let link = conn.0 as usize;
        if self.links[link].studio_open {
            self.links[link].studio_open = false;
            if let Some(input) = self.links[link].ids.studio_closed(conn, code, reason) {
                self.send_to_worker(link, input);
            }
            self.retire_if_closed(link);
        }
    }

    /// Something the worker did on `link` arrives at the studio.
    pub(crate) fn deliver_to_studio(&mut self, link: usize, input: StudioInput) {
        if !self.links[link].delivers_to_studio() {
            return;
        }
        let closed = matches!(input, StudioInput::Disconnected { .. });
        if closed {
            self.links[link].studio_open = false;
        }
        if let StudioInput::Frame { text, .. } = &input {
            self.note_result_arrived(self.links[link].worker, text);
        }
        self.studio_handle(input);
        if closed {
            self.retire_if_closed(link);
        }
    }

    /// Something the studio did on `link` arrives at the worker.
    pub(crate) fn deliver_to_worker(&mut self, link: usize, input: Input) {
        if !self.links[link].delivers_to_worker() {
            return;
        }
        let closed = matches!(input, Input::Disconnected { .. });
        if closed {
            self.links[link].worker_open = false;
        }
        let w = self.links[link].worker;
        let reoffered = self.reoffer_of_held_fail(w, &input);
        self.feed(w, input);
        if let Some(job_id) = reoffered {
            self.note_fail_superseded(w, job_id);
        }
        if closed {
            self.retire_if_closed(link);
        }
    }

    /// Forgets a link closed on both sides.
    pub(crate) fn retire_if_closed(&mut self, link: usize) {
        let l = &self.links[link];
        if !l.worker_open && !l.studio_open {
            self.live.remove(&link);
            let (w, conn) = (l.worker, l.ids.worker);
            self.workers[w].conn_links.remove_link(conn, link);
            if self.current_link[w] == Some(link) {
                self.current_link[w] = None;
            }
        }
    }

    /// The link breaks under both sides: each sees it end a latency later.
    pub(crate) fn reset(&mut self, link: usize) {
        if self.links[link].dead {
            return;
        }
        self.links[link].dead = true;
        let d1 = self.latency();
        let d2 = self.latency();
        self.after(d1, Event::WorkerSeesReset { link });
        self.after(d2, Event::StudioSeesReset { link });
    }

    /// The worker learns that `link` ended without a close frame.
    pub(crate) fn worker_sees_reset(&mut self, link: usize) {
        if self.links[link].worker_open {
            self.links[link].worker_open = false;
            let (input, _) = self.links[link].ids.reset(RESET);
            self.feed(self.links[link].worker, input);
            self.retire_if_closed(link);
        }
    }

    /// The studio learns that `link` ended.
    pub(crate) fn studio_sees_reset(&mut self, link: usize) {
        if self.links[link].studio_open {
            self.links[link].studio_open = false;
            let (_, input) = self.links[link].ids.reset(RESET);
            self.studio_handle(input);
            self.retire_if_closed(link);
        }
    }
}

/// What a worker is told when its link breaks.
const RESET: &str = "connection reset";
