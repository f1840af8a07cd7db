//! `download`: the model download ([`ModelStore::ensure`]) against a loopback HTTP server
//! that answers from a fuzzer-written script: statuses, lengths (exact, missing, short,
//! long), `Content-Range`, `ETag`, redirects (relative, loopback, `0.0.0.0`, to a remote
//! plain-http host, scheme-relative), bodies (whole, from the asked range, cut off, with
//! extra bytes, garbage), and a `.part` (with or without a validator) left by an earlier
//! attempt.
//!
//! Input ([`Scenario::read`]): a flag byte (sha256 given, approxBytes given, a leftover
//! `.part`, its validator, a small size ceiling, a garbage `.part`), the file's length and
//! seed, approxBytes, the `.part`'s length, then up to four replies of eight bytes each.
//!
//! Checks ([`check_outcome`]):
//! * no panic, and the call returns (every wait is bounded by short timeouts);
//! * success: the file exists under its final name, its bytes hash to the expected
//!   sha256 when one was given, it is within the size ceiling, and no `.part` or validator
//!   is left beside it;
//! * failure: no file under the final name (only verified bytes are ever renamed there);
//! * only the store's own files appear in the model's directory, nothing elsewhere;
//! * at most two attempts of at most `max_redirects + 1` requests each.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use studio_core::wire::{hex, ModelFile};
use studio_engines::models::{FetchOptions, ProgressMode, STORE_SUFFIXES};
use studio_engines::{EngineError, ModelStore};

use crate::reader::Reader;

/// The model id and file name every scenario downloads.
pub const MODEL: &str = "fuzz-model";
/// The file's name.
pub const FILE: &str = "m.bin";
/// Redirects followed per attempt.
pub const MAX_REDIRECTS: u32 = 3;
/// Statuses a reply can have.
pub const STATUSES: [u16; 10] = [200, 206, 206, 302, 307, 404, 416, 500, 429, 204];

/// How a reply announces its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Exact,
    Missing,
    Longer(u16),
    Shorter(u16),
}

/// What a reply's body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// The whole file.
    Full,
    /// The file from the start of the request's `Range` (the whole file without one).
    FromRange,
    /// The file from the range start, cut after this many bytes.
    Cut(u16),
    /// The file from the range start and this many more bytes.
    Extra(u16),
    /// This many bytes of garbage.
    Garbage(u16),
}

/// One scripted reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub length: Length,
    /// 0: none, 1: a strong ETag, 2: a weak one, 3: a changing strong one.
    pub etag: u8,
    /// 0: a correct `Content-Range` for the body, 1: none, 2: a wrong start.
    pub range: u8,
    /// Index into the `Location` choices (redirect statuses only).
    pub location: u8,
    pub body: Body,
}

/// A fuzzer-written download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub file: Vec<u8>,
    pub sha: bool,
    pub approx: Option<u64>,
    /// A leftover `.part` of this many bytes, and whether a validator is recorded for it.
    pub part: Option<(usize, bool)>,
    /// The leftover `.part` is garbage rather than the file's beginning.
    pub garbage_part: bool,
    pub max_file_bytes: u64,
    pub replies: Vec<Reply>,
}

impl Scenario {
    /// Decodes a scenario (any bytes are one).
    pub fn read(data: &[u8]) -> Scenario {
        let mut r = Reader::new(data);
        let flags = r.u8();
        let len = usize::from(r.u16() % 4096);
        let seed = r.u8();
        let file: Vec<u8> = (0..len)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(u32::from(seed)) as u8
            })
            .collect();
        let approx = u64::from(r.u16());
        let part_len = usize::from(r.u16()) % (len + 64);
        let n = usize::from(r.u8() % 5);
        let replies = (0..n)
            .map(|_| {
                let status = STATUSES[usize::from(r.u8()) % STATUSES.len()];
                let l = r.u8();
                let length = match l % 4 {
                    0 => Length::Exact,
                    1 => Length::Missing,
                    2 => Length::Longer(u16::from(l >> 2) + 1),
                    _ => Length::Shorter(u16::from(l >> 2) + 1),
                };
                let etag = r.u8() % 4;
                let range = r.u8() % 3;
                let location = r.u8();
                let b = r.u8();
                let k = r.u16() % 8192;
                let body = match b % 5 {
                    0 => Body::Full,
                    1 => Body::FromRange,
                    2 => Body::Cut(k),
                    3 => Body::Extra(k),
                    _ => Body::Garbage(k),
                };
                Reply {
                    status,
                    length,
                    etag,
                    range,
                    location,
                    body,
                }
            })
            .collect();
        Scenario {
            file,
            sha: flags & 1 != 0,
            approx: (flags & 2 != 0).then_some(approx),
            part: (flags & 4 != 0).then_some((part_len, flags & 8 != 0)),
            garbage_part: flags & 32 != 0,
            max_file_bytes: if flags & 16 != 0 { 2048 } else { 1 << 20 },
            replies,
        }
    }
}

/// Runs the scenario of `data` and checks its outcome.
pub fn check(data: &[u8]) -> Result<(), String> {
    let scenario = Scenario::read(data);
    let root = scratch_dir();
    let outcome = run(&scenario, &root);
    let checked = outcome.and_then(|(result, requests)| {
        check_outcome(
            &scenario,
            &root,
            result.as_deref().map_err(Clone::clone),
            requests,
        )
    });
    let _ = std::fs::remove_dir_all(&root);
    checked
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "studio-fuzz-download-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    dir
}

type Outcome = Result<PathBuf, EngineError>;

/// Serves the script and downloads; the result and how many requests the server saw.
pub fn run(s: &Scenario, root: &Path) -> Result<(Outcome, usize), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let server = {
        let (s, stop, seen) = (s.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                serve(conn, s.replies.get(n), &s.file, port, n);
            }
        })
    };

    let dir = root.join(MODEL);
    if let Some((len, validator)) = s.part {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let held: Vec<u8> = if s.garbage_part {
            vec![0xA5; len]
        } else {
            s.file
                .iter()
                .copied()
                .chain(std::iter::repeat(0x5A))
                .take(len)
                .collect()
        };
        std::fs::write(dir.join(format!("{FILE}.part")), held).map_err(|e| e.to_string())?;
        if validator {
            std::fs::write(dir.join(format!("{FILE}.part.etag")), "\"v1\"")
                .map_err(|e| e.to_string())?;
        }
    }
    let store = ModelStore::new(root).with_options(FetchOptions {
        connect_timeout: Duration::from_millis(300),
        read_timeout: Duration::from_millis(300),
        lock_wait: Duration::from_secs(2),
        max_redirects: MAX_REDIRECTS,
        progress: ProgressMode::Log,
        max_file_bytes: s.max_file_bytes,
        ..FetchOptions::default()
    });
    let file = ModelFile {
        role: "model".into(),
        url: format!("http://127.0.0.1:{port}/{FILE}"),
        filename: FILE.into(),
        approx_bytes: s.approx,
        sha256: s.sha.then(|| hex(&Sha256::digest(&s.file))),
    };
    let result = store
        .ensure(MODEL, &[file])
        .map(|paths| paths.into_iter().next().unwrap_or_default());
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(("127.0.0.1", port));
    let _ = server.join();
    Ok((result, seen.load(Ordering::SeqCst)))
}

/// The `Location` of a redirect: relative, loopback, scheme-relative, `0.0.0.0` (this
/// machine, allowed from a loopback origin), and plain http to a remote host (refused).
fn location(choice: u8, port: u16, n: usize) -> String {
    match choice % 6 {
        0 => format!("/moved-{n}"),
        1 => format!("http://127.0.0.1:{port}/abs-{n}"),
        2 => format!("//127.0.0.1:{port}/sr-{n}"),
        3 => format!("http://0.0.0.0:{port}/zero-{n}"),
        4 => "http://example.invalid/remote".to_string(),
        _ => format!("moved-rel-{n}"),
    }
}

fn serve(mut conn: TcpStream, reply: Option<&Reply>, file: &[u8], port: u16, n: usize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut range_start = None;
    let mut if_range = None;
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if first {
            first = false;
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("range") {
                range_start = v
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|s| s.parse::<usize>().ok());
            } else if k.eq_ignore_ascii_case("if-range") {
                if_range = Some(v.to_string());
            }
        }
    }
    let Some(reply) = reply else {
        let _ = conn.write_all(b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let tag = match reply.etag {
        1 => Some("\"v1\"".to_string()),
        2 => Some("W/\"v1\"".to_string()),
        3 => Some(format!("\"v{}\"", n + 2)),
        _ => None,
    };
    // A changed validator makes an honest server send the whole file.
    let start = match (&if_range, &tag) {
        (Some(asked), Some(now)) if asked != now => 0,
        _ => range_start.unwrap_or(0),
    }
    .min(file.len());
    let body: Vec<u8> = match reply.body {
        Body::Full => file.to_vec(),
        Body::FromRange => file[start..].to_vec(),
        Body::Cut(k) => file[start..].iter().copied().take(usize::from(k)).collect(),
        Body::Extra(k) => file[start..]
            .iter()
            .copied()
            .chain(std::iter::repeat(0x33).take(usize::from(k)))
            .collect(),
        Body::Garbage(k) => vec![0xEE; usize::from(k)],
    };
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    let announced = match reply.length {
        Length::Exact => Some(body.len() as u64),
        Length::Missing => None,
        Length::Longer(d) => Some(body.len() as u64 + u64::from(d)),
        Length::Shorter(d) => Some((body.len() as u64).saturating_sub(u64::from(d))),
    };
    if let Some(len) = announced {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    if let Some(tag) = &tag {
        head.push_str(&format!("ETag: {tag}\r\n"));
    }
    if reply.status == 206 || reply.status == 416 {
        match reply.range {
            0 if reply.status == 206 => head.push_str(&format!(
                "Content-Range: bytes {start}-{}/{}\r\n",
                (start + body.len()).max(start + 1) - 1,
                file.len().max(start + body.len())
            )),
            0 | 2 => head.push_str(&format!("Content-Range: bytes */{}\r\n", file.len())),
            _ => {}
        }
        if reply.range == 2 && reply.status == 206 {
            head.push_str("Content-Range: bytes 1-1/2\r\n");
        }
    }
    if matches!(reply.status, 301 | 302 | 303 | 307 | 308) {
        head.push_str(&format!(
            "Location: {}\r\n",
            location(reply.location, port, n)
        ));
    }
    head.push_str("\r\n");
    let _ = conn
        .write_all(head.as_bytes())
        .and_then(|()| conn.write_all(&body))
        .and_then(|()| conn.flush());
    let _ = conn.shutdown(Shutdown::Both);
}

/// Checks a download's outcome (see the module docs).
pub fn check_outcome(
    s: &Scenario,
    root: &Path,
    result: Result<&Path, EngineError>,
    requests: usize,
) -> Result<(), String> {
    let dir = root.join(MODEL);
    let dest = dir.join(FILE);
    match result {
        Ok(path) => {
            if path != dest {
                return Err(format!(
                    "downloaded to {}, not {}",
                    path.display(),
                    dest.display()
                ));
            }
            let bytes = std::fs::read(&dest).map_err(|e| format!("the file is not there: {e}"))?;
            if s.sha && bytes != s.file {
                return Err(format!(
                    "a verified download holds {} bytes that are not the file's {}",
                    bytes.len(),
                    s.file.len()
                ));
            }
            if bytes.len() as u64 > s.max_file_bytes {
                return Err(format!(
                    "a {}-byte file passed the size ceiling",
                    bytes.len()
                ));
            }
            for suffix in [".part", ".part.etag"] {
                if dir.join(format!("{FILE}{suffix}")).exists() {
                    return Err(format!("{FILE}{suffix} was left after a success"));
                }
            }
        }
        Err(e) => {
            if dest.exists() {
                return Err(format!("a failed download left {FILE}: {}", e.message));
            }
        }
    }
    let allowed: Vec<String> = std::iter::once(FILE.to_string())
        .chain(
            STORE_SUFFIXES
                .iter()
                .map(|suffix| format!("{FILE}{suffix}")),
        )
        .collect();
    for entry in std::fs::read_dir(root)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MODEL {
            return Err(format!(
                "the download wrote {name} outside the model's directory"
            ));
        }
    }
    if dir.exists() {
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !allowed.contains(&name) {
                return Err(format!(
                    "the download wrote {name} into the model's directory"
                ));
            }
        }
    }
    let most = 2 * (MAX_REDIRECTS as usize + 1);
    if requests > most {
        return Err(format!("{requests} requests for one file (at most {most})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(replies: Vec<Reply>, sha: bool) -> Scenario {
        Scenario {
            file: (0..100u8).collect(),
            sha,
            approx: None,
            part: None,
            garbage_part: false,
            max_file_bytes: 1 << 20,
            replies,
        }
    }

    fn ok_reply() -> Reply {
        Reply {
            status: 200,
            length: Length::Exact,
            etag: 1,
            range: 0,
            location: 0,
            body: Body::Full,
        }
    }

    #[test]
    fn an_honest_server_downloads_and_a_liar_is_refused() {
        let root = scratch_dir();
        let s = scenario(vec![ok_reply()], true);
        let (result, requests) = run(&s, &root).unwrap();
        assert!(result.is_ok(), "{result:?}");
        check_outcome(&s, &root, result.as_deref().map_err(Clone::clone), requests).unwrap();
        std::fs::remove_dir_all(&root).unwrap();

        let root = scratch_dir();
        let liar = scenario(
            vec![Reply {
                body: Body::Garbage(100),
                ..ok_reply()
            }],
            true,
        );
        let (result, requests) = run(&liar, &root).unwrap();
        assert!(result.is_err());
        check_outcome(
            &liar,
            &root,
            result.as_deref().map_err(Clone::clone),
            requests,
        )
        .unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_outcome_check_can_fail() {
        let root = scratch_dir();
        let s = scenario(vec![ok_reply()], true);
        let dir = root.join(MODEL);
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join(FILE);
        // Wrong bytes under the final name, reported as a success.
        std::fs::write(&dest, b"not the file").unwrap();
        assert!(check_outcome(&s, &root, Ok(&dest), 1).is_err());
        // Any file under the final name after a failure.
        assert!(check_outcome(&s, &root, Err(EngineError::io("x")), 1).is_err());
        std::fs::remove_file(&dest).unwrap();
        // A stray file, and too many requests.
        std::fs::write(dir.join("stray"), b"").unwrap();
        assert!(check_outcome(&s, &root, Err(EngineError::io("x")), 1).is_err());
        std::fs::remove_file(dir.join("stray")).unwrap();
        assert!(check_outcome(&s, &root, Err(EngineError::io("x")), 99).is_err());
        assert!(check_outcome(&s, &root, Err(EngineError::io("x")), 1).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn any_bytes_are_a_scenario() {
        for data in [&[][..], &[0xFF; 64][..], b"hello world"] {
            let s = Scenario::read(data);
            assert!(s.replies.len() <= 4);
            assert!(s.file.len() < 4096);
        }
    }
}
