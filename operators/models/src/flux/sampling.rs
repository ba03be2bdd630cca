//! Rectified-flow sampling as FLUX and UNO do it: seeded noise, the shifted schedule, packing
//! latents into tokens, and Euler steps.
//!
//! Reference: `uno/flux/sampling.py` (d305981) and black-forest-labs/flux `sampling.py`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// How the schedule's shift `mu` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShiftRule {
    /// FLUX: from the number of image tokens (`(H/16)·(W/16)`; mu = 0.63 at 512²).
    ImageTokens,
    /// UNO's released pipeline: from `(W/8)·(H/8)/256` (mu ≈ 0.46 at 512²), a much weaker shift.
    #[default]
    UnoLatentArea,
}

impl ShiftRule {
    /// The sequence length the shift is computed from, for an image of `width × height`.
    pub fn seq_len(self, width: usize, height: usize) -> usize {
        match self {
            Self::ImageTokens => width.div_ceil(16) * height.div_ceil(16),
            Self::UnoLatentArea => (width / 8) * (height / 8) / 256,
        }
    }
}

/// `get_schedule(num_steps, image_seq_len, base_shift=0.5, max_shift=1.15, shift=True)`:
/// `num_steps + 1` times from 1 to 0, computed in f32 as the reference's tensors are.
pub fn schedule(num_steps: usize, image_seq_len: usize, shift: bool) -> Vec<f32> {
    let (x1, y1, x2, y2) = (256.0f64, 0.5f64, 4096.0f64, 1.15f64);
    let m = (y2 - y1) / (x2 - x1);
    let mu = m * image_seq_len as f64 + (y1 - m * x1);
    let step = -1.0f32 / num_steps as f32;
    (0..=num_steps)
        .map(|i| if i == num_steps { 0.0 } else { 1.0f32 + step * i as f32 })
        .map(|t| {
            if !shift {
                return t;
            }
            let e = mu.exp() as f32;
            e / (e + (1.0 / t - 1.0))
        })
        .collect()
}

/// A SplitMix64 stream: fast, seedable, identical everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// Standard normal noise `[16, 2·ceil(H/16), 2·ceil(W/16)]` for one image, made on the host
/// from `seed` (Box–Muller over SplitMix64): the same seed gives the same bytes on every
/// backend and machine. (The reference draws with torch's device generator, so its seeds do not
/// reproduce across implementations anyway.)
pub fn noise(seed: u64, height: usize, width: usize) -> (Vec<f32>, [usize; 3]) {
    let shape = [16, 2 * height.div_ceil(16), 2 * width.div_ceil(16)];
    let n = shape.iter().product::<usize>();
    let mut rng = SplitMix(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (rng.uniform(), rng.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    (out, shape)
}

/// `[B, C, H, W]` → `[B, (H/2)(W/2), C·4]` ("b c (h ph) (w pw) -> b (h w) (c ph pw)").
pub fn pack<B: Backend>(latent: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = latent.dims();
    latent.reshape([b, c, h / 2, 2, w / 2, 2]).permute([0, 2, 4, 1, 3, 5]).reshape([b, (h / 2) * (w / 2), c * 4])
}

/// The inverse of [`pack`] for a token grid of `rows × cols`.
pub fn unpack<B: Backend>(tokens: Tensor<B, 3>, rows: usize, cols: usize) -> Tensor<B, 4> {
    let [b, _, d] = tokens.dims();
    let c = d / 4;
    tokens.reshape([b, rows, cols, c, 2, 2]).permute([0, 3, 1, 4, 2, 5]).reshape([b, c, rows * 2, cols * 2])
}

/// Position ids `[B, L, 3]` as a tensor.
pub fn ids_tensor<B: Backend>(ids: &[[f32; 3]], batch: usize, device: &B::Device) -> Tensor<B, 3> {
    let flat: Vec<f32> = (0..batch).flat_map(|_| ids.iter().flatten().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [batch, ids.len(), 3]), (device, burn::tensor::DType::F32))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    #[test]
    fn uno_schedule_at_512_matches_the_reference() {
        // uno-method §3.1: 512², 25 steps, UNO's shift rule.
        let expected = [
            1.0, 0.9744, 0.9479, 0.9207, 0.8926, 0.8636, 0.8337, 0.8028, 0.7709, 0.7378, 0.7037, 0.6683, 0.6317, 0.5937, 0.5543, 0.5135,
            0.4710, 0.4269, 0.3811, 0.3333, 0.2836, 0.2317, 0.1775, 0.1210, 0.0619, 0.0,
        ];
        let seq = ShiftRule::UnoLatentArea.seq_len(512, 512);
        assert_eq!(seq, 16);
        let t = schedule(25, seq, true);
        assert_eq!(t.len(), 26);
        for (a, b) in t.iter().zip(expected) {
            assert!((a - b).abs() < 5e-5, "{a} vs {b}");
        }
        assert_eq!(ShiftRule::ImageTokens.seq_len(512, 512), 1024);
        let flux = schedule(25, 1024, true);
        assert!(flux[1] > t[1], "FLUX's shift is stronger");
    }

    #[test]
    fn noise_is_seeded_and_normal() {
        let (a, shape) = noise(3407, 512, 512);
        assert_eq!(shape, [16, 64, 64]);
        assert_eq!(a, noise(3407, 512, 512).0);
        assert_ne!(a, noise(3408, 512, 512).0);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{mean} {var}");
        // Sizes not multiple of 16 round up (2·ceil(H/16)).
        assert_eq!(noise(0, 500, 520).1, [16, 64, 66]);
    }

    #[test]
    fn pack_then_unpack_is_identity_and_orders_features_c_ph_pw() {
        let device = Default::default();
        let data: Vec<f32> = (0..2 * 16 * 4 * 6).map(|i| i as f32).collect();
        let latent = Tensor::<Flex, 4>::from_data(TensorData::new(data.clone(), [2, 16, 4, 6]), &device);
        let tokens = pack(latent);
        assert_eq!(tokens.dims(), [2, 6, 64]);
        let flat: Vec<f32> = tokens.clone().into_data().iter::<f32>().collect();
        // Token 0 = rows 0..2, cols 0..2; feature c·4 + ph·2 + pw.
        assert_eq!(flat[..4], [0.0, 1.0, 6.0, 7.0]);
        assert_eq!(flat[4], 24.0); // channel 1, (0, 0)
        let back: Vec<f32> = unpack(tokens, 2, 3).into_data().iter::<f32>().collect();
        assert_eq!(back, data);
    }
}
