//! 2-D convolution (NCHW, square kernel, one group) as matrix products.
//!
//! A `k × k` convolution is `out[O × P] = weight[O × C·k·k] · columns[C·k·k × P]` per batch
//! item, where row `(c, ky, kx)` of `columns` holds, for every output position, the input value
//! the kernel's tap `(ky, kx)` of channel `c` reads there (0 in the padding). `columns` is built
//! for a band of output rows at a time, so it stays near [`COLUMN_VALUES`] whatever the image
//! size; a 1 × 1 convolution without stride or padding reads the input as its columns directly.

use rayon::prelude::*;

use super::gemm::{Bias, Gemm, Layout};

/// About how many values one band's `columns` may hold (16 MiB of f32).
const COLUMN_VALUES: usize = 4 << 20;

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Zero rows and columns before (top, left) and after (bottom, right) the input.
    pub pad: [usize; 2],
}

impl Conv2dShape {
    /// The output's height and width.
    pub fn out_size(&self) -> [usize; 2] {
        let out = |size: usize| match (size + self.pad[0] + self.pad[1]).checked_sub(self.kernel) {
            Some(room) => room / self.stride + 1,
            None => 0,
        };
        [out(self.height), out(self.width)]
    }
}

/// Convolves `x` (`[B, C, H, W]`, contiguous) with `weight` (`[O, C, k, k]`, contiguous) and
/// adds `bias` (`[O]`); returns `[B, O, OH, OW]`.
pub fn conv2d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: Conv2dShape) -> Vec<f32> {
    let Conv2dShape { batch, channels, height, width, out_channels, kernel, stride, pad } = shape;
    assert!(stride > 0 && kernel > 0, "conv2d: stride and kernel must be positive ({shape:?})");
    assert_eq!(x.len(), batch * channels * height * width, "conv2d: the input does not match {shape:?}");
    let taps = channels * kernel * kernel;
    assert_eq!(weight.len(), out_channels * taps, "conv2d: the weight does not match {shape:?}");
    let [out_h, out_w] = shape.out_size();
    let plane = out_h * out_w;
    let mut out = vec![0.0f32; batch * out_channels * plane];
    if out.is_empty() {
        return out;
    }
    let direct = kernel == 1 && stride == 1 && pad == [0, 0];
    let band_rows = if direct { out_h } else { (COLUMN_VALUES / (taps * out_w).max(1)).clamp(1, out_h) };
    let mut columns = if direct { Vec::new() } else { vec![0.0f32; taps * band_rows * out_w] };
    for (image, out) in x.chunks_exact(channels * height * width).zip(out.chunks_exact_mut(out_channels * plane)) {
        for first_row in (0..out_h).step_by(band_rows) {
            let rows = band_rows.min(out_h - first_row);
            let positions = rows * out_w;
            let (b, ld) = if direct {
                (image, plane)
            } else {
                let columns = &mut columns[..taps * positions];
                fill_columns(columns, image, shape, first_row, rows);
                (&*columns, positions)
            };
            let bias = bias.map(Bias::PerRow);
            let gemm = Gemm {
                a: weight,
                lda: taps,
                b,
                b_layout: Layout::RowMajor { ld },
                bias,
                dims: [out_channels, positions, taps],
                ldc: plane,
            };
            gemm.run(&mut out[first_row * out_w..]);
        }
    }
    out
}

/// `columns[(c, ky, kx)][position]` for the output rows `first_row..first_row + rows`.
fn fill_columns(columns: &mut [f32], image: &[f32], shape: Conv2dShape, first_row: usize, rows: usize) {
    let Conv2dShape { height, width, kernel, stride, pad, .. } = shape;
    let out_w = shape.out_size()[1];
    columns.par_chunks_mut(rows * out_w).enumerate().for_each(|(tap, column)| {
        let (c, ky, kx) = (tap / (kernel * kernel), tap / kernel % kernel, tap % kernel);
        let channel = &image[c * height * width..][..height * width];
        for (r, out_row) in column.chunks_exact_mut(out_w).enumerate() {
            // Input row and columns of this tap, in the padded frame shifted back by `pad[0]`.
            let y = (first_row + r) * stride + ky;
            if y < pad[0] || y - pad[0] >= height {
                out_row.fill(0.0);
                continue;
            }
            let input_row = &channel[(y - pad[0]) * width..][..width];
            if stride == 1 {
                // A shifted copy of the input row, zeros where the tap falls in the padding.
                let lead = pad[0].saturating_sub(kx).min(out_w);
                let start = (kx + lead).saturating_sub(pad[0]);
                let len = width.saturating_sub(start).min(out_w - lead);
                out_row[..lead].fill(0.0);
                out_row[lead..lead + len].copy_from_slice(&input_row[start..start + len]);
                out_row[lead + len..].fill(0.0);
                continue;
            }
            for (ox, value) in out_row.iter_mut().enumerate() {
                let x = ox * stride + kx;
                *value = if x < pad[0] || x - pad[0] >= width { 0.0 } else { input_row[x - pad[0]] };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: every output is a sum over channels and taps.
    fn reference(x: &[f32], weight: &[f32], bias: Option<&[f32]>, s: Conv2dShape) -> Vec<f32> {
        let [out_h, out_w] = s.out_size();
        let mut out = Vec::new();
        for b in 0..s.batch {
            for o in 0..s.out_channels {
                for oy in 0..out_h {
                    for ox in 0..out_w {
                        let mut sum = bias.map_or(0.0, |bias| bias[o] as f64);
                        for c in 0..s.channels {
                            for ky in 0..s.kernel {
                                for kx in 0..s.kernel {
                                    let (y, x_) = (
                                        (oy * s.stride + ky) as isize - s.pad[0] as isize,
                                        (ox * s.stride + kx) as isize - s.pad[0] as isize,
                                    );
                                    if y < 0 || x_ < 0 || y >= s.height as isize || x_ >= s.width as isize {
                                        continue;
                                    }
                                    let input = x[((b * s.channels + c) * s.height + y as usize) * s.width + x_ as usize];
                                    sum += input as f64 * weight[((o * s.channels + c) * s.kernel + ky) * s.kernel + kx] as f64;
                                }
                            }
                        }
                        out.push(sum as f32);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_for_the_autoencoders_convolutions() {
        let shape = |channels, out_channels, kernel, stride, pad| Conv2dShape {
            batch: 2,
            channels,
            height: 9,
            width: 11,
            out_channels,
            kernel,
            stride,
            pad,
        };
        for s in [
            shape(5, 7, 3, 1, [1, 1]), // ResNet blocks, conv_in, conv_out, upsampling
            shape(5, 7, 1, 1, [0, 0]), // nin_shortcut and the attention's projections
            shape(4, 4, 3, 2, [0, 1]), // the encoder's downsampling (trailing pad only)
            shape(3, 2, 3, 1, [2, 2]),
        ] {
            let x: Vec<f32> = (0..s.batch * s.channels * s.height * s.width).map(|i| ((i * 31 % 17) as f32 - 8.0) / 5.0).collect();
            let weight: Vec<f32> =
                (0..s.out_channels * s.channels * s.kernel * s.kernel).map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0).collect();
            let bias: Vec<f32> = (0..s.out_channels).map(|o| o as f32 - 3.0).collect();
            let got = conv2d(&x, &weight, Some(&bias), s);
            let want = reference(&x, &weight, Some(&bias), s);
            assert_eq!(got.len(), want.len(), "{s:?}");
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{s:?}: out[{i}] = {a}, want {b}");
            }
        }
    }

    #[test]
    fn a_band_of_rows_at_a_time_gives_the_same_result() {
        // Enough taps × width that a band is a few rows: several bands per image.
        let s = Conv2dShape { batch: 1, channels: 300, height: 40, width: 1000, out_channels: 2, kernel: 3, stride: 1, pad: [1, 1] };
        const { assert!(COLUMN_VALUES / (300 * 9 * 1000) < 40) };
        let x: Vec<f32> = (0..s.channels * s.height * s.width).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let weight: Vec<f32> = (0..2 * 300 * 9).map(|i| ((i * 5 % 7) as f32 - 3.0) / 50.0).collect();
        let got = conv2d(&x, &weight, None, s);
        // Every 97th output against the definition.
        let want = reference(&x, &weight, None, s);
        for (i, (a, b)) in got.iter().zip(&want).enumerate().step_by(97) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "out[{i}] = {a}, want {b}");
        }
    }
}
