//! The wire codec: every frame of PROTOCOL.md §2 in both directions, the nested types of §3
//! and the HTTP bodies of §4, as serde types.
//!
//! Rules the types follow (PROTOCOL.md §2 "General rules"):
//! * camelCase keys on the wire, the frame discriminator is `type`;
//! * optional fields are omitted when absent (never `null`), explicit `null` is accepted;
//! * unknown extra fields are ignored, unknown `type` values and unknown enum values are
//!   rejected;
//! * task parameters whose default the protocol names are stored as `Option` so a frame
//!   re-serialises exactly as it came in; the accessors (`ImageTask::width()`, ...) apply
//!   the protocol's defaults.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;

/// Largest text frame the core accepts from a peer, in bytes. Larger frames are a protocol
/// error (the session is dropped and re-established), never a panic or an unbounded buffer.
/// Shells pass the same number to their WebSocket library as its message size limit.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// The WebSocket subprotocol both sides must agree on (PROTOCOL.md §5).
pub const SUBPROTOCOL: &str = "studio-worker-v1";

/// WebSocket close codes used by the contract (PROTOCOL.md §3.8).
pub mod close_code {
    /// Normal closure; also the code paired with `internal_error`.
    pub const NORMAL: u16 = 1000;
    /// Authentication failed: terminal for the worker even without an error frame.
    pub const AUTH_FAILED: u16 = 4001;
    /// Protocol violation.
    pub const PROTOCOL_VIOLATION: u16 = 4002;
    /// Another session connected for the same worker id.
    pub const DUPLICATE_WORKER: u16 = 4003;
    /// The worker was deleted in the studio.
    pub const WORKER_DELETED: u16 = 4004;
}

mod frames;
mod http;
mod tasks;

#[cfg(test)]
mod tests;

pub use frames::*;
pub use http::*;
pub use tasks::*;

/// The reasons of the close frames the two machines (and the shells, closing on their own)
/// send. A close reason is free text on the wire; these are the project's, written once.
pub mod close_reason {
    /// The session ended normally: shutdown, update, read idle, or a connection no longer
    /// wanted (it finished connecting too late).
    pub const SESSION_ENDED: &str = "session ended";
    /// The peer broke the protocol (a bad, binary or oversized frame, an error frame).
    pub const PROTOCOL_VIOLATION: &str = "protocol violation";
    /// The upgrade did not finish within the connect timeout.
    pub const CONNECT_TIMEOUT: &str = "connect timeout";
    /// The credentials were refused (`auth_failed`).
    pub const AUTH_FAILED: &str = "auth failed";
    /// Another session of the same worker (`duplicate_worker`).
    pub const DUPLICATE_WORKER: &str = "duplicate worker";
    /// The worker was deleted (`worker_deleted`).
    pub const WORKER_DELETED: &str = "worker deleted";
    /// The studio failed (`internal_error`).
    pub const INTERNAL_ERROR: &str = "internal error";
    /// The studio heard nothing for the session timeout.
    pub const SESSION_TIMED_OUT: &str = "session timed out";
}

// ------------------------------------------------------------------------------------------
// Enumerations
// ------------------------------------------------------------------------------------------

/// Task kinds (PROTOCOL.md §3.4). The declaration order is the wire order of
/// `supportedModelsPerKind` (image, llm, audio_stt, audio_tts, video).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Image,
    Llm,
    AudioStt,
    AudioTts,
    Video,
}

impl TaskKind {
    /// Every kind, in wire order.
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Image,
        TaskKind::Llm,
        TaskKind::AudioStt,
        TaskKind::AudioTts,
        TaskKind::Video,
    ];

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Image => "image",
            TaskKind::Llm => "llm",
            TaskKind::AudioStt => "audio_stt",
            TaskKind::AudioTts => "audio_tts",
            TaskKind::Video => "video",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether results of this kind are uploaded by HTTP multipart (binary) rather than
    /// sent as `completeJson` over the socket (PROTOCOL.md §3.5).
    pub fn is_binary(self) -> bool {
        matches!(self, TaskKind::Image | TaskKind::AudioTts | TaskKind::Video)
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// User presence as sampled by the OS input-idle probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserPresence {
    Idle,
    Active,
}

/// Structured reject codes (PROTOCOL.md §3.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    Busy,
    Paused,
}

/// Error codes of the studio's `error` frame and their paired close codes (PROTOCOL.md §3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerErrorCode {
    AuthFailed,
    ProtocolViolation,
    DuplicateWorker,
    WorkerDeleted,
    InternalError,
}

impl WorkerErrorCode {
    /// Every code, in declaration order (for tests and fuzzers that pick one).
    pub const ALL: [WorkerErrorCode; 5] = [
        WorkerErrorCode::AuthFailed,
        WorkerErrorCode::ProtocolViolation,
        WorkerErrorCode::DuplicateWorker,
        WorkerErrorCode::WorkerDeleted,
        WorkerErrorCode::InternalError,
    ];

    /// The close code the studio pairs with this error (its `closeCodeForError`).
    pub fn close_code(self) -> u16 {
        match self {
            WorkerErrorCode::AuthFailed => close_code::AUTH_FAILED,
            WorkerErrorCode::ProtocolViolation => close_code::PROTOCOL_VIOLATION,
            WorkerErrorCode::DuplicateWorker => close_code::DUPLICATE_WORKER,
            WorkerErrorCode::WorkerDeleted => close_code::WORKER_DELETED,
            WorkerErrorCode::InternalError => close_code::NORMAL,
        }
    }

    /// The reason of the close frame the studio pairs with this error.
    pub fn close_reason(self) -> &'static str {
        match self {
            WorkerErrorCode::AuthFailed => close_reason::AUTH_FAILED,
            WorkerErrorCode::ProtocolViolation => close_reason::PROTOCOL_VIOLATION,
            WorkerErrorCode::DuplicateWorker => close_reason::DUPLICATE_WORKER,
            WorkerErrorCode::WorkerDeleted => close_reason::WORKER_DELETED,
            WorkerErrorCode::InternalError => close_reason::INTERNAL_ERROR,
        }
    }

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerErrorCode::AuthFailed => "auth_failed",
            WorkerErrorCode::ProtocolViolation => "protocol_violation",
            WorkerErrorCode::DuplicateWorker => "duplicate_worker",
            WorkerErrorCode::WorkerDeleted => "worker_deleted",
            WorkerErrorCode::InternalError => "internal_error",
        }
    }
}

/// JSON numbers for `f32` fields: a value beyond `f32`'s range would narrow to infinity,
/// which then encodes as `null` and no longer decodes (found by the `decode_frame` fuzz
/// target). Such values are clamped to the largest finite `f32` of the same sign, so every
/// decoded frame re-encodes to one that decodes to the same value.
pub(super) mod finite_f32 {
    use serde::{Deserialize, Deserializer};

    fn narrow(v: f64) -> f32 {
        v.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
    }

    pub(super) fn de<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        f64::deserialize(d).map(narrow)
    }

    pub(super) fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
        Option::<f64>::deserialize(d).map(|v| v.map(narrow))
    }
}
