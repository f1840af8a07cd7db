//! What the real-engine test files share: a loopback file server and hex.

#![allow(dead_code)]

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
