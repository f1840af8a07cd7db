//! End-to-end scenarios: the real worker binary (a subprocess, `run` with a minimal
//! config.toml) against the real loopback studio (`studio-local`, in-process).
//!
//! Each scenario is a `fn(&Bin)` told as a story; [`for_each_shell!`] turns each into one
//! test per worker binary (`sync_shell::<name>`, `async_shell::<name>`; the async shell is
//! skipped with a note until its binary exists). Every test has its own studio (an
//! ephemeral port) and its own temp dirs, so they run in parallel. Waits are bounded by
//! generous timeouts and nothing asserts speed.
//!
//! Build the worker first when running this package alone:
//! `cargo build -p studio-worker && cargo test -p studio-e2e` (`cargo test --workspace`
//! builds it anyway).

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use studio_core::wire::{ImageTask, LogEntry, ModelEngine, Task, TaskKind, WorkerErrorCode};
use studio_e2e::files::{model_file, model_source, sha256_file, whisper_job};
use studio_e2e::{
    for_each_shell, is_png, is_rfc3339_utc_millis, is_wav, is_webp, wait_for, Bin, FileServer,
    Setup, Studio, Worker, WAIT,
};
use studio_local::{Fault, JobSubmission, ResultView};

for_each_shell!(
    registration_with_operator_approval,
    every_kind_completes_with_real_output,
    busy_worker_rejects_an_offer_and_idle_worker_accepts,
    upload_is_retried_after_a_500,
    unauthorized_upgrade_exits_4_without_retrying,
    close_4001_exits_4_without_reconnecting,
    error_auth_failed_exits_4_without_reconnecting,
    error_duplicate_worker_exits_3,
    reconnects_after_the_studio_drops_the_connection,
    half_open_connection_is_detected_and_replaced,
    sigterm_when_idle_exits_0_with_close_1000,
    sigterm_mid_job_finishes_the_job_first,
    log_batches_are_shipped,
    a_recorded_session_replays_exactly,
    a_job_for_an_engine_this_build_lacks_fails_without_retry,
    a_poison_offer_is_failed_and_the_session_kept,
    an_offer_during_a_held_upload_is_answered_busy_while_it_is_held,
    kill_9_during_a_held_upload_then_restart_delivers_without_a_second_run,
    kill_9_before_the_complete_ack_then_restart_resends_the_json_result,
    a_crafted_wav_fails_its_job_and_the_worker_stays_up,
    a_plain_text_studio_url_to_another_host_needs_the_opt_in,
);

const WORKER_ID: &str = "w-e2e";
/// Distinctive, so a leak into the worker's output is easy to spot.
const TOKEN: &str = "e2e-token-7f3a9c1d5b";
/// How long each synthetic job takes where a scenario needs one in flight.
const SLOW_JOB: Duration = Duration::from_millis(3000);

/// A studio that knows [`WORKER_ID`], and that worker running and connected.
fn connected_worker(bin: &Bin, setup: Setup) -> (Studio, Worker) {
    let studio = Studio::with_worker(WORKER_ID, TOKEN);
    let worker = Worker::start(bin, &studio, &setup);
    studio.wait_connected(WORKER_ID);
    (studio, worker)
}

fn provisioned() -> Setup {
    Setup::provisioned(WORKER_ID, TOKEN)
}

/// A prompt of exactly `len` characters (longer than the 200-character UI preview).
fn long_prompt(len: usize) -> String {
    let words = "an aurora fox crossing a frozen lake at dusk, ";
    words.chars().cycle().take(len).collect()
}

fn assert_no_secret(worker: &Worker, secret: &str) {
    assert!(
        !worker.stderr().contains(secret),
        "the auth token appears on stderr"
    );
    assert!(
        !worker.stdout().contains(secret),
        "the auth token appears on stdout"
    );
}

/// The operator's last line: one `studio-worker: ...` line saying to re-register.
fn assert_last_words_say_re_register(worker: &Worker) {
    let last = worker.last_stderr_line();
    assert!(last.starts_with("studio-worker: "), "last line: {last}");
    assert!(last.contains("re-register"), "last line: {last}");
}

fn logs_of(studio: &Studio, worker_id: &str) -> Vec<LogEntry> {
    studio.worker_logs(worker_id).unwrap_or_default()
}

fn probe_replies_json(studio: &Studio, worker_id: &str) -> Vec<Value> {
    studio
        .probe_replies(worker_id)
        .iter()
        .map(|t| serde_json::from_str(t).expect("a probe reply is JSON"))
        .collect()
}

fn probe_task(prompt: &str) -> Box<Task> {
    Box::new(studio_local::api::task_for(
        TaskKind::Llm,
        prompt.to_string(),
    ))
}

// ------------------------------------------------------------------------------------------
// a. Registration
// ------------------------------------------------------------------------------------------

/// A first run without credentials: the request waits for the operator, who approves it;
/// the worker then connects, serves a job and keeps its credentials (and only those) in an
/// owner-only config file.
fn registration_with_operator_approval(bin: &Bin) {
    let studio = Studio::start();
    let worker = Worker::start(bin, &studio, &Setup::unregistered());

    let request = wait_for("a pending registration request", WAIT, || {
        studio.pending().into_iter().next()
    });
    assert!(
        request.user_agent.starts_with("studio-worker/"),
        "{request:?}"
    );
    assert_eq!(request.capabilities.task_kinds.len(), TaskKind::ALL.len());
    // While pending, the worker keeps the secret of its request and has no credentials.
    let pending_config = worker.config_table();
    assert!(pending_config.contains_key("registration_secret"));
    assert!(!pending_config.contains_key("auth_token"));

    studio.approve(&request.request_id).expect("approve");
    // The worker learns of the approval at its next poll (the protocol polls every 30 s).
    let worker_id = wait_for(
        "the approved worker to connect",
        Duration::from_secs(75),
        || {
            studio
                .workers()
                .into_iter()
                .find(|w| w.connected)
                .map(|w| w.id)
        },
    );

    let job = studio.submit_kind(TaskKind::Image, "a registered fox");
    let done = studio.expect_done(&job);
    assert_eq!(done.summary.worker.as_deref(), Some(worker_id.as_str()));

    let config = worker.config_table();
    assert_eq!(
        config.get("worker_id").and_then(|v| v.as_str()),
        Some(worker_id.as_str())
    );
    let token = config
        .get("auth_token")
        .and_then(|v| v.as_str())
        .expect("auth_token saved")
        .to_string();
    assert!(!token.is_empty());
    assert!(
        !config.contains_key("registration_secret"),
        "the registration secret outlived the approval"
    );
    assert!(!config.contains_key("registration_request_id"));
    let mode = std::fs::metadata(worker.config_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "config.toml mode {:o}", mode & 0o777);
    assert_no_secret(&worker, &token);
}

// ------------------------------------------------------------------------------------------
// b. Every kind
// ------------------------------------------------------------------------------------------

fn stored_file(studio: &Studio, job_id: &str) -> (String, Vec<u8>, String) {
    studio.stored_file(job_id)
}

fn json_result(studio: &Studio, job_id: &str) -> (Value, Option<String>) {
    let detail = studio.expect_done(job_id);
    match detail.result {
        Some(ResultView::Json { value, prompt }) => (value, prompt),
        other => panic!("job {job_id} has no JSON result: {other:#?}"),
    }
}

/// The number of frames of a GIF file.
fn gif_frames(bytes: &[u8]) -> usize {
    let mut decoder = gif::DecodeOptions::new()
        .read_info(bytes)
        .unwrap_or_else(|e| panic!("not a GIF ({e}): {:?}", &bytes[..16.min(bytes.len())]));
    let mut frames = 0;
    while decoder
        .read_next_frame()
        .expect("a decodable frame")
        .is_some()
    {
        frames += 1;
    }
    frames
}

/// Image (WebP and PNG), LLM, speech-to-text, text-to-speech and video jobs all complete:
/// binary results are stored with their extension and real content, JSON results have the
/// protocol's shapes, and the reported prompt is the full prompt, not a preview.
fn every_kind_completes_with_real_output(bin: &Bin) {
    let (studio, _worker) = connected_worker(bin, provisioned());
    let prompt = long_prompt(500);

    let webp = studio.submit_kind(TaskKind::Image, &prompt);
    let png = studio.submit_job(JobSubmission::from_task(Task::Image(ImageTask {
        prompt: "a fox in PNG".into(),
        ext: Some("png".into()),
        ..ImageTask::default()
    })));
    let llm = studio.submit_kind(TaskKind::Llm, &prompt);
    let stt = studio.submit_kind(TaskKind::AudioStt, "https://example.invalid/clip.wav");
    let tts = studio.submit_kind(TaskKind::AudioTts, "hello from the worker");
    let video = studio.submit_kind(TaskKind::Video, "a fox running");

    let (ext, data, reported) = stored_file(&studio, &webp);
    assert_eq!(ext, "webp");
    assert!(
        is_webp(&data),
        "not WebP: {:?}",
        &data[..16.min(data.len())]
    );
    assert_eq!(
        reported, prompt,
        "the upload's prompt is not the full prompt"
    );

    let (ext, data, _) = stored_file(&studio, &png);
    assert_eq!(ext, "png");
    assert!(is_png(&data), "not PNG: {:?}", &data[..16.min(data.len())]);
    // The IHDR chunk: a 512x512 picture.
    assert_eq!(&data[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(data[16..20].try_into().unwrap()), 512);
    assert_eq!(u32::from_be_bytes(data[20..24].try_into().unwrap()), 512);

    let (ext, data, reported) = stored_file(&studio, &tts);
    assert_eq!(ext, "wav");
    assert!(is_wav(&data), "not WAV: {:?}", &data[..16.min(data.len())]);
    // PCM, with sound in it.
    assert_eq!(u16::from_le_bytes([data[20], data[21]]), 1, "PCM format");
    assert!(data[44..].iter().any(|&b| b != 0), "silent audio");
    assert_eq!(reported, "hello from the worker");

    // The video is an animated GIF of 2 s (the default) x 8 fps (the synthetic engine's
    // default), uploaded as `gif` although the task's default ext is mp4.
    let (ext, data, _) = stored_file(&studio, &video);
    assert_eq!(ext, "gif");
    assert_eq!(gif_frames(&data), 16, "2 s x 8 fps");

    let (chat, reported) = json_result(&studio, &llm);
    assert_eq!(
        reported.as_deref(),
        Some(prompt.as_str()),
        "completeJson prompt"
    );
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant", "{chat}");
    assert!(
        chat["choices"][0]["message"]["content"].is_string(),
        "{chat}"
    );
    let usage = &chat["usage"];
    let (p, c, t) = (
        usage["prompt_tokens"].as_u64().expect("prompt_tokens"),
        usage["completion_tokens"]
            .as_u64()
            .expect("completion_tokens"),
        usage["total_tokens"].as_u64().expect("total_tokens"),
    );
    assert!(p > 0 && c > 0 && t == p + c, "{usage}");

    let (transcript, reported) = json_result(&studio, &stt);
    assert_eq!(
        reported.as_deref(),
        Some("https://example.invalid/clip.wav")
    );
    assert!(transcript["text"].is_string(), "{transcript}");
    assert_eq!(transcript["language"], "en", "{transcript}");
    assert!(transcript["duration"].is_number(), "{transcript}");

    // Every job ran once, on this worker.
    for job in [&webp, &png, &llm, &stt, &tts, &video] {
        let d = studio.job(job).unwrap();
        assert_eq!(d.completions, 1, "{d:#?}");
        assert_eq!(d.summary.worker.as_deref(), Some(WORKER_ID));
    }
}

// ------------------------------------------------------------------------------------------
// c. Busy reject
// ------------------------------------------------------------------------------------------

/// An offer that reaches a worker already running a job is rejected `busy` (the studio
/// never offers to a worker it knows is busy, so the probe bypasses it); the real job still
/// completes. Once idle, the same kind of offer is accepted and delivered.
fn busy_worker_rejects_an_offer_and_idle_worker_accepts(bin: &Bin) {
    let (studio, _worker) = connected_worker(bin, provisioned().with_synthetic_delay(SLOW_JOB));

    let job = studio.submit_kind(TaskKind::Llm, "the real job");
    studio.wait_job_state(&job, "running");
    studio.inject_fault(Fault::ProbeOffer {
        worker_id: WORKER_ID.into(),
        job_id: "probe-busy".into(),
        task: probe_task("offered while busy"),
    });
    let reply = wait_for("the worker's answer to the busy probe", WAIT, || {
        probe_replies_json(&studio, WORKER_ID).into_iter().next()
    });
    assert_eq!(reply["type"], "reject", "{reply}");
    assert_eq!(reply["jobId"], "probe-busy", "{reply}");
    assert_eq!(reply["code"], "busy", "{reply}");
    assert_eq!(
        reply["reason"], "worker already has an in-flight job",
        "{reply}"
    );

    let done = studio.expect_done(&job);
    assert_eq!(done.completions, 1);

    studio.wait_idle(WORKER_ID);
    studio.inject_fault(Fault::ProbeOffer {
        worker_id: WORKER_ID.into(),
        job_id: "probe-idle".into(),
        task: probe_task("offered while idle"),
    });
    let replies = wait_for("the idle probe to be accepted and delivered", WAIT, || {
        let r = probe_replies_json(&studio, WORKER_ID);
        r.iter()
            .any(|v| v["type"] == "completeJson" && v["jobId"] == "probe-idle")
            .then_some(r)
    });
    let idle: Vec<&Value> = replies
        .iter()
        .filter(|v| v["jobId"] == "probe-idle")
        .collect();
    assert_eq!(idle[0]["type"], "accept", "{replies:?}");
    assert_eq!(idle[1]["type"], "completeJson", "{replies:?}");
    assert_eq!(idle[1]["prompt"], "offered while idle", "{replies:?}");

    // The probes never reached the studio machine: no violation, one session throughout.
    assert!(studio.job("probe-busy").is_none() && studio.job("probe-idle").is_none());
    assert_eq!(studio.connection_stats(WORKER_ID).connections, 1);
    studio.wait_connected(WORKER_ID);
}

// ------------------------------------------------------------------------------------------
// d. Upload retry
// ------------------------------------------------------------------------------------------

/// The first result upload answers 500: the worker retries it and the job completes once.
fn upload_is_retried_after_a_500(bin: &Bin) {
    let (studio, worker) = connected_worker(bin, provisioned());
    studio.inject_fault(Fault::FailUploads {
        count: 1,
        status: 500,
    });

    let job = studio.submit_kind(TaskKind::Image, "a fox worth retrying");
    let done = studio.expect_done(&job);
    assert_eq!(done.completions, 1);
    assert_eq!(
        studio.faults().unwrap().fail_uploads,
        0,
        "the 500 was served"
    );
    let (_, data, _) = stored_file(&studio, &job);
    assert!(is_webp(&data));

    // The retry is in the shipped logs and on stderr, each time on one line (the studio's
    // error body ends with a newline).
    let retry = wait_for("the retry to be shipped", WAIT, || {
        logs_of(&studio, WORKER_ID)
            .into_iter()
            .find(|e| e.job_id.as_deref() == Some(&*job) && e.message.contains("retry"))
    });
    assert_eq!(retry.level, "warn", "{retry:?}");
    assert!(!retry.message.contains('\n'), "{:?}", retry.message);
    // Lines reach stderr a few milliseconds after they are logged (a logger thread).
    assert!(
        worker.wait_for_stderr("retry 1", WAIT),
        "the retry on stderr"
    );
    let stderr = worker.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("retry 1"))
        .expect("the retry on stderr");
    assert!(line.contains(&*job), "{line}");
}

// ------------------------------------------------------------------------------------------
// e.-g. Auth failures and fatal errors
// ------------------------------------------------------------------------------------------

/// A wrong token: the upgrade answers 401, the worker exits 4 at once, tells the operator
/// to re-register as its last words, never prints the token, and does not retry.
fn unauthorized_upgrade_exits_4_without_retrying(bin: &Bin) {
    let studio = Studio::with_worker(WORKER_ID, TOKEN);
    let wrong = "e2e-wrong-token-0b8e2d44";
    let mut worker = Worker::start(bin, &studio, &Setup::provisioned(WORKER_ID, wrong));

    assert_eq!(worker.expect_exit_code(), 4);
    assert_last_words_say_re_register(&worker);
    assert_no_secret(&worker, wrong);
    let seen = studio.connection_stats(WORKER_ID);
    assert_eq!(seen.upgrade_attempts, 1, "{seen:?}");
    assert_eq!(seen.upgrades_refused, 1, "{seen:?}");
    assert_eq!(seen.connections, 0, "{seen:?}");
}

/// The studio closes a live session with 4001: exit 4, no reconnect.
fn close_4001_exits_4_without_reconnecting(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());
    studio.inject_fault(Fault::Close {
        worker_id: WORKER_ID.into(),
        code: 4001,
        reason: "token revoked".into(),
    });

    assert_eq!(worker.expect_exit_code(), 4);
    assert_last_words_say_re_register(&worker);
    assert_no_secret(&worker, TOKEN);
    assert_eq!(studio.connection_stats(WORKER_ID).upgrade_attempts, 1);
}

/// An `error auth_failed` frame: exit 4, no reconnect.
fn error_auth_failed_exits_4_without_reconnecting(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());
    studio.send_error(WORKER_ID, WorkerErrorCode::AuthFailed, "token revoked");

    assert_eq!(worker.expect_exit_code(), 4);
    assert_last_words_say_re_register(&worker);
    assert_no_secret(&worker, TOKEN);
    assert_eq!(studio.connection_stats(WORKER_ID).upgrade_attempts, 1);
}

/// An `error duplicate_worker` frame: fatal, exit 3, no reconnect.
fn error_duplicate_worker_exits_3(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());
    studio.send_error(
        WORKER_ID,
        WorkerErrorCode::DuplicateWorker,
        "another session connected for this worker",
    );

    assert_eq!(worker.expect_exit_code(), 3);
    assert!(worker.last_stderr_line().starts_with("studio-worker: "));
    assert_eq!(studio.connection_stats(WORKER_ID).upgrade_attempts, 1);
}

// ------------------------------------------------------------------------------------------
// h.-i. Reconnects
// ------------------------------------------------------------------------------------------

/// The studio drops the TCP connection without a close frame: the worker reconnects on a
/// new connection and serves the next job.
fn reconnects_after_the_studio_drops_the_connection(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());
    assert_eq!(studio.connection_stats(WORKER_ID).connections, 1);

    studio.inject_fault(Fault::Drop {
        worker_id: WORKER_ID.into(),
    });
    studio.wait_connections(WORKER_ID, 2);

    let job = studio.submit_kind(TaskKind::Image, "after the reconnect");
    studio.expect_done(&job);
    assert!(worker.is_running());
}

/// The studio goes silent but keeps the socket open (half-open): the worker's read-idle
/// timeout (20 s) notices, it reconnects and serves the next job. The one slow scenario.
fn half_open_connection_is_detected_and_replaced(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());

    studio.inject_fault(Fault::Stall {
        worker_id: WORKER_ID.into(),
    });
    studio.wait_connections(WORKER_ID, 2);
    assert!(
        worker.wait_for_stderr("no frames from server", WAIT),
        "the read-idle timeout is not what ended the session"
    );

    let job = studio.submit_kind(TaskKind::Llm, "after the half-open socket");
    studio.expect_done(&job);
    assert!(worker.is_running());
}

// ------------------------------------------------------------------------------------------
// j. SIGTERM
// ------------------------------------------------------------------------------------------

/// SIGTERM to an idle worker: it closes the session with 1000 and exits 0.
fn sigterm_when_idle_exits_0_with_close_1000(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());

    worker.sigterm();
    assert_eq!(worker.expect_exit_code(), 0);
    let seen = studio.connection_stats(WORKER_ID);
    assert_eq!(seen.last_close_code, Some(1000), "{seen:?}");
    assert_eq!(seen.upgrade_attempts, 1, "{seen:?}");
}

/// SIGTERM while a job runs: the worker finishes and delivers it, then exits 0.
fn sigterm_mid_job_finishes_the_job_first(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned().with_synthetic_delay(SLOW_JOB));
    let job = studio.submit_kind(TaskKind::Image, "finish me before you go");
    studio.wait_job_state(&job, "running");

    worker.sigterm();
    assert_eq!(worker.expect_exit_code(), 0);
    let done = studio.job(&job).expect("the job");
    assert_eq!(
        done.summary.state, "done",
        "delivered before the exit: {done:#?}"
    );
    assert_eq!(done.completions, 1);
    assert_eq!(
        studio.connection_stats(WORKER_ID).last_close_code,
        Some(1000)
    );
}

// ------------------------------------------------------------------------------------------
// k. Shipped logs
// ------------------------------------------------------------------------------------------

/// The worker ships its own log lines to the studio in `logBatch` frames, stamped RFC 3339.
fn log_batches_are_shipped(bin: &Bin) {
    let (studio, _worker) = connected_worker(bin, provisioned());
    let job = studio.submit_kind(TaskKind::Llm, "log this");
    studio.expect_done(&job);

    let logs = wait_for("the job's log lines to be shipped", WAIT, || {
        let logs = logs_of(&studio, WORKER_ID);
        logs.iter()
            .any(|e| e.job_id.as_deref() == Some(&*job) && e.message.contains("json result sent"))
            .then_some(logs)
    });
    assert!(
        logs.iter().any(|e| e.message.contains("welcomed")),
        "no welcome line in {logs:#?}"
    );
    for e in &logs {
        assert!(is_rfc3339_utc_millis(&e.ts), "ts {:?} in {e:?}", e.ts);
        assert!(
            ["info", "warn", "error"].contains(&e.level.as_str()),
            "{e:?}"
        );
        assert!(!e.category.is_empty() && !e.message.is_empty(), "{e:?}");
        assert!(!e.message.contains(TOKEN), "a shipped line holds the token");
    }
}

// ------------------------------------------------------------------------------------------
// l. Record and replay
// ------------------------------------------------------------------------------------------

/// `--record PATH`: a session with a job, recorded by the real binary, replays exactly with
/// `studio-worker replay` (the shell fed the core nothing the recording missed); the trace
/// is owner-only and holds no token.
fn a_recorded_session_replays_exactly(bin: &Bin) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let trace = dir.path().join("session.jsonl");
    let (studio, mut worker) = connected_worker(bin, provisioned().recording(&trace));
    let job = studio.submit_kind(TaskKind::Llm, "record me");
    studio.expect_done(&job);
    worker.sigterm();
    assert_eq!(worker.expect_exit_code(), 0);

    let text = std::fs::read_to_string(&trace).expect("the trace");
    assert!(!text.contains(TOKEN), "the token appears in the trace");
    let mode = std::fs::metadata(&trace).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "trace mode {:o}", mode & 0o777);
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["shell"], bin.shell.name);

    let out = std::process::Command::new(&bin.path)
        .arg("replay")
        .arg(&trace)
        .output()
        .expect("run replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replay failed: {stdout}");
    let steps = text.lines().count() - 1;
    assert_eq!(stdout.trim(), format!("replayed {steps} steps: OK"));

    let out = std::process::Command::new(&bin.path)
        .args(["replay", "--explain"])
        .arg(&trace)
        .output()
        .expect("run replay --explain");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    for want in [
        "Send conn#1 hello",
        "Frame conn#1 offer",
        "Send conn#1 completeJson",
        "Shutdown",
    ] {
        assert!(transcript.contains(want), "{want} missing:\n{transcript}");
    }

    // Tampering is a divergence, reported with the step; --bless accepts it.
    std::fs::write(&trace, text.replacen("\"Start\"", "\"Pause\"", 1)).unwrap();
    let out = std::process::Command::new(&bin.path)
        .arg("replay")
        .arg(&trace)
        .output()
        .expect("run replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("diverged at step 1"), "{stdout}");
}

// ------------------------------------------------------------------------------------------
// m. Engines missing from the build
// ------------------------------------------------------------------------------------------

/// Routing is strict (PROTOCOL.md §3.6, §9.1): a job whose `modelSource.engine` this build
/// does not carry fails at once, not retryable (one attempt, no requeue), with a message
/// naming the engine and the fix; the worker stays connected and serves the next job. The
/// studio offers by model id (§3.1), so the jobs name the model `synthetic`, which every
/// worker advertises, while their model source names another engine. The `onnx` job is an
/// `llm` one: a build without the `tts` feature says the engine is not compiled in, a build
/// with it (the Piper engine serves `onnx` for speech only) that the engine cannot serve
/// `llm`, both without a retry; the `llama-cpp` job points at a loopback
/// file server holding a (fake) model file: a build without the `llm` feature must say the
/// engine is not compiled in and never touch the file; a build with it would fetch and
/// verify the file and fail on its content, still without a retry.
fn a_job_for_an_engine_this_build_lacks_fails_without_retry(bin: &Bin) {
    let (studio, worker) = connected_worker(bin, provisioned());
    let models = tempfile::tempdir().expect("a temp dir");
    let gguf = models.path().join("model.gguf");
    std::fs::write(&gguf, b"GGUF not really a model").unwrap();
    let files = FileServer::serve_dir(models.path()).expect("the file server starts");
    let sha = sha256_file(&gguf).unwrap();

    let submit = |engine: ModelEngine| {
        let file = model_file(&files.url("model.gguf"), "model.gguf", Some(&sha));
        studio.submit_job(JobSubmission {
            model: Some("synthetic".into()),
            model_source: Some(model_source(engine, vec![file])),
            ..JobSubmission::new(TaskKind::Llm, "hello")
        })
    };
    let failed = |job: &str| {
        let j = studio.wait_job_state(job, "failed");
        assert_eq!(j.summary.attempts, 1, "the job was retried: {j:#?}");
        j.summary.last_error.unwrap_or_default()
    };

    let onnx = submit(ModelEngine::Onnx);
    let error = failed(&onnx);
    assert!(
        (error.contains("`onnx` is not compiled into this worker") && error.contains("install"))
            || error == "piper engine cannot serve llm tasks",
        "{error}"
    );

    let llama = submit(ModelEngine::LlamaCpp);
    let error = failed(&llama);
    if error.contains("not compiled into this worker") {
        assert!(error.contains("`llama-cpp`"), "{error}");
        assert_eq!(
            files.requests(),
            0,
            "a build without the engine fetched its model"
        );
    } else {
        // A build with the llm engine: the file was fetched (into the worker's models
        // root, verified) and its content refused.
        assert_eq!(files.requests_for("model.gguf"), 1, "{error}");
        assert!(worker.models_root().exists(), "{error}");
    }

    // Still connected and serving.
    let ok = studio.submit_kind(TaskKind::Llm, "after the failures");
    studio.expect_done(&ok);
}

// ------------------------------------------------------------------------------------------
// n. Bad input and crashes
// ------------------------------------------------------------------------------------------

/// An offer the worker cannot decode (`"width": -1`) but whose job id it can read: it is
/// accepted and failed, not retryable, naming the decode error, and the session lives on
/// (dropping it would have the studio offer the job again, forever). The next job runs.
fn a_poison_offer_is_failed_and_the_session_kept(bin: &Bin) {
    let (studio, _worker) = connected_worker(bin, provisioned());
    studio.inject_fault(Fault::RawProbeOffer {
        worker_id: WORKER_ID.into(),
        job_id: "poison-1".into(),
        claim: serde_json::json!({
            "gameId": "g", "assetName": "g/a", "model": "synthetic", "vramGbEstimate": 1.0,
            "task": {"kind": "image", "prompt": "a fox", "width": -1},
            "modelSource": {"engine": "synthetic", "files": [],
                "cliDefaults": {"cfgScale": 1.0, "steps": 8, "width": 512, "height": 512}}
        }),
    });
    let replies = wait_for("the poison offer to be answered", WAIT, || {
        let r = probe_replies_json(&studio, WORKER_ID);
        (r.len() >= 2).then_some(r)
    });
    assert_eq!(replies[0]["type"], "accept", "{replies:?}");
    assert_eq!(replies[1]["type"], "fail", "{replies:?}");
    assert_eq!(replies[1]["retryable"], false, "{replies:?}");
    let error = replies[1]["error"].as_str().unwrap_or_default();
    assert!(error.contains("could not decode the offer"), "{error}");
    // One session throughout, and it still serves.
    let job = studio.submit_kind(TaskKind::Llm, "after the poison");
    studio.expect_done(&job);
    assert_eq!(studio.connection_stats(WORKER_ID).connections, 1);
}

/// The studio holds our upload (never answers it): an offer that reaches the worker
/// meanwhile is answered `busy` while the upload is still held, not parked for the whole
/// upload.
fn an_offer_during_a_held_upload_is_answered_busy_while_it_is_held(bin: &Bin) {
    let (studio, _worker) = connected_worker(bin, provisioned());
    studio.inject_fault(Fault::HoldUploads { count: 1 });
    let job = studio.submit_kind(TaskKind::Image, "a held fox");
    wait_for("the upload to be held", WAIT, || {
        (studio.faults()?.uploads_held == 1).then_some(())
    });
    studio.inject_fault(Fault::ProbeOffer {
        worker_id: WORKER_ID.into(),
        job_id: "probe-held".into(),
        task: probe_task("offered during the held upload"),
    });
    let reply = wait_for("the answer to the offer", WAIT, || {
        probe_replies_json(&studio, WORKER_ID).into_iter().next()
    });
    assert_eq!(reply["type"], "reject", "{reply}");
    assert_eq!(reply["code"], "busy", "{reply}");
    assert_eq!(
        studio.faults().unwrap().uploads_held,
        1,
        "answered while the upload was still held"
    );
    assert_eq!(studio.job(&job).unwrap().summary.state, "running");
}

/// The worker is killed (SIGKILL) while the studio holds its result upload, then started
/// again: the kept result is uploaded from the durable outbox and the job completes once,
/// with no second engine run.
fn kill_9_during_a_held_upload_then_restart_delivers_without_a_second_run(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());
    studio.inject_fault(Fault::HoldUploads { count: 1 });
    let job = studio.submit_kind(TaskKind::Image, "a fox that survives a crash");
    wait_for("the upload to be held", WAIT, || {
        (studio.faults()?.uploads_held == 1).then_some(())
    });
    assert_eq!(worker.outbox_entries(), 1, "kept before the upload");
    worker.kill();
    worker.restart();
    let done = studio.expect_done(&job);
    assert_eq!(done.completions, 1);
    assert_eq!(done.summary.attempts, 1, "{done:#?}");
    let (_, data, prompt) = stored_file(&studio, &job);
    assert!(is_webp(&data));
    assert_eq!(prompt, "a fox that survives a crash");
    wait_for("the second process to say it re-uploaded", WAIT, || {
        worker
            .stderr()
            .contains("uploading the kept result of job")
            .then_some(())
    });
    assert!(
        !worker.stderr().contains("json result sent") && !worker.stderr().contains("finished in"),
        "the restarted worker ran the engine again"
    );
    wait_for("the outbox to be emptied", WAIT, || {
        (worker.outbox_entries() == 0).then_some(())
    });
}

/// The worker is killed (SIGKILL) after its `completeJson` left but before the studio's
/// `completeAck` (the frame was lost on the way), then started again: it re-sends the kept
/// result after its first welcome and the job completes once, on one engine run.
fn kill_9_before_the_complete_ack_then_restart_resends_the_json_result(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());
    studio.inject_fault(Fault::DropResults { count: 1 });
    let job = studio.submit_kind(TaskKind::Llm, "a reply that survives a crash");
    wait_for("the result frame to be lost", WAIT, || {
        (studio.faults()?.drop_results == 0 && worker.outbox_entries() == 1).then_some(())
    });
    assert_eq!(studio.job(&job).unwrap().summary.state, "running");
    worker.kill();
    worker.restart();
    let done = studio.expect_done(&job);
    assert_eq!(done.completions, 1);
    assert_eq!(done.summary.attempts, 1, "{done:#?}");
    let (_, prompt) = json_result(&studio, &job);
    assert_eq!(prompt.as_deref(), Some("a reply that survives a crash"));
    assert!(worker.wait_for_stderr("outbox restored", WAIT));
    assert!(
        !worker.stderr().contains("finished in"),
        "the restarted worker ran the engine again"
    );
    wait_for("the outbox to be emptied", WAIT, || {
        (worker.outbox_entries() == 0).then_some(())
    });
}

// ------------------------------------------------------------------------------------------
// Hostile input
// ------------------------------------------------------------------------------------------

/// 108 bytes: a RIFF/WAVE header (8-bit mono PCM) claiming 4 294 967 291 samples per
/// second, and 64 samples. Resampled to 16 kHz as claimed, it would ask for a filter table
/// of about 556 GiB, and the failed allocation aborts the process.
fn crafted_wav() -> Vec<u8> {
    let rate: u32 = 4_294_967_291;
    let mut w = b"RIFF".to_vec();
    w.extend((36u32 + 64).to_le_bytes());
    w.extend(b"WAVEfmt ");
    w.extend(16u32.to_le_bytes()); // fmt chunk size
    w.extend(1u16.to_le_bytes()); // PCM
    w.extend(1u16.to_le_bytes()); // mono
    w.extend(rate.to_le_bytes());
    w.extend(rate.to_le_bytes()); // byte rate: one byte per sample
    w.extend(1u16.to_le_bytes()); // block align
    w.extend(8u16.to_le_bytes()); // bits per sample
    w.extend(b"data");
    w.extend(64u32.to_le_bytes());
    w.extend((0..64u8).map(|i| 96 + i));
    assert_eq!(w.len(), 108);
    w
}

/// A speech-to-text job whose input is [`crafted_wav`] fails at once, not retryable, with a
/// message naming the sample rate; the worker process stays up and serves the next job. The
/// model files are placeholders: the input is decoded before the model is loaded. A build
/// without the whisper engine says so instead (and fetches nothing).
fn a_crafted_wav_fails_its_job_and_the_worker_stays_up(bin: &Bin) {
    let (studio, mut worker) = connected_worker(bin, provisioned());
    let served = tempfile::tempdir().expect("a temp dir");
    std::fs::write(served.path().join("crafted.wav"), crafted_wav()).unwrap();
    let mut model_files = Vec::new();
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        let path = served.path().join(name);
        std::fs::write(&path, format!("placeholder {name}")).unwrap();
        model_files.push((name, sha256_file(&path).unwrap()));
    }
    let files = FileServer::serve_dir(served.path()).expect("the file server starts");
    let input = files.url("crafted.wav");
    let job = studio.submit_job(whisper_job(&files, &input, "whisper-tiny", &model_files));
    let failed = studio.wait_job_state(&job, "failed");
    assert_eq!(
        failed.summary.attempts, 1,
        "the job was retried: {failed:#?}"
    );
    let error = failed.summary.last_error.clone().unwrap_or_default();
    if error.contains("not compiled into this worker") {
        println!(
            "note: {} carries no whisper engine: {error}",
            bin.shell.name
        );
        assert_eq!(files.requests(), 0);
    } else {
        assert!(error.contains("4294967291 Hz"), "{error}");
        assert_eq!(files.requests_for("crafted.wav"), 1, "{error}");
    }
    assert!(worker.is_running(), "the worker died on the crafted WAV");
    let next = studio.submit_kind(TaskKind::Llm, "after the crafted WAV");
    studio.expect_done(&next);
    assert!(worker.is_running());
}

/// `http://0.0.0.0:<port>/` reaches the local studio, yet names no loopback host: the auth
/// token would travel in clear to "another machine". Without the opt-in the worker refuses
/// the config (exit 3, the key named) and never connects; with
/// `allow_insecure_studio_url = true` it connects, serves, and says so at start.
fn a_plain_text_studio_url_to_another_host_needs_the_opt_in(bin: &Bin) {
    let studio = Studio::with_worker(WORKER_ID, TOKEN);
    let url = format!("http://0.0.0.0:{}/", studio.local_addr().port());
    let mut refused = Worker::start_at(bin, &url, &provisioned());
    assert_eq!(refused.expect_exit_code(), 3);
    let last = refused.last_stderr_line();
    assert!(last.contains("allow_insecure_studio_url"), "{last}");
    assert_eq!(studio.connection_stats(WORKER_ID).upgrade_attempts, 0);

    let allowed = Worker::start_at(
        bin,
        &url,
        &provisioned().with_config("allow_insecure_studio_url", "true"),
    );
    studio.wait_connected(WORKER_ID);
    assert!(
        allowed.wait_for_stderr("allow_insecure_studio_url = true", WAIT),
        "no start-up warning: {}",
        allowed.stderr()
    );
    let job = studio.submit_kind(TaskKind::Llm, "over plain text");
    studio.expect_done(&job);
    assert_no_secret(&allowed, TOKEN);
}
