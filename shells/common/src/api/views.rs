//! What the local control API answers, written from the core's own report: the JSON of
//! `/healthz`, `/daemon/status`, `/daemon/logs` and `/daemon/config`, and the Prometheus
//! text of `/metrics`. Every function here is pure: a [`Live`] snapshot (taken on the
//! loop thread by a [`crate::Control::query`]) in, a value out.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};
use serde_json::{json, Value};
use studio_core::wire::{LogEntry, TaskKind};
use studio_core::worker::{
    JobStats, JobStatus, JobSummary, SessionState, StatusSnapshot, UpdateCheck, UpdateOutcome,
    Worker, JOB_DURATION_BUCKETS_MS,
};
use studio_core::Mono;

/// The version both binaries report (`version`, `studio_worker_build_info`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The content type of `/metrics`: the Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The core's state at one instant, as the API reads it.
#[derive(Clone, Debug)]
pub struct Live {
    /// The core's status snapshot.
    pub status: StatusSnapshot,
    /// The loop's monotonic time when it was taken (for elapsed times).
    pub now: Mono,
    /// The GPU memory the worker advertises (`vramTotalGb`).
    pub vram_total_gb: f32,
}

impl Live {
    /// Reads the core (on the loop thread).
    pub fn of(worker: &Worker, now: Mono) -> Live {
        Live {
            status: worker.status(),
            now,
            vram_total_gb: worker.config().host.vram_total_gb,
        }
    }

    fn ms_since(&self, then: Mono) -> u64 {
        millis(self.now.saturating_since(then))
    }

    /// Whether the one-job slot is held (a job, or an update being installed).
    pub fn busy(&self) -> bool {
        self.status.current_job_id.is_some() || self.status.updating.is_some()
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The session as the API names it: `awaiting_approval`, `connecting`, `connected`,
/// `backoff` or `stopping` (a shutdown under way, or the worker about to exit).
pub fn session_label(st: &StatusSnapshot) -> &'static str {
    if st.stopping || st.exited {
        return "stopping";
    }
    match st.session {
        SessionState::WaitingForApproval => "awaiting_approval",
        SessionState::Connecting => "connecting",
        SessionState::Connected => "connected",
        SessionState::Reconnecting { .. } => "backoff",
        SessionState::AuthFailed { .. } | SessionState::Fatal { .. } | SessionState::Stopped => {
            "stopping"
        }
    }
}

fn kind_name(kind: TaskKind) -> Value {
    serde_json::to_value(kind).unwrap_or(Value::Null)
}

/// `GET /healthz`.
pub fn health(live: &Live) -> Value {
    json!({
        "ok": true,
        "version": VERSION,
        "session": session_label(&live.status),
        "busy": live.busy(),
        "paused": live.status.paused,
    })
}

fn current_job(live: &Live, job: &JobSummary) -> Value {
    json!({
        "jobId": job.job_id,
        "kind": kind_name(job.kind),
        "model": job.model,
        "promptPreview": job.prompt_preview,
        "elapsedMs": live.ms_since(job.started),
    })
}

fn recent_job(job: &JobSummary) -> Option<Value> {
    let outcome = match job.status {
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Running => return None,
    };
    let ms = job
        .finished
        .map(|f| millis(f.saturating_since(job.started)));
    Some(json!({
        "jobId": job.job_id,
        "kind": kind_name(job.kind),
        "model": job.model,
        "outcome": outcome,
        "ms": ms,
    }))
}

/// `GET /daemon/status`. `config_path` names the worker's config file.
pub fn status(live: &Live, config_path: &str) -> Value {
    let st = &live.status;
    let awaiting = matches!(st.session, SessionState::WaitingForApproval);
    json!({
        "version": VERSION,
        "pid": std::process::id(),
        "crashReports": crate::telemetry::enabled(),
        "configPath": config_path,
        "workerId": st.worker_id,
        "session": session_label(st),
        "registrationRequestId": if awaiting { st.registration_request_id.clone() } else { None },
        "reconnectAttempt": st.reconnect_attempt,
        "paused": st.paused,
        "enabled": st.enabled,
        "busy": live.busy(),
        "currentJob": st.current_job.as_ref().map(|j| current_job(live, j)),
        "updating": st.updating,
        "recentJobs": st.recent_jobs.iter().filter_map(recent_job).collect::<Vec<_>>(),
        "lastHeartbeatAckMsAgo": st.last_heartbeat_ack.map(|t| live.ms_since(t)),
        "reconnects": st.stats.reconnects,
        "sessions": st.stats.sessions,
        "jobsCompleted": st.stats.completed,
        "jobsFailed": st.stats.failed,
        "vramTotalGb": live.vram_total_gb,
        "vramThresholdGb": st.vram_threshold_gb,
        "lastUpdateCheck": st.last_update_check.as_ref().map(update_check),
    })
}

/// The last update check (`lastUpdateCheck`, `POST /daemon/check-update`): when, the
/// running version, `result` (`up_to_date`, `available` or `failed`), `latest` (when one is
/// available), `error` (when it failed) and `text`, the line `check-update` prints.
pub fn update_check(check: &UpdateCheck) -> Value {
    let (result, latest, error) = match &check.outcome {
        UpdateOutcome::UpToDate => ("up_to_date", None, None),
        UpdateOutcome::Available(v) => ("available", Some(v.clone()), None),
        UpdateOutcome::Failed(e) => ("failed", None, Some(e.clone())),
    };
    json!({
        "at": check.at.to_rfc3339(),
        "current": check.current,
        "result": result,
        "latest": latest,
        "error": error,
        "text": update_check_text(check),
    })
}

/// One line for a person: `up to date: X`, `update available: X -> Y` or `update check
/// failed: ...`.
pub fn update_check_text(check: &UpdateCheck) -> String {
    match &check.outcome {
        UpdateOutcome::UpToDate => format!("up to date: {}", check.current),
        UpdateOutcome::Available(v) => format!("update available: {} -> {v}", check.current),
        UpdateOutcome::Failed(e) => format!("update check failed: {e}"),
    }
}

/// `GET /daemon/config`: the settings a running worker applies at once (and saves).
pub fn settings(st: &StatusSnapshot) -> Value {
    json!({
        "vramThresholdGb": st.vram_threshold_gb,
        "autoEnabled": st.enabled,
    })
}

/// `GET /daemon/logs?after=SEQ`: the kept entries numbered after `after`, and the number
/// to ask after next time (the last one given, or `after` when there is nothing new; the
/// newest number when `after` is ahead of it, e.g. after a restart).
pub fn logs<'a>(
    entries: impl Iterator<Item = (u64, &'a LogEntry)>,
    after: u64,
    newest: u64,
) -> Value {
    let mut next = after.min(newest);
    let entries: Vec<Value> = entries
        .map(|(seq, e)| {
            next = seq;
            let mut v = json!({
                "seq": seq,
                "ts": e.ts,
                "level": e.level,
                "category": e.category,
                "message": e.message,
            });
            if let Some(job_id) = &e.job_id {
                v["jobId"] = json!(job_id);
            }
            v
        })
        .collect();
    json!({ "entries": entries, "next": next })
}

// ------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::default();
            l.set_name((*name).to_string());
            l.set_value((*value).to_string());
            l
        })
        .collect()
}

fn counter(value: u64, pairs: &[(&str, &str)]) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(value: f64, pairs: &[(&str, &str)]) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn histogram(stats: &JobStats, pairs: &[(&str, &str)]) -> Metric {
    let mut cumulative = 0;
    let buckets = JOB_DURATION_BUCKETS_MS
        .iter()
        .zip(stats.duration_buckets)
        .map(|(bound_ms, n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound_ms as f64 / 1000.0);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(stats.count());
    h.set_sample_sum(stats.duration_sum_us as f64 / 1e6);
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// `GET /metrics`: the Prometheus text format 0.0.4 of the core's counters and state, plus
/// `download_bytes` (the model bytes the engines received, which the core never sees).
/// Every kind and outcome is listed from the start, at zero until it happens.
pub fn metrics(live: &Live, download_bytes: u64) -> String {
    let st = &live.status;
    let empty = JobStats::default();
    let per_kind = |kind: TaskKind| st.stats.jobs.get(&kind).unwrap_or(&empty);
    let kind_str = |kind: TaskKind| kind.to_string();
    let mut jobs = Vec::new();
    let mut durations = Vec::new();
    for kind in TaskKind::ALL {
        let k = kind_str(kind);
        let stats = per_kind(kind);
        jobs.push(counter(
            stats.completed,
            &[("kind", &k), ("outcome", "completed")],
        ));
        jobs.push(counter(
            stats.failed,
            &[("kind", &k), ("outcome", "failed")],
        ));
        durations.push(histogram(stats, &[("kind", &k)]));
    }
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let families = [
        family(
            "studio_worker_jobs_total",
            "Jobs finished, by kind and outcome (completed: delivered to the studio).",
            MetricType::COUNTER,
            jobs,
        ),
        family(
            "studio_worker_job_duration_seconds",
            "Time from dispatch to a job's outcome, by kind.",
            MetricType::HISTOGRAM,
            durations,
        ),
        family(
            "studio_worker_session_connected",
            "1 while the session with the studio is welcomed.",
            MetricType::GAUGE,
            vec![gauge(
                flag(matches!(st.session, SessionState::Connected) && !st.exited),
                &[],
            )],
        ),
        family(
            "studio_worker_reconnects_total",
            "Reconnects scheduled after a lost session or a failed connection attempt.",
            MetricType::COUNTER,
            vec![counter(st.stats.reconnects, &[])],
        ),
        family(
            "studio_worker_upload_retries_total",
            "Result uploads retried after a 5xx or a transport error.",
            MetricType::COUNTER,
            vec![counter(st.stats.upload_retries, &[])],
        ),
        family(
            "studio_worker_undecodable_offers_total",
            "Offers failed at once (not retryable) because they could not be decoded; not in studio_worker_jobs_total, having no kind.",
            MetricType::COUNTER,
            vec![counter(st.stats.undecodable_offers, &[])],
        ),
        family(
            "studio_worker_log_entries_dropped_total",
            "Log entries dropped because the ship queue was full.",
            MetricType::COUNTER,
            vec![counter(st.log_dropped_total, &[])],
        ),
        family(
            "studio_worker_busy",
            "1 while the one-job slot is held (a job, or an update being installed).",
            MetricType::GAUGE,
            vec![gauge(flag(live.busy()), &[])],
        ),
        family(
            "studio_worker_paused",
            "1 while the operator has paused the worker (runtime only).",
            MetricType::GAUGE,
            vec![gauge(flag(st.paused), &[])],
        ),
        family(
            "studio_worker_enabled",
            "1 while auto_enabled is on (0: offers are rejected until enabled).",
            MetricType::GAUGE,
            vec![gauge(flag(st.enabled), &[])],
        ),
        family(
            "studio_worker_model_download_bytes_total",
            "Model file bytes received from the network.",
            MetricType::COUNTER,
            vec![counter(download_bytes, &[])],
        ),
        family(
            "studio_worker_vram_threshold_gb",
            "The VRAM threshold advertised to the studio, in GB.",
            MetricType::GAUGE,
            vec![gauge(f64::from(st.vram_threshold_gb), &[])],
        ),
        family(
            "studio_worker_build_info",
            "Always 1; the version in a label.",
            MetricType::GAUGE,
            vec![gauge(1.0, &[("version", VERSION)])],
        ),
    ];
    let mut out = Vec::new();
    match TextEncoder::new().encode(&families, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(e) => {
            tracing::error!("cannot write the metrics: {e}");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use studio_core::worker::{Credentials, Input, Now, WorkerConfig};
    use studio_core::WallMs;

    #[test]
    fn an_update_check_reads_as_json_and_as_a_line() {
        let check = |outcome| UpdateCheck {
            seq: 1,
            at: WallMs(1_779_710_400_000),
            current: "0.1.0".into(),
            outcome,
        };
        let v = update_check(&check(UpdateOutcome::Available("0.2.0".into())));
        assert_eq!(
            v,
            json!({"at": "2026-05-25T12:00:00.000Z", "current": "0.1.0", "result": "available",
                   "latest": "0.2.0", "error": null, "text": "update available: 0.1.0 -> 0.2.0"})
        );
        let v = update_check(&check(UpdateOutcome::UpToDate));
        assert_eq!(
            (&v["result"], &v["text"]),
            (&json!("up_to_date"), &json!("up to date: 0.1.0"))
        );
        let v = update_check(&check(UpdateOutcome::Failed("HTTP 500".into())));
        assert_eq!(v["result"], "failed");
        assert_eq!(v["error"], "HTTP 500");
        assert_eq!(v["text"], "update check failed: HTTP 500");
    }

    fn live_worker() -> (Worker, Mono) {
        let mut cfg = WorkerConfig::for_tests("http://127.0.0.1:9");
        cfg.credentials = Some(Credentials {
            worker_id: "w-1".into(),
            auth_token: "tok".into(),
        });
        let mut w = Worker::new(cfg);
        let t = |ms| Now::new(Mono::from_millis(ms), WallMs(1_779_710_400_000 + ms));
        let drain = |w: &mut Worker| {
            while !matches!(w.poll(), studio_core::worker::Command::Wait { .. }) {}
        };
        w.handle(t(0), Input::Start).unwrap();
        drain(&mut w);
        let conn = studio_core::worker::ConnId(1);
        w.handle(t(10), Input::Connected { conn }).unwrap();
        drain(&mut w);
        let welcome = r#"{"type":"welcome","workerId":"w-1","serverTime":"now"}"#;
        w.handle(
            t(20),
            Input::Frame {
                conn,
                text: welcome.into(),
            },
        )
        .unwrap();
        drain(&mut w);
        let offer = json!({"type":"offer","claim":{"jobId":"j-1","gameId":"g","assetName":"a",
            "model":"synthetic-llm","vramGbEstimate":1.0,
            "task":{"kind":"llm","messages":[{"role":"user","content":"hello there"}]},
            "modelSource":{"engine":"synthetic","files":[],
            "cliDefaults":{"cfgScale":1.0,"steps":8,"width":8,"height":8}}}});
        w.handle(
            t(1_000),
            Input::Frame {
                conn,
                text: offer.to_string(),
            },
        )
        .unwrap();
        drain(&mut w);
        w.handle(
            t(1_250),
            Input::JobFinished {
                job_id: "j-1".into(),
                run: w.current_run().unwrap(),
                outcome: studio_core::worker::JobOutcome::Json { result: json!({}) },
            },
        )
        .unwrap();
        drain(&mut w);
        (w, Mono::from_millis(2_000))
    }

    #[test]
    fn status_reads_the_core() {
        let (mut w, now) = live_worker();
        let live = Live::of(&w, now);
        let v = status(&live, "/etc/w/config.toml");
        assert_eq!(v["workerId"], "w-1");
        assert_eq!(v["session"], "connected");
        assert_eq!(v["paused"], false);
        assert_eq!(v["enabled"], true);
        assert_eq!(v["busy"], false);
        assert_eq!(v["currentJob"], Value::Null);
        assert_eq!(
            v["recentJobs"],
            json!([{"jobId":"j-1","kind":"llm","model":"synthetic-llm","outcome":"completed","ms":250}])
        );
        assert_eq!(v["lastHeartbeatAckMsAgo"], Value::Null, "no ack yet");
        assert_eq!(v["reconnects"], 0);
        assert_eq!(v["vramTotalGb"], 24.0);
        assert_eq!(v["configPath"], "/etc/w/config.toml");
        assert_eq!(v["version"], VERSION);

        // A job in flight: elapsed time and the prompt preview; health says busy.
        let offer = json!({"type":"offer","claim":{"jobId":"j-2","gameId":"g","assetName":"a",
            "model":"synthetic-image","vramGbEstimate":1.0,"task":{"kind":"image","prompt":"a fox"},
            "modelSource":{"engine":"synthetic","files":[],
            "cliDefaults":{"cfgScale":1.0,"steps":8,"width":8,"height":8}}}});
        let now3 = Now::new(Mono::from_millis(3_000), WallMs(1_779_710_403_000));
        w.handle(
            now3,
            Input::Frame {
                conn: studio_core::worker::ConnId(1),
                text: offer.to_string(),
            },
        )
        .unwrap();
        let live = Live::of(&w, Mono::from_millis(3_400));
        let v = status(&live, "c");
        assert_eq!(
            v["currentJob"],
            json!({"jobId":"j-2","kind":"image","model":"synthetic-image","promptPreview":"a fox","elapsedMs":400})
        );
        assert_eq!(health(&live)["busy"], true);
        assert_eq!(
            v["recentJobs"].as_array().unwrap().len(),
            1,
            "running jobs are not recent"
        );
    }

    #[test]
    fn session_labels() {
        let (w, now) = live_worker();
        let mut st = Live::of(&w, now).status;
        for (state, label) in [
            (SessionState::WaitingForApproval, "awaiting_approval"),
            (SessionState::Connecting, "connecting"),
            (SessionState::Connected, "connected"),
            (SessionState::Reconnecting { attempt: 2 }, "backoff"),
            (SessionState::Stopped, "stopping"),
        ] {
            st.session = state;
            assert_eq!(session_label(&st), label);
        }
        st.session = SessionState::Connected;
        st.stopping = true;
        assert_eq!(session_label(&st), "stopping");
    }

    #[test]
    fn logs_are_paged_by_sequence_number() {
        let entry = |m: &str, job: Option<&str>| LogEntry {
            ts: "2026-01-01T00:00:00.000Z".into(),
            level: "info".into(),
            category: "ws".into(),
            message: m.into(),
            job_id: job.map(str::to_string),
        };
        let (a, b) = (entry("a", None), entry("b", Some("j-1")));
        let v = logs([(7, &a), (8, &b)].into_iter(), 6, 8);
        assert_eq!(v["next"], 8);
        assert_eq!(v["entries"][0]["seq"], 7);
        assert!(v["entries"][0].get("jobId").is_none());
        assert_eq!(v["entries"][1]["jobId"], "j-1");
        let v = logs(std::iter::empty(), 8, 8);
        assert_eq!(v, json!({"entries": [], "next": 8}));
        // A reader ahead of the worker (it restarted): start again from its newest.
        let v = logs(std::iter::empty(), 900, 12);
        assert_eq!(v["next"], 12);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let (w, now) = live_worker();
        let text = metrics(&Live::of(&w, now), 1234);
        for want in [
            "# TYPE studio_worker_jobs_total counter",
            "studio_worker_jobs_total{kind=\"llm\",outcome=\"completed\"} 1",
            "studio_worker_jobs_total{kind=\"image\",outcome=\"failed\"} 0",
            "# TYPE studio_worker_job_duration_seconds histogram",
            "studio_worker_job_duration_seconds_bucket{kind=\"llm\",le=\"0.25\"} 1",
            "studio_worker_job_duration_seconds_bucket{kind=\"llm\",le=\"0.1\"} 0",
            "studio_worker_job_duration_seconds_bucket{kind=\"llm\",le=\"+Inf\"} 1",
            "studio_worker_job_duration_seconds_sum{kind=\"llm\"} 0.25",
            "studio_worker_job_duration_seconds_count{kind=\"llm\"} 1",
            "studio_worker_session_connected 1",
            "studio_worker_reconnects_total 0",
            "studio_worker_upload_retries_total 0",
            "studio_worker_undecodable_offers_total 0",
            "studio_worker_log_entries_dropped_total 0",
            "studio_worker_busy 0",
            "studio_worker_paused 0",
            "studio_worker_enabled 1",
            "studio_worker_model_download_bytes_total 1234",
            &format!("studio_worker_build_info{{version=\"{VERSION}\"}} 1"),
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing `{want}` in:\n{text}"
            );
        }
        // Every sample line is `name{labels} value` with a number for the value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
