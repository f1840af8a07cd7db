//! Strict routing by `modelSource.engine` (PROTOCOL.md §3.6, §9.1) and typed errors.

use std::collections::BTreeMap;

use serde_json::json;
use studio_core::wire::{ImageTask, LlmTask, ModelEngine, ModelSource, Task, TaskKind};
use studio_engines::{
    synthetic, Engine, EngineError, EngineErrorKind, EngineOutput, JobRequest, Router,
    SyntheticEngine,
};

fn source(engine: ModelEngine) -> ModelSource {
    ModelSource {
        engine,
        ..ModelSource::synthetic()
    }
}

fn image(prompt: &str) -> Task {
    Task::Image(ImageTask {
        prompt: prompt.into(),
        ..ImageTask::default()
    })
}

/// A stand-in for a real engine: serves `llama-cpp` llm jobs with a fixed JSON answer.
struct FakeLlama;

impl Engine for FakeLlama {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::LlamaCpp]
    }
    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        BTreeMap::from([(
            TaskKind::Llm,
            vec!["qwen3.5-0.8b".into(), "synthetic".into(), "a-model".into()],
        )])
    }
    fn dispatch(&self, job: &JobRequest) -> Result<EngineOutput, EngineError> {
        self.ensure_supports(job.kind(), &job.model)?;
        Ok(EngineOutput::Json(json!({"from": "llama"})))
    }
}

/// A second engine claiming `synthetic`, to show the first registered one wins.
struct Shadow;

impl Engine for Shadow {
    fn name(&self) -> &'static str {
        "shadow"
    }
    fn serves(&self) -> Vec<ModelEngine> {
        vec![ModelEngine::Synthetic]
    }
    fn capabilities(&self) -> BTreeMap<TaskKind, Vec<String>> {
        BTreeMap::new()
    }
    fn dispatch(&self, _job: &JobRequest) -> Result<EngineOutput, EngineError> {
        Err(EngineError::failed("shadow", false))
    }
}

/// The engines this build compiles in, in routing order: real ones first (by feature),
/// then the Gradio engine and the synthetic engine, always, the synthetic one last.
fn compiled_in() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "llm") {
        names.push("llama");
    }
    if cfg!(feature = "whisper") {
        names.push("whisper");
    }
    if cfg!(feature = "image-candle") {
        names.push("candle_image");
    }
    if cfg!(feature = "tts") {
        names.push("piper");
    }
    if cfg!(feature = "sd-cpp") {
        names.push("sdcpp");
    }
    names.push("gradio");
    names.push("synthetic");
    names
}

#[test]
fn default_router_is_multi_over_the_compiled_in_engines_synthetic_last() {
    let router = Router::new_default();
    assert_eq!(router.name(), "multi");
    assert_eq!(router.engine_names(), compiled_in());
    assert_eq!(
        format!("{router:?}"),
        format!("Router {{ engines: {:?} }}", compiled_in())
    );
    assert!(router.serves().contains(&ModelEngine::Synthetic));
    if compiled_in() == ["gradio", "synthetic"] {
        assert_eq!(
            router.serves(),
            vec![ModelEngine::Other("gradio".into()), ModelEngine::Synthetic]
        );
        // The Gradio engine advertises nothing until the operator lists models.
        assert_eq!(router.capabilities(), SyntheticEngine::new().capabilities());
    }
}

#[cfg(feature = "llm")]
#[test]
fn llama_cpp_source_goes_to_the_llama_engine_never_to_synthetic() {
    let router = Router::new_default();
    assert_eq!(
        router.route(&ModelEngine::LlamaCpp).unwrap().name(),
        "llama"
    );
    // Even a model the synthetic engine advertises: no files, so the llama engine refuses
    // it; the synthetic engine never answers.
    for model in ["synthetic", "synthetic-llm"] {
        let job = JobRequest::new(
            "j",
            model,
            Task::Llm(LlmTask::default()),
            source(ModelEngine::LlamaCpp),
        );
        let err = router.dispatch(&job).unwrap_err();
        assert!(!err.retryable(), "{err:?}");
    }
}

#[test]
fn synthetic_source_routes_to_the_synthetic_engine() {
    let router = Router::new_default();
    assert_eq!(
        router.route(&ModelEngine::Synthetic).unwrap().name(),
        "synthetic"
    );
    let job = JobRequest::new(
        "j",
        "synthetic-image",
        image("fox"),
        ModelSource::synthetic(),
    );
    let out = router.dispatch(&job).unwrap();
    assert_eq!(
        out,
        EngineOutput::Binary {
            bytes: synthetic::render_webp("fox"),
            ext: "webp".into()
        }
    );
}

#[cfg(not(feature = "llm"))]
#[test]
fn llama_cpp_source_is_not_available_and_not_retryable() {
    let router = Router::new_default();
    // Even a model the synthetic engine advertises must not fall back to it.
    for model in ["qwen3.5-0.8b", "synthetic", "synthetic-llm"] {
        let job = JobRequest::new(
            "j",
            model,
            Task::Llm(LlmTask::default()),
            source(ModelEngine::LlamaCpp),
        );
        let err = router.dispatch(&job).unwrap_err();
        assert_eq!(err.kind, EngineErrorKind::EngineNotAvailable);
        assert!(!err.retryable());
        assert!(
            err.message
                .starts_with("modelSource.engine `llama-cpp` is not compiled into this worker; "),
            "{}",
            err.message
        );
        assert!(err.message.contains("install"), "{}", err.message);
    }
}

#[test]
fn every_engine_not_compiled_in_fails_without_fallback() {
    let router = Router::new_default();
    let mut missing = vec![ModelEngine::Parakeet];
    if !cfg!(feature = "tts") {
        missing.push(ModelEngine::Onnx);
    }
    if !cfg!(feature = "sd-cpp") {
        missing.push(ModelEngine::SdCpp);
    }
    for engine in missing {
        let job = JobRequest::new("j", "synthetic", image("x"), source(engine.clone()));
        let err = router.dispatch(&job).unwrap_err();
        assert_eq!(err.kind, EngineErrorKind::EngineNotAvailable, "{engine}");
        assert!(!err.retryable());
        assert!(
            err.message.contains(&format!("`{engine}`")),
            "{}",
            err.message
        );
        assert!(router.route(&engine).is_err());
    }
}

#[test]
fn unknown_engine_is_not_available() {
    let router = Router::new_default();
    let engine = ModelEngine::Other("future-engine".into());
    let job = JobRequest::new("j", "synthetic", image("x"), source(engine));
    let err = router.dispatch(&job).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::EngineNotAvailable);
    assert!(!err.retryable());
    assert!(err.message.contains("`future-engine`"), "{}", err.message);
    assert!(err.message.contains("update"), "{}", err.message);
}

#[test]
fn routes_by_source_engine_to_the_first_engine_serving_it() {
    let router = Router::new(vec![Box::new(FakeLlama), Box::new(SyntheticEngine::new())])
        .with_engine(Box::new(Shadow));
    assert_eq!(router.engine_names(), vec!["llama", "synthetic", "shadow"]);
    assert_eq!(
        router.serves(),
        vec![ModelEngine::LlamaCpp, ModelEngine::Synthetic]
    );

    // model "synthetic" with a llama-cpp source goes to llama, not synthetic.
    let llm = Task::Llm(LlmTask::default());
    let job = JobRequest::new("j", "synthetic", llm.clone(), source(ModelEngine::LlamaCpp));
    assert_eq!(
        router.dispatch(&job).unwrap(),
        EngineOutput::Json(json!({"from": "llama"}))
    );
    // ...and a synthetic source goes to the synthetic engine, never the later shadow.
    let job = JobRequest::new("j", "synthetic", llm, ModelSource::synthetic());
    let out = router.dispatch(&job).unwrap();
    assert_eq!(out.as_json().unwrap()["model"], "synthetic-llm");

    // The routed engine's own errors pass through unchanged.
    let job = JobRequest::new(
        "j",
        "qwen3.5-0.8b",
        image("x"),
        source(ModelEngine::LlamaCpp),
    );
    let err = router.dispatch(&job).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedKind);
    assert_eq!(err.message, "llama engine cannot serve image tasks");
    assert!(!err.retryable());
}

#[test]
fn capabilities_are_the_sorted_deduplicated_union() {
    let router = Router::new(vec![Box::new(FakeLlama), Box::new(SyntheticEngine::new())]);
    let caps = router.capabilities();
    assert_eq!(
        caps[&TaskKind::Llm],
        vec!["a-model", "qwen3.5-0.8b", "synthetic", "synthetic-llm"]
    );
    assert_eq!(caps[&TaskKind::Image], vec!["synthetic", "synthetic-image"]);
    assert_eq!(caps.len(), 5);
    // Kinds no engine serves are absent, not empty.
    let router = Router::new(vec![Box::new(Shadow), Box::new(FakeLlama)]);
    assert_eq!(
        router.capabilities().keys().copied().collect::<Vec<_>>(),
        [TaskKind::Llm]
    );
    assert_eq!(router.kinds(), vec![TaskKind::Llm]);
}

#[test]
fn router_never_advertises_the_wildcard() {
    for router in [
        Router::new_default(),
        Router::new(vec![Box::new(FakeLlama), Box::new(SyntheticEngine::new())]),
    ] {
        for (kind, models) in router.capabilities() {
            assert!(!models.iter().any(|m| m == "*"), "{kind}");
        }
        assert!(!router.flat_models().iter().any(|m| m == "*"));
    }
}

#[test]
fn find_by_model_needs_an_exact_kind_and_model_match() {
    let router = Router::new(vec![Box::new(FakeLlama), Box::new(SyntheticEngine::new())]);
    assert_eq!(
        router
            .find_by_model(TaskKind::Llm, "synthetic")
            .unwrap()
            .name(),
        "llama"
    );
    assert_eq!(
        router
            .find_by_model(TaskKind::Image, "synthetic")
            .unwrap()
            .name(),
        "synthetic"
    );
    assert!(router
        .find_by_model(TaskKind::Image, "qwen3.5-0.8b")
        .is_none());
    assert!(router.find_by_model(TaskKind::Video, "*").is_none());
}

#[test]
fn retryability_follows_the_error_kind() {
    let cases = [
        (EngineErrorKind::UnsupportedKind, false),
        (EngineErrorKind::UnsupportedModel, false),
        (EngineErrorKind::EngineNotAvailable, false),
        (EngineErrorKind::SourceMismatch, false),
        (EngineErrorKind::InvalidInput, false),
        (EngineErrorKind::Io, true),
        (EngineErrorKind::Failed { retryable: true }, true),
        (EngineErrorKind::Failed { retryable: false }, false),
    ];
    for (kind, retryable) in cases {
        assert_eq!(
            EngineError::new(kind, "m").retryable(),
            retryable,
            "{kind:?}"
        );
    }
    let io: EngineError = std::io::Error::other("disk full").into();
    assert_eq!(io.kind, EngineErrorKind::Io);
    assert!(io.retryable());
    // Context is prepended without changing the kind.
    let wrapped = EngineError::unsupported_kind("synthetic", TaskKind::Llm).context("job j-1");
    assert_eq!(wrapped.kind, EngineErrorKind::UnsupportedKind);
    assert_eq!(
        wrapped.message,
        "job j-1: synthetic engine cannot serve llm tasks"
    );
    assert!(!wrapped.retryable());
    assert!(!EngineError::invalid_input("bad").retryable());
    assert!(EngineError::failed("boom", true).retryable());
}

#[test]
fn router_is_usable_as_a_shared_trait_object() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<Router>();
    assert_send_sync::<dyn Engine>();
    let shared: std::sync::Arc<dyn Engine> = std::sync::Arc::new(Router::default());
    let handle = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            shared
                .dispatch(&JobRequest::new(
                    "j",
                    "synthetic",
                    image("t"),
                    ModelSource::synthetic(),
                ))
                .map(|o| o.is_binary())
        })
    };
    assert_eq!(handle.join().unwrap(), Ok(true));
}
