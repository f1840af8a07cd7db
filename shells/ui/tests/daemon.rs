//! The window's actions end to end: the loopback studio, a real worker (`studio-worker
//! run`, the sync binary, as a process) and the window's backend (and, in the last test,
//! the window itself, drawn without a display) talking to the worker's local control API.
//!
//! Needs the worker binary beside the test executable (`cargo test --workspace` builds it;
//! or `cargo build -p studio-worker` first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use studio_core::wire::TaskKind;
use studio_e2e::{run_on, Bin, Setup, Studio, Worker, SYNC};
use studio_ui::app::StudioApp;
use studio_ui::backend::{Backend, Call, Event};
use studio_ui::model::DaemonStatus;

/// Generous: the machine may be loaded; the tests assert behaviour, not time.
const WAIT: Duration = Duration::from_secs(60);

fn backend(worker: &Worker) -> Backend {
    Backend::start(
        worker.config_path().to_path_buf(),
        studio_ui::backend::Worker {
            program: PathBuf::from("/nonexistent/never-started"),
            start_if_down: false,
        },
        std::sync::Arc::new(|| {}),
    )
}

/// Takes events until `pick` returns something (panics naming `what` after [`WAIT`]).
fn until<T>(backend: &Backend, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if let Some(found) = backend
            .recv_timeout(Duration::from_millis(200))
            .and_then(&mut pick)
        {
            return found;
        }
    }
    panic!("timed out waiting for {what}");
}

fn status_where(
    backend: &Backend,
    what: &str,
    check: impl Fn(&DaemonStatus) -> bool,
) -> DaemonStatus {
    until(backend, what, |e| match e {
        Event::Status(st) if check(&st) => Some(*st),
        _ => None,
    })
}

fn done(backend: &Backend, call: &str) -> Result<String, String> {
    until(backend, call, |e| match e {
        Event::Done { call: c, result } if c == call => Some(result),
        _ => None,
    })
}

fn pause_resume_save_and_logs(bin: &Bin) {
    let studio = Studio::with_worker("w-1", "tok-1");
    let mut worker = Worker::start(bin, &studio, &Setup::provisioned("w-1", "tok-1"));
    let backend = backend(&worker);
    status_where(&backend, "connected", |s| s.session == "connected");

    // Pause and resume.
    backend.send(Call::Pause);
    assert_eq!(done(&backend, "pause"), Ok("paused".into()));
    status_where(&backend, "paused", |s| s.paused);
    backend.send(Call::Resume);
    assert_eq!(done(&backend, "resume"), Ok("resumed".into()));
    status_where(&backend, "resumed", |s| !s.paused);

    // Save: one live setting, one for the next start; both in config.toml.
    let models: PathBuf = worker.dir().join("other-models");
    let mut edits = serde_json::Map::new();
    edits.insert("vram_threshold_gb".into(), json!(5));
    edits.insert("models_root".into(), json!(models.display().to_string()));
    backend.send(Call::Settings(Some(edits)));
    let reply = until(&backend, "the settings", |e| match e {
        Event::Settings(r) => Some(r),
        _ => None,
    });
    assert_eq!(reply.applied, ["vram_threshold_gb"]);
    assert_eq!(reply.restart_required, ["models_root"]);
    let st = status_where(&backend, "the new threshold", |s| {
        s.vram_threshold_gb == 5.0
    });
    assert_eq!(st.worker_id.as_deref(), Some("w-1"));
    let table = worker.config_table();
    assert_eq!(table["vram_threshold_gb"].as_float(), Some(5.0));
    assert_eq!(
        table["models_root"].as_str(),
        Some(models.to_str().unwrap())
    );
    assert_eq!(
        table["auth_token"].as_str(),
        Some("tok-1"),
        "the registration is kept"
    );

    // A refused edit changes nothing.
    let mut bad = serde_json::Map::new();
    bad.insert("vram_threshold_gb".into(), json!(-1));
    backend.send(Call::Settings(Some(bad)));
    assert!(done(&backend, "settings").is_err());
    assert_eq!(
        worker.config_table()["vram_threshold_gb"].as_float(),
        Some(5.0)
    );

    // A job: its log lines reach the Logs tail, its outcome the recent jobs.
    let job = studio.submit_kind(TaskKind::Llm, "hello from the window test");
    studio.expect_done(&job);
    // Status and log pages arrive in turn: the job's lines may come a poll before the
    // status that lists it, so both are watched in one pass.
    let (mut finished, mut logged) = (None, false);
    until(&backend, "the finished job and its log lines", |e| {
        match e {
            Event::Status(st) if st.recent_jobs.iter().any(|j| j.job_id == job) => {
                finished = Some(st)
            }
            Event::Logs(page) => {
                logged |= page
                    .entries
                    .iter()
                    .any(|l| l.job_id.as_deref() == Some(job.as_str()))
            }
            _ => {}
        }
        (finished.is_some() && logged).then_some(())
    });
    assert_eq!(finished.unwrap().recent_jobs[0].outcome, "completed");

    // The worker goes away: the window says so.
    worker.kill();
    until(&backend, "disconnected", |e| match e {
        Event::Disconnected(why) => Some(why),
        _ => None,
    });
}

fn the_window_pauses_a_real_worker(bin: &Bin) {
    use egui_kittest::kittest::Queryable;
    let studio = Studio::with_worker("w-2", "tok-2");
    let worker = Worker::start(bin, &studio, &Setup::provisioned("w-2", "tok-2"));
    let app = StudioApp::new(backend(&worker), worker.config_path().to_path_buf());
    let mut harness = egui_kittest::Harness::builder()
        .with_size([900.0, 700.0])
        .build_ui_state(|ui, app: &mut StudioApp| app.ui(ui), app);
    let settle = |harness: &mut egui_kittest::Harness<'_, StudioApp>,
                  what: &str,
                  done: &dyn Fn(&StudioApp) -> bool| {
        let end = Instant::now() + WAIT;
        loop {
            harness.run();
            if done(harness.state()) {
                return;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    settle(&mut harness, "connected", &|app| {
        app.status().is_some_and(|s| s.session == "connected")
    });
    harness.get_by_label("Pause").click();
    settle(&mut harness, "paused", &|app| {
        app.status().is_some_and(|s| s.paused)
    });
    assert!(harness.query_all_by_label("Resume").next().is_some());
    // The daemon itself says so, to anyone who asks.
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(worker.config_path().with_file_name("local-api.json")).unwrap(),
    )
    .unwrap();
    assert!(info["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("http://127.0.0.1:")));
}

/// No worker runs for the config: the window starts one (detached), then stops it.
fn a_missing_worker_is_started(bin: &Bin) {
    let studio = Studio::with_worker("w-3", "tok-3");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    studio_e2e::write_config(
        &config,
        &studio.base_url(),
        &Setup::provisioned("w-3", "tok-3").with_models_root(dir.path().join("models")),
    )
    .unwrap();
    let ui_worker = studio_ui::backend::Worker {
        program: bin.path.clone(),
        start_if_down: true,
    };
    // The worker's API on an ephemeral port (the default one may be taken).
    std::env::set_var("STUDIO_WORKER_LOCAL_API_PORT", "0");
    let backend = Backend::start(config.clone(), ui_worker, std::sync::Arc::new(|| {}));
    let started = done(&backend, "start the worker").expect("started");
    assert!(started.contains("started one (pid"), "{started}");
    studio.wait_connected("w-3");
    status_where(&backend, "connected", |s| s.session == "connected");
    backend.send(Call::Shutdown);
    assert!(done(&backend, "stop the worker").is_ok());
    until(&backend, "the worker gone", |e| match e {
        Event::Disconnected(_) => Some(()),
        _ => None,
    });
}

/// A worker awaiting approval: the reset forgets the request and the worker asks again.
fn registration_is_reset(bin: &Bin) {
    let studio = Studio::start();
    let worker = Worker::start(bin, &studio, &Setup::unregistered());
    let ui_worker = studio_ui::backend::Worker {
        program: bin.path.clone(),
        start_if_down: false,
    };
    std::env::set_var("STUDIO_WORKER_LOCAL_API_PORT", "0");
    let backend = Backend::start(
        worker.config_path().to_path_buf(),
        ui_worker,
        std::sync::Arc::new(|| {}),
    );
    let first = status_where(&backend, "awaiting approval", |s| {
        s.session == "awaiting_approval" && s.registration_request_id.is_some()
    });
    assert!(first.operator_action().is_some());
    backend.send(Call::ResetRegistration);
    let reset = done(&backend, "reset registration");
    assert!(reset.is_ok(), "{reset:?}");
    let second = status_where(&backend, "a new request", |s| {
        s.session == "awaiting_approval"
            && s.registration_request_id.is_some()
            && s.registration_request_id != first.registration_request_id
    });
    assert_ne!(second.pid, first.pid, "a new worker process");
    backend.send(Call::Shutdown);
    assert!(done(&backend, "stop the worker").is_ok());
}

#[test]
fn a_missing_worker_is_started_detached() {
    run_on(SYNC, a_missing_worker_is_started);
}

#[test]
fn reset_registration_restarts_the_request() {
    run_on(SYNC, registration_is_reset);
}

#[test]
fn pause_resume_save_and_logs_against_a_real_worker() {
    run_on(SYNC, pause_resume_save_and_logs);
}

#[test]
fn the_window_drives_a_real_worker() {
    run_on(SYNC, the_window_pauses_a_real_worker);
}
