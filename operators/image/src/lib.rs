//! unoflow's image columns: decoding and encoding shared by the engine and the operators; every
//! image column holds PNG bytes.
//!
//! Decoding is bounded: an image whose header claims more than the caller's limit of pixels (a
//! decompression bomb: a few KB of PNG that would inflate to gigabytes) is refused before any
//! pixel buffer is allocated, so a hostile file becomes a row error, never an abort.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

/// Bytes a decoder may allocate per pixel at most (RGBA with 32-bit float channels).
const MAX_BYTES_PER_PIXEL: u64 = 16;

/// Decodes PNG, JPEG or WebP bytes, with the EXIF orientation applied so that the pixels are the
/// way a viewer shows them; an image of more than `max_pixels` (width × height) is refused
/// before anything is allocated. The error is a sentence for a row's error message.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, String> {
    decode_detailed(bytes, max_pixels).map(|d| d.image)
}

/// A decoded image and what decoding it involved.
#[derive(Debug)]
pub struct Decoded {
    pub image: DynamicImage,
    pub format: ImageFormat,
    /// Whether an EXIF orientation rotated or flipped the pixels.
    pub reoriented: bool,
}

/// Like [`decode`], also telling the format and whether the orientation changed the pixels.
pub fn decode_detailed(bytes: &[u8], max_pixels: u64) -> Result<Decoded, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot read image: {e}"))?;
    let format = reader.format().ok_or_else(|| {
        format!("not an image in a known format (PNG, JPEG or WebP); the data starts with {:02x?}", &bytes[..bytes.len().min(8)])
    })?;
    let limit = max_pixels.max(1);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(limit.saturating_mul(MAX_BYTES_PER_PIXEL));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| format!("cannot decode {format:?} image: {e}"))?;
    // The header's claim is checked before anything is allocated: not every decoder applies
    // `max_alloc` to its output buffer.
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limit {
        return Err(format!(
            "{format:?} image of {w}×{h} = {pixels} pixels is above the limit of {limit} pixels \
             (raise `max_image_pixels` under [dag] if such images are expected)"
        ));
    }
    if decoder.total_bytes() > limit.saturating_mul(MAX_BYTES_PER_PIXEL) {
        return Err(format!("{format:?} image of {w}×{h} needs {} bytes to decode, above the limit", decoder.total_bytes()));
    }
    let orientation = decoder.orientation().map_err(|e| format!("cannot read {format:?} orientation: {e}"))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode {format:?} image: {e}"))?;
    img.apply_orientation(orientation);
    Ok(Decoded { image: img, format, reoriented: orientation != Orientation::NoTransforms })
}

/// Encodes as 8-bit PNG (RGB, or RGBA when the image has alpha). Fast deflate: image columns are
/// written once and read many times, and PNG's filters already do most of the work.
pub fn encode_png(img: &DynamicImage) -> Result<Vec<u8>, String> {
    let img = if img.color().has_alpha() { DynamicImage::ImageRgba8(img.to_rgba8()) } else { DynamicImage::ImageRgb8(img.to_rgb8()) };
    let mut out = Vec::new();
    let encoder = PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
    img.write_with_encoder(encoder).map_err(|e| format!("cannot encode PNG: {e}"))?;
    Ok(out)
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Width and height of PNG bytes, read from the header without decoding.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != PNG_SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

/// The size an image of `w × h` takes when its longer side becomes `max_side`, keeping the
/// aspect ratio (rounded to the nearest pixel, never below 1).
pub fn fit_long_side(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let long = w.max(h) as f64;
    let scale = max_side as f64 / long;
    let rw = ((w as f64 * scale).round() as u32).max(1);
    let rh = ((h as f64 * scale).round() as u32).max(1);
    (rw, rh)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's default (`unoflow_api::PixelLimit::DEFAULT`).
    const LIMIT: u64 = 8192 * 8192;

    #[test]
    fn png_round_trip_and_header() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8, y as u8, 3])));
        let png = encode_png(&img).unwrap();
        assert_eq!(png_size(&png), Some((7, 5)));
        let back = decode(&png, LIMIT).unwrap();
        assert_eq!(back.to_rgb8(), img.to_rgb8());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = decode(b"hello world", LIMIT).unwrap_err();
        assert!(err.contains("not an image"), "{err}");
    }

    /// A PNG whose header claims `w × h` pixels, with almost no data behind it.
    fn bomb(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        // One compressed row: the decoder would allocate the whole image before finding out.
        writer.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]).unwrap();
        drop(writer);
        out
    }

    #[test]
    fn bombs_are_refused_before_allocating() {
        let err = decode(&bomb(1_000_000, 1_000_000), LIMIT).unwrap_err();
        assert!(err.contains("above the limit"), "{err}");
        assert!(err.contains("max_image_pixels"), "{err}");
        // Just above the default limit is refused too; far below it decodes (or fails on data).
        let err = decode(&bomb(8193, 8192), LIMIT).unwrap_err();
        assert!(decode(&bomb(64, 64), 63 * 64).unwrap_err().contains("above the limit of 4032 pixels"), "a limit of the caller's");
        assert!(err.contains("above the limit"), "{err}");
    }

    #[test]
    fn fit_keeps_aspect() {
        assert_eq!(fit_long_side(768, 512, 64), (64, 43));
        assert_eq!(fit_long_side(512, 768, 64), (43, 64));
        assert_eq!(fit_long_side(1000, 1, 10), (10, 1));
    }
}
