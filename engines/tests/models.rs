//! Verified model downloads ([`ModelStore::ensure`]) against a loopback HTTP server whose
//! behaviour each test scripts: good files, wrong hashes, truncated bodies, `Range`
//! resumes (honoured or ignored), stalls, redirects, error statuses. The server counts
//! requests, so "no request was made" is checked, not assumed.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use studio_core::wire::ModelFile;
use studio_engines::models::{FetchOptions, ProgressMode, DEFAULT_READ_TIMEOUT};
use studio_engines::{EngineError, EngineErrorKind, ModelStore};

// ------------------------------------------------------------------------------------------
// The scripted server
// ------------------------------------------------------------------------------------------

/// What a request looked like.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// What to answer.
#[derive(Clone, Debug, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announce this Content-Length instead of the body's.
    length: Option<u64>,
    /// Write the headers and this many body bytes, then sleep this long before the rest.
    stall: Option<(usize, Duration)>,
}

impl Reply {
    fn ok(body: &[u8]) -> Reply {
        Reply {
            status: 200,
            body: body.to_vec(),
            ..Reply::default()
        }
    }

    fn status(status: u16) -> Reply {
        Reply {
            status,
            body: format!("status {status}").into_bytes(),
            ..Reply::default()
        }
    }

    /// A file served with `Range` support: 206 + Content-Range for `bytes=N-`.
    fn ranged(body: &[u8], range: Option<&str>) -> Reply {
        let Some(start) = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return Reply::ok(body);
        };
        if start >= body.len() {
            return Reply {
                headers: vec![("Content-Range".into(), format!("bytes */{}", body.len()))],
                ..Reply::status(416)
            };
        }
        Reply {
            status: 206,
            headers: vec![(
                "Content-Range".into(),
                format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
            )],
            body: body[start..].to_vec(),
            ..Reply::default()
        }
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl Server {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (seen, stop, accepted) = (seen.clone(), stop.clone(), accepted.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (seen, handler) = (seen.clone(), handler.clone());
                    thread::spawn(move || serve(conn, &seen, &*handler));
                }
            });
        }
        Server {
            port,
            seen,
            stop,
            accepted,
        }
    }

    /// A server serving `body` at every path, honouring `Range`.
    fn file(body: Vec<u8>) -> Server {
        Server::start(move |req| Reply::ranged(&body, req.range.as_deref()))
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let req = Seen { path, range };
    seen.lock().unwrap().push(req.clone());
    let reply = handler(&req);
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.length.unwrap_or(reply.body.len() as u64)
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    match reply.stall {
        Some((first, pause)) => {
            let first = first.min(reply.body.len());
            let _ = conn.write_all(&reply.body[..first]);
            let _ = conn.flush();
            thread::sleep(pause);
            let _ = conn.write_all(&reply.body[first..]);
        }
        None => {
            let _ = conn.write_all(&reply.body);
        }
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

const MODEL: &str = "tiny-model";

fn sha(bytes: &[u8]) -> String {
    studio_core::wire::hex(&Sha256::digest(bytes))
}

/// Deterministic bytes, large enough to take several reads.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
        .collect()
}

fn file(url: String, name: &str, sha256: Option<String>) -> ModelFile {
    ModelFile {
        role: "model".into(),
        url,
        filename: name.into(),
        approx_bytes: None,
        sha256,
    }
}

fn options() -> FetchOptions {
    FetchOptions {
        read_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        lock_wait: Duration::from_secs(20),
        progress: ProgressMode::Log,
        ..FetchOptions::default()
    }
}

fn store(root: &Path) -> ModelStore {
    ModelStore::new(root).with_options(options())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn part_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.part", path.display()))
}

fn assert_not_retryable(e: &EngineError, needle: &str) {
    assert!(!e.retryable(), "expected not retryable: {e:?}");
    assert!(
        e.message.contains(needle),
        "`{needle}` not in: {}",
        e.message
    );
}

fn assert_retryable(e: &EngineError, needle: &str) {
    assert!(e.retryable(), "expected retryable: {e:?}");
    assert!(
        e.message.contains(needle),
        "`{needle}` not in: {}",
        e.message
    );
}

// ------------------------------------------------------------------------------------------
// Good downloads and the cache
// ------------------------------------------------------------------------------------------

#[test]
fn good_files_are_downloaded_verified_and_returned_in_order() {
    let (a, b) = (body(700_000, 1), body(1234, 2));
    let (a2, b2) = (a.clone(), b.clone());
    let server = Server::start(move |req| match req.path.as_str() {
        "/a.gguf" => Reply::ok(&a2),
        "/b.json" => Reply::ok(&b2),
        _ => Reply::status(404),
    });
    let root = tempfile::tempdir().unwrap();
    let files = [
        file(server.url("b.json"), "b.json", Some(sha(&b))),
        file(server.url("a.gguf"), "a.gguf", Some(sha(&a))),
    ];
    let counted = studio_engines::models::downloaded_bytes_total();
    let paths = store(root.path()).ensure(MODEL, &files).unwrap();
    // Counted for the worker's metrics (other tests download in parallel: at least these).
    assert!(
        studio_engines::models::downloaded_bytes_total() - counted >= (a.len() + b.len()) as u64
    );
    let dir = root.path().join(MODEL);
    assert_eq!(paths, [dir.join("b.json"), dir.join("a.gguf")]);
    assert_eq!(fs::read(&paths[0]).unwrap(), b);
    assert_eq!(fs::read(&paths[1]).unwrap(), a);
    assert_eq!(
        listing(&dir),
        [
            "a.gguf",
            "a.gguf.lock",
            "a.gguf.sha256",
            "b.json",
            "b.json.lock",
            "b.json.sha256"
        ]
    );
    let side = fs::read_to_string(dir.join("a.gguf.sha256")).unwrap();
    assert!(
        side.starts_with(&format!("{}  a.gguf\n", sha(&a))),
        "{side}"
    );
    assert_eq!(server.requests(), 2);
}

/// The download's job log lines (start, progress every 10 %, verified) reach the job's log
/// sink, which the worker ships to the studio as log lines.
#[test]
fn download_log_lines_reach_the_job_sink() {
    let data = body(2_000_000, 22);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let got = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink: studio_engines::job_log::JobLogSink = {
        let got = got.clone();
        Arc::new(move |_, m| got.lock().unwrap().push(m.to_string()))
    };
    studio_engines::job_log::with_sink(sink, || {
        store(root.path())
            .ensure(MODEL, &[file(server.url("m"), "m.bin", Some(sha(&data)))])
            .unwrap()
    });
    let got = got.lock().unwrap().clone();
    assert!(
        got[0].starts_with("downloading m.bin of model tiny-model from 127.0.0.1: 1.9 MiB"),
        "{got:#?}"
    );
    assert!(
        got.last()
            .unwrap()
            .contains("m.bin of model tiny-model: downloaded and verified"),
        "{got:#?}"
    );
    let progress = got.iter().filter(|m| m.starts_with("m.bin: ")).count();
    assert!((1..=10).contains(&progress), "{got:#?}");
    assert!(
        got.iter().any(|m| m.starts_with("m.bin: 100% of 1.9 MiB")),
        "{got:#?}"
    );
}

#[test]
fn an_uppercase_sha256_is_accepted() {
    let data = body(5000, 3);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let upper = sha(&data).to_ascii_uppercase();
    let paths = store(root.path())
        .ensure(MODEL, &[file(server.url("m"), "m.bin", Some(upper))])
        .unwrap();
    assert_eq!(fs::read(&paths[0]).unwrap(), data);
}

#[test]
fn a_verified_file_is_reused_without_a_request() {
    let data = body(300_000, 4);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let files = [file(server.url("m"), "m.bin", Some(sha(&data)))];
    let s = store(root.path());
    s.ensure(MODEL, &files).unwrap();
    assert_eq!(server.requests(), 1);
    for _ in 0..3 {
        s.ensure(MODEL, &files).unwrap();
    }
    assert_eq!(server.requests(), 1, "a cached file was fetched again");
}

/// The `.sha256` record spares the rehash: a file whose size and mtime still match its
/// record is trusted as is. Shown by swapping its bytes behind the store's back while
/// keeping size and mtime: the store does not notice (it did not hash).
#[test]
fn a_recorded_file_is_not_hashed_again() {
    let data = body(50_000, 20);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let files = [file(server.url("m"), "m.bin", Some(sha(&data)))];
    let s = store(root.path());
    let path = s.ensure(MODEL, &files).unwrap().remove(0);
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let swapped = body(50_000, 21);
    fs::write(&path, &swapped).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    s.ensure(MODEL, &files).unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        swapped,
        "the file was hashed again"
    );
    assert_eq!(server.requests(), 1);
}

#[test]
fn a_file_without_a_record_is_hashed_once_and_then_trusted() {
    let data = body(10_000, 5);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(MODEL);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("m.bin"), &data).unwrap();
    let files = [file(server.url("m"), "m.bin", Some(sha(&data)))];
    store(root.path()).ensure(MODEL, &files).unwrap();
    assert_eq!(server.requests(), 0);
    assert!(dir.join("m.bin.sha256").is_file(), "{:?}", listing(&dir));
}

#[test]
fn a_changed_cached_file_is_noticed_and_downloaded_again() {
    let data = body(10_000, 6);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let files = [file(server.url("m"), "m.bin", Some(sha(&data)))];
    let s = store(root.path());
    let path = s.ensure(MODEL, &files).unwrap().remove(0);
    // Same size, other bytes, new mtime: the record no longer vouches for it.
    let mut spoiled = data.clone();
    spoiled[0] ^= 0xff;
    thread::sleep(Duration::from_millis(20));
    fs::write(&path, &spoiled).unwrap();
    s.ensure(MODEL, &files).unwrap();
    assert_eq!(server.requests(), 2);
    assert_eq!(fs::read(&path).unwrap(), data);
}

#[test]
fn a_file_without_a_sha256_is_downloaded_and_reused() {
    let data = body(4321, 7);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let files = [file(server.url("m"), "m.bin", None)];
    let s = store(root.path());
    let p = s.ensure(MODEL, &files).unwrap();
    assert_eq!(fs::read(&p[0]).unwrap(), data);
    s.ensure(MODEL, &files).unwrap();
    assert_eq!(server.requests(), 1);
}

#[test]
fn model_ids_become_safe_directories() {
    let data = body(100, 8);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let files = [file(server.url("m"), "m.bin", Some(sha(&data)))];
    for id in ["../../escape", "org/model", "/abs", ".."] {
        let p = store(root.path()).ensure(id, &files).unwrap().remove(0);
        assert_eq!(p.parent().unwrap().parent().unwrap(), root.path(), "{id}");
        let dir = p.parent().unwrap().file_name().unwrap().to_string_lossy();
        assert!(!dir.starts_with('.') && !dir.contains('/'), "{id} -> {dir}");
    }
    assert!(matches!(
        store(root.path()).ensure("", &files),
        Err(EngineError {
            kind: EngineErrorKind::InvalidInput,
            ..
        })
    ));
}

#[test]
fn the_legacy_flat_layout_is_used_when_it_verifies() {
    let data = body(2000, 9);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("m.bin"), &data).unwrap();
    let files = [file(server.url("m"), "m.bin", Some(sha(&data)))];
    let p = store(root.path()).ensure(MODEL, &files).unwrap();
    assert_eq!(p, [root.path().join("m.bin")]);
    assert_eq!(server.requests(), 0);
    // A same-named root file with other bytes is neither used nor removed.
    let other = body(2000, 10);
    fs::write(root.path().join("o.bin"), &other).unwrap();
    let files = [file(server.url("m"), "o.bin", Some(sha(&data)))];
    let p = store(root.path()).ensure(MODEL, &files).unwrap();
    assert_eq!(p, [root.path().join(MODEL).join("o.bin")]);
    assert_eq!(fs::read(root.path().join("o.bin")).unwrap(), other);
    // Without a hash: only a root file of exactly approxBytes.
    fs::write(root.path().join("n.bin"), b"12345").unwrap();
    let mut f = file(server.url("m"), "n.bin", None);
    f.approx_bytes = Some(5);
    assert_eq!(
        store(root.path()).ensure("other", &[f]).unwrap(),
        [root.path().join("n.bin")]
    );
}

// ------------------------------------------------------------------------------------------
// Bad files
// ------------------------------------------------------------------------------------------

#[test]
fn a_wrong_hash_is_not_retryable_and_nothing_is_kept() {
    let data = body(50_000, 11);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let wrong = sha(b"something else");
    let e = store(root.path())
        .ensure(
            MODEL,
            &[file(server.url("m"), "m.bin", Some(wrong.clone()))],
        )
        .unwrap_err();
    assert_not_retryable(&e, "SHA-256 mismatch");
    assert!(
        e.message.contains(&wrong) && e.message.contains(&sha(&data)),
        "{e}"
    );
    let dir = root.path().join(MODEL);
    assert_eq!(listing(&dir), ["m.bin.lock"]);
}

#[test]
fn a_truncated_body_is_retryable_keeps_the_part_and_resumes() {
    let data = body(200_000, 12);
    let cut = 120_000;
    let (d2, honest) = (data.clone(), Arc::new(AtomicBool::new(false)));
    let h2 = honest.clone();
    let server = Server::start(move |req| {
        if h2.load(Ordering::SeqCst) {
            Reply::ranged(&d2, req.range.as_deref())
        } else {
            // Announces the whole file, sends part of it and closes.
            Reply {
                length: Some(d2.len() as u64),
                body: d2[..cut].to_vec(),
                status: 200,
                ..Reply::default()
            }
        }
    });
    let root = tempfile::tempdir().unwrap();
    let files = [file(server.url("m"), "m.bin", Some(sha(&data)))];
    let s = store(root.path());
    let e = s.ensure(MODEL, &files).unwrap_err();
    assert_retryable(&e, "m.bin");
    let dest = root.path().join(MODEL).join("m.bin");
    assert!(!dest.exists());
    assert_eq!(fs::metadata(part_of(&dest)).unwrap().len(), cut as u64);

    honest.store(true, Ordering::SeqCst);
    s.ensure(MODEL, &files).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    assert!(!part_of(&dest).exists());
    let seen = server.seen();
    assert_eq!(seen[1].range.as_deref(), Some(&*format!("bytes={cut}-")));
}

#[test]
fn a_leftover_part_is_resumed_with_a_range_request() {
    let data = body(100_000, 13);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join(MODEL).join("m.bin");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::write(part_of(&dest), &data[..40_000]).unwrap();
    store(root.path())
        .ensure(MODEL, &[file(server.url("m"), "m.bin", Some(sha(&data)))])
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].range.as_deref(), Some("bytes=40000-"));
}

#[test]
fn a_server_ignoring_range_restarts_the_download() {
    let data = body(100_000, 14);
    let d2 = data.clone();
    let server = Server::start(move |_| Reply::ok(&d2));
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join(MODEL).join("m.bin");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    // A stale part that does not even match: with a 200 it is simply replaced.
    fs::write(part_of(&dest), vec![0u8; 60_000]).unwrap();
    store(root.path())
        .ensure(MODEL, &[file(server.url("m"), "m.bin", Some(sha(&data)))])
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].range.as_deref(), Some("bytes=60000-"));
}

#[test]
fn a_spoiled_part_is_restarted_once_from_scratch() {
    let data = body(100_000, 15);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join(MODEL).join("m.bin");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::write(part_of(&dest), vec![0u8; 30_000]).unwrap();
    store(root.path())
        .ensure(MODEL, &[file(server.url("m"), "m.bin", Some(sha(&data)))])
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    let ranges: Vec<Option<String>> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [Some("bytes=30000-".to_string()), None]);
}

#[test]
fn a_part_longer_than_the_file_is_restarted_after_a_416() {
    let data = body(1000, 16);
    let server = Server::file(data.clone());
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join(MODEL).join("m.bin");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::write(part_of(&dest), vec![1u8; 5000]).unwrap();
    store(root.path())
        .ensure(MODEL, &[file(server.url("m"), "m.bin", Some(sha(&data)))])
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    assert_eq!(server.requests(), 2);
}

// ------------------------------------------------------------------------------------------
// Refused before any request
// ------------------------------------------------------------------------------------------

#[test]
fn traversal_names_are_refused_before_any_request() {
    let server = Server::file(b"x".to_vec());
    let root = tempfile::tempdir().unwrap();
    for name in ["../x", "a/b", "/abs", "..", "", ".", "a\\b", "x.part"] {
        let e = store(root.path())
            .ensure(MODEL, &[file(server.url("m"), name, None)])
            .unwrap_err();
        assert_eq!(e.kind, EngineErrorKind::InvalidInput, "{name}: {e}");
        assert_not_retryable(&e, "plain file name");
        // A good file listed before it is not fetched either.
        let good = file(server.url("g"), "good.bin", None);
        assert!(store(root.path())
            .ensure(MODEL, &[good, file(server.url("m"), name, None)])
            .is_err());
    }
    assert_eq!(server.requests(), 0);
    assert_eq!(listing(root.path()), Vec::<String>::new());
}

#[test]
fn plain_http_to_a_non_loopback_host_is_refused() {
    // A good loopback file is listed first: had the bad URL been checked only when its
    // turn came, the good one would have been requested.
    let server = Server::file(b"x".to_vec());
    let root = tempfile::tempdir().unwrap();
    for url in [
        "http://example.com/m.gguf",
        "http://192.0.2.1/m.gguf",
        "ftp://example.com/m.gguf",
    ] {
        let good = file(server.url("g"), "good.bin", None);
        let e = store(root.path())
            .ensure(MODEL, &[good, file(url.into(), "m.gguf", None)])
            .unwrap_err();
        // Refused by the rule, not after an attempt: a failed connection is `Failed`
        // (retryable), never invalid input.
        assert_eq!(e.kind, EngineErrorKind::InvalidInput, "{url}: {e}");
        assert_not_retryable(&e, "https");
    }
    assert_eq!(server.requests(), 0);
    assert_eq!(listing(root.path()), Vec::<String>::new());
}

#[test]
fn a_malformed_sha256_is_refused() {
    let server = Server::file(b"x".to_vec());
    let root = tempfile::tempdir().unwrap();
    for bad in ["abc", &"g".repeat(64), &"a".repeat(65)] {
        let e = store(root.path())
            .ensure(MODEL, &[file(server.url("m"), "m", Some(bad.to_string()))])
            .unwrap_err();
        assert_not_retryable(&e, "64 hex digits");
    }
    let e = store(root.path())
        .ensure(
            MODEL,
            &[
                file(server.url("m"), "m", None),
                file(server.url("n"), "m", None),
            ],
        )
        .unwrap_err();
    assert_not_retryable(&e, "twice");
    assert_eq!(server.requests(), 0);
}

#[test]
fn the_disk_preflight_fails_clearly_and_writes_nothing() {
    let server = Server::file(b"x".to_vec());
    let root = tempfile::tempdir().unwrap();
    let mut f = file(server.url("m"), "m.bin", None);
    f.approx_bytes = Some(u64::MAX / 2);
    let e = store(root.path()).ensure(MODEL, &[f]).unwrap_err();
    assert_not_retryable(&e, "not enough free disk space");
    assert!(e.message.contains("10 % headroom"), "{e}");
    assert_eq!(server.requests(), 0);
    assert_eq!(listing(root.path()), Vec::<String>::new());
}

#[test]
fn an_announced_size_beyond_the_free_space_fails_before_writing() {
    let server = Server::start(|_| Reply {
        status: 200,
        length: Some(u64::MAX / 4),
        ..Reply::default()
    });
    let root = tempfile::tempdir().unwrap();
    let e = store(root.path())
        .ensure(MODEL, &[file(server.url("m"), "m.bin", None)])
        .unwrap_err();
    assert_not_retryable(&e, "not enough free disk space");
    assert_eq!(listing(&root.path().join(MODEL)), ["m.bin.lock"]);
}

// ------------------------------------------------------------------------------------------
// Statuses, redirects, timeouts
// ------------------------------------------------------------------------------------------

#[test]
fn client_errors_are_final_and_server_errors_retryable() {
    for (status, retryable) in [
        (404, false),
        (403, false),
        (500, true),
        (503, true),
        (429, true),
    ] {
        let server = Server::start(move |_| Reply::status(status));
        let root = tempfile::tempdir().unwrap();
        let e = store(root.path())
            .ensure(MODEL, &[file(server.url("m"), "m.bin", None)])
            .unwrap_err();
        assert_eq!(e.retryable(), retryable, "{status}: {e}");
        assert!(e.message.contains(&format!("HTTP {status}")), "{e}");
        assert!(!root.path().join(MODEL).join("m.bin").exists());
    }
}

#[test]
fn loopback_redirects_are_followed_and_http_redirects_elsewhere_refused() {
    let data = body(3000, 17);
    let d2 = data.clone();
    let server = Server::start(move |req| match req.path.as_str() {
        "/moved" => Reply {
            headers: vec![("Location".into(), "/real/m.bin".into())],
            ..Reply::status(302)
        },
        "/away" => Reply {
            headers: vec![("Location".into(), "http://example.com/m.bin".into())],
            ..Reply::status(301)
        },
        "/loop" => Reply {
            headers: vec![("Location".into(), "/loop".into())],
            ..Reply::status(307)
        },
        "/real/m.bin" => Reply::ok(&d2),
        _ => Reply::status(404),
    });
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path());
    let p = s
        .ensure(
            MODEL,
            &[file(server.url("moved"), "m.bin", Some(sha(&data)))],
        )
        .unwrap();
    assert_eq!(fs::read(&p[0]).unwrap(), data);
    let e = s
        .ensure("b", &[file(server.url("away"), "m.bin", None)])
        .unwrap_err();
    assert_not_retryable(&e, "https");
    let e = s
        .ensure("c", &[file(server.url("loop"), "m.bin", None)])
        .unwrap_err();
    assert_retryable(&e, "redirects");
}

#[test]
fn a_stalled_body_times_out_and_is_retryable() {
    let data = body(100_000, 18);
    let d2 = data.clone();
    let server = Server::start(move |_| Reply {
        stall: Some((10_000, Duration::from_secs(10))),
        ..Reply::ok(&d2)
    });
    let root = tempfile::tempdir().unwrap();
    let s = ModelStore::new(root.path()).with_options(FetchOptions {
        read_timeout: Duration::from_millis(400),
        ..options()
    });
    // Without the read timeout the rest of the body would arrive after the stall and the
    // download would succeed (the hash is right): only the timeout makes this an error.
    let e = s
        .ensure(MODEL, &[file(server.url("m"), "m.bin", Some(sha(&data)))])
        .unwrap_err();
    assert_retryable(&e, "broke off");
    assert_eq!(server.requests(), 1);
    let dest = root.path().join(MODEL).join("m.bin");
    assert_eq!(fs::metadata(part_of(&dest)).unwrap().len(), 10_000);
    assert!(!dest.exists());
}

#[test]
fn a_server_that_never_answers_times_out() {
    // A listener that accepts, never writes a byte and keeps the connection open until
    // the client hangs up; it says whether the client did. (Its own limit only keeps a
    // client without a read timeout from hanging the test.)
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    });
    let root = tempfile::tempdir().unwrap();
    let s = ModelStore::new(root.path()).with_options(FetchOptions {
        read_timeout: Duration::from_millis(300),
        ..options()
    });
    let e = s
        .ensure(
            MODEL,
            &[file(format!("http://127.0.0.1:{port}/m"), "m.bin", None)],
        )
        .unwrap_err();
    assert_retryable(&e, "cannot download m.bin");
    assert!(
        hold.join().unwrap(),
        "the client waited until the server gave up: its read timeout did not end the wait"
    );
}

#[test]
fn a_refused_connection_is_retryable() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let root = tempfile::tempdir().unwrap();
    let e = store(root.path())
        .ensure(
            MODEL,
            &[file(format!("http://127.0.0.1:{port}/m"), "m.bin", None)],
        )
        .unwrap_err();
    assert_retryable(&e, "cannot download m.bin");
}

#[test]
fn the_default_read_timeout_is_bounded() {
    assert!(DEFAULT_READ_TIMEOUT <= Duration::from_secs(60));
    assert_eq!(FetchOptions::default().read_timeout, DEFAULT_READ_TIMEOUT);
}

// ------------------------------------------------------------------------------------------
// Concurrency
// ------------------------------------------------------------------------------------------

#[test]
fn two_jobs_never_download_the_same_file_at_once() {
    let data = body(200_000, 19);
    let d2 = data.clone();
    let server = Arc::new(Server::start(move |_| Reply {
        // Slow enough that the second job arrives mid-download.
        stall: Some((1000, Duration::from_millis(600))),
        ..Reply::ok(&d2)
    }));
    let root = tempfile::tempdir().unwrap();
    let files = vec![file(server.url("m"), "m.bin", Some(sha(&data)))];
    let s = store(root.path());
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let (s, files) = (s.clone(), files.clone());
            thread::spawn(move || s.ensure(MODEL, &files))
        })
        .collect();
    for j in jobs {
        let p = j.join().unwrap().unwrap();
        assert_eq!(fs::read(&p[0]).unwrap(), data);
    }
    assert_eq!(server.requests(), 1);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}
