//! Model files on disk: verified downloads into `<models_root>/<model id>/` (PROTOCOL.md
//! §3.6, §8 "Models").
//!
//! (Skeleton: the API real engines code against; the download itself lands next.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use studio_core::wire::ModelFile;

use crate::error::EngineError;

/// Where verified model files live, and how missing ones are fetched. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: Arc<PathBuf>,
}

impl ModelStore {
    /// A store rooted at `root` (the config's `models_root`).
    pub fn new(root: impl Into<PathBuf>) -> ModelStore {
        ModelStore {
            root: Arc::new(root.into()),
        }
    }

    /// The models root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes every file in `files` present and verified under `<root>/<model id>/` and
    /// returns their paths, in the order given.
    pub fn ensure(&self, model_id: &str, files: &[ModelFile]) -> Result<Vec<PathBuf>, EngineError> {
        let _ = (model_id, files);
        Err(EngineError::io("model downloads are not implemented yet"))
    }
}
