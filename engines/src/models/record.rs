//! Which model a model directory holds: a small record `<model dir>/.studio-model.json`
//! (`{"model":"<id>","engine":"<modelSource.engine>","kind":"<task kind>"}`) written after
//! a job ran on the model, so an engine built later can advertise the exact ids of the
//! models it has cached (a directory name is the id made safe, not always the id itself).

use std::fs;
use std::path::Path;

use serde_json::{json, Value};
use studio_core::wire::{ModelEngine, TaskKind};

use crate::error::EngineError;

/// The record's file name in a model directory.
pub const RECORD_FILE: &str = ".studio-model.json";

/// Writes the record of `model_id` into `dir` (atomically: a temporary file renamed).
pub(super) fn write(
    dir: &Path,
    model_id: &str,
    engine: &ModelEngine,
    kind: TaskKind,
) -> Result<(), EngineError> {
    let text = json!({"model": model_id, "engine": engine.as_str(), "kind": kind.as_str()});
    let path = dir.join(RECORD_FILE);
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    fs::write(&tmp, text.to_string())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| EngineError::io(format!("cannot write {}: {e}", path.display())))
}

/// The `(kind, model id)` of every directory under `root` whose record names `engine`,
/// sorted. Unreadable directories and records are skipped.
pub(super) fn cached(root: &Path, engine: &ModelEngine) -> Vec<(TaskKind, String)> {
    let Ok(dirs) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<(TaskKind, String)> = dirs
        .flatten()
        .filter_map(|dir| {
            let text = fs::read_to_string(dir.path().join(RECORD_FILE)).ok()?;
            let value: Value = serde_json::from_str(&text).ok()?;
            if value["engine"].as_str()? != engine.as_str() {
                return None;
            }
            let kind = TaskKind::parse(value["kind"].as_str()?)?;
            let model = value["model"].as_str().filter(|m| !m.is_empty())?;
            Some((kind, model.to_string()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
