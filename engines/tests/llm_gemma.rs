//! Gemma 3 (and the K-quants, Q5_0 and SentencePiece vocabulary it brings) on the native
//! forward pass, with the real gemma-3-270m Q4_K_M GGUF at `STUDIO_TEST_GEMMA3_GGUF`
//! (`eval "$(.ci/fetch-test-models)"`; skipped with a note when `STUDIO_SKIP_MODEL_TESTS=1`
//! and no model is set).
//!
//! The reference is llama.cpp on the same file (candle's quantized Gemma 3 uses SiLU where
//! Gemma uses GELU, so it is no reference): `fixtures/gemma3_270m_llama_cpp.json` holds
//! llama.cpp's token ids for a set of strings, and for a few prompts the ten largest logits
//! and 16 greedy tokens, recorded once with `fixtures/llama_cpp_reference.py`
//! (llama-cpp-python 0.3.36). When `STUDIO_LLAMA_CPP_PYTHON` names the python of the venv
//! `.ci/llama-cpp-venv` builds, the same comparisons also run against a live llama.cpp.
#![cfg(feature = "llm")]

mod support;

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::Value;
use studio_engines::llm::cpu::quant::Isa;
use studio_engines::llm::cpu::{Arch, Model};
use studio_engines::llm::tokenizer::GgufTokenizer;
use studio_engines::llm::{self};

const REFERENCE: &str = include_str!("fixtures/gemma3_270m_llama_cpp.json");

fn load(path: &Path) -> Model {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    Model::load(&ct, &mut f).unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Our tokenizer and forward pass against one llama.cpp record (`reference`).
fn compare(model: &Model, tok: &GgufTokenizer, reference: &Value, label: &str) {
    for s in reference["strings"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            ids(&s["ids"]),
            "{label}: token ids of {text:?}"
        );
    }
    for p in reference["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want = ids(&p["ids"]);
        assert_eq!(tok.encode_prompt(text).unwrap(), want, "{label}: {text:?}");
        let greedy = ids(&p["greedy"]);
        let mut s = model.session(want.len() + greedy.len());
        let mut logits = model.forward(&mut s, &want, 0).unwrap();
        // The ten largest logits after the prompt: the same order of magnitude, the same
        // leader, each within a small distance of llama.cpp's.
        let top = p["top"].as_array().unwrap();
        let lead = top[0][1].as_f64().unwrap() as f32;
        let mut worst = 0f32;
        for t in top {
            let (id, theirs) = (
                t[0].as_u64().unwrap() as usize,
                t[1].as_f64().unwrap() as f32,
            );
            worst = worst.max((logits[id] - theirs).abs());
        }
        eprintln!(
            "{label} {text:?}: top-10 logits within {worst:.3} of llama.cpp's (lead {lead:.2})"
        );
        assert!(
            worst < 0.05 * lead.abs().max(10.0),
            "{label} {text:?}: {worst}"
        );
        assert_eq!(
            argmax(&logits),
            top[0][0].as_u64().unwrap() as usize,
            "{label} {text:?}"
        );
        // Along llama.cpp's greedy text, ours picks the same token except at near ties.
        let mut ties = 0;
        for (i, &t) in greedy.iter().enumerate() {
            let ours = argmax(&logits) as u32;
            if ours != t {
                let gap = logits[ours as usize] - logits[t as usize];
                assert!(
                    gap < 0.5,
                    "{label} {text:?} step {i}: {ours} vs {t}, gap {gap}"
                );
                ties += 1;
            }
            logits = model.forward(&mut s, &[t], want.len() + i).unwrap();
        }
        eprintln!("{label} {text:?}: {ties} near ties along llama.cpp's 16 greedy tokens");
        assert!(ties <= 2, "{label} {text:?}: {ties}");
    }
}

#[test]
fn real_gemma3_matches_llama_cpp() {
    let Some(path) = support::gemma3_model_path() else {
        return;
    };
    let model = load(&path);
    let cfg = model.config();
    assert_eq!(cfg.arch, Arch::Gemma3);
    assert_eq!(
        (
            cfg.dim,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim,
            cfg.n_layer,
            cfg.vocab
        ),
        (640, 4, 1, 256, 18, 262_144)
    );
    assert_eq!((cfg.window(0), cfg.window(5)), (Some(512), None));
    let (tok, template) = llm::load_tokenizer(&path).unwrap();
    assert!(tok.is_sentencepiece());
    assert!(template.is_fallback());
    let reference: Value = serde_json::from_str(REFERENCE).unwrap();
    compare(&model, &tok, &reference, "recorded");

    let Some(python) = std::env::var_os("STUDIO_LLAMA_CPP_PYTHON") else {
        eprintln!(
            "note: STUDIO_LLAMA_CPP_PYTHON unset: compared with the recorded llama.cpp \
             output only (build the peer with .ci/llama-cpp-venv for a live comparison)"
        );
        return;
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama_cpp_reference.py"
    );
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&path)
        .output()
        .expect("the llama.cpp venv's python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    compare(&model, &tok, &live, "live");
}

/// Whole prompt, chunks and single tokens, and the scalar kernels, on the real file.
#[test]
fn real_gemma3_is_consistent_across_chunks_and_kernels() {
    let Some(path) = support::gemma3_model_path() else {
        return;
    };
    let mut model = load(&path);
    let (tok, _) = llm::load_tokenizer(&path).unwrap();
    let prompt = tok
        .encode_prompt("A sliding window and a global layer, five to one, in eighteen blocks.")
        .unwrap();
    let n = prompt.len();
    let whole = model.forward(&mut model.session(n), &prompt, 0).unwrap();
    // Chunks of several tokens: each row and token through the same arithmetic, equal bits.
    let mut s = model.session(n);
    model.forward(&mut s, &prompt[..n / 2], 0).unwrap();
    assert_eq!(
        model.forward(&mut s, &prompt[n / 2..], n / 2).unwrap(),
        whole
    );
    // Eighteen layers re-quantize their activations to 8 bits: a last-bit difference in a
    // float sum can move a value to the next step, and that spreads; the choice of token
    // stays. Single tokens (the one-token kernels, where the chunks ran the many-token ones
    // on AVX-512 CPUs) and the scalar kernels differ by that much (measured: up to 1.2 %
    // of the logit range).
    let close = |other: &[f32], what: &str| {
        let range = whole.iter().fold(f32::MIN, |a, &b| a.max(b))
            - whole.iter().fold(f32::MAX, |a, &b| a.min(b));
        let d = other
            .iter()
            .zip(&whole)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(d / range < 0.03, "{what}: {}", d / range);
        assert_eq!(argmax(other), argmax(&whole), "{what}");
    };
    let mut s = model.session(n);
    model.forward(&mut s, &prompt[..n / 2], 0).unwrap();
    let mut last = Vec::new();
    for (i, &t) in prompt.iter().enumerate().skip(n / 2) {
        last = model.forward(&mut s, &[t], i).unwrap();
    }
    close(&last, "single tokens");
    if Isa::detect() != Isa::Scalar {
        model.set_isa(Isa::Scalar);
        close(
            &model.forward(&mut model.session(n), &prompt, 0).unwrap(),
            "scalar kernels",
        );
    }
}
