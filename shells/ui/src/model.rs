//! What the window shows, as the daemon's local control API reports it: `/daemon/status`,
//! `/daemon/logs` and `/daemon/settings` bodies, read with serde. Every field the window does
//! not need is ignored and every field has a default, so a daemon of another version still
//! shows.

use serde::Deserialize;
use serde_json::{Map, Value};

/// `GET /daemon/status`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub config_path: String,
    pub crash_reports: bool,
    pub worker_id: Option<String>,
    /// `connected`, `connecting`, `backoff`, `awaiting_approval`, `stopping`.
    pub session: String,
    pub registration_request_id: Option<String>,
    pub paused: bool,
    pub enabled: bool,
    pub busy: bool,
    pub current_job: Option<CurrentJob>,
    pub updating: bool,
    pub recent_jobs: Vec<RecentJob>,
    pub last_heartbeat_ack_ms_ago: Option<u64>,
    pub reconnects: u64,
    pub sessions: u64,
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub vram_total_gb: Option<f64>,
    pub vram_threshold_gb: f64,
    /// Filled by a build that updates itself; `null` before.
    pub last_update_check: Value,
}

/// The job in flight.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CurrentJob {
    pub job_id: String,
    pub kind: String,
    pub model: String,
    pub prompt_preview: Option<String>,
    pub elapsed_ms: u64,
}

/// A finished job (newest first in the status).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RecentJob {
    pub job_id: String,
    pub kind: String,
    pub model: String,
    /// `completed` or `failed`.
    pub outcome: String,
    pub ms: u64,
}

/// One line of `GET /daemon/logs`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LogEntry {
    pub seq: u64,
    pub ts: String,
    pub level: String,
    pub category: String,
    pub message: String,
    pub job_id: Option<String>,
}

/// `GET /daemon/logs?after=SEQ`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    pub next: u64,
}

/// `GET` / `PATCH /daemon/settings`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SettingsReply {
    pub settings: Map<String, Value>,
    pub live: Vec<String>,
    pub applied: Vec<String>,
    pub restart_required: Vec<String>,
}

/// What the tray icon's colour says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Connected, no job (green).
    Idle,
    /// A job in flight, or paused / disabled / connecting / awaiting approval (amber).
    Busy,
    /// No daemon answers, or the studio refuses it (red).
    Down,
}

/// Reads an API body as `T`: `null` counts as absent (the field's default), whatever the
/// field's type, so a daemon that has no value for a figure yet still reads.
pub fn read<T: serde::de::DeserializeOwned>(mut body: Value) -> Result<T, serde_json::Error> {
    fn strip_nulls(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.retain(|_, v| !v.is_null());
                o.values_mut().for_each(strip_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    strip_nulls(&mut body);
    serde_json::from_value(body)
}

impl DaemonStatus {
    /// The badge text of the session.
    pub fn session_label(&self) -> &'static str {
        match self.session.as_str() {
            "connected" => "connected",
            "connecting" => "connecting",
            "backoff" => "backoff",
            "awaiting_approval" => "awaiting approval",
            "stopping" => "stopping",
            _ => "unknown",
        }
    }

    /// Idle, busy or down, for the tray.
    pub fn health(&self) -> Health {
        match self.session.as_str() {
            "connected" if self.busy || self.paused || !self.enabled => Health::Busy,
            "connected" => Health::Idle,
            "connecting" | "awaiting_approval" | "stopping" => Health::Busy,
            _ => Health::Down,
        }
    }

    /// What the operator must do before this worker gets jobs, if anything.
    pub fn operator_action(&self) -> Option<String> {
        match (&self.worker_id, self.session.as_str()) {
            (_, "awaiting_approval") => Some(match &self.registration_request_id {
                Some(id) => format!(
                    "Waiting for approval: ask the studio's operator to approve registration \
                     request {id} in the dashboard."
                ),
                None => "Waiting for approval: the registration request is being sent.".into(),
            }),
            (None, _) => Some(
                "Not registered yet: the worker asks the studio to register it when it \
                 connects; an operator approves it in the dashboard."
                    .into(),
            ),
            _ => None,
        }
    }
}

/// `ms` as a short duration (`850 ms`, `12.4 s`, `3 min 05 s`, `2 h 01 min`).
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_400), "12.4 s");
        assert_eq!(duration(185_000), "3 min 05 s");
        assert_eq!(duration(7_260_000), "2 h 01 min");
    }

    #[test]
    fn health_follows_the_session_and_the_slot() {
        let mut st = DaemonStatus {
            session: "connected".into(),
            enabled: true,
            ..DaemonStatus::default()
        };
        assert_eq!(st.health(), Health::Idle);
        st.busy = true;
        assert_eq!(st.health(), Health::Busy);
        st.busy = false;
        st.paused = true;
        assert_eq!(st.health(), Health::Busy);
        st.session = "backoff".into();
        assert_eq!(st.health(), Health::Down);
    }

    #[test]
    fn an_unknown_or_partial_body_still_reads() {
        let st: DaemonStatus = read(serde_json::json!(
            {"session":"connected","future":1,"currentJob":null,"updating":null}
        ))
        .unwrap();
        assert_eq!(st.session_label(), "connected");
        assert_eq!(st.current_job, None);
    }
}
