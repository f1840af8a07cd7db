//! Verified copies: whether a file on disk is the one an offer names (its SHA-256), and
//! the `<file>.sha256` record that lets a later job reuse it without hashing it again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use studio_core::wire::hex;

use super::names::Plan;
use super::{with_suffix, SIDECAR_SUFFIX, SIDECAR_TMP_SUFFIX};
use crate::error::EngineError;
use crate::job_log;

/// Whether `path` is a usable verified copy for `plan` (see the module docs). A copy whose
/// hash is wrong is removed when `remove_bad` (the store's own directory), else left.
pub(super) fn cached(path: &Path, plan: &Plan<'_>, remove_bad: bool) -> Result<bool, EngineError> {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return Err(EngineError::io(format!(
                "{} exists but is not a file",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(EngineError::io(format!(
                "cannot stat {}: {e}",
                path.display()
            )))
        }
    };
    let Some(expected) = &plan.sha else {
        return Ok(true);
    };
    if Sidecar::read(path).is_some_and(|s| s.vouches_for(expected, &meta)) {
        return Ok(true);
    }
    let name = &plan.file.filename;
    job_log::info(&format!(
        "verifying {} (no valid {SIDECAR_SUFFIX} record)",
        path.display()
    ));
    let actual = hash_file(path)
        .map_err(|e| EngineError::io(format!("cannot read {}: {e}", path.display())))?;
    if &actual == expected {
        Sidecar::write(path, &actual);
        return Ok(true);
    }
    job_log::warn(&format!(
        "{} has SHA-256 {actual}, not the expected {expected}{}",
        path.display(),
        if remove_bad {
            "; removed, it is downloaded again"
        } else {
            "; not used"
        }
    ));
    if remove_bad {
        let _ = fs::remove_file(with_suffix(path, SIDECAR_SUFFIX));
        fs::remove_file(path)
            .map_err(|e| EngineError::io(format!("cannot remove the bad copy of {name}: {e}")))?;
    }
    Ok(false)
}

/// SHA-256 of a whole file, lowercase hex.
pub(crate) fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    hash_reader(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds everything `reader` holds to `hasher`; the byte count.
pub(crate) fn hash_reader(reader: &mut impl Read, hasher: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The `<file>.sha256` record: `<hex>  <name>` (the `sha256sum` format), then
/// `size <bytes>` and `mtime_ns <nanoseconds since the epoch>` of the file it vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sidecar {
    sha: String,
    size: u64,
    mtime_ns: Option<u128>,
}

fn mtime_ns(meta: &fs::Metadata) -> Option<u128> {
    meta.modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

impl Sidecar {
    pub(super) fn read(path: &Path) -> Option<Sidecar> {
        let text = fs::read_to_string(with_suffix(path, SIDECAR_SUFFIX)).ok()?;
        let mut lines = text.lines();
        let sha = lines
            .next()?
            .split_whitespace()
            .next()?
            .to_ascii_lowercase();
        let mut size = None;
        let mut mtime = None;
        for line in lines {
            match line.split_once(' ') {
                Some(("size", v)) => size = v.trim().parse().ok(),
                Some(("mtime_ns", v)) => mtime = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Sidecar {
            sha,
            size: size?,
            mtime_ns: mtime,
        })
    }

    pub(super) fn vouches_for(&self, expected: &str, meta: &fs::Metadata) -> bool {
        self.sha == expected
            && self.size == meta.len()
            && match (self.mtime_ns, mtime_ns(meta)) {
                (Some(a), Some(b)) => a == b,
                // A platform without mtimes: size and hash record only.
                (None, None) => true,
                _ => false,
            }
    }

    /// Records `sha` for the file at `path` as it is now. Best effort: a failure only
    /// means the next job hashes the file again.
    pub(super) fn write(path: &Path, sha: &str) {
        let result = (|| -> io::Result<()> {
            let meta = fs::metadata(path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut text = format!("{sha}  {name}\nsize {}\n", meta.len());
            if let Some(m) = mtime_ns(&meta) {
                text.push_str(&format!("mtime_ns {m}\n"));
            }
            let side = with_suffix(path, SIDECAR_SUFFIX);
            let tmp = with_suffix(path, SIDECAR_TMP_SUFFIX);
            {
                let mut f = File::create(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
            }
            fs::rename(&tmp, &side)
        })();
        if let Err(e) = result {
            tracing::warn!(
                "cannot write the {SIDECAR_SUFFIX} record of {}: {e} (it is hashed again next time)",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        fs::write(&path, b"abc").unwrap();
        let sha = hash_file(&path).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        Sidecar::write(&path, &sha);
        let side = Sidecar::read(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert!(side.vouches_for(&sha, &meta));
        assert!(!side.vouches_for(&"0".repeat(64), &meta));
        let text = fs::read_to_string(with_suffix(&path, SIDECAR_SUFFIX)).unwrap();
        assert!(text.starts_with(&format!("{sha}  f.bin\n")), "{text}");
        // A changed size is noticed without hashing.
        fs::write(&path, b"abcd").unwrap();
        assert!(!side.vouches_for(&sha, &fs::metadata(&path).unwrap()));
    }
}
