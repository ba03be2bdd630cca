//! Image preprocessing for the encoders, as their reference pipelines do it.
//!
//! - DINO / DINOv2 (DreamBench evaluations): shortest side to 256 (bicubic), centre crop 224,
//!   ImageNet mean and std.
//! - CLIP (OpenAI `clip` and transformers `CLIPImageProcessor`): shortest side to the model's
//!   size (224; bicubic), centre crop, CLIP's mean and std.
//!
//! Resizing follows torchvision on PIL images: the shorter side becomes `size`, the longer
//! `int(size · long / short)`; PIL's bicubic (a = −0.5, antialiased when shrinking) is the
//! `image` crate's Catmull-Rom filter, which widens its support the same way. The centre crop's
//! offset is `round((h − crop) / 2)` with Python's round-half-to-even.

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// Per-channel normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// ImageNet statistics (DINO, DINOv2).
pub const IMAGENET: Normalize = Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

/// CLIP's statistics (OpenAI).
pub const CLIP: Normalize = Normalize { mean: [0.481_454_66, 0.457_827_5, 0.408_210_73], std: [0.268_629_54, 0.261_302_6, 0.275_777_1] };

/// How an image becomes an encoder's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// The shorter side after resizing.
    pub resize: u32,
    /// The side of the centre crop.
    pub crop: u32,
    pub normalize: Normalize,
}

impl Preprocess {
    /// DINO / DINOv2 as DreamBench evaluations use them: 256 → 224, ImageNet statistics.
    pub const DINO: Self = Self { resize: 256, crop: 224, normalize: IMAGENET };
    /// CLIP ViT-B/32 and ViT-L/14 at 224.
    pub const CLIP: Self = Self { resize: 224, crop: 224, normalize: CLIP };

    /// The image as `[3, crop, crop]` floats, channel-major.
    pub fn apply(&self, image: &DynamicImage) -> Vec<f32> {
        let rgb = resize_shorter(&image.to_rgb8(), self.resize);
        let cropped = center_crop(&rgb, self.crop);
        to_chw(&cropped, &self.normalize)
    }
}

/// Python's `round` (half to even).
fn round_half_even(x: f64) -> i64 {
    let floor = x.floor();
    let diff = x - floor;
    let up = diff > 0.5 || (diff == 0.5 && floor.rem_euclid(2.0) == 1.0);
    (if up { floor + 1.0 } else { floor }) as i64
}

/// Resizes so the shorter side is `size` (torchvision `Resize(size)`).
pub fn resize_shorter(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (nw, nh) =
        if w <= h { (size, (size as u64 * h as u64 / w as u64) as u32) } else { ((size as u64 * w as u64 / h as u64) as u32, size) };
    if (nw, nh) == (w, h) {
        return image.clone();
    }
    image::imageops::resize(image, nw, nh, FilterType::CatmullRom)
}

/// The centred `crop × crop` square (torchvision `CenterCrop`); images smaller than the crop are
/// padded with black, as torchvision does.
pub fn center_crop(image: &RgbImage, crop: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let top = round_half_even((h as f64 - crop as f64) / 2.0);
    let left = round_half_even((w as f64 - crop as f64) / 2.0);
    let mut out = RgbImage::new(crop, crop);
    for y in 0..crop {
        for x in 0..crop {
            let (sx, sy) = (x as i64 + left, y as i64 + top);
            if sx >= 0 && sy >= 0 && (sx as u32) < w && (sy as u32) < h {
                out.put_pixel(x, y, *image.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// `ToTensor` then `Normalize`: `[3, h, w]`, channel-major.
pub fn to_chw(image: &RgbImage, norm: &Normalize) -> Vec<f32> {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (p[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(16.0), 16);
    }

    #[test]
    fn resize_then_crop_shapes() {
        let img = RgbImage::from_pixel(768, 512, image::Rgb([10, 20, 30]));
        let r = resize_shorter(&img, 256);
        assert_eq!(r.dimensions(), (384, 256));
        let c = center_crop(&r, 224);
        assert_eq!(c.dimensions(), (224, 224));
        let t = Preprocess::DINO.apply(&DynamicImage::ImageRgb8(img));
        assert_eq!(t.len(), 3 * 224 * 224);
        assert!((t[0] - (10.0 / 255.0 - 0.485) / 0.229).abs() < 1e-3);
    }
}
