//! The machine's state enums, shared by the modules that act on them: the one-job slot
//! ([`Slot`]), the WebSocket link ([`Link`]) and the stop state ([`Stop`]). Kept apart from
//! the behaviour so that the modules depend on this one and not on each other.

use std::sync::Arc;

use crate::time::Mono;
use crate::wire::JobOfferClaim;

use super::{ConnId, HttpId, RunId};

/// What holds the one-job slot.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Slot {
    Free,
    /// A studio job: accepted, dispatched, maybe finished and awaiting delivery.
    Job(Box<ActiveJob>),
    /// The updater is installing a new version.
    Updating {
        version: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct ActiveJob {
    pub(super) claim: Arc<JobOfferClaim>,
    /// The run the engine's result must name; `None` for a result restored from the
    /// outbox (uploaded again, never run here).
    pub(super) run: Option<RunId>,
    pub(super) stage: JobStage,
    pub(super) started: Mono,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum JobStage {
    /// The engine is working on it.
    Running,
    /// Binary result: upload `attempt` (0-based) is in flight as HTTP request `req`.
    Uploading {
        ext: String,
        attempt: u32,
        req: HttpId,
    },
    /// Binary result: waiting for the retry timer before upload `attempt`.
    UploadBackoff { ext: String, attempt: u32 },
}

/// The WebSocket link.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Link {
    /// No connection and none wanted (registration, or terminal).
    Down,
    /// Waiting for the reconnect timer.
    Backoff,
    /// `Connect` issued, waiting for `Connected` (connect timeout armed).
    Connecting { conn: ConnId },
    /// Upgraded, `hello` sent, waiting for `welcome`.
    AwaitWelcome { conn: ConnId },
    /// Welcomed: pumps running.
    Live { conn: ConnId },
}

impl Link {
    /// The connection in use, if any.
    pub(super) fn conn(&self) -> Option<ConnId> {
        match self {
            Link::Connecting { conn } | Link::AwaitWelcome { conn } | Link::Live { conn } => {
                Some(*conn)
            }
            Link::Down | Link::Backoff => None,
        }
    }
}

/// Why the machine is stopping.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Stop {
    Running,
    /// Graceful shutdown asked; waiting for the in-flight job (bounded by the grace timer).
    Draining,
    /// Terminal: `Exit` has been emitted.
    Exited,
}
