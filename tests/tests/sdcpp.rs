//! End to end with the sd-cpp engine: `studio-local` offers `image` jobs whose
//! `modelSource.engine` is `sd-cpp` and whose files a loopback file server holds (SHA-256
//! checked); the worker binary (both carry the engine by default) downloads and verifies
//! them, runs `sd-cli` and uploads the image with the requested ext.
//!
//! No small sd.cpp weights can be fetched, so `sd-cli` is the engines' recording stand-in
//! (`engines/tests/fixtures/sd-cli-standin`, python3): named by `STUDIO_WORKER_SD_CLI`, told
//! what to do by `SD_STANDIN_*` variables the worker passes on to it, it records its
//! command line and writes a PNG. The real sd-cli's acceptance of every flag is checked in
//! the engines' tests.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use studio_core::wire::{ModelEngine, ModelFile, Task, TaskKind};
use studio_e2e::files::sha256_file;
use studio_e2e::{
    for_each_shell, is_webp, wait_until, Bin, FileServer, Setup, Studio, Worker, WAIT,
};
use studio_local::{JobSubmission, ResultView};

for_each_shell!(
    an_sd_cpp_image_job_runs_sd_cli_and_uploads_the_requested_ext,
    a_failing_sd_cli_fails_the_job_retryable_with_its_last_line,
    a_killed_worker_takes_sd_cli_with_it,
);

const WORKER_ID: &str = "w-sdcpp";
const TOKEN: &str = "sdcpp-token-51e0b7";
const MODEL: &str = "z-image-turbo";

fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engines/tests/fixtures/sd-cli-standin")
}

/// The served model files and where the stand-in records its runs.
struct Fixture {
    dir: tempfile::TempDir,
    files: FileServer,
    model_files: Vec<ModelFile>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        std::fs::create_dir_all(&served).unwrap();
        let roles = [
            (
                "diffusion-model",
                "z_image_turbo-Q4_K.gguf",
                &b"diffusion weights"[..],
            ),
            ("text-encoder", "Qwen3-4B-Q4_K_M.gguf", b"text encoder"),
            ("vae", "ae.safetensors", b"vae"),
        ];
        let files = FileServer::serve_dir(&served).unwrap();
        let model_files = roles
            .iter()
            .map(|(role, name, bytes)| {
                let path = served.join(name);
                std::fs::write(&path, bytes).unwrap();
                ModelFile {
                    role: role.to_string(),
                    url: files.url(name),
                    filename: name.to_string(),
                    approx_bytes: Some(bytes.len() as u64),
                    sha256: Some(sha256_file(&path).unwrap()),
                }
            })
            .collect();
        Fixture {
            dir,
            files,
            model_files,
        }
    }

    fn record(&self) -> PathBuf {
        self.dir.path().join("record.jsonl")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("sd-cli.pid")
    }

    /// A worker whose sd-cli is the stand-in in `mode`.
    fn setup(&self, mode: &str) -> Setup {
        Setup::provisioned(WORKER_ID, TOKEN)
            .with_env("STUDIO_WORKER_SD_CLI", &standin().display().to_string())
            .with_env("SD_STANDIN_MODE", mode)
            .with_env("SD_STANDIN_RECORD", &self.record().display().to_string())
            .with_env("SD_STANDIN_PIDFILE", &self.pid_file().display().to_string())
    }

    fn submit(&self, studio: &Studio, task: Value) -> String {
        let task: Task = serde_json::from_value(task).unwrap();
        let mut source =
            studio_e2e::files::model_source(ModelEngine::SdCpp, self.model_files.clone());
        source.cli_defaults.steps = 3;
        studio.submit_job(JobSubmission {
            task: Some(task),
            model: Some(MODEL.into()),
            model_source: Some(source),
            ..JobSubmission::new(TaskKind::Image, "unused")
        })
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.record())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn start(bin: &Bin, setup: &Setup) -> (Studio, Worker) {
    let studio = Studio::with_worker(WORKER_ID, TOKEN);
    let worker = Worker::start(bin, &studio, setup);
    studio.wait_connected(WORKER_ID);
    (studio, worker)
}

fn value_of<'a>(argv: &'a [Value], flag: &str) -> Option<&'a str> {
    let i = argv.iter().position(|a| a == flag)?;
    argv.get(i + 1)?.as_str()
}

fn alive(pid: i32) -> bool {
    // A zombie (state Z) has ended; only its exit status is left.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// Story: a worker with an sd-cli advertises `sd-cpp:*` for image and video (and
/// `llama-cpp:*` where it carries the LLM engine), never a bare `*` or a synthetic wildcard.
/// An sd-cpp image job is offered to it, its three model files are fetched once and
/// verified, sd-cli gets them by role with the task's values, and the PNG it writes is
/// uploaded as the WebP the job asked for; the progress reaches the studio's log of the
/// worker.
fn an_sd_cpp_image_job_runs_sd_cli_and_uploads_the_requested_ext(bin: &Bin) {
    let fixture = Fixture::new();
    let (studio, worker) = start(bin, &fixture.setup("ok"));

    let caps = studio
        .workers()
        .into_iter()
        .find(|w| w.id == WORKER_ID)
        .and_then(|w| w.capabilities)
        .expect("the worker's capabilities");
    let per_kind = &caps.supported_models_per_kind;
    for kind in [TaskKind::Image, TaskKind::Video] {
        assert!(per_kind[&kind].iter().any(|m| m == "sd-cpp:*"), "{caps:#?}");
    }
    if bin.shell.name == "async" {
        assert!(
            per_kind[&TaskKind::Llm].iter().any(|m| m == "llama-cpp:*"),
            "{caps:#?}"
        );
    }
    assert!(caps.supported_models.iter().any(|m| m == "sd-cpp:*"));
    assert!(
        !caps
            .supported_models
            .iter()
            .any(|m| m == "*" || m.starts_with("synthetic:")),
        "{caps:#?}"
    );

    let job = fixture.submit(
        &studio,
        serde_json::json!({"kind": "image", "prompt": "an aurora fox at dusk",
                           "width": 64, "height": 48, "seed": 7}),
    );
    let done = studio.expect_done(&job);
    let Some(ResultView::File {
        ext,
        content_type,
        path,
        prompt,
        ..
    }) = &done.result
    else {
        panic!("no file result: {done:#?}");
    };
    assert_eq!(
        (ext.as_str(), content_type.as_str()),
        ("webp", "image/webp")
    );
    assert_eq!(prompt, "an aurora fox at dusk");
    let bytes = std::fs::read(path.as_ref().expect("stored")).unwrap();
    assert!(is_webp(&bytes), "the upload is WebP");

    let records = fixture.records();
    assert_eq!(records.len(), 1, "sd-cli ran once");
    let argv = records[0]["argv"].as_array().unwrap().clone();
    let dir = worker.models_root().join(MODEL);
    for (flag, name) in [
        ("--diffusion-model", "z_image_turbo-Q4_K.gguf"),
        ("--llm", "Qwen3-4B-Q4_K_M.gguf"),
        ("--vae", "ae.safetensors"),
    ] {
        assert_eq!(
            value_of(&argv, flag),
            Some(dir.join(name).to_str().unwrap()),
            "{argv:?}"
        );
        assert_eq!(fixture.files.requests_for(name), 1, "{name} fetched once");
        assert!(dir.join(name).is_file(), "{name} kept, verified");
    }
    assert_eq!(value_of(&argv, "--prompt"), Some("an aurora fox at dusk"));
    assert_eq!(value_of(&argv, "--width"), Some("64"));
    assert_eq!(
        value_of(&argv, "--steps"),
        Some("3"),
        "the model source's default"
    );
    assert_eq!(value_of(&argv, "--seed"), Some("7"));

    wait_until("the progress in the worker's log", WAIT, || {
        studio.worker_logs(WORKER_ID).is_ok_and(|logs| {
            logs.iter().any(|l| {
                l.category == "engine"
                    && l.message == "sd-cli: 3/3 (100%) 1.00it/s"
                    && l.job_id.as_deref() == Some(job.as_str())
            })
        })
    });
}

/// Story: sd-cli exits 3; the job fails retryable with sd-cli's last stderr line, so the
/// studio tries it again (the attempts run out, it ends failed), and the worker serves on.
fn a_failing_sd_cli_fails_the_job_retryable_with_its_last_line(bin: &Bin) {
    let fixture = Fixture::new();
    let (studio, _worker) = start(bin, &fixture.setup("fail"));
    let job = fixture.submit(&studio, serde_json::json!({"kind": "image", "prompt": "p"}));
    let failed = studio.wait_job_state(&job, "failed");
    let error = failed.summary.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("sd-cli exited with exit status: 3")
            && error.ends_with("error: out of memory (stand-in)"),
        "{error}"
    );
    assert!(
        failed.summary.attempts > 1,
        "retryable: tried again {failed:#?}"
    );
    assert_eq!(fixture.records().len() as u32, failed.summary.attempts);
    let ok = studio.submit_kind(TaskKind::Image, "a synthetic job after the failures");
    studio.expect_done(&ok);
}

/// Story: the worker is killed (SIGKILL, no chance to clean up) while sd-cli runs; the
/// kernel takes sd-cli down with it (Linux: parent-death signal), nothing is orphaned.
fn a_killed_worker_takes_sd_cli_with_it(bin: &Bin) {
    if !cfg!(target_os = "linux") {
        eprintln!("note: the parent-death signal is Linux only; skipped");
        return;
    }
    let fixture = Fixture::new();
    let (studio, mut worker) = start(bin, &fixture.setup("hang"));
    let job = fixture.submit(&studio, serde_json::json!({"kind": "image", "prompt": "p"}));
    studio.wait_job_state(&job, "running");
    let pid = studio_e2e::wait_for("sd-cli's pid", WAIT, || {
        std::fs::read_to_string(fixture.pid_file())
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    });
    assert!(alive(pid), "sd-cli runs");
    worker.kill();
    wait_until(
        "sd-cli to die with the worker",
        Duration::from_secs(20),
        || !alive(pid),
    );
}
