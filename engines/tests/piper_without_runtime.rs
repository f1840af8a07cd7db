//! The Piper engine (feature `tts`) on a machine without ONNX Runtime: its jobs fail "engine
//! not available", not retryable, with the install hint, before any model file is
//! fetched. (Its own test binary: a process keeps the first ONNX Runtime it loads, so this
//! must run where none was loaded.)
#![cfg(feature = "tts")]

mod support;
use support::serve_files;

use std::sync::atomic::Ordering;

use studio_core::wire::{AudioTtsTask, CliDefaults, ModelEngine, ModelFile, ModelSource, Task};
use studio_engines::piper::runtime;
use studio_engines::{Engine, EngineErrorKind, EngineSettings, JobRequest, Router};

#[test]
fn a_missing_onnx_runtime_is_engine_not_available_with_the_install_hint() {
    let (base, hits) = serve_files(vec![
        ("v.onnx".into(), b"not a model".to_vec()),
        ("v.onnx.json".into(), b"{}".to_vec()),
    ]);
    let root = std::env::temp_dir().join(format!("studio-piper-noruntime-{}", std::process::id()));
    let missing = root.join("lib").join("libonnxruntime.so.1.31.1");
    let settings = EngineSettings {
        onnxruntime_library: Some(missing.clone()),
        ..EngineSettings::with_models_root(&root)
    };
    let source = ModelSource {
        engine: ModelEngine::Onnx,
        files: ["v.onnx", "v.onnx.json"]
            .map(|n| ModelFile {
                role: "model".into(),
                url: format!("{base}/{n}"),
                filename: n.into(),
                approx_bytes: None,
                sha256: None,
            })
            .to_vec(),
        cli_defaults: CliDefaults::default(),
    };
    let job = JobRequest::new(
        "job-tts",
        "joe",
        Task::AudioTts(AudioTtsTask {
            text: "hello".into(),
            ..AudioTtsTask::default()
        }),
        source,
    );
    let err = Router::with_settings(&settings).dispatch(&job).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::EngineNotAvailable, "{err}");
    assert!(!err.retryable());
    assert!(err.message.contains("ONNX Runtime"), "{err}");
    assert!(
        err.message.contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(err.message.contains("onnxruntime_library"), "{err}");
    assert!(err.message.contains("pip install onnxruntime"), "{err}");
    assert_eq!(hits.load(Ordering::Relaxed), 0, "model files were fetched");
    assert_eq!(runtime::loaded_library(), None);
}
