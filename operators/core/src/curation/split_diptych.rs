//! `split_diptych`: finds the seam of each diptych near its middle and cuts it into the reference
//! (left or top) and the target (right or bottom) (uno-method §5.3).
//!
//! The paper splits with a Hough transform. The seam of a generated diptych is a straight line
//! parallel to an image side, so only one angle of the Hough accumulator matters: for each
//! candidate column (or row) near the middle, the vote is the number of pixels along it that
//! are edge pixels, i.e. whose luminance step across the line exceeds a threshold. The best
//! line wins if it is a clear line (it covers most of the image's height, or width, and beats
//! the typical candidate by `min_contrast`); otherwise the image is cut in exact halves.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, BinaryArray, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use image::{DynamicImage, GrayImage};
use rayon::prelude::*;

use super::diptych_prompts::Layout;
use crate::columns::ColumnRequirement;
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{Choice, ParamType, Params};
use crate::rows::{RowResults, binary, bytes_at, extend_schema, row_ids, text, with_added};
use crate::{Result, image_io};

/// The `split_diptych` operator.
#[derive(Debug, Clone, Copy)]
pub struct SplitDiptych;

crate::params! {
    /// `split_diptych`'s parameters.
    pub struct SplitDiptychParams {
        /// the diptych column
        pub image: String = optional(ParamType::Str, "image"),
        /// the layout column, if the input has one
        pub layout: String = optional(ParamType::Str, "layout"),
        /// search the seam within this fraction of the side around the centre
        pub window: f64 = optional(ParamType::float(0.0, 0.5), 0.1),
        /// luminance step (0–255) across the line that makes a pixel an edge pixel
        pub edge_threshold: u32 = optional(ParamType::int(1, 255), 24),
        /// fraction of the line that must be edge pixels to call it a seam
        pub min_coverage: f64 = optional(ParamType::float(0.0, 1.0), 0.6),
        /// the seam's votes over the median candidate's (plus one) must reach this
        pub min_contrast: f64 = optional(ParamType::float(1.0, 1000.0), 2.0),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "split_diptych",
    version: 1,
    summary: "find each diptych's seam near the middle (a straight-line Hough vote) and cut it into reference and target",
    doc: "Cuts along the strongest straight line within `window` (a fraction of the side) of the \
          centre: left/top is the reference, right/bottom the target, both whole panels as the \
          UNO maintainers advise (no further cropping). The layout comes from the `layout` \
          column (left_right | top_bottom, as diptych_prompts writes it) or, when the column is \
          absent, from the image's shape (wider than tall: left_right). When no clear line is \
          found, the exact half. Adds ref_image, target_image (PNG), split (pixel offset of the \
          cut) and split_method (line | half).",
    params: SplitDiptychParams::specs(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: 64,
    device_dependence: DeviceDependence::Independent,
});

crate::choice! {
    /// How a seam was found, as the `split_method` column spells it.
    pub enum SplitMethod {
        /// A clear straight line.
        Line = "line",
        /// No clear line: the exact half.
        Half = "half",
    }
}

/// Seam-search settings.
#[derive(Debug, Clone, Copy)]
pub struct SeamSearch {
    pub window: f64,
    pub edge_threshold: u8,
    pub min_coverage: f64,
    pub min_contrast: f64,
}

impl SeamSearch {
    /// The cut of `gray` across its width (a vertical line) at the returned column.
    pub fn vertical(&self, gray: &GrayImage) -> (u32, SplitMethod) {
        let (w, h) = gray.dimensions();
        let half = w / 2;
        let reach = ((w as f64 * self.window).round() as u32).max(1);
        let (lo, hi) = (half.saturating_sub(reach).max(1), (half + reach).min(w.saturating_sub(1)));
        if lo > hi || h == 0 {
            return (half, SplitMethod::Half);
        }
        let threshold = i16::from(self.edge_threshold);
        // votes[x]: pixels where the step between columns x-1 and x is an edge.
        let votes: Vec<u32> = (lo..=hi)
            .map(|x| {
                (0..h).filter(|&y| (i16::from(gray.get_pixel(x, y)[0]) - i16::from(gray.get_pixel(x - 1, y)[0])).abs() >= threshold).count()
                    as u32
            })
            .collect();
        let (best_offset, best) = votes
            .iter()
            .enumerate()
            .max_by_key(|(i, v)| (**v, std::cmp::Reverse(i.abs_diff((half - lo) as usize))))
            .map(|(i, v)| (i, *v))
            .unwrap_or((0, 0));
        let mut sorted = votes.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let covers = best as f64 >= self.min_coverage * h as f64;
        let stands_out = best as f64 >= self.min_contrast * (median as f64 + 1.0);
        if covers && stands_out { (lo + best_offset as u32, SplitMethod::Line) } else { (half, SplitMethod::Half) }
    }

    /// Splits `image` by `layout`: (reference, target, offset of the cut, method).
    pub fn split(&self, image: &DynamicImage, layout: Layout) -> (DynamicImage, DynamicImage, u32, SplitMethod) {
        let gray = image.to_luma8();
        match layout {
            Layout::LeftRight => {
                let (x, method) = self.vertical(&gray);
                (image.crop_imm(0, 0, x, image.height()), image.crop_imm(x, 0, image.width() - x, image.height()), x, method)
            }
            Layout::TopBottom => {
                // Rotated a quarter turn anticlockwise, row y becomes column y.
                let (y, method) = self.vertical(&image::imageops::rotate270(&gray));
                (image.crop_imm(0, 0, image.width(), y), image.crop_imm(0, y, image.width(), image.height() - y), y, method)
            }
        }
    }
}

fn added_fields() -> Vec<Field> {
    vec![
        Field::new("ref_image", DataType::Binary, false),
        Field::new("target_image", DataType::Binary, false),
        Field::new("split", DataType::UInt32, false),
        Field::new("split_method", DataType::Utf8, false),
    ]
}

impl Operator for SplitDiptych {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(SplitDiptychParams::parse(params)?))
    }
}

impl Configured for SplitDiptychParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![vec![ColumnRequirement::image(&self.image)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(extend_schema(&inputs[0], added_fields()))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        Ok(Arc::new(Splitter {
            image: self.image.clone(),
            max_pixels: env.max_image_pixels.pixels(),
            // The layout column is optional: without it, each image's shape decides.
            layout: input_schema.column_with_name(&self.layout).map(|_| self.layout.clone()),
            search: SeamSearch {
                window: self.window,
                // The spec keeps the threshold in 1..=255.
                edge_threshold: u8::try_from(self.edge_threshold).unwrap_or(u8::MAX),
                min_coverage: self.min_coverage,
                min_contrast: self.min_contrast,
            },
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Splitter {
    image: String,
    /// The largest image decoded.
    max_pixels: u64,
    layout: Option<String>,
    search: SeamSearch,
    schema: SchemaRef,
}

type Split = (Vec<u8>, Vec<u8>, u32, SplitMethod);

impl PartitionProcessor for Splitter {
    fn process(&self, _ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let images = binary(input, &self.image)?;
        let layouts = self.layout.as_deref().map(|name| text(input, name)).transpose()?;
        let results: Vec<std::result::Result<Split, String>> = (0..input.num_rows())
            .into_par_iter()
            .map(|row| {
                let image = image_io::decode(bytes_at(&images, &self.image, row)?, self.max_pixels)
                    .map_err(|e| format!("`{}`: {e}", self.image))?;
                let layout = match &layouts {
                    Some(col) if col.is_valid(row) => col
                        .value(row)
                        .parse::<Layout>()
                        .map_err(|_| format!("layout {:?} is neither left_right nor top_bottom", col.value(row)))?,
                    _ if image.height() > image.width() => Layout::TopBottom,
                    _ => Layout::LeftRight,
                };
                let (reference, target, at, method) = self.search.split(&image, layout);
                Ok((image_io::encode_png(&reference)?, image_io::encode_png(&target)?, at, method))
            })
            .collect();
        let results = RowResults::split(ids, results);
        let kept = results.kept(input)?;
        let refs: BinaryArray = results.values.iter().map(|v| Some(v.0.as_slice())).collect();
        let targets: BinaryArray = results.values.iter().map(|v| Some(v.1.as_slice())).collect();
        let at: UInt32Array = results.values.iter().map(|v| Some(v.2)).collect();
        let method: StringArray = results.values.iter().map(|v| Some(v.3.name())).collect();
        let added: Vec<ArrayRef> = vec![Arc::new(refs), Arc::new(targets), Arc::new(at), Arc::new(method)];
        Ok(PartitionOutput { rows: with_added(&self.schema, &kept, added)?, errors: results.errors })
    }
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use super::*;
    use crate::draws::Draws;

    const SEARCH: SeamSearch = SeamSearch { window: 0.1, edge_threshold: 24, min_coverage: 0.6, min_contrast: 2.0 };

    /// Two textured panels meeting at column `seam`: each pixel is its panel's colour plus
    /// seeded noise of ±`noise` (texture that must not be mistaken for the seam).
    fn diptych(w: u32, h: u32, seam: u32, noise: u8) -> RgbImage {
        let mut d = Draws::new(7, "diptych", &[]);
        RgbImage::from_fn(w, h, |x, _| {
            let base: [u8; 3] = if x < seam { [70, 110, 160] } else { [200, 170, 90] };
            let jitter = d.below(2 * noise as usize + 1) as i16 - noise as i16;
            Rgb(base.map(|c| (c as i16 + jitter).clamp(0, 255) as u8))
        })
    }

    #[test]
    fn finds_an_off_centre_seam_in_both_layouts() {
        for seam in [120u32, 128, 137] {
            let img = DynamicImage::ImageRgb8(diptych(256, 96, seam, 12));
            let (reference, target, at, method) = SEARCH.split(&img, Layout::LeftRight);
            assert_eq!((at, method), (seam, SplitMethod::Line));
            assert_eq!((reference.width(), target.width()), (seam, 256 - seam));
            let stacked = img.rotate270();
            let (reference, target, at, method) = SEARCH.split(&stacked, Layout::TopBottom);
            assert_eq!((at, method), (256 - seam, SplitMethod::Line), "rotated seam {seam}");
            assert_eq!(reference.height() + target.height(), 256);
        }
    }

    #[test]
    fn a_seam_outside_the_window_or_no_seam_falls_back_to_halves() {
        let far = DynamicImage::ImageRgb8(diptych(256, 96, 60, 12));
        let (_, _, at, method) = SEARCH.split(&far, Layout::LeftRight);
        assert_eq!((at, method), (128, SplitMethod::Half));
        let plain = DynamicImage::ImageRgb8(diptych(256, 96, 1000, 12));
        assert_eq!(SEARCH.split(&plain, Layout::LeftRight).3, SplitMethod::Half);
    }
}
