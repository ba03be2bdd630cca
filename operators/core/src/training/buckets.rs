//! UNO's aspect-ratio buckets (uno-method §4.3, `FluxPairedDatasetV2`): a batch's images are
//! resized, without cropping, to the bucket whose aspect ratio is closest to the batch's mean.

/// The buckets `(height, width)` at 512, UNO's list.
const AT_512: [(u32, u32); 11] =
    [(256, 768), (320, 768), (320, 704), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (768, 256)];

/// The buckets at `resolution`: UNO's list scaled by `resolution / 512` and floored to multiples
/// of 16.
pub fn buckets(resolution: u32) -> Vec<(u32, u32)> {
    let scale = |v: u32| ((v as u64 * resolution as u64 / 512) as u32 / 16 * 16).max(16);
    AT_512.iter().map(|&(h, w)| (scale(h), scale(w))).collect()
}

/// The bucket `(height, width)` for images whose aspect ratios (width / height) are `ratios`:
/// the one closest to their mean.
pub fn bucket_for(ratios: &[f64], resolution: u32) -> (u32, u32) {
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    let all = buckets(resolution);
    let mut best = all[0];
    for &(h, w) in &all {
        if (w as f64 / h as f64 - mean).abs() < (best.1 as f64 / best.0 as f64 - mean).abs() {
            best = (h, w);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_scale_and_match_the_mean_aspect_ratio() {
        assert_eq!(buckets(512)[5], (512, 512));
        assert_eq!(buckets(1024)[0], (512, 1536));
        assert_eq!(buckets(64)[0], (32, 96));
        assert_eq!(bucket_for(&[1.0], 512), (512, 512));
        assert_eq!(bucket_for(&[3.0], 512), (256, 768));
        // The mean of a square and a wide image picks one bucket for both.
        assert_eq!(bucket_for(&[1.0, 2.0], 512), (384, 640));
    }
}
