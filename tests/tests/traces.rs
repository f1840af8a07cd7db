//! The recorded corpus: every trace under `tests/traces/**` (recorded from the e2e
//! scenarios by both shells, see `studio_e2e::RECORD_DIR_ENV`) must replay on today's core
//! without a divergence. After an intended change of the core's behaviour, re-record the
//! corpus or bless a trace with `studio-worker replay --bless PATH`.

use std::path::{Path, PathBuf};

use studio_core::trace;

fn traces(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            traces(&path, out);
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            out.push(path);
        }
    }
}

#[test]
fn every_recorded_trace_replays_without_divergence() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let mut files = Vec::new();
    traces(&root, &mut files);
    files.sort();
    assert!(
        files.len() >= 2,
        "no trace corpus under {} (found {files:?})",
        root.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a trace");
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        match trace::replay(&text) {
            Ok(report) if report.is_ok() => {
                assert!(report.steps > 0, "{name}: no steps");
            }
            Ok(report) => failures.push(format!("{name}: {report}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_corpus_holds_no_token() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let mut files = Vec::new();
    traces(&root, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // The e2e scenarios' token (tests/tests/e2e.rs) and any approved token's shape.
        assert!(!text.contains("e2e-token-7f3a9c1d5b"), "{}", file.display());
    }
}
