//! `thumbnail`: resizes an image column so that each image's longer side is `max_side`.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, BinaryBuilder, BooleanArray, StringArray, UInt32Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use image::imageops::FilterType;

use crate::columns::{ColumnRequirement, HEIGHT, ROW_ID, WIDTH};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowError,
    RowMapping,
};
use crate::params::{ParamType, Params};
use crate::{OpError, Result, image_io};

/// The `thumbnail` operator.
#[derive(Debug, Clone, Copy)]
pub struct Thumbnail;

crate::choice! {
    /// How `thumbnail` resamples.
    pub enum Filter {
        Lanczos3 = "lanczos3",
        CatmullRom = "catmull_rom",
        Triangle = "triangle",
        Nearest = "nearest",
    }
}

impl From<Filter> for FilterType {
    fn from(f: Filter) -> Self {
        match f {
            Filter::Lanczos3 => Self::Lanczos3,
            Filter::CatmullRom => Self::CatmullRom,
            Filter::Triangle => Self::Triangle,
            Filter::Nearest => Self::Nearest,
        }
    }
}

crate::params! {
    /// `thumbnail`'s parameters.
    pub struct ThumbnailParams {
        /// the image column (PNG, JPEG or WebP bytes)
        pub column: String = optional(ParamType::Str, "image"),
        /// length of the longer side after resizing, in pixels
        pub max_side: u32 = required(ParamType::int(1, 16384)),
        /// resampling filter
        pub filter: Filter = choice(Filter::Lanczos3),
        /// also enlarge images smaller than `max_side`
        pub upscale: bool = optional(ParamType::Bool, false),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "thumbnail",
    version: 1,
    summary: "resize an image column so the longer side is `max_side`",
    doc: "The same rows with the image column resized (aspect ratio kept) and `width`/`height` \
          updated. Images already within `max_side` are left as they are unless `upscale` is set. \
          Unreadable images go to the node's error table.",
    params: ThumbnailParams::specs(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: 16,
    device_dependence: DeviceDependence::Independent,
});

impl Operator for Thumbnail {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(ThumbnailParams::parse(params)?))
    }
}

impl Configured for ThumbnailParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![vec![ColumnRequirement::image(&self.column)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let mut fields: Vec<Field> =
            inputs[0].fields().iter().filter(|f| f.name() != WIDTH && f.name() != HEIGHT).map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(WIDTH, DataType::UInt32, false));
        fields.push(Field::new(HEIGHT, DataType::UInt32, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        Ok(Arc::new(Resizer {
            max_pixels: env.max_image_pixels.pixels(),
            column: self.column.clone(),
            max_side: self.max_side,
            filter: self.filter.into(),
            upscale: self.upscale,
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

/// A prepared `thumbnail` node.
struct Resizer {
    /// The largest image decoded.
    max_pixels: u64,
    column: String,
    max_side: u32,
    filter: FilterType,
    upscale: bool,
    schema: SchemaRef,
}

impl PartitionProcessor for Resizer {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let Self { column, max_side, filter, upscale, max_pixels, .. } = self;
        let (column, max_side, filter, upscale, max_pixels) = (column.as_str(), *max_side, *filter, *upscale, *max_pixels);

        let images = cast(column_of(input, column)?, &DataType::Binary)?;
        let images =
            images.as_any().downcast_ref::<arrow::array::BinaryArray>().ok_or_else(|| OpError::Internal("cast to Binary".into()))?;
        let ids = column_of(input, ROW_ID)?;
        let ids = ids
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| OpError::Column { column: ROW_ID.into(), message: "must be Utf8".into() })?;

        let mut out = BinaryBuilder::new();
        let (mut widths, mut heights, mut keep, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in 0..input.num_rows() {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            let result = if images.is_null(row) {
                Err(format!("`{column}` is null"))
            } else {
                resize_png(images.value(row), max_side, filter, upscale, max_pixels)
            };
            match result {
                Ok((png, w, h)) => {
                    out.append_value(&png);
                    widths.push(w);
                    heights.push(h);
                    keep.push(true);
                }
                Err(message) => {
                    errors.push(RowError { row_id: ids.value(row).to_string(), message });
                    keep.push(false);
                }
            }
        }

        let kept = filter_record_batch(input, &BooleanArray::from(keep))?;
        let schema = Arc::clone(&self.schema);
        let resized: ArrayRef = Arc::new(out.finish());
        let columns = schema
            .fields()
            .iter()
            .map(|f| -> Result<ArrayRef> {
                Ok(match f.name().as_str() {
                    WIDTH => Arc::new(UInt32Array::from(widths.clone())),
                    HEIGHT => Arc::new(UInt32Array::from(heights.clone())),
                    name if name == column => cast(&resized, f.data_type())?,
                    name => Arc::clone(column_of(&kept, name)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PartitionOutput { rows: RecordBatch::try_new(schema, columns)?, errors })
    }
}

fn column_of<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| OpError::Column { column: name.into(), message: "missing from the input".into() })
}

/// Decodes, resizes and re-encodes one image; returns the PNG and its size.
fn resize_png(
    bytes: &[u8],
    max_side: u32,
    filter: FilterType,
    upscale: bool,
    max_pixels: u64,
) -> std::result::Result<(Vec<u8>, u32, u32), String> {
    let img = image_io::decode(bytes, max_pixels)?;
    let (w, h) = (img.width(), img.height());
    let img = if w.max(h) > max_side || (upscale && w.max(h) < max_side) {
        let (nw, nh) = image_io::fit_long_side(w, h, max_side);
        img.resize_exact(nw, nh, filter)
    } else {
        img
    };
    let png = image_io::encode_png(&img)?;
    Ok((png, img.width(), img.height()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use image::DynamicImage;

    use super::*;

    fn configured(max_side: i64) -> Arc<dyn Configured> {
        let mut p = Params::new();
        for spec in &SPEC.params {
            if let Some(d) = &spec.default {
                p.insert(spec.name, d.clone());
            }
        }
        p.insert("max_side", max_side.into());
        Thumbnail.configure(&p).unwrap()
    }

    fn batch(images: Vec<Vec<u8>>) -> RecordBatch {
        let ids: Vec<String> = (0..images.len()).map(|i| format!("id{i}")).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new(ROW_ID, DataType::Utf8, false),
            Field::new("image", DataType::Binary, true),
            Field::new("width", DataType::UInt32, false),
        ]));
        let n = images.len();
        let imgs: Vec<&[u8]> = images.iter().map(|v| v.as_slice()).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(arrow::array::BinaryArray::from(imgs)),
                Arc::new(UInt32Array::from(vec![0; n])),
            ],
        )
        .unwrap()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        image_io::encode_png(&DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 9])))).unwrap()
    }

    #[test]
    fn resizes_and_isolates_bad_rows() {
        let ctx = ExecContext::new(0, 0, Arc::new(AtomicBool::new(false)));
        let input = batch(vec![png(40, 20), b"not an image".to_vec(), png(8, 4)]);
        let prepared = configured(10).prepare(&Environment::default(), &input.schema()).unwrap();
        let out = prepared.process(&ctx, &input).unwrap();
        assert_eq!(out.rows.num_rows(), 2);
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].row_id, "id1");
        let w = out.rows.column_by_name(WIDTH).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        let h = out.rows.column_by_name(HEIGHT).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!((w.value(0), h.value(0)), (10, 5));
        // Smaller than max_side: unchanged without `upscale`.
        assert_eq!((w.value(1), h.value(1)), (8, 4));
        let img = out.rows.column_by_name("image").unwrap().as_any().downcast_ref::<arrow::array::BinaryArray>().unwrap();
        assert_eq!(image_io::png_size(img.value(0)), Some((10, 5)));
    }

    #[test]
    fn output_schema_has_sizes_once() {
        let input = batch(vec![]);
        let schema = configured(4).output_schema(&[input.schema()]).unwrap();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["row_id", "image", "width", "height"]);
    }
}
