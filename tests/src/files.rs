//! A loopback static file server for model downloads in end-to-end tests.
//!
//! [`FileServer::serve_dir`] serves the files of one directory over plain HTTP on
//! `127.0.0.1` (the worker allows plain http to loopback hosts only), so a test can point an
//! offer's `modelSource.files[].url` at [`FileServer::url`]. It answers `GET` and `HEAD`,
//! honours `Range: bytes=<start>-[<end>]` with `206` + `Content-Range` (`416` past the end),
//! counts requests (in total and per file) so "the cached model was not fetched again" can
//! be asserted, and stops on drop. Only plain file names directly in the directory are
//! served (no sub-paths, no `..`); everything else is `404`.
//!
//! ```no_run
//! # use studio_e2e::files::{FileServer, model_file, sha256_file};
//! let server = FileServer::serve_dir("/path/to/models").unwrap();
//! let gguf = std::path::Path::new("/path/to/models/m.gguf");
//! let file = model_file(&server.url("m.gguf"), "m.gguf", Some(&sha256_file(gguf).unwrap()));
//! // ... submit a job with a modelSource holding `file`, then:
//! assert_eq!(server.requests_for("m.gguf"), 1);
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use studio_core::wire::{CliDefaults, ModelEngine, ModelFile, ModelSource};

/// How long the server waits for a request's headers before dropping the connection.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One request the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedRequest {
    /// `GET` or `HEAD` (or whatever was sent).
    pub method: String,
    /// The file name asked for (the path without its leading `/` and query).
    pub name: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// A running loopback file server (see the module docs). Stopped on drop.
pub struct FileServer {
    port: u16,
    dir: PathBuf,
    log: Arc<Mutex<Vec<ServedRequest>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Serves the files directly in `dir` on an ephemeral `127.0.0.1` port.
    pub fn serve_dir(dir: impl Into<PathBuf>) -> io::Result<FileServer> {
        let dir = dir.into();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (dir, log, stop) = (dir.clone(), log.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("file-server-{port}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let (dir, log) = (dir.clone(), log.clone());
                        let _ = std::thread::Builder::new()
                            .name("file-server-conn".into())
                            .spawn(move || {
                                if let Some(req) = serve(conn, &dir) {
                                    log.lock().unwrap_or_else(|e| e.into_inner()).push(req);
                                }
                            });
                    }
                })?;
        }
        Ok(FileServer {
            port,
            dir,
            log,
            stop,
        })
    }

    /// The served directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL of file `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url())
    }

    /// Every request answered so far, in order.
    pub fn requests_log(&self) -> Vec<ServedRequest> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many requests were answered.
    pub fn requests(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many requests asked for `name`.
    pub fn requests_for(&self, name: &str) -> usize {
        self.requests_log()
            .iter()
            .filter(|r| r.name == name)
            .count()
    }

    /// Requests per file name.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.requests_log() {
            *counts.entry(r.name).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Whether `name` is a plain file name the server may serve.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', ':', '\0'])
        && !name.starts_with('.')
}

/// `bytes=<start>-[<end>]` against a file of `len` bytes: `Ok(Some((start, end)))`
/// inclusive, `Ok(None)` for no usable range (whole file), `Err(())` unsatisfiable.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = end.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len.saturating_sub(n), len - 1)));
    }
    let Ok(start) = start.parse::<u64>() else {
        return Ok(None);
    };
    if start >= len {
        return Err(());
    }
    let end = match end {
        "" => len - 1,
        e => match e.parse::<u64>() {
            Ok(e) if e >= start => e.min(len - 1),
            _ => return Ok(None),
        },
    };
    Ok(Some((start, end)))
}

fn serve(conn: TcpStream, dir: &Path) -> Option<ServedRequest> {
    let _ = conn.set_read_timeout(Some(REQUEST_READ_TIMEOUT));
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("");
    let name = path.strip_prefix('/').unwrap_or(path).to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut out = conn;
    let status = respond(&mut out, dir, &method, &name, range.as_deref()).unwrap_or(0);
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
    Some(ServedRequest {
        method,
        name,
        range,
        status,
    })
}

fn respond(
    out: &mut TcpStream,
    dir: &Path,
    method: &str,
    name: &str,
    range: Option<&str>,
) -> io::Result<u16> {
    let simple = |out: &mut TcpStream, status: u16, reason: &str, extra: &str| {
        let body = format!("{status} {reason}\n");
        write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n{extra}\r\n{body}",
            body.len()
        )?;
        Ok::<u16, io::Error>(status)
    };
    if method != "GET" && method != "HEAD" {
        return simple(out, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n");
    }
    let path = dir.join(name);
    if !plain(name) || !path.is_file() {
        return simple(out, 404, "Not Found", "");
    }
    let mut file = File::open(&path)?;
    let len = file.metadata()?.len();
    let (status, start, end) = match range.map(|r| parse_range(r, len)) {
        Some(Err(())) => {
            return simple(
                out,
                416,
                "Range Not Satisfiable",
                &format!("Content-Range: bytes */{len}\r\n"),
            )
        }
        Some(Ok(Some((s, e)))) => (206, s, e),
        _ => (200, 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {count}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 {
            "Partial Content"
        } else {
            "OK"
        }
    );
    if status == 206 {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{len}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method == "GET" && count > 0 {
        file.seek(SeekFrom::Start(start))?;
        io::copy(&mut (&mut file).take(count), out)?;
    }
    Ok(status)
}

/// SHA-256 of a file, lowercase hex (the `sha256` of a `modelSource` file entry).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(studio_core::wire::hex(&hasher.finalize()))
}

/// A `modelSource.files[]` entry with role `model`.
pub fn model_file(url: &str, filename: &str, sha256: Option<&str>) -> ModelFile {
    ModelFile {
        role: "model".into(),
        url: url.into(),
        filename: filename.into(),
        approx_bytes: None,
        sha256: sha256.map(str::to_string),
    }
}

/// A model source for `engine` with `files` and default CLI values.
pub fn model_source(engine: ModelEngine, files: Vec<ModelFile>) -> ModelSource {
    ModelSource {
        engine,
        files,
        cli_defaults: CliDefaults::default(),
    }
}

/// An `audio_stt` job for the whisper engine: `input_url` transcribed with `model`, whose
/// files (`(name, sha256)`) `files` serves.
pub fn whisper_job(
    files: &FileServer,
    input_url: &str,
    model: &str,
    model_files: &[(&str, String)],
) -> studio_local::JobSubmission {
    let task: studio_core::wire::Task =
        serde_json::from_value(serde_json::json!({"kind": "audio_stt", "inputUrl": input_url}))
            .expect("an audio_stt task");
    studio_local::JobSubmission {
        task: Some(task),
        model: Some(model.into()),
        model_source: Some(model_source(
            ModelEngine::Other("whisper".into()),
            model_files
                .iter()
                .map(|(name, sha)| model_file(&files.url(name), name, Some(sha)))
                .collect(),
        )),
        ..studio_local::JobSubmission::new(studio_core::wire::TaskKind::AudioStt, input_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(url: &str, range: Option<&str>) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut conn = TcpStream::connect(host).unwrap();
        let mut req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\n");
        if let Some(r) = range {
            req.push_str(&format!("Range: {r}\r\n"));
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, raw[split + 4..].to_vec())
    }

    fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn serves_files_ranges_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        std::fs::write(dir.path().join("m.bin"), &data).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"x").unwrap();
        let server = FileServer::serve_dir(dir.path()).unwrap();

        let (s, h, b) = get(&server.url("m.bin"), None);
        assert_eq!((s, b.as_slice()), (200, data.as_slice()));
        assert_eq!(header(&h, "content-length"), Some("10000"));

        let (s, h, b) = get(&server.url("m.bin"), Some("bytes=9000-"));
        assert_eq!(s, 206);
        assert_eq!(b, &data[9000..]);
        assert_eq!(header(&h, "content-range"), Some("bytes 9000-9999/10000"));

        let (s, _, b) = get(&server.url("m.bin"), Some("bytes=10-19"));
        assert_eq!((s, b.as_slice()), (206, &data[10..20]));

        let (s, h, _) = get(&server.url("m.bin"), Some("bytes=10000-"));
        assert_eq!(s, 416);
        assert_eq!(header(&h, "content-range"), Some("bytes */10000"));

        for bad in ["nope", "sub/x", "../m.bin", "sub"] {
            assert_eq!(get(&server.url(bad), None).0, 404, "{bad}");
        }
        // The log is written after the response; give the last thread a moment.
        let mut tries = 0;
        while server.requests() < 8 && tries < 100 {
            std::thread::sleep(Duration::from_millis(10));
            tries += 1;
        }
        assert_eq!(server.requests_for("m.bin"), 4);
        assert_eq!(server.requests(), 8);
        assert_eq!(
            server.requests_log()[1].range.as_deref(),
            Some("bytes=9000-")
        );
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("bytes=0-", 10), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=5-100", 10), Ok(Some((5, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Err(()));
        assert_eq!(parse_range("bytes=5-2", 10), Ok(None));
        assert_eq!(parse_range("items=1-2", 10), Ok(None));
        assert_eq!(parse_range("bytes=1-2,4-5", 10), Ok(None));
    }

    #[test]
    fn sha_and_sources() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let src = model_source(
            ModelEngine::LlamaCpp,
            vec![model_file("http://127.0.0.1:1/m", "m", None)],
        );
        assert_eq!(src.files[0].role, "model");
        assert_eq!(src.engine, ModelEngine::LlamaCpp);
    }
}
