//! The Gradio engine without a Gradio app: routing, the operator's model list, an app that
//! is down. The real app (the `gradio` PyPI package) serves its jobs in the end-to-end
//! suite (`tests/tests/gradio.rs`).

use std::net::TcpListener;

use studio_core::wire::{CliDefaults, ImageTask, ModelEngine, ModelSource, Task, TaskKind};
use studio_engines::gradio::{GradioApi, GradioSettings, SOURCE_ENGINE};
use studio_engines::{Engine, EngineErrorKind, EngineSettings, GradioEngine, JobRequest, Router};

/// A loopback URL nothing listens on.
fn nobody_home() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/")
}

fn job(model: &str, prompt: &str) -> JobRequest {
    JobRequest::new(
        "job-gradio",
        model,
        Task::Image(ImageTask {
            prompt: prompt.into(),
            ..ImageTask::default()
        }),
        ModelSource {
            engine: ModelEngine::Other(SOURCE_ENGINE.into()),
            files: Vec::new(),
            cli_defaults: CliDefaults::default(),
        },
    )
}

fn router(gradio: GradioSettings) -> Router {
    Router::with_settings(&EngineSettings {
        gradio,
        ..EngineSettings::default()
    })
}

#[test]
fn an_app_that_is_down_is_a_retryable_failure() {
    let url = nobody_home();
    for api in [GradioApi::Call, GradioApi::Legacy] {
        let gradio = GradioSettings {
            endpoint_url: url.clone(),
            api,
            ..GradioSettings::default()
        };
        let err = router(gradio).dispatch(&job("any", "x")).unwrap_err();
        assert!(err.retryable(), "{err}");
        assert!(err.message.contains("not answering"), "{err}");
        assert!(err.message.contains(&url), "{err}");
        assert!(err.message.contains("gradio_endpoint_url"), "{err}");
    }
}

#[test]
fn the_operators_model_list_is_advertised_and_enforced() {
    let router = router(GradioSettings {
        models: vec!["my-sdxl".into(), "my-flux".into()],
        endpoint_url: nobody_home(),
        ..GradioSettings::default()
    });
    let image = &router.capabilities()[&TaskKind::Image];
    assert!(image.contains(&"my-sdxl".to_string()), "{image:?}");
    assert!(image.contains(&"my-flux".to_string()), "{image:?}");
    // An unlisted model never reaches the app; a listed one does (and finds it down).
    let err = router.dispatch(&job("sdxl-turbo", "x")).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedModel, "{err}");
    assert!(!err.retryable());
    let err = router.dispatch(&job("my-sdxl", "x")).unwrap_err();
    assert!(err.message.contains("not answering"), "{err}");
    // No list: the engine advertises nothing, and serves any model.
    let engine = GradioEngine::new(GradioSettings {
        endpoint_url: nobody_home(),
        ..GradioSettings::default()
    });
    assert!(engine.capabilities().is_empty());
    let err = engine.dispatch(&job("whatever", "x")).unwrap_err();
    assert!(err.message.contains("not answering"), "{err}");
}

#[test]
fn routing_stays_strict() {
    let router = Router::with_settings(&EngineSettings::default());
    assert!(router.engine_names().contains(&"gradio"));
    // A `gradio` job goes to the Gradio engine ...
    let served = router
        .route(&ModelEngine::Other(SOURCE_ENGINE.into()))
        .unwrap();
    assert_eq!(served.name(), "gradio");
    // ... which serves no other model source, and no other kind.
    let engine = GradioEngine::new(GradioSettings::default());
    assert_eq!(
        engine.serves(),
        vec![ModelEngine::Other("gradio".to_string())]
    );
    let mut other = job("any", "x");
    other.source.engine = ModelEngine::SdCpp;
    assert_eq!(
        engine.dispatch(&other).unwrap_err().kind,
        EngineErrorKind::SourceMismatch
    );
    let mut tts = job("any", "x");
    tts.task = Task::AudioTts(Default::default());
    assert_eq!(
        engine.dispatch(&tts).unwrap_err().kind,
        EngineErrorKind::UnsupportedKind
    );
}

#[test]
fn a_bad_endpoint_is_engine_not_available() {
    let engine = GradioEngine::new(GradioSettings {
        endpoint_url: "gopher://127.0.0.1/".into(),
        ..GradioSettings::default()
    });
    let err = engine.dispatch(&job("any", "x")).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::EngineNotAvailable, "{err}");
    assert!(!err.retryable());
    assert!(err.message.contains("gradio_endpoint_url"), "{err}");
}
