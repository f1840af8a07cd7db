//! Where the image of a Gradio output is: every shape a Gradio image output takes.
//!
//! | shape | Gradio | where the bytes are |
//! |---|---|---|
//! | `"data:image/png;base64,..."` | 3.x `Image`, any app returning a data URL | inline |
//! | `"http://host/.../file=/tmp/x.png"` | an absolute file URL | GET it |
//! | `"/gradio_api/file=/tmp/x.png"`, `"file=/tmp/x.png"` | a relative file URL | GET it, resolved against the app's URL |
//! | `{"url": "...", "path": "..."}` | 4.x+ `FileData` | `url` as above; without one, `path` through the app's file route |
//! | `{"name": "/tmp/x.png", "is_file": true}` | 3.x file objects | `name` through the file route (`data` when it holds a data URL) |
//! | `[x, ...]`, `{"image": x, "caption": ...}` | galleries | the first image |
//!
//! The file route is `<app URL>/gradio_api/file=<path>` for the current API and
//! `<app URL>/file=<path>` for the legacy one (PROTOCOL.md §10).

use base64::Engine as _;
use serde_json::Value;
use ureq::http::Uri;

use crate::error::EngineError;
use crate::models::resolve;

/// How deep galleries and objects may nest around the image.
pub const MAX_NESTING: usize = 4;

/// Where an image output's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// The bytes themselves (from a `data:` URL).
    Inline(Vec<u8>),
    /// An absolute http(s) URL to GET.
    Url(String),
}

/// What relative references are resolved against: the app's URL (ending in `/`) and the
/// prefix of its file route (`gradio_api/file=` or `file=`), relative to that URL.
#[derive(Clone, Debug)]
pub struct Origin<'a> {
    /// The app's URL, ending in `/`.
    pub base: &'a Uri,
    /// The file route's prefix relative to `base`.
    pub file_route: &'a str,
}

/// Where the image of the output `value` is, or a `Failed` error (not retryable: the app
/// answered, with something that is not an image) describing what came back.
pub fn image_ref(value: &Value, origin: &Origin<'_>) -> Result<ImageRef, EngineError> {
    find(value, origin, 0)
}

fn find(value: &Value, origin: &Origin<'_>, depth: usize) -> Result<ImageRef, EngineError> {
    if depth > MAX_NESTING {
        return Err(not_an_image(value, "nested too deeply"));
    }
    match value {
        Value::String(s) => reference(s, origin),
        Value::Array(items) => match items.first() {
            Some(first) => find(first, origin, depth + 1),
            None => Err(not_an_image(value, "an empty list")),
        },
        Value::Object(map) => {
            let text = |key: &str| {
                map.get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            if let Some(url) = text("url") {
                return reference(url, origin);
            }
            if let Some(path) = text("path") {
                return file(path, origin);
            }
            if let Some(data) = text("data").filter(|d| d.starts_with("data:")) {
                return reference(data, origin);
            }
            if let Some(name) = text("name") {
                return file(name, origin);
            }
            if let Some(image) = map.get("image") {
                return find(image, origin, depth + 1);
            }
            Err(not_an_image(value, "an object without url, path or name"))
        }
        _ => Err(not_an_image(value, "no image")),
    }
}

/// A string output: a data URL, an absolute URL or a URL relative to the app.
fn reference(s: &str, origin: &Origin<'_>) -> Result<ImageRef, EngineError> {
    if let Some(rest) = s.strip_prefix("data:") {
        return data_url(rest).map(ImageRef::Inline);
    }
    let url = resolve(origin.base, s);
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(ImageRef::Url(url))
    } else {
        Err(EngineError::failed(
            format!(
                "the Gradio app's output `{}` is neither a data URL nor an http(s) URL",
                clip(s)
            ),
            false,
        ))
    }
}

/// A path on the app's machine, fetched through its file route. A "path" that is a URL
/// (some apps put one there) is taken as one.
fn file(path: &str, origin: &Origin<'_>) -> Result<ImageRef, EngineError> {
    if path.starts_with("data:") || path.contains("://") {
        return reference(path, origin);
    }
    let url = format!("{}{}{}", origin.base, origin.file_route, encode_path(path));
    Ok(ImageRef::Url(url))
}

/// The bytes of a `data:[<type>][;base64],<data>` URL (after `data:`); only base64 data
/// is an image.
fn data_url(rest: &str) -> Result<Vec<u8>, EngineError> {
    let (meta, payload) = rest.split_once(',').ok_or_else(|| {
        EngineError::failed(
            "the Gradio app's data URL has no `,` before its data",
            false,
        )
    })?;
    if !meta.ends_with(";base64") {
        return Err(EngineError::failed(
            format!("the Gradio app's data URL (`data:{meta},...`) is not base64"),
            false,
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| {
            EngineError::failed(
                format!("the Gradio app's data URL is not valid base64: {e}"),
                false,
            )
        })
}

/// `path` for a URL: bytes outside the unreserved set and `/` percent-encoded.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The JSON of `value`, clipped for a message.
fn clip(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn not_an_image(value: &Value, what: &str) -> EngineError {
    EngineError::failed(
        format!(
            "the Gradio app's output is not an image ({what}): {}",
            clip(&value.to_string())
        ),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin_call() -> Uri {
        "http://127.0.0.1:7860/".parse().unwrap()
    }

    fn get(value: Value) -> Result<ImageRef, EngineError> {
        let base = origin_call();
        image_ref(
            &value,
            &Origin {
                base: &base,
                file_route: "gradio_api/file=",
            },
        )
    }

    fn url(s: &str) -> ImageRef {
        ImageRef::Url(s.to_string())
    }

    #[test]
    fn data_urls_are_decoded() {
        assert_eq!(
            get(json!("data:image/png;base64,iVBORw0KGgo=")).unwrap(),
            ImageRef::Inline(b"\x89PNG\r\n\x1a\n".to_vec())
        );
        // Inside a FileData's url, and in a 3.x object's `data`.
        assert_eq!(
            get(json!({"url": "data:image/webp;base64,UklGRg=="})).unwrap(),
            ImageRef::Inline(b"RIFF".to_vec())
        );
        assert_eq!(
            get(json!({"name": "x.png", "data": "data:;base64,UklGRg==", "is_file": false}))
                .unwrap(),
            ImageRef::Inline(b"RIFF".to_vec())
        );
    }

    #[test]
    fn bad_data_urls_are_not_retryable_failures() {
        for bad in [
            "data:image/png,rawbytes",
            "data:image/png;base64",
            "data:;base64,@@@",
        ] {
            let err = get(json!(bad)).unwrap_err();
            assert!(!err.retryable(), "{bad}");
            assert!(err.message.contains("data URL"), "{}", err.message);
        }
    }

    #[test]
    fn absolute_and_relative_urls_are_resolved_against_the_app() {
        assert_eq!(
            get(json!("https://cdn.example/x.webp")).unwrap(),
            url("https://cdn.example/x.webp")
        );
        assert_eq!(
            get(json!("/gradio_api/file=/tmp/x.png")).unwrap(),
            url("http://127.0.0.1:7860/gradio_api/file=/tmp/x.png")
        );
        assert_eq!(
            get(json!("file=/tmp/x.png")).unwrap(),
            url("http://127.0.0.1:7860/file=/tmp/x.png")
        );
        let err = get(json!("ftp://host/x.png")).unwrap_err();
        assert!(!err.retryable());
    }

    #[test]
    fn file_data_objects_prefer_the_url_then_the_path() {
        let file_data = json!({"path": "/tmp/gradio/ab/image.png",
            "url": "http://127.0.0.1:7860/gradio_api/file=/tmp/gradio/ab/image.png",
            "size": null, "orig_name": "image.png", "meta": {"_type": "gradio.FileData"}});
        assert_eq!(
            get(file_data).unwrap(),
            url("http://127.0.0.1:7860/gradio_api/file=/tmp/gradio/ab/image.png")
        );
        // No url (or a null one): the path through the file route, encoded.
        assert_eq!(
            get(json!({"path": "/tmp/my pics/a#1.png", "url": null})).unwrap(),
            url("http://127.0.0.1:7860/gradio_api/file=/tmp/my%20pics/a%231.png")
        );
        // 3.x file objects name the path `name`.
        assert_eq!(
            get(json!({"name": "/tmp/x.png", "data": null, "is_file": true})).unwrap(),
            url("http://127.0.0.1:7860/gradio_api/file=/tmp/x.png")
        );
        // A path that is a URL is one.
        assert_eq!(
            get(json!({"path": "https://cdn.example/y.png"})).unwrap(),
            url("https://cdn.example/y.png")
        );
    }

    #[test]
    fn galleries_give_their_first_image() {
        assert_eq!(
            get(json!([[{"image": {"path": "/a.png"}, "caption": null}, {"image": {"path": "/b.png"}}]]))
                .unwrap(),
            url("http://127.0.0.1:7860/gradio_api/file=/a.png")
        );
    }

    #[test]
    fn other_outputs_are_not_images() {
        for value in [
            json!(null),
            json!(42),
            json!([]),
            json!({"caption": "x"}),
            json!([[[[[["/deep.png"]]]]]]),
        ] {
            let err = get(value.clone()).unwrap_err();
            assert!(!err.retryable(), "{value}");
            assert!(err.message.contains("not an image"), "{}", err.message);
        }
    }
}
