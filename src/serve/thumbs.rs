//! Thumbnails, made on demand and kept on disk by the digest of the image they show.
//!
//! A page that shows images names each by its blake3 digest; making the page makes the
//! thumbnails it lacks (in parallel), so `/thumb/DIGEST` only ever reads a file. The cache holds
//! files, not memory: the server's memory does not grow with the tables it shows.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

/// The longer side of a thumbnail, in pixels.
pub const SIDE: u32 = 256;

/// A thumbnail in the cache: its name and the size it shows at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumb {
    /// The blake3 digest of the full image, in hex: the thumbnail's name.
    pub digest: String,
    pub width: u32,
    pub height: u32,
}

/// The thumbnail cache: a folder of `DIGEST.jpg` files.
#[derive(Debug, Clone)]
pub struct Thumbnails {
    dir: PathBuf,
}

/// Whether `bytes` start like an image a browser shows (PNG, JPEG, WebP).
pub fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xff, 0xd8, 0xff])
        || (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
}

/// The MIME type of image bytes.
pub fn content_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        "image/jpeg"
    } else if bytes.starts_with(b"RIFF") {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

impl Thumbnails {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.jpg"))
    }

    /// The thumbnail file of `digest`, if made. `digest` must be 64 hex digits: anything else
    /// names no file (so no request reaches outside the cache).
    pub fn file(&self, digest: &str) -> Option<PathBuf> {
        let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let path = self.path(digest);
        (valid && path.is_file()).then_some(path)
    }

    /// The thumbnails of `images`, making those not in the cache (in parallel). An image that
    /// cannot be decoded gets `Err` with why.
    pub fn make_all(&self, images: &[&[u8]]) -> Vec<Result<Thumb, String>> {
        images.par_iter().map(|bytes| self.make(bytes)).collect()
    }

    /// The thumbnail of one image, made if not in the cache.
    pub fn make(&self, bytes: &[u8]) -> Result<Thumb, String> {
        let digest = blake3::hash(bytes).to_hex().to_string();
        let path = self.path(&digest);
        if let Ok(existing) = image::image_dimensions(&path) {
            return Ok(Thumb { digest, width: existing.0, height: existing.1 });
        }
        // The page shows data the DAG accepted; the default bound keeps a hostile cell harmless.
        let img = unoflow_operators::image_io::decode(bytes, unoflow_api::PixelLimit::DEFAULT.pixels())?;
        let (w, h) = (img.width(), img.height());
        let small = if w.max(h) > SIDE {
            let (tw, th) = unoflow_operators::image_io::fit_long_side(w, h, SIDE);
            img.resize_exact(tw, th, FilterType::Triangle)
        } else {
            img
        };
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85);
        image::DynamicImage::ImageRgb8(small.to_rgb8()).write_with_encoder(encoder).map_err(|e| format!("cannot encode thumbnail: {e}"))?;
        write_new(&self.dir, &path, &jpeg).map_err(|e| format!("cannot write thumbnail {}: {e}", path.display()))?;
        Ok(Thumb { digest, width: small.width(), height: small.height() })
    }
}

/// Writes `path` through a file beside it and a rename, so a reader never sees half a
/// thumbnail (two pages making the same one write the same bytes).
fn write_new(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7])));
        unoflow_operators::image_io::encode_png(&img).unwrap()
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_are_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let thumbs = Thumbnails::new(dir.path().join("t"));
        let big = png(512, 256);
        let small = png(64, 32);
        let made = thumbs.make_all(&[&big, &small, b"not an image"]);
        let first = made[0].clone().unwrap();
        assert_eq!((first.width, first.height), (256, 128));
        assert_eq!((made[1].as_ref().unwrap().width, made[1].as_ref().unwrap().height), (64, 32));
        assert!(made[2].is_err());
        let path = thumbs.file(&first.digest).unwrap();
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(thumbs.make(&big).unwrap(), first);
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), written);
        assert!(thumbs.file("../../etc/passwd").is_none());
        assert!(thumbs.file(&"A".repeat(64)).is_none());
    }
}
