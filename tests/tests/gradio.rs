//! The Gradio engine against a real Gradio app (`tests/gradio/app.py`, the `gradio` PyPI
//! package; see [`studio_e2e::gradio`] for the venv it runs in).
//!
//! Two layers: every API and result shape through the worker's own engine path
//! (`Router::with_settings` and `dispatch`, as the worker's engine pool calls it), then a
//! whole job end to end: studio-local offers a `gradio` image job, the real worker binary
//! (both shells) asks the app and uploads the picture.
//!
//! ```text
//! eval "$(.ci/gradio-venv)"
//! cargo build -p studio-worker -p studio-worker-async && cargo test -p studio-e2e --test gradio
//! ```

#![cfg(unix)]

use std::time::Duration;

use studio_core::wire::{CliDefaults, ImageTask, ModelEngine, ModelSource, Task};
use studio_e2e::gradio::{app, App};
use studio_e2e::{for_each_shell, is_png, toml_string, Bin, Setup, Studio, Worker};
use studio_engines::gradio::{GradioApi, GradioSettings, SOURCE_ENGINE};
use studio_engines::{Engine, EngineError, EngineSettings, JobRequest, Router};
use studio_local::JobSubmission;

for_each_shell!(a_worker_serves_an_image_job_from_the_gradio_app);

fn gradio_source() -> ModelSource {
    ModelSource {
        engine: ModelEngine::Other(SOURCE_ENGINE.into()),
        files: Vec::new(),
        cli_defaults: CliDefaults::default(),
    }
}

fn settings(url: &str, api: GradioApi, api_name: &str) -> GradioSettings {
    GradioSettings {
        endpoint_url: url.to_string(),
        api,
        api_name: api_name.to_string(),
        ..GradioSettings::default()
    }
}

/// Both APIs of `app`: (URL, API).
fn both_apis(app: &App) -> [(String, GradioApi); 2] {
    [
        (app.url.clone(), GradioApi::Call),
        (app.legacy_url(), GradioApi::Legacy),
    ]
}

/// An image job for `prompt`, dispatched through the worker's router built with `gradio`.
fn run(gradio: GradioSettings, prompt: &str) -> Result<(Vec<u8>, String), EngineError> {
    let settings = EngineSettings {
        gradio,
        ..EngineSettings::default()
    };
    let job = JobRequest::new(
        "job-gradio",
        "any-model",
        Task::Image(ImageTask {
            prompt: prompt.into(),
            ..ImageTask::default()
        }),
        gradio_source(),
    );
    let out = Router::with_settings(&settings).dispatch(&job)?;
    let (bytes, ext) = out.as_binary().expect("an image job gives bytes");
    Ok((bytes.to_vec(), ext.to_string()))
}

/// The app's picture of `prompt`: a PNG 8 + len(prompt) wide and 24 high, red.
fn assert_painted(bytes: &[u8], ext: &str, prompt: &str) {
    assert_eq!(ext, "png");
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .expect("a decodable PNG");
    assert_eq!(
        (img.width(), img.height()),
        (8 + prompt.len() as u32, 24),
        "not the picture of `{prompt}`"
    );
    assert_eq!(img.to_rgb8().get_pixel(0, 0).0, [200, 10, 30]);
}

#[test]
fn both_apis_serve_an_image_job() {
    let Some(app) = app() else { return };
    for (url, api) in both_apis(app) {
        let prompt = format!("a red fox in the snow, {api:?}");
        let (bytes, ext) =
            run(settings(&url, api, "predict"), &prompt).unwrap_or_else(|e| panic!("{api:?}: {e}"));
        assert_painted(&bytes, &ext, &prompt);
    }
}

#[test]
fn every_result_shape_gives_the_image() {
    let Some(app) = app() else { return };
    for (url, api) in both_apis(app) {
        for shape in ["data_url", "relative_url", "path_only"] {
            let prompt = format!("shape {shape}");
            let (bytes, ext) = run(settings(&url, api, shape), &prompt)
                .unwrap_or_else(|e| panic!("{api:?} {shape}: {e}"));
            assert_painted(&bytes, &ext, &prompt);
        }
    }
}

#[test]
fn an_input_the_app_refuses_is_not_retryable() {
    let Some(app) = app() else { return };
    for (url, api) in both_apis(app) {
        let err = run(settings(&url, api, "predict"), "fail please").unwrap_err();
        assert!(!err.retryable(), "{api:?}: {err}");
        assert!(err.message.contains("the app refuses this prompt"), "{err}");
    }
}

#[test]
fn an_unexpected_app_error_is_retryable() {
    let Some(app) = app() else { return };
    for (url, api) in both_apis(app) {
        let err = run(settings(&url, api, "predict"), "crash now").unwrap_err();
        assert!(err.retryable(), "{api:?}: {err}");
        assert!(err.message.contains("unexpected error"), "{err}");
    }
}

#[test]
fn a_slow_app_times_out_retryable() {
    let Some(app) = app() else { return };
    for (url, api) in both_apis(app) {
        let gradio = GradioSettings {
            timeout: Duration::from_secs(2),
            ..settings(&url, api, "slow")
        };
        let err = run(gradio, "a slow painting").unwrap_err();
        assert!(err.retryable(), "{api:?}: {err}");
        assert!(err.message.contains("within 2 s"), "{err}");
    }
}

#[test]
fn a_result_over_the_size_limit_is_refused() {
    let Some(app) = app() else { return };
    // The picture is ~80 bytes of PNG: a file to fetch, then inline in a data URL.
    for shape in ["predict", "data_url"] {
        let gradio = GradioSettings {
            max_result_bytes: 40,
            ..settings(&app.url, GradioApi::Call, shape)
        };
        let err = run(gradio, "a big picture").unwrap_err();
        assert!(!err.retryable(), "{shape}: {err}");
        assert!(
            err.message.contains("larger than 40 bytes"),
            "{shape}: {err}"
        );
    }
}

#[test]
fn an_unknown_api_name_fails_with_the_apps_answer() {
    let Some(app) = app() else { return };
    for (url, api) in both_apis(app) {
        let err = run(settings(&url, api, "no_such_fn"), "x").unwrap_err();
        assert!(err.message.contains("answered HTTP"), "{api:?}: {err}");
    }
}

/// The whole path: the studio offers a `gradio` image job, the worker (configured with the
/// app's URL and the model it serves, and advertising it) asks the app and uploads the
/// PNG as `png`, with the full prompt.
fn a_worker_serves_an_image_job_from_the_gradio_app(bin: &Bin) {
    let Some(app) = app() else { return };
    const WORKER: &str = "w-gradio";
    let studio = Studio::with_worker(WORKER, "gradio-token-5d1e");
    let setup = Setup::provisioned(WORKER, "gradio-token-5d1e")
        .with_config("gradio_endpoint_url", &toml_string(&app.url))
        .with_config("supported_models_override", "[\"studio-gradio-sd\"]");
    let _worker = Worker::start(bin, &studio, &setup);
    studio.wait_connected(WORKER);

    let prompt = "a paper boat on a pond, painted by the operator's own app";
    let job = studio.submit_job(JobSubmission {
        model: Some("studio-gradio-sd".into()),
        model_source: Some(gradio_source()),
        ..JobSubmission::new(studio_core::wire::TaskKind::Image, prompt)
    });
    let (ext, bytes, reported) = studio.stored_file(&job);
    assert_eq!(ext, "png");
    assert_eq!(reported, prompt, "the upload's prompt");
    assert!(is_png(&bytes));
    assert_painted(&bytes, &ext, prompt);
    // The model the operator listed is advertised.
    let worker = studio
        .handle()
        .workers()
        .into_iter()
        .find(|w| w.id == WORKER)
        .expect("the worker is known");
    let capabilities = worker.capabilities.expect("the worker said hello");
    assert!(
        capabilities
            .supported_models
            .iter()
            .any(|m| m == "studio-gradio-sd"),
        "{capabilities:?}"
    );
}
