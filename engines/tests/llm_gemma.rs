//! Gemma 3 (and the K-quants, Q5_0 and SentencePiece it brings) on the native forward pass,
//! with the real gemma-3-270m Q4_K_M GGUF at `STUDIO_TEST_GEMMA3_GGUF`
//! (`eval "$(.ci/fetch-test-models)"`; skipped with a note when `STUDIO_SKIP_MODEL_TESTS=1`
//! and no model is set).
#![cfg(feature = "llm")]

mod support;

use std::path::Path;

use candle_core::quantized::gguf_file;
use studio_engines::llm::cpu::{Arch, Model};
use studio_engines::llm::{self};

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

fn greedy(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = m.session(prompt.len() + n);
    let mut logits = m.forward(&mut s, prompt, 0).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let t = argmax(&logits) as u32;
        out.push(t);
        logits = m.forward(&mut s, &[t], prompt.len() + i).unwrap();
    }
    out
}

#[test]
fn real_gemma3_smoke() {
    let Some(path) = support::gemma3_model_path() else {
        return;
    };
    let m = load(&path);
    assert_eq!(m.config().arch, Arch::Gemma3);
    let (tok, _) = llm::load_tokenizer(&path).unwrap();
    let ids = tok.encode_prompt("The capital of France is").unwrap();
    eprintln!("ids {ids:?}");
    let out = greedy(&m, &ids, 12);
    eprintln!("out {out:?} {:?}", tok.decode(&out));
}
