//! `local_http`: the fuzzer's bytes as what a client sends `studio-local`: a request head
//! and body through its HTTP/1.1 codec ([`studio_local::http`]), the admin API's guard
//! ([`studio_local::admin_auth::check_admin`]) and the multipart parser of result uploads.
//!
//! Checks:
//! * no panic, whatever the bytes;
//! * a parsed head's length is within the input and the head cap;
//! * whenever the admin guard lets a request through, the request has everything the guard
//!   promises, re-checked here independently ([`check_admitted`]): the admin bearer token,
//!   a `Host` of this machine, no foreign `Origin`, JSON for a body;
//! * every multipart part's bytes lie inside the body, and there are at most `MAX_PARTS`.
//!
//! Seeds (`corpus/local_http/`): admin requests with and without the token, a rebound
//! `Host`, a cross-site `Origin`, `text/plain` JSON, result uploads as the worker sends
//! them, and malformed heads.

use std::net::SocketAddr;

use studio_local::admin_auth::{check_admin, AdminPolicy};
use studio_local::http::{
    self, multipart_boundary, parse_head, parse_header_params, parse_multipart, HeadParse,
    RequestHead, MAX_PARTS,
};
use studio_local::MAX_HEAD_BYTES;

/// The admin token of the fuzzed server.
pub const TOKEN: &str = "fuzz-admin-token-0123456789abcdef";

fn policy() -> AdminPolicy<'static> {
    AdminPolicy {
        token: Some(TOKEN),
        bind: SocketAddr::from(([127, 0, 0, 1], 9790)),
    }
}

/// Runs every check on `data`.
pub fn check(data: &[u8]) -> Result<(), String> {
    let (head, head_len) = match parse_head(data, MAX_HEAD_BYTES) {
        Ok(HeadParse::Done(head, len)) => (head, len),
        Ok(HeadParse::Incomplete) | Err(_) => return Ok(()),
    };
    if head_len > data.len() || head_len > MAX_HEAD_BYTES + 4 {
        return Err(format!(
            "a head of {head_len} bytes was parsed from {} bytes",
            data.len()
        ));
    }
    let _ = head.body_length();
    let _ = http::path_segments(&head.path);
    let body = &data[head_len..];
    if check_admin(&head, &policy()).is_ok() {
        check_admitted(&head)?;
    }
    if let Some(ct) = head.header("content-type") {
        let _ = parse_header_params(ct);
        if let Ok(boundary) = multipart_boundary(ct) {
            if let Ok(parts) = parse_multipart(body, &boundary) {
                check_parts(body, parts.iter().map(|p| p.data))?;
            }
        }
    }
    Ok(())
}

/// What an admitted admin request must have.
pub fn check_admitted(head: &RequestHead) -> Result<(), String> {
    if head.bearer() != Some(TOKEN) {
        return Err(format!(
            "admitted without the token: {:?}",
            head.header("authorization")
        ));
    }
    let host = head.header("host").unwrap_or("");
    let local = |authority: &str| {
        let a = authority.trim().to_ascii_lowercase();
        let h = if let Some(v6) = a.strip_prefix('[') {
            v6.split(']').next().unwrap_or("").to_string()
        } else {
            a.rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(a.clone(), |(h, _)| h.to_string())
        };
        h == "localhost"
            || h.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                ip.is_loopback()
                    || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
            })
    };
    if !local(host) {
        return Err(format!("admitted with Host {host:?}"));
    }
    if let Some(origin) = head.header("origin") {
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        if !local(authority) {
            return Err(format!("admitted with Origin {origin:?}"));
        }
    }
    if head.body_length().unwrap_or(0) > 0 {
        let ct = head.header("content-type").unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(format!("admitted a body of type {ct:?}"));
        }
    }
    Ok(())
}

/// Every part's bytes inside `body`, at most [`MAX_PARTS`] of them.
pub fn check_parts<'a>(body: &[u8], parts: impl Iterator<Item = &'a [u8]>) -> Result<(), String> {
    let range = body.as_ptr_range();
    let mut n = 0;
    for data in parts {
        n += 1;
        let inside = data.is_empty()
            || (range.start <= data.as_ptr() && data.as_ptr_range().end <= range.end);
        if !inside {
            return Err("a multipart part points outside the body".into());
        }
    }
    if n > MAX_PARTS {
        return Err(format!("{n} multipart parts"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::new("POST", "/local/jobs", headers)
    }

    #[test]
    fn the_admission_check_can_fail() {
        let auth = format!("Bearer {TOKEN}");
        let good = head(&[("Host", "127.0.0.1:9790"), ("Authorization", &auth)]);
        assert!(check_admitted(&good).is_ok());
        for bad in [
            head(&[("Host", "127.0.0.1:9790")]),
            head(&[("Host", "evil.example"), ("Authorization", &auth)]),
            head(&[
                ("Host", "127.0.0.1"),
                ("Authorization", &auth),
                ("Origin", "https://evil.example"),
            ]),
            head(&[
                ("Host", "127.0.0.1"),
                ("Authorization", &auth),
                ("Content-Length", "2"),
                ("Content-Type", "text/plain"),
            ]),
        ] {
            assert!(check_admitted(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_parts_check_can_fail() {
        let body = b"0123456789";
        assert!(check_parts(body, [&body[2..5]].into_iter()).is_ok());
        let other = b"elsewhere";
        assert!(check_parts(body, [&other[..]].into_iter()).is_err());
    }
}
