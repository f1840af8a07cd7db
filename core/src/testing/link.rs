//! [`Link`]: one socket as the two machines see it.

use crate::studio::{self, StudioInput};
use crate::worker::{self, Input};

/// One WebSocket between a worker machine and the studio machine, by the id each side
/// gave it. Each method turns what one side did on *its* id into the other side's input,
/// or `None` when the id is not this link's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The worker's id of the socket (`Command::Connect`).
    pub worker: worker::ConnId,
    /// The studio's id of the socket (`StudioInput::Connected`).
    pub studio: studio::ConnId,
}

impl Link {
    /// The studio accepted the upgrade for `worker_id`: what each side is told.
    pub fn opened(&self, worker_id: String) -> (Input, StudioInput) {
        (
            Input::Connected { conn: self.worker },
            StudioInput::Connected {
                conn: self.studio,
                worker_id,
            },
        )
    }

    /// The worker sent `text` on `conn`: the studio receives it.
    pub fn worker_sent(&self, conn: worker::ConnId, text: String) -> Option<StudioInput> {
        (conn == self.worker).then_some(StudioInput::Frame {
            conn: self.studio,
            text,
        })
    }

    /// The worker closed `conn`: the studio sees the socket end.
    pub fn worker_closed(&self, conn: worker::ConnId) -> Option<StudioInput> {
        (conn == self.worker).then_some(StudioInput::Disconnected { conn: self.studio })
    }

    /// The studio sent `text` on `conn`: the worker receives it.
    pub fn studio_sent(&self, conn: studio::ConnId, text: String) -> Option<Input> {
        (conn == self.studio).then_some(Input::Frame {
            conn: self.worker,
            text,
        })
    }

    /// The studio closed `conn` with `code` and `reason`: the worker receives the close.
    pub fn studio_closed(&self, conn: studio::ConnId, code: u16, reason: String) -> Option<Input> {
        (conn == self.studio).then_some(Input::Disconnected {
            conn: self.worker,
            code: Some(code),
            reason,
        })
    }

    /// The socket broke under both (a reset, a restart): what each side sees.
    pub fn reset(&self, reason: &str) -> (Input, StudioInput) {
        (
            Input::Disconnected {
                conn: self.worker,
                code: None,
                reason: reason.into(),
            },
            StudioInput::Disconnected { conn: self.studio },
        )
    }
}
