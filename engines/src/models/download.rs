//! One file's download: redirects checked hop by hop, `Range` resume of a leftover
//! `.part`, hashing and length checks while streaming, fsync and atomic rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};
use studio_core::wire::hex;
use ureq::http::{HeaderMap, Response, Uri};
use ureq::Body;

use super::disk::{self, human};
use super::names::{check_url, is_loopback_host, redact, Plan};
use super::progress::Progress;
use super::verify::{hash_reader, Sidecar};
use super::{with_suffix, FetchOptions, PART_SUFFIX};
use crate::error::EngineError;
use crate::job_log;

/// The `User-Agent` of model downloads.
pub const USER_AGENT: &str = concat!("studio-worker/", env!("CARGO_PKG_VERSION"));

/// The read buffer of the streaming loop.
const CHUNK: usize = 256 * 1024;

/// How an attempt failed: give up, or (once) start again without the `.part`.
enum Failure {
    Fail(EngineError),
    Restart(EngineError),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        Failure::Fail(e)
    }
}

/// Downloads `plan` to `dest` through `<dest>.part` (see the module docs of `models`).
pub(crate) fn fetch(
    model_id: &str,
    plan: &Plan<'_>,
    root: &Path,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<(), EngineError> {
    let part = with_suffix(dest, PART_SUFFIX);
    let mut resume = true;
    loop {
        match attempt(model_id, plan, root, dest, &part, opts, resume) {
            Ok(()) => return Ok(()),
            Err(Failure::Restart(e)) if resume => {
                job_log::warn(&format!("{e}; downloading it again from the start"));
                remove(&part);
                resume = false;
            }
            Err(Failure::Restart(e)) | Err(Failure::Fail(e)) => return Err(e),
        }
    }
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

fn attempt(
    model_id: &str,
    plan: &Plan<'_>,
    root: &Path,
    dest: &Path,
    part: &Path,
    opts: &FetchOptions,
    resume: bool,
) -> Result<(), Failure> {
    let name = &plan.file.filename;
    let shown = redact(&plan.file.url);
    let offset = if resume {
        fs::metadata(part).map(|m| m.len()).unwrap_or(0)
    } else {
        remove(part);
        0
    };
    let response = get(plan, offset, opts)?;
    let status = response.status().as_u16();
    let content_length = header_u64(response.headers(), "content-length");
    let (start, total) = match status {
        200 => (0, content_length),
        206 => {
            let range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            let Some((start, total)) = range else {
                return Err(Failure::Restart(EngineError::failed(
                    format!("{shown} answered 206 without a usable Content-Range for {name}"),
                    true,
                )));
            };
            if start != offset {
                return Err(Failure::Restart(EngineError::failed(
                    format!(
                        "{shown} resumed {name} at byte {start}, not at byte {offset} as asked"
                    ),
                    true,
                )));
            }
            (start, total.or_else(|| content_length.map(|n| start + n)))
        }
        416 if offset > 0 => {
            return Err(Failure::Restart(EngineError::failed(
                format!("{shown} cannot resume {name} at byte {offset} (HTTP 416)"),
                true,
            )))
        }
        s => return Err(Failure::Fail(status_error(name, shown, s))),
    };
    if offset > 0 && start == 0 {
        job_log::info(&format!(
            "{shown} does not resume downloads (HTTP {status} to a Range request); \
             downloading {name} from the start"
        ));
    }
    if let Some(total) = total {
        if total < start {
            return Err(Failure::Restart(EngineError::failed(
                format!("{shown} announced {total} bytes for {name}, fewer than the {start} held"),
                true,
            )));
        }
        disk::preflight(root, total - start, opts.disk_headroom_percent)?;
    }
    job_log::info(&format!(
        "downloading {name} of model {model_id} from {}: {}{}",
        plan.url.host().unwrap_or("?"),
        total.map(human).unwrap_or_else(|| "size unknown".into()),
        if start > 0 {
            format!(", resuming at {}", human(start))
        } else {
            String::new()
        }
    ));

    // The part file, with the bytes already held fed to the hasher first.
    let mut hasher = Sha256::new();
    let mut file = if start > 0 {
        let mut open = || -> io::Result<File> {
            let mut f = OpenOptions::new().read(true).write(true).open(part)?;
            let held = hash_reader(&mut (&f).take(start), &mut hasher)?;
            if held != start {
                return Err(io::Error::other(format!(
                    "holds {held} bytes, {start} expected"
                )));
            }
            f.set_len(start)?;
            f.seek(SeekFrom::Start(start))?;
            Ok(f)
        };
        open().map_err(|e| {
            Failure::Restart(EngineError::io(format!(
                "cannot resume {}: {e}",
                part.display()
            )))
        })?
    } else {
        File::create(part).map_err(|e| write_error(e, part))?
    };

    let started = Instant::now();
    let mut progress = Progress::start(name.clone(), total, start, opts.progress);
    let mut reader = response.into_body().into_reader();
    let mut buf = vec![0u8; CHUNK];
    let mut done = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.sync_data();
                return Err(Failure::Fail(EngineError::failed(
                    format!(
                        "the download of {name} from {shown} broke off after {}{}: {e}; \
                         the bytes received are kept and resumed next time",
                        human(done),
                        total
                            .map(|t| format!(" of {}", human(t)))
                            .unwrap_or_default()
                    ),
                    true,
                )));
            }
        };
        if total.is_some_and(|t| done + n as u64 > t) {
            drop(file);
            remove(part);
            return Err(Failure::Fail(EngineError::failed(
                format!("{shown} sent more bytes of {name} than it announced"),
                true,
            )));
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| write_error(e, part))?;
        super::count_downloaded(n);
        done += n as u64;
        progress.update(done);
    }
    progress.finish(done);
    if let Some(t) = total.filter(|&t| done < t) {
        let _ = file.sync_data();
        return Err(Failure::Fail(EngineError::failed(
            format!(
                "the download of {name} from {shown} ended after {} of {} bytes; \
                 the bytes received are kept and resumed next time",
                done, t
            ),
            true,
        )));
    }
    file.sync_all().map_err(|e| write_error(e, part))?;
    drop(file);

    let actual = hex(&hasher.finalize());
    if let Some(expected) = plan.sha.as_deref().filter(|&e| e != actual) {
        remove(part);
        let e = EngineError::failed(
            format!(
                "SHA-256 mismatch for {name} from {shown}: expected {expected}, got {actual}; \
                 the file was discarded"
            ),
            false,
        );
        // A resumed file may have been spoiled by the old bytes: once more from scratch.
        return Err(if start > 0 {
            Failure::Restart(e)
        } else {
            Failure::Fail(e)
        });
    }
    fs::rename(part, dest).map_err(|e| {
        EngineError::io(format!(
            "cannot rename {} to {}: {e}",
            part.display(),
            dest.display()
        ))
    })?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir);
    }
    Sidecar::write(dest, &actual);
    let secs = started.elapsed().as_secs_f64();
    job_log::info(&format!(
        "{name} of model {model_id}: downloaded{} ({} in {secs:.1} s)",
        if plan.sha.is_some() {
            " and verified"
        } else {
            " (no sha256 given, not verified)"
        },
        human(done - start)
    ));
    Ok(())
}

/// A local write failure (retryable). Disk-full removes the `.part` to give the space back.
fn write_error(e: io::Error, part: &Path) -> Failure {
    if e.kind() == io::ErrorKind::StorageFull {
        remove(part);
        return Failure::Fail(EngineError::io(format!(
            "the disk filled up while writing {}: {e}; the partial file was removed",
            part.display()
        )));
    }
    Failure::Fail(EngineError::io(format!(
        "cannot write {}: {e}",
        part.display()
    )))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!("cannot fsync {}: {e}", dir.display());
    }
}

/// Directory fsync is a unix notion; elsewhere the rename is as durable as it gets.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}

/// The agent of one request: bounded connect and reads, statuses as responses, no
/// automatic redirects (they are followed and checked by hand), no proxy for loopback.
fn agent(loopback: bool, opts: &FetchOptions) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_recv_response(Some(opts.read_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(USER_AGENT);
    if loopback {
        config = config.proxy(None);
    }
    config.build().into()
}

/// GET with `Range: bytes=<offset>-` when `offset > 0`, redirects followed by hand.
fn get(plan: &Plan<'_>, offset: u64, opts: &FetchOptions) -> Result<Response<Body>, Failure> {
    let name = &plan.file.filename;
    let mut url = plan.url.clone();
    for _ in 0..=opts.max_redirects {
        let loopback = is_loopback_host(url.host().unwrap_or(""));
        let mut request = agent(loopback, opts).get(url.clone());
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let shown = url.to_string();
        let shown = redact(&shown);
        let response = request.call().map_err(|e| {
            EngineError::failed(format!("cannot download {name} from {shown}: {e}"), true)
        })?;
        let status = response.status().as_u16();
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            return Ok(response);
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                EngineError::failed(
                    format!("{shown} answered {status} for {name} without a Location"),
                    true,
                )
            })?;
        let next = resolve(&url, location);
        url = check_url(&next).map_err(|e| e.context(format!("redirect from {shown}")))?;
    }
    Err(Failure::Fail(EngineError::failed(
        format!(
            "more than {} redirects for {name} from {}",
            opts.max_redirects,
            redact(&plan.file.url)
        ),
        true,
    )))
}

/// `location` resolved against `base` (absolute, scheme-relative, absolute-path or
/// relative-path references).
pub(crate) fn resolve(base: &Uri, location: &str) -> String {
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    if location.contains("://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `bytes <start>-<end>/<total or *>` → `(start, total)`.
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|&t| t > end)?),
    };
    Some((start, total))
}

/// An HTTP status that is neither content nor a redirect.
fn status_error(name: &str, shown: &str, status: u16) -> EngineError {
    let retryable = !(400..500).contains(&status) || status == 408 || status == 429;
    EngineError::failed(
        format!(
            "{shown} answered HTTP {status} for {name}{}",
            if retryable {
                ""
            } else {
                "; check the model source's URL"
            }
        ),
        retryable,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 10-9/100"), None);
        assert_eq!(parse_content_range("bytes 10-99/50"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }

    #[test]
    fn redirects_resolve() {
        let base: Uri = "https://h.example/a/b/c.gguf?x=1".parse().unwrap();
        assert_eq!(resolve(&base, "https://cdn/x"), "https://cdn/x");
        assert_eq!(resolve(&base, "//cdn/x"), "https://cdn/x");
        assert_eq!(resolve(&base, "/x/y"), "https://h.example/x/y");
        assert_eq!(resolve(&base, "d.gguf"), "https://h.example/a/b/d.gguf");
    }

    #[test]
    fn statuses_classify() {
        for (s, retry) in [
            (404, false),
            (403, false),
            (400, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
            (204, true),
        ] {
            assert_eq!(status_error("f", "u", s).retryable(), retry, "{s}");
        }
    }

    #[test]
    fn the_user_agent_names_the_worker() {
        assert!(USER_AGENT.starts_with("studio-worker/"));
    }
}
