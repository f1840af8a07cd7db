//! The frames (PROTOCOL.md §2) in both directions with the capability snapshot and the log
//! entry they carry, and the codec: size-limited decoding, fast paths, encoding.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    finite_f32, JobOfferClaim, RejectCode, Secret, TaskKind, UserPresence, WorkerErrorCode,
    MAX_FRAME_BYTES,
};

// ------------------------------------------------------------------------------------------
// Capabilities (PROTOCOL.md §3.1)
// ------------------------------------------------------------------------------------------

/// The capability snapshot sent in `hello`, `heartbeat` and the register request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCapabilities {
    pub machine_name: String,
    pub username: String,
    pub agent_version: String,
    pub engine: String,
    #[serde(deserialize_with = "finite_f32::de")]
    pub vram_total_gb: f32,
    #[serde(deserialize_with = "finite_f32::de")]
    pub vram_threshold_gb: f32,
    pub auto_enabled: bool,
    pub auto_start: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_update: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_minimised: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_when_idle: Option<bool>,
    pub supported_models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_kinds: Vec<TaskKind>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub supported_models_per_kind: BTreeMap<TaskKind, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_presence: Option<UserPresence>,
}

impl WorkerCapabilities {
    /// Fills `supportedModels` (flat, sorted, de-duplicated) and `taskKinds` (kinds with at
    /// least one model) from `supportedModelsPerKind`.
    pub fn derive_model_lists(&mut self) {
        let mut flat: Vec<String> = self
            .supported_models_per_kind
            .values()
            .flatten()
            .cloned()
            .collect();
        flat.sort();
        flat.dedup();
        self.supported_models = flat;
        self.task_kinds = self
            .supported_models_per_kind
            .iter()
            .filter(|(_, models)| !models.is_empty())
            .map(|(k, _)| *k)
            .collect();
    }

    /// Whether this worker advertises `kind`. Old workers without `taskKinds` advertise
    /// nothing per kind; the studio then treats every kind as served (legacy behaviour).
    pub fn serves_kind(&self, kind: TaskKind) -> bool {
        self.task_kinds.is_empty() || self.task_kinds.contains(&kind)
    }
}

// ------------------------------------------------------------------------------------------
// Log entries (PROTOCOL.md §3.7)
// ------------------------------------------------------------------------------------------

/// One shipped log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// RFC 3339 UTC with milliseconds and `Z`.
    pub ts: String,
    /// `info`, `warn` or `error` in practice.
    pub level: String,
    /// `ws`, `auto-update`, `logs`, `engine`, ...
    pub category: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

// ------------------------------------------------------------------------------------------
// Frames (PROTOCOL.md §2)
// ------------------------------------------------------------------------------------------

/// Worker -> studio frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum WorkerFrame {
    Hello {
        auth_token: Secret,
        capabilities: WorkerCapabilities,
    },
    Heartbeat {
        capabilities: WorkerCapabilities,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_job_id: Option<String>,
    },
    Accept {
        job_id: String,
    },
    Reject {
        job_id: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<RejectCode>,
    },
    CompleteJson {
        job_id: String,
        result: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    Fail {
        job_id: String,
        error: String,
        retryable: bool,
    },
    LogBatch {
        entries: Vec<LogEntry>,
    },
    ReadyForMore,
}

impl WorkerFrame {
    /// The frame's `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            WorkerFrame::Hello { .. } => "hello",
            WorkerFrame::Heartbeat { .. } => "heartbeat",
            WorkerFrame::Accept { .. } => "accept",
            WorkerFrame::Reject { .. } => "reject",
            WorkerFrame::CompleteJson { .. } => "completeJson",
            WorkerFrame::Fail { .. } => "fail",
            WorkerFrame::LogBatch { .. } => "logBatch",
            WorkerFrame::ReadyForMore => "readyForMore",
        }
    }
}

/// Studio -> worker frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum StudioFrame {
    Welcome {
        worker_id: String,
        server_time: String,
    },
    Offer {
        claim: Box<JobOfferClaim>,
    },
    HeartbeatAck,
    CompleteAck {
        job_id: String,
    },
    FailAck {
        job_id: String,
    },
    Error {
        code: WorkerErrorCode,
        message: String,
    },
}

impl StudioFrame {
    /// The frame's `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            StudioFrame::Welcome { .. } => "welcome",
            StudioFrame::Offer { .. } => "offer",
            StudioFrame::HeartbeatAck => "heartbeatAck",
            StudioFrame::CompleteAck { .. } => "completeAck",
            StudioFrame::FailAck { .. } => "failAck",
            StudioFrame::Error { .. } => "error",
        }
    }
}

/// Why a frame could not be decoded. The message names the cause but never echoes the
/// frame (it may carry a token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame is larger than the limit.
    TooLarge { len: usize, limit: usize },
    /// Not valid JSON, unknown `type`, a missing required field or an unknown enum value.
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, limit } => {
                write!(f, "frame of {len} bytes exceeds the {limit}-byte limit")
            }
            DecodeError::Invalid(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(
    text: &str,
    limit: usize,
) -> Result<T, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            limit,
        });
    }
    serde_json::from_str(text).map_err(|e| {
        // serde_json's messages name fields and positions, not values, except for
        // "unknown variant `x`" where x is a type/enum name: safe to show.
        DecodeError::Invalid(e.to_string())
    })
}

/// Decodes a studio -> worker text frame with the default size limit.
pub fn decode_studio_frame(text: &str) -> Result<StudioFrame, DecodeError> {
    decode_studio_frame_limited(text, MAX_FRAME_BYTES)
}

/// Decodes a studio -> worker text frame with the given size limit.
pub fn decode_studio_frame_limited(text: &str, limit: usize) -> Result<StudioFrame, DecodeError> {
    // Performance only: every heartbeat is answered by this exact text, the most common
    // studio frame by far; it decodes as the enum does, without serde's `Content` buffer.
    if text == HEARTBEAT_ACK_TEXT && text.len() <= limit {
        return Ok(StudioFrame::HeartbeatAck);
    }
    decode_with_fast_path(text, limit, decode_studio_frame_fast)
}

/// The fast path of [`decode_studio_frame_limited`] for the frames of every job (`offer`,
/// `completeAck`, `failAck`; see [`HeartbeatFrame`] for why and how); `None` for any other
/// frame and for any error.
pub(super) fn decode_studio_frame_fast(text: &str) -> Option<StudioFrame> {
    if text.starts_with(OFFER_PREFIX) {
        let f = serde_json::from_str::<OfferFrame>(text).ok()?;
        Some(StudioFrame::Offer { claim: f.claim })
    } else if text.starts_with(COMPLETE_ACK_PREFIX) {
        let f = serde_json::from_str::<AckFrame>(text).ok()?;
        Some(StudioFrame::CompleteAck { job_id: f.job_id })
    } else if text.starts_with(FAIL_ACK_PREFIX) {
        let f = serde_json::from_str::<AckFrame>(text).ok()?;
        Some(StudioFrame::FailAck { job_id: f.job_id })
    } else {
        None
    }
}

/// How an `offer` begins when its tag comes first (as this crate and the studio encode it).
const OFFER_PREFIX: &str = r#"{"type":"offer","#;
/// How a `completeAck` begins when its tag comes first.
const COMPLETE_ACK_PREFIX: &str = r#"{"type":"completeAck","#;
/// How a `failAck` begins when its tag comes first.
const FAIL_ACK_PREFIX: &str = r#"{"type":"failAck","#;

/// The `claim.jobId` of a studio frame that is an `offer` but does not decode as a whole
/// (a bad task parameter, an unknown kind, a missing field): `Some` when the frame is a JSON
/// object with `"type":"offer"` and a non-empty string `claim.jobId`. The worker answers
/// such an offer instead of dropping the session (PROTOCOL.md §10).
pub fn undecodable_offer_job_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Offer {
        #[serde(rename = "type")]
        kind: String,
        claim: Claim,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Claim {
        job_id: String,
    }
    let offer: Offer = serde_json::from_str(text).ok()?;
    (offer.kind == "offer" && !offer.claim.job_id.is_empty()).then_some(offer.claim.job_id)
}

/// How [`encode`] writes [`StudioFrame::HeartbeatAck`] (a test pins the two together).
pub(crate) const HEARTBEAT_ACK_TEXT: &str = r#"{"type":"heartbeatAck"}"#;

/// Decodes a worker -> studio text frame with the given size limit.
pub fn decode_worker_frame(text: &str, limit: usize) -> Result<WorkerFrame, DecodeError> {
    decode_with_fast_path(text, limit, decode_worker_frame_fast)
}

/// [`decode`], through `fast` first (a fast path: `None` whenever it does not apply or
/// fails, and then the enum decides, errors included).
fn decode_with_fast_path<T>(
    text: &str,
    limit: usize,
    fast: fn(&str) -> Option<T>,
) -> Result<T, DecodeError>
where
    T: for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
{
    if text.len() <= limit {
        if let Some(frame) = fast(text) {
            debug_assert_eq!(
                serde_json::from_str::<T>(text).ok().as_ref(),
                Some(&frame),
                "the fast path decodes as the enum does"
            );
            return Ok(frame);
        }
    }
    decode(text, limit)
}

/// The fast path of [`decode_worker_frame`] for the frames a worker sends most and the
/// costliest to buffer (`heartbeat`, `logBatch`, `hello`); `None` for any other frame and
/// for any error.
pub(super) fn decode_worker_frame_fast(text: &str) -> Option<WorkerFrame> {
    if text.starts_with(HEARTBEAT_PREFIX) {
        let f = serde_json::from_str::<HeartbeatFrame>(text).ok()?;
        Some(WorkerFrame::Heartbeat {
            capabilities: f.capabilities,
            current_job_id: f.current_job_id,
        })
    } else if text.starts_with(LOG_BATCH_PREFIX) {
        let f = serde_json::from_str::<LogBatchFrame>(text).ok()?;
        Some(WorkerFrame::LogBatch { entries: f.entries })
    } else if text.starts_with(HELLO_PREFIX) {
        let f = serde_json::from_str::<HelloFrame>(text).ok()?;
        Some(WorkerFrame::Hello {
            auth_token: f.auth_token,
            capabilities: f.capabilities,
        })
    } else {
        None
    }
}

/// How every heartbeat this crate encodes begins (the tag first, compact).
const HEARTBEAT_PREFIX: &str = r#"{"type":"heartbeat","#;
/// How every log batch this crate encodes begins.
const LOG_BATCH_PREFIX: &str = r#"{"type":"logBatch","#;
/// How every hello this crate encodes begins.
const HELLO_PREFIX: &str = r#"{"type":"hello","#;

/// Performance only: `heartbeat` is most of the studio's inbound frames, and decoding an
/// internally tagged enum buffers the whole frame into serde's `Content` first (about half
/// of the studio's time per heartbeat). A frame that starts with [`HEARTBEAT_PREFIX`] is
/// decoded straight into this struct: same fields, same defaults, unknown fields ignored,
/// a second `type` key a duplicate-field error, as in the enum. Any error falls back to the
/// enum decode, so results and error messages are the enum's. [`LogBatchFrame`] and
/// [`HelloFrame`] do the same for their variants.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeartbeatFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    capabilities: WorkerCapabilities,
    #[serde(default)]
    current_job_id: Option<String>,
}

/// `logBatch` decoded directly (see [`HeartbeatFrame`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogBatchFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    entries: Vec<LogEntry>,
}

/// `hello` decoded directly (see [`HeartbeatFrame`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HelloFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    auth_token: Secret,
    capabilities: WorkerCapabilities,
}

/// `offer` decoded directly (see [`HeartbeatFrame`]).
#[derive(Deserialize)]
struct OfferFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    claim: Box<JobOfferClaim>,
}

/// `completeAck` and `failAck` decoded directly (see [`HeartbeatFrame`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckFrame {
    #[serde(rename = "type")]
    _tag: serde::de::IgnoredAny,
    job_id: String,
}

/// Encodes any wire value as compact JSON text. Serialising these types cannot fail (all
/// map keys are strings), so this returns a `String` directly.
pub fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("wire types always serialise")
}

/// A `logBatch` of shared entries, borrowed: it encodes to the text [`encode`] gives for
/// `WorkerFrame::LogBatch` with the same entries, without copying them into a frame first
/// (performance only: the machine keeps each batch it ships until a heartbeat ack).
#[derive(Serialize)]
#[serde(tag = "type", rename = "logBatch")]
pub struct LogBatchRef<'a> {
    pub entries: &'a [std::sync::Arc<LogEntry>],
}
