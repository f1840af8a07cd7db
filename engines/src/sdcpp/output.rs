//! What `sd-cli` is asked to write, and turning it into the job's result: images are
//! re-encoded to the requested `ext`; videos are delivered as written, in the container
//! sd-cli can write that is closest to the one asked for.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ImageFormat, ImageReader};

use crate::error::EngineError;

/// The JPEG quality of a `jpg` / `jpeg` result.
pub const JPEG_QUALITY: u8 = 90;

/// The extension of the file `sd-cli` writes an image to (lossless, re-encoded afterwards).
pub const IMAGE_OUTPUT_EXT: &str = "png";

/// An image result's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageEncoding {
    /// `png`.
    Png,
    /// `webp` (lossless).
    WebP,
    /// `jpg` / `jpeg`, at [`JPEG_QUALITY`].
    Jpeg,
}

impl ImageEncoding {
    /// The encoding of a requested `ext` (case-insensitive); `None` for one this engine
    /// cannot write.
    pub fn for_ext(ext: &str) -> Option<ImageEncoding> {
        match ext.to_ascii_lowercase().as_str() {
            "png" => Some(ImageEncoding::Png),
            "webp" => Some(ImageEncoding::WebP),
            "jpg" | "jpeg" => Some(ImageEncoding::Jpeg),
            _ => None,
        }
    }

    /// [`ImageEncoding::for_ext`], or the `InvalidInput` error naming what is supported.
    pub fn require(ext: &str) -> Result<ImageEncoding, EngineError> {
        ImageEncoding::for_ext(ext).ok_or_else(|| {
            EngineError::invalid_input(format!(
                "image ext `{ext}` is not one the sd-cpp engine writes (png, webp, jpg, jpeg)"
            ))
        })
    }
}

/// Decodes the image sd-cli wrote and encodes it as `encoding`. Unreadable bytes mean
/// sd-cli misbehaved: `Failed`, retryable (another worker's sd-cli may do better).
pub fn reencode(written: &[u8], encoding: ImageEncoding) -> Result<Vec<u8>, EngineError> {
    let image = ImageReader::new(Cursor::new(written))
        .with_guessed_format()
        .map_err(|e| EngineError::io(format!("reading sd-cli's image: {e}")))?
        .decode()
        .map_err(|e| EngineError::failed(format!("sd-cli wrote an unreadable image: {e}"), true))?
        .to_rgb8();
    let mut out = Vec::new();
    let encoded = match encoding {
        ImageEncoding::Png => image.write_with_encoder(PngEncoder::new(&mut out)),
        ImageEncoding::WebP => image.write_with_encoder(WebPEncoder::new_lossless(&mut out)),
        ImageEncoding::Jpeg => {
            image.write_with_encoder(JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY))
        }
    };
    encoded.map_err(|e| EngineError::failed(format!("cannot encode the image: {e}"), false))?;
    Ok(out)
}

/// The video containers sd-cli writes (by the output file's extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoContainer {
    /// WebM (VP8), `webm`.
    WebM,
    /// Animated WebP, `webp`.
    WebP,
    /// Motion-JPEG AVI, `avi`.
    Avi,
}

impl VideoContainer {
    /// The container for a requested `ext`: `webm`, `webp` and `avi` as asked; anything
    /// else (`mp4`, the default, included: sd-cli has no MP4 writer) becomes `webm`.
    pub fn for_ext(ext: &str) -> VideoContainer {
        match ext.to_ascii_lowercase().as_str() {
            "webp" => VideoContainer::WebP,
            "avi" => VideoContainer::Avi,
            _ => VideoContainer::WebM,
        }
    }

    /// The extension written and reported.
    pub fn ext(self) -> &'static str {
        match self {
            VideoContainer::WebM => "webm",
            VideoContainer::WebP => "webp",
            VideoContainer::Avi => "avi",
        }
    }

    /// Whether `bytes` begin like a file of this container.
    pub fn matches(self, bytes: &[u8]) -> bool {
        let riff =
            |form: &[u8]| bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == form;
        match self {
            VideoContainer::WebM => bytes.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]),
            VideoContainer::WebP => riff(b"WEBP"),
            VideoContainer::Avi => riff(b"AVI "),
        }
    }
}

/// The extension an input image gets on disk, from its content (sd-cli picks its decoder
/// by extension, and a studio URL's name may not match what it serves). `None` when the
/// bytes are no image format sd-cli reads.
pub fn input_image_ext(bytes: &[u8]) -> Option<&'static str> {
    match image::guess_format(bytes).ok()? {
        ImageFormat::Png => Some("png"),
        ImageFormat::Jpeg => Some("jpg"),
        ImageFormat::WebP => Some("webp"),
        ImageFormat::Bmp => Some("bmp"),
        ImageFormat::Gif => Some("gif"),
        ImageFormat::Tga => Some("tga"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| Rgb([x as u8 * 20, y as u8 * 20, 99]));
        let mut out = Vec::new();
        img.write_with_encoder(PngEncoder::new(&mut out)).unwrap();
        out
    }

    #[test]
    fn images_are_reencoded_to_the_requested_ext_keeping_their_size() {
        let written = png(12, 7);
        for (ext, format) in [
            ("png", ImageFormat::Png),
            ("WEBP", ImageFormat::WebP),
            ("jpg", ImageFormat::Jpeg),
            ("jpeg", ImageFormat::Jpeg),
        ] {
            let bytes = reencode(&written, ImageEncoding::require(ext).unwrap()).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), format, "{ext}");
            let back = image::load_from_memory(&bytes).unwrap();
            assert_eq!((back.width(), back.height()), (12, 7), "{ext}");
        }
        let e = ImageEncoding::require("gif").unwrap_err();
        assert!(!e.retryable() && e.message.contains("`gif`"), "{e}");
    }

    #[test]
    fn unreadable_output_is_a_retryable_failure() {
        let e = reencode(b"this is not a png", ImageEncoding::Png).unwrap_err();
        assert!(e.retryable(), "{e}");
        let mut cut = png(8, 8);
        cut.truncate(cut.len() / 2);
        assert!(reencode(&cut, ImageEncoding::WebP).unwrap_err().retryable());
    }

    #[test]
    fn video_containers_and_input_image_kinds() {
        assert_eq!(VideoContainer::for_ext("mp4"), VideoContainer::WebM);
        assert_eq!(VideoContainer::for_ext("gif"), VideoContainer::WebM);
        assert_eq!(VideoContainer::for_ext("AVI").ext(), "avi");
        assert_eq!(VideoContainer::for_ext("webp").ext(), "webp");
        assert!(VideoContainer::WebM.matches(&[0x1a, 0x45, 0xdf, 0xa3, 0]));
        assert!(VideoContainer::Avi.matches(b"RIFF\0\0\0\0AVI LIST"));
        assert!(!VideoContainer::WebP.matches(b"RIFF\0\0\0\0AVI LIST"));
        assert!(!VideoContainer::WebM.matches(b""));

        assert_eq!(input_image_ext(&png(2, 2)), Some("png"));
        assert_eq!(
            input_image_ext(&[0xff, 0xd8, 0xff, 0xe0, 0, 0]),
            Some("jpg")
        );
        assert_eq!(input_image_ext(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(input_image_ext(b"<html>not an image</html>"), None);
    }
}
