//! Walks the frame vectors (`docs/protocol-vectors.jsonl`, conventions in `docs/PROTOCOL.md`
//! Appendix A) and checks every vector against the codec: exact round trip for plain vectors,
//! parse for `__parse_only`, rejection for `invalid__`. The file is read at test time, so new
//! vectors are picked up without code changes.

use std::path::PathBuf;

use serde_json::Value;
use studio_core::wire::{self, StudioFrame, WorkerFrame};

/// The vectors file, inside the repository (core/ -> repo root -> docs/).
fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("protocol-vectors.jsonl")
}

#[derive(Debug)]
enum Outcome {
    RoundTrip,
    ParseOnly,
    Rejected,
}

fn check(dir: &str, name: &str, frame: &Value) -> Result<Outcome, String> {
    let text = serde_json::to_string(frame).unwrap();
    let expect_invalid = name.starts_with("invalid__");
    let parse_only = name.ends_with("__parse_only");
    let reencoded = match dir {
        "worker_to_studio" => wire::decode_worker_frame(&text, wire::MAX_FRAME_BYTES)
            .map(|f: WorkerFrame| wire::encode(&f)),
        "studio_to_worker" => {
            wire::decode_studio_frame(&text).map(|f: StudioFrame| wire::encode(&f))
        }
        other => return Err(format!("unknown dir {other}")),
    };
    match (expect_invalid, reencoded) {
        (true, Err(_)) => Ok(Outcome::Rejected),
        (true, Ok(_)) => Err("invalid vector was accepted".into()),
        (false, Err(e)) => Err(format!("failed to parse: {e}")),
        (false, Ok(_)) if parse_only => Ok(Outcome::ParseOnly),
        (false, Ok(out)) => {
            if out == text {
                Ok(Outcome::RoundTrip)
            } else {
                Err(format!("round trip differs:\n  in:  {text}\n  out: {out}"))
            }
        }
    }
}

#[test]
fn every_vector_behaves_as_named() {
    let path = vectors_path();
    let body = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut failures = Vec::new();
    let (mut round, mut parse, mut rejected) = (0, 0, 0);
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let dir = v["dir"].as_str().unwrap();
        let name = v["name"].as_str().unwrap();
        match check(dir, name, &v["frame"]) {
            Ok(Outcome::RoundTrip) => round += 1,
            Ok(Outcome::ParseOnly) => parse += 1,
            Ok(Outcome::Rejected) => rejected += 1,
            Err(e) => failures.push(format!("{name} ({dir}): {e}")),
        }
    }
    eprintln!("vectors: {round} round-tripped, {parse} parse-only, {rejected} rejected");
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        round + parse + rejected > 0,
        "no vectors found in {}",
        path.display()
    );
    assert!(rejected > 0 && parse > 0 && round > 0);
}
