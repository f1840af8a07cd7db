//! End-to-end scenarios of running a worker for months: its local control API, the CLI
//! against a running worker, metrics, one daemon per config and Sentry, on both binaries
//! (the real binary as a subprocess against the real loopback studio). Waits are bounded
//! by generous timeouts; nothing asserts speed.
//!
//! Build the workers first when running this package alone:
//! `cargo build -p studio-worker -p studio-worker-async && cargo test -p studio-e2e --test control`.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use studio_core::wire::{TaskKind, WorkerErrorCode};
use studio_e2e::control::{cli, metric, LocalApi, SentrySink, LOCAL_API_FILE};
use studio_e2e::{for_each_shell, wait_for, wait_until, Bin, Setup, Studio, Worker, WAIT};
use studio_local::Fault;

for_each_shell!(
    the_local_api_answers_its_token_on_loopback_only,
    pause_resume_disable_enable_from_the_cli_change_what_the_studio_sees,
    metrics_count_a_finished_job,
    one_worker_per_config,
    sentry_hears_of_a_fatal_exit_without_any_secret,
);

const WORKER_ID: &str = "w-ctl";
/// Distinctive, so a leak is easy to spot.
const TOKEN: &str = "ctl-token-5e1f0a9b3c";

fn connected(bin: &Bin, setup: Setup) -> (Studio, Worker) {
    let studio = Studio::with_worker(WORKER_ID, TOKEN);
    let worker = Worker::start(bin, &studio, &setup);
    studio.wait_connected(WORKER_ID);
    (studio, worker)
}

fn provisioned() -> Setup {
    Setup::provisioned(WORKER_ID, TOKEN)
}

/// The `autoEnabled` of the worker's last heartbeat, as the studio saw it.
fn studio_sees_auto_enabled(studio: &Studio) -> Option<bool> {
    studio
        .workers()
        .into_iter()
        .find(|w| w.id == WORKER_ID && w.connected)
        .and_then(|w| w.capabilities)
        .map(|c| c.auto_enabled)
}

fn wait_studio_sees(studio: &Studio, enabled: bool) {
    wait_until(
        &format!("the studio to see autoEnabled: {enabled}"),
        WAIT,
        || studio_sees_auto_enabled(studio) == Some(enabled),
    );
}

/// The worker's answer to a probe offer `job_id` (studio-local sends it straight to the
/// worker, past its own selection).
fn probe_reply(studio: &Studio, job_id: &str) -> Value {
    studio.inject_fault(Fault::ProbeOffer {
        worker_id: WORKER_ID.into(),
        job_id: job_id.into(),
        task: Box::new(studio_local::api::task_for(TaskKind::Llm, "probe".into())),
    });
    wait_for(&format!("the worker's answer to {job_id}"), WAIT, || {
        studio
            .probe_replies(WORKER_ID)
            .iter()
            .filter_map(|t| serde_json::from_str::<Value>(t).ok())
            .find(|v| v["jobId"] == job_id)
    })
}

/// `run` serves the API on loopback with a token minted into the config (and masked by
/// `config`), publishes `local-api.json` (0600), answers `/healthz` to anyone on loopback,
/// everything else only with the token, and refuses web pages (Host, Origin) whatever the
/// route, without disturbing the session.
fn the_local_api_answers_its_token_on_loopback_only(bin: &Bin) {
    let (studio, worker) = connected(bin, provisioned());
    let api = LocalApi::of(&worker);
    let file = worker.config_path().parent().unwrap().join(LOCAL_API_FILE);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "local-api.json is private");
    assert!(api.addr.ip().is_loopback());
    let saved = worker.config_table();
    assert_eq!(
        saved["local_api_token"].as_str(),
        Some(api.token.as_str()),
        "the token is the config's"
    );
    assert!(api.token.len() >= 32);

    // The studio counts the session connected once it has sent the welcome; the worker, once
    // it has read it: the health check may see "connecting" for that moment.
    let health = wait_for("the worker to read the welcome", WAIT, || {
        let h = api.call("GET", "/healthz", false, "", "");
        (h.status != 200 || h.json()["session"] == "connected").then_some(h)
    });
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["ok"], true);
    assert_eq!(health.json()["session"], "connected");

    assert_eq!(api.call("GET", "/daemon/status", false, "", "").status, 401);
    let wrong = format!("Authorization: Bearer {TOKEN}\r\n"); // the studio token is not it
    assert_eq!(
        api.call("GET", "/daemon/status", false, &wrong, "").status,
        401
    );
    assert_eq!(api.call("POST", "/daemon/pause", false, "", "").status, 401);

    for (host, origin) in [
        ("evil.example", ""),
        ("127.0.0.1", "Origin: http://evil.example\r\n"),
    ] {
        let raw = format!(
            "GET /healthz HTTP/1.1\r\nHost: {host}\r\n{origin}Authorization: Bearer {}\r\n\r\n",
            api.token
        );
        let a = studio_e2e::control::http_raw(api.addr, raw.as_bytes());
        assert_eq!(a.status, 403, "{host} {origin}: {}", a.body);
    }
    let big = api.call(
        "PATCH",
        "/daemon/config",
        true,
        "",
        &"x".repeat(1024 * 1024 + 1),
    );
    assert_eq!(big.status, 413);
    let garbage = studio_e2e::control::http_raw(api.addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(garbage.status, 400);
    assert!(garbage.json()["error"].is_string());

    let status = api.get("/daemon/status");
    assert_eq!(status["workerId"], WORKER_ID);
    assert_eq!(status["session"], "connected");
    assert_eq!(status["pid"], worker.pid());
    assert_eq!(status["currentJob"], Value::Null);

    // `config` masks the token; the session never noticed any of this.
    let shown = cli(bin, worker.config_path(), &["config"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(!shown.stdout.contains(&api.token), "{}", shown.stdout);
    assert!(shown.stdout.contains("local_api_token = \"<redacted>\""));
    assert!(!worker.stderr().contains(&api.token), "the token is logged");
    assert_eq!(studio.connection_stats(WORKER_ID).connections, 1);
}

/// `pause` / `resume` (runtime) and `disable` / `enable` (saved) from the CLI change what
/// the studio sees at once: autoEnabled in the heartbeat, offers rejected `paused`; with no
/// worker running, `pause` exits 3 and `disable` is saved for the next start.
fn pause_resume_disable_enable_from_the_cli_change_what_the_studio_sees(bin: &Bin) {
    let (studio, mut worker) = connected(bin, provisioned());
    let config = worker.config_path().to_path_buf();
    LocalApi::of(&worker);
    wait_studio_sees(&studio, true);

    let paused = cli(bin, &config, &["pause"]);
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert!(paused.stdout.starts_with("paused"), "{}", paused.stdout);
    wait_studio_sees(&studio, false);
    let reply = probe_reply(&studio, "probe-paused");
    assert_eq!(reply["type"], "reject", "{reply}");
    assert_eq!(reply["code"], "paused", "{reply}");
    assert_eq!(reply["reason"], "worker paused by operator", "{reply}");
    let status = cli(bin, &config, &["status"]);
    assert!(
        status.stdout.contains("paused:          yes"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("session connected"),
        "{}",
        status.stdout
    );

    assert_eq!(cli(bin, &config, &["resume"]).code, 0);
    wait_studio_sees(&studio, true);
    let job = studio.submit_kind(TaskKind::Llm, "after the pause");
    studio.expect_done(&job);

    let disabled = cli(bin, &config, &["disable"]);
    assert_eq!(disabled.code, 0, "{}", disabled.stderr);
    assert!(
        disabled.stdout.contains("applied to the running worker"),
        "{}",
        disabled.stdout
    );
    wait_studio_sees(&studio, false);
    assert_eq!(worker.config_table()["auto_enabled"].as_bool(), Some(false));
    let reply = probe_reply(&studio, "probe-disabled");
    assert_eq!(reply["code"], "paused", "{reply}");
    assert_eq!(reply["reason"], "worker disabled by operator", "{reply}");
    let json = cli(bin, &config, &["status", "--json"]);
    let v: Value = serde_json::from_str(&json.stdout).expect("status --json is JSON");
    assert_eq!(v["daemon"]["enabled"], false);
    assert_eq!(v["auto_enabled"], false);

    // Disabled survives a restart; with no worker, pause has nobody to ask.
    worker.sigterm();
    assert_eq!(worker.expect_exit_code(), 0);
    let nobody = cli(bin, &config, &["pause"]);
    assert_eq!(nobody.code, 3);
    assert!(
        nobody
            .stderr
            .contains(&format!("no running worker for {}", config.display())),
        "{}",
        nobody.stderr
    );
    let json = cli(bin, &config, &["status", "--json"]);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["daemon"], Value::Null);

    let again = worker.start_again(bin);
    studio.wait_connections(WORKER_ID, 2);
    wait_studio_sees(&studio, false);
    LocalApi::of(&again);
    let enabled = cli(bin, &config, &["enable"]);
    assert_eq!(enabled.code, 0, "{}", enabled.stderr);
    wait_studio_sees(&studio, true);
    assert_eq!(again.config_table()["auto_enabled"].as_bool(), Some(true));
    let job = studio.submit_kind(TaskKind::Llm, "after enable");
    studio.expect_done(&job);
}

/// A finished job is counted by kind and outcome, with its duration, in the Prometheus text;
/// an unusable SENTRY_DSN is only a warning.
fn metrics_count_a_finished_job(bin: &Bin) {
    let setup = provisioned().with_env("SENTRY_DSN", "not a dsn");
    let (studio, worker) = connected(bin, setup);
    let api = LocalApi::of(&worker);
    let completed = r#"studio_worker_jobs_total{kind="llm",outcome="completed"}"#;
    let count = r#"studio_worker_job_duration_seconds_count{kind="llm"}"#;
    let before = api.metrics();
    assert_eq!(metric(&before, completed), Some(0.0), "{before}");
    assert_eq!(metric(&before, count), Some(0.0));
    assert_eq!(
        metric(&before, "studio_worker_session_connected"),
        Some(1.0)
    );
    assert_eq!(metric(&before, "studio_worker_busy"), Some(0.0));
    assert_eq!(metric(&before, "studio_worker_paused"), Some(0.0));
    assert_eq!(metric(&before, "studio_worker_reconnects_total"), Some(0.0));
    assert_eq!(
        metric(&before, "studio_worker_upload_retries_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(&before, "studio_worker_log_entries_dropped_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(&before, "studio_worker_model_download_bytes_total"),
        Some(0.0)
    );
    assert!(
        before.contains("studio_worker_build_info{version=\""),
        "{before}"
    );

    let job = studio.submit_kind(TaskKind::Llm, "count me");
    studio.expect_done(&job);
    let after = wait_for("the job in the metrics", WAIT, || {
        let text = api.metrics();
        (metric(&text, completed) == Some(1.0)).then_some(text)
    });
    assert_eq!(metric(&after, count), Some(1.0), "{after}");
    assert_eq!(
        metric(
            &after,
            r#"studio_worker_job_duration_seconds_bucket{kind="llm",le="+Inf"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &after,
            r#"studio_worker_jobs_total{kind="image",outcome="completed"}"#
        ),
        Some(0.0)
    );
    let status = api.get("/daemon/status");
    assert_eq!(status["recentJobs"][0]["jobId"], job.as_str());
    assert_eq!(status["recentJobs"][0]["outcome"], "completed");
    let logs = api.get("/daemon/logs?after=0");
    assert!(
        logs["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["jobId"] == job.as_str()),
        "{logs}"
    );
    assert!(
        worker.wait_for_stderr("not a valid Sentry DSN", WAIT),
        "{}",
        worker.stderr()
    );
}

/// A second `run` on the same config says which process holds it and exits 0 (a service
/// manager must not restart-loop on it); the first keeps its session; once the first is
/// stopped, the lock is free again.
fn one_worker_per_config(bin: &Bin) {
    let (studio, mut first) = connected(bin, provisioned());
    let api = LocalApi::of(&first);
    let mut second = first.start_again(bin);
    assert_eq!(
        second.expect_exit_code(),
        0,
        "a second worker is not an error"
    );
    let said = second.stderr();
    assert!(
        said.contains(&format!("pid {}", first.pid())),
        "it names the holder: {said}"
    );
    assert!(said.contains("daemon.lock"), "{said}");
    assert_eq!(studio.connection_stats(WORKER_ID).connections, 1);
    assert_eq!(api.get("/daemon/status")["session"], "connected");
    assert!(first.is_running());

    first.sigterm();
    assert_eq!(first.expect_exit_code(), 0);
    assert!(
        !first
            .config_path()
            .parent()
            .unwrap()
            .join(LOCAL_API_FILE)
            .exists(),
        "local-api.json goes with the worker"
    );
    let third = first.start_again(bin);
    studio.wait_connections(WORKER_ID, 2);
    assert_eq!(
        LocalApi::of(&third).get("/daemon/status")["session"],
        "connected"
    );
}

/// With SENTRY_DSN set, a fatal exit (exit 3 after a studio `error` frame) sends an event
/// to the DSN's endpoint before the process ends, with the release and environment, and
/// without the auth token or the local API token (even where the studio's message quoted
/// the token).
fn sentry_hears_of_a_fatal_exit_without_any_secret(bin: &Bin) {
    let sink = SentrySink::start();
    let setup = provisioned()
        .with_env("SENTRY_DSN", &sink.dsn())
        .with_env("SENTRY_ENVIRONMENT", "e2e");
    let (studio, mut worker) = connected(bin, setup);
    let api_token = LocalApi::of(&worker).token;
    studio.send_error(
        WORKER_ID,
        WorkerErrorCode::DuplicateWorker,
        &format!("another session connected with token {TOKEN}"),
    );
    assert_eq!(worker.expect_exit_code(), 3);

    // Flushed before the exit: it is already here.
    let received = sink.received();
    let envelopes: Vec<&(String, String)> = received
        .iter()
        .filter(|(path, _)| path.starts_with("/api/42/envelope"))
        .collect();
    assert!(!envelopes.is_empty(), "no envelope arrived: {received:?}");
    let all: String = envelopes.iter().map(|(_, body)| body.as_str()).collect();
    assert!(all.contains("duplicate_worker"), "{all}");
    assert!(
        all.contains(&format!("studio-worker@{}", env!("CARGO_PKG_VERSION"))),
        "{all}"
    );
    assert!(all.contains("\"environment\":\"e2e\""), "{all}");
    assert!(!all.contains(TOKEN), "the auth token reached Sentry: {all}");
    assert!(
        !all.contains(&api_token),
        "the local API token reached Sentry"
    );
    assert!(all.contains("[redacted]"), "{all}");
}
