//! The HTTP side of the protocol (PROTOCOL.md §4): registration bodies, the upload's
//! content types, the studio's URLs, and the one hex and SHA-256 helpers.

use serde::{Deserialize, Serialize};

use super::{Secret, WorkerCapabilities};

// ------------------------------------------------------------------------------------------
// HTTP bodies (PROTOCOL.md §4)
// ------------------------------------------------------------------------------------------

/// Body of `POST /workers/register-request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoRegisterRequest {
    pub install_id: String,
    /// SHA-256 hex of the raw registration secret (the secret itself never leaves the box).
    pub registration_secret_hash: String,
    pub capabilities: WorkerCapabilities,
    pub user_agent: String,
}

/// Response of `POST /workers/register-request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequestResponse {
    pub request_id: String,
    pub status: String,
}

/// Response of `GET /workers/register-requests/:id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum RegisterStatus {
    Pending,
    Approved {
        worker_id: String,
        auth_token: Secret,
    },
    Rejected {
        #[serde(default)]
        reason: String,
    },
}

/// The Content-Type of a result file by extension (case-insensitive), as the multipart
/// upload labels it (PROTOCOL.md §4.1): png, webp, gif, jpg/jpeg, wav, mp3, mp4; anything
/// else is `application/octet-stream`.
pub fn content_type_for_ext(ext: &str) -> &'static str {
    match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "jpg" | "jpeg" => "image/jpeg",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// Lower-case hex SHA-256 of `data`: the registration secret hash and the studio's stored
/// token hash.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Lower-case hex of `bytes` (digests, ids): the one hex encoder of the project.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The HTTP route prefix every studio route sits under.
pub const API_PREFIX: &str = "/graphics/api";

/// Normalises `api_base_url` for HTTP (PROTOCOL.md §4): drop query and fragment, strip a
/// trailing `/graphics/api`, trim trailing `/`. Returns `None` for a URL without scheme.
pub fn http_base(api_base_url: &str) -> Option<String> {
    let url = api_base_url.trim();
    let scheme_end = url.find("://")?;
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let mut base = url[..cut].trim_end_matches('/').to_string();
    if base.len() < scheme_end + 3 {
        return None;
    }
    if let Some(stripped) = base.strip_suffix(API_PREFIX) {
        base = stripped.trim_end_matches('/').to_string();
    }
    Some(base)
}

/// Builds the full HTTP URL of a studio route (`route` starts with `/`).
pub fn http_url(api_base_url: &str, route: &str) -> Option<String> {
    Some(format!(
        "{}{}{}",
        http_base(api_base_url)?,
        API_PREFIX,
        route
    ))
}

/// Derives the WebSocket connect URL (PROTOCOL.md §5): `http`->`ws`, `https`->`wss`,
/// `ws`/`wss` kept, anything else is an error; path gets `/graphics/api` unless it already
/// ends with it, then `/workers/<id>/connect`. The base URL's query is not stripped
/// (reference behaviour); it is kept after the path.
pub fn ws_url(api_base_url: &str, worker_id: &str) -> Result<String, String> {
    let url = api_base_url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("api_base_url `{url}` has no scheme"))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(format!(
                "api_base_url scheme `{other}` is not http(s) or ws(s)"
            ))
        }
    };
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut path = before_query.trim_end_matches('/').to_string();
    if !path.ends_with(API_PREFIX) {
        path.push_str(API_PREFIX);
    }
    Ok(format!(
        "{ws_scheme}://{path}/workers/{worker_id}/connect{}",
        query.split('#').next().unwrap_or("")
    ))
}
