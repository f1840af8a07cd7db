//! Who may drive the `/local` admin API: the checks a request head passes before its body
//! is read. A web page the operator happens to visit can send requests to a loopback port
//! (a form post, a `fetch` in `no-cors` mode, or a name it points at `127.0.0.1` by DNS
//! rebinding); these checks leave such a page nothing to drive:
//!
//! 1. **Host**: the `Host` header names this machine (`localhost`, `127.0.0.0/8`, `::1`)
//!    or the address the server is bound to, so a rebound name is refused (403).
//! 2. **Origin**: a request that carries `Origin` (every cross-site `fetch` and form post
//!    does) comes from a page on this server's own host (403 otherwise).
//! 3. **Token**: `Authorization: Bearer <admin token>`, the token `studio-local` prints
//!    at start (401 otherwise; [`crate::AdminAuth::Disabled`] turns it off for scripts).
//! 4. **Content type**: a request with a body sends `Content-Type: application/json`, which
//!    no page can send cross-site without a CORS preflight this server never grants (415
//!    otherwise, so `text/plain` "JSON" from a form is refused).
//!
//! Pure functions over the parsed head ([`crate::http::RequestHead`]), so the fuzz target
//! and the unit tests drive them directly.

use std::net::{IpAddr, SocketAddr};

use studio_core::secret::ct_eq;

use crate::http::{HttpFault, RequestHead};

/// Bytes of randomness in a generated admin token (hex-encoded: twice as many characters).
pub const ADMIN_TOKEN_BYTES: usize = 16;

/// What the admin checks compare against.
#[derive(Clone, Copy, Debug)]
pub struct AdminPolicy<'a> {
    /// The bearer token the API wants (`None`: no token).
    pub token: Option<&'a str>,
    /// The address the server is bound to (its IP is an accepted `Host`).
    pub bind: SocketAddr,
}

/// Checks an admin request's head (see the module docs): `Ok`, or the status and reason.
pub fn check_admin(head: &RequestHead, policy: &AdminPolicy<'_>) -> Result<(), HttpFault> {
    let host = head.header("host").unwrap_or("");
    if !is_this_host(host_of_authority(host), policy.bind) {
        return Err(HttpFault::new(
            403,
            format!(
                "Host `{}` is not this server: the admin API answers requests for localhost \
                 or {} only",
                clip(host),
                policy.bind.ip()
            ),
        ));
    }
    if let Some(origin) = head.header("origin") {
        let allowed = origin
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
            .is_some_and(|(_, authority)| is_this_host(host_of_authority(authority), policy.bind));
        if !allowed {
            return Err(HttpFault::new(
                403,
                format!(
                    "cross-origin request from `{}` refused: the admin API is not for web pages",
                    clip(origin)
                ),
            ));
        }
    }
    if let Some(token) = policy.token {
        if !head.bearer().is_some_and(|t| ct_eq(t, token)) {
            return Err(HttpFault::new(
                401,
                "the admin API needs `Authorization: Bearer <token>` with the admin token \
                 studio-local printed at start (--no-admin-token turns the check off)",
            ));
        }
    }
    if head.body_length()? > 0 && !is_json(head.header("content-type")) {
        return Err(HttpFault::new(
            415,
            "an admin request body must be sent as `Content-Type: application/json`",
        ));
    }
    Ok(())
}

/// A fresh admin token: [`ADMIN_TOKEN_BYTES`] from the OS's random source, as hex.
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; ADMIN_TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The host of `host[:port]` or `[v6]:port` (brackets removed).
fn host_of_authority(authority: &str) -> &str {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// `localhost`, a loopback address, or the bound address itself.
fn is_this_host(host: &str, bind: SocketAddr) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => {
            ip.is_loopback()
                || (ip == bind.ip() && !ip.is_unspecified())
                || matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        }
        Err(_) => false,
    }
}

/// A header value for a message: at most 80 characters, control characters escaped.
fn clip(value: &str) -> String {
    value
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::new("POST", "/local/jobs", headers)
    }

    fn policy() -> AdminPolicy<'static> {
        AdminPolicy {
            token: Some(TOKEN),
            bind: "127.0.0.1:9790".parse().unwrap(),
        }
    }

    const AUTH: (&str, &str) = ("Authorization", "Bearer 0123456789abcdef0123456789abcdef");

    #[test]
    fn a_local_request_with_the_token_and_json_passes() {
        for host in [
            "127.0.0.1:9790",
            "localhost:9790",
            "LOCALHOST",
            "[::1]:9790",
            "127.0.0.2",
        ] {
            let h = head(&[
                ("Host", host),
                AUTH,
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Length", "2"),
            ]);
            check_admin(&h, &policy()).unwrap_or_else(|e| panic!("{host}: {e:?}"));
        }
        // No body: no content type needed (curl -X POST .../approve).
        check_admin(&head(&[("Host", "127.0.0.1:9790"), AUTH]), &policy()).unwrap();
        // A same-host origin (a page served by this server) passes.
        let h = head(&[
            ("Host", "127.0.0.1:9790"),
            ("Origin", "http://127.0.0.1:9790"),
            AUTH,
        ]);
        check_admin(&h, &policy()).unwrap();
    }

    #[test]
    fn a_foreign_host_is_refused() {
        for host in [
            "evil.example:9790",
            "evil.example",
            "",
            "10.0.0.1:9790",
            "127.0.0.1.nip.io",
        ] {
            let e = check_admin(&head(&[("Host", host), AUTH]), &policy()).unwrap_err();
            assert_eq!(e.status, 403, "{host}");
            assert!(e.message.contains("Host"), "{e:?}");
        }
        assert_eq!(
            check_admin(&head(&[AUTH]), &policy()).unwrap_err().status,
            403
        );
        // A non-loopback bind accepts its own address.
        let p = AdminPolicy {
            bind: "10.0.0.1:9790".parse().unwrap(),
            ..policy()
        };
        check_admin(&head(&[("Host", "10.0.0.1:9790"), AUTH]), &p).unwrap();
    }

    #[test]
    fn a_cross_origin_request_is_refused() {
        for origin in [
            "https://evil.example",
            "null",
            "http://evil.example:9790",
            "file://",
        ] {
            let h = head(&[("Host", "127.0.0.1:9790"), ("Origin", origin), AUTH]);
            let e = check_admin(&h, &policy()).unwrap_err();
            assert_eq!(e.status, 403, "{origin}");
            assert!(e.message.contains("cross-origin"), "{e:?}");
        }
    }

    #[test]
    fn the_token_is_required_unless_disabled() {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer 0123456789abcdef0123456789abcdeF"),
            Some("Basic 0123456789abcdef0123456789abcdef"),
            Some("Bearer 0123456789abcdef0123456789abcde"),
        ] {
            let mut headers = vec![("Host", "127.0.0.1:9790")];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let e = check_admin(&head(&headers), &policy()).unwrap_err();
            assert_eq!(e.status, 401, "{auth:?}");
        }
        let open = AdminPolicy {
            token: None,
            ..policy()
        };
        check_admin(&head(&[("Host", "127.0.0.1:9790")]), &open).unwrap();
    }

    #[test]
    fn a_body_that_is_not_json_is_refused() {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let mut headers = vec![("Host", "127.0.0.1:9790"), AUTH, ("Content-Length", "2")];
            if let Some(ct) = ct {
                headers.push(("Content-Type", ct));
            }
            let e = check_admin(&head(&headers), &policy()).unwrap_err();
            assert_eq!(e.status, 415, "{ct:?}");
        }
    }

    #[test]
    fn generated_tokens_are_fresh_hex() {
        let (a, b) = (generate_token().unwrap(), generate_token().unwrap());
        assert_eq!(a.len(), 2 * ADMIN_TOKEN_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
