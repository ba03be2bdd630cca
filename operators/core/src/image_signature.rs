//! Signatures of decoded images for duplicate detection: a digest of the pixels (exact copies,
//! whatever the file encoding) and a 64-bit perceptual hash (re-encodes, resizes, brightness).

use image::DynamicImage;
use image::imageops::FilterType;

/// The digest of an image's pixels: its size and its RGBA8 samples. A PNG and a lossless
/// re-encode of it (another compressor, another colour type holding the same colours) agree;
/// any changed pixel does not.
pub fn pixel_digest(image: &DynamicImage) -> [u8; 32] {
    let rgba = image.to_rgba8();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&rgba.width().to_le_bytes()).update(&rgba.height().to_le_bytes()).update(rgba.as_raw());
    *hasher.finalize().as_bytes()
}

/// Side of the grey image the DCT reads: four times the hash's 8, as the reference pHash
/// (Zauner 2010; the `imagehash` package's `phash`) takes it.
const DCT_SIDE: usize = 32;
/// The low-frequency square whose coefficients become the hash's bits.
const HASH_SIDE: usize = 8;

/// The 64-bit DCT perceptual hash: the image in grey at 32×32 (Lanczos), its 2-D DCT-II, and
/// one bit per coefficient of the 8×8 lowest frequencies — set when the coefficient is above
/// their median. Bit `8·u + v` is coefficient (u, v), u the vertical frequency.
///
/// Re-encoding, resizing and a uniform brightness change move a few bits (the hash reads the
/// image's coarse structure relative to its own median); a crop or another photo moves many.
pub fn perceptual_hash(image: &DynamicImage) -> u64 {
    let grey = image::imageops::resize(&image.to_luma32f(), DCT_SIDE as u32, DCT_SIDE as u32, FilterType::Lanczos3);
    let pixels: Vec<f64> = grey.as_raw().iter().map(|&v| f64::from(v)).collect();
    let basis = dct_basis();
    // Rows first (x → v), then columns (y → u), over the low frequencies only.
    let mut rows = [[0f64; HASH_SIDE]; DCT_SIDE];
    for (y, row) in rows.iter_mut().enumerate() {
        for (v, out) in row.iter_mut().enumerate() {
            *out = (0..DCT_SIDE).map(|x| basis[v][x] * pixels[y * DCT_SIDE + x]).sum();
        }
    }
    let mut low = [0f64; HASH_SIDE * HASH_SIDE];
    for u in 0..HASH_SIDE {
        for v in 0..HASH_SIDE {
            low[u * HASH_SIDE + v] = (0..DCT_SIDE).map(|y| basis[u][y] * rows[y][v]).sum();
        }
    }
    let mut sorted = low;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[low.len() / 2 - 1] + sorted[low.len() / 2]) / 2.0;
    low.iter().enumerate().fold(0u64, |hash, (bit, &c)| if c > median { hash | (1 << bit) } else { hash })
}

/// The DCT-II basis, `cos(π k (2n + 1) / 2N)` for the low frequencies `k`.
fn dct_basis() -> [[f64; DCT_SIDE]; HASH_SIDE] {
    let mut basis = [[0f64; DCT_SIDE]; HASH_SIDE];
    for (k, row) in basis.iter_mut().enumerate() {
        for (n, b) in row.iter_mut().enumerate() {
            *b = (std::f64::consts::PI * k as f64 * (2 * n + 1) as f64 / (2 * DCT_SIDE) as f64).cos();
        }
    }
    basis
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use super::*;

    /// A smooth, structured test picture: a gradient with a bright disc off centre.
    fn picture(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            let disc = ((fx - 0.3).powi(2) + (fy - 0.6).powi(2)).sqrt() < 0.2;
            let base = (fx * 120.0 + fy * 60.0) as u8;
            if disc { Rgb([230, 200, 40]) } else { Rgb([base, 90, 255 - base]) }
        }))
    }

    fn distance(a: u64, b: u64) -> u32 {
        (a ^ b).count_ones()
    }

    #[test]
    fn pixel_digests_see_pixels_not_encodings() {
        let original = picture(64, 48);
        let as_rgba = DynamicImage::ImageRgba8(original.to_rgba8());
        assert_eq!(pixel_digest(&original), pixel_digest(&as_rgba));
        let mut changed = original.to_rgb8();
        changed.put_pixel(3, 3, Rgb([0, 0, 1]));
        assert_ne!(pixel_digest(&original), pixel_digest(&DynamicImage::ImageRgb8(changed)));
    }

    #[test]
    fn perceptual_hashes_survive_resizing_and_brightness_but_not_another_picture() {
        let original = perceptual_hash(&picture(256, 192));
        let resized = perceptual_hash(&picture(256, 192).resize_exact(128, 96, FilterType::Triangle));
        let brighter = perceptual_hash(&picture(256, 192).brighten(25));
        let flipped = perceptual_hash(&picture(256, 192).fliph());
        assert!(distance(original, resized) <= 4, "{}", distance(original, resized));
        assert!(distance(original, brighter) <= 4, "{}", distance(original, brighter));
        assert!(distance(original, flipped) > 16, "{}", distance(original, flipped));
        // Half the bits set, by the median's definition.
        assert_eq!(original.count_ones(), 32);
    }
}
