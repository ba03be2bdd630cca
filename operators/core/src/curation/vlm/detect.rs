//! `vlm_detect`: the bounding box of a named subject, asked of a grounding VLM in the JSON form
//! Qwen2.5-VL answers (`[{"bbox_2d": [x1, y1, x2, y2], "label": …}]`), and the crop. UNO's
//! multi-subject step crops subject 2 from the target this way (uno-method §5.6; the paper's
//! open-vocabulary detector is unspecified).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, BinaryArray, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{Value, json};

use super::client::ChatClient;
use super::{ConnectionParams, ImageSendParams, image_part, in_parallel, parse};
use crate::columns::ColumnRequirement;
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params};
use crate::rows::{RowResults, binary, bytes_at, extend_schema, row_ids, text, with_added};
use crate::{OpError, Result, image_io};

/// The `vlm_detect` operator.
#[derive(Debug, Clone, Copy)]
pub struct VlmDetect;

crate::choice! {
    /// How the model writes coordinates.
    pub enum Coordinates {
        /// Pixels of the image as sent (Qwen2.5-VL).
        Pixels = "pixels",
        /// 0–1000 on both axes (Qwen2-VL, many others).
        Thousandths = "thousandths",
        /// 0–1.
        Unit = "unit",
    }
}

crate::params! {
    /// `vlm_detect`'s own parameters.
    pub struct VlmDetectParams {
        /// the image column
        pub image: String = optional(ParamType::Str, "target_image"),
        /// the column naming what to find
        pub subject: String = optional(ParamType::Str, "subject2"),
        /// how the model writes boxes: pixels (Qwen2.5-VL), thousandths (0–1000), unit (0–1)
        pub coordinates: Coordinates = choice(Coordinates::Pixels),
        /// the crop column to add
        pub crop: String = optional(ParamType::Str, "subject_crop"),
    }
}

/// A configured `vlm_detect` node: its own parameters, the connection's and the images'.
#[derive(Debug)]
pub struct VlmDetectConfig {
    params: VlmDetectParams,
    connection: ConnectionParams,
    images: ImageSendParams,
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "vlm_detect",
    version: 1,
    summary: "bounding box of a named subject from a grounding VLM (Qwen2.5-VL JSON), and its crop",
    doc: "Asks the model to locate the subject named in the `subject` column and answer \
          `[{\"bbox_2d\": [x1, y1, x2, y2], \"label\": …}]`; the first box is taken, clamped to \
          the image. Adds box_x1, box_y1, box_x2, box_y2 (pixels), the crop (PNG) and vlm_raw. \
          A row whose answer has no usable box goes to the error table. Same connection, \
          retry and cache behaviour as vlm_score.",
    params: [VlmDetectParams::specs(), ConnectionParams::specs(), ImageSendParams::specs()].concat(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: 64,
    device_dependence: DeviceDependence::Independent,
});

impl Operator for VlmDetect {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let connection = ConnectionParams::parse(params)?;
        connection.endpoint()?;
        Ok(Arc::new(VlmDetectConfig { params: VlmDetectParams::parse(params)?, connection, images: ImageSendParams::parse(params)? }))
    }
}

impl Configured for VlmDetectConfig {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![vec![ColumnRequirement::image(&self.params.image), ColumnRequirement::text(&self.params.subject)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let mut added: Vec<Field> =
            ["box_x1", "box_y1", "box_x2", "box_y2"].iter().map(|n| Field::new(*n, DataType::UInt32, false)).collect();
        added.push(Field::new(&self.params.crop, DataType::Binary, false));
        added.push(Field::new("vlm_raw", DataType::Utf8, false));
        Ok(extend_schema(&inputs[0], added))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let (p, image_max_side) = (&self.params, self.images.image_max_side);
        if image_max_side != 0 && p.coordinates == Coordinates::Pixels {
            return Err(OpError::Param {
                name: "image_max_side".into(),
                message: "pixel boxes refer to the image as sent: leave image_max_side at 0, or use normalised coordinates".into(),
            });
        }
        Ok(Arc::new(Detector {
            client: self.connection.client(env)?,
            image: p.image.clone(),
            subject: p.subject.clone(),
            coordinates: p.coordinates,
            concurrency: self.connection.concurrency,
            image_max_side,
            max_pixels: env.max_image_pixels.pixels(),
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Detector {
    client: ChatClient,
    image: String,
    subject: String,
    coordinates: Coordinates,
    concurrency: usize,
    image_max_side: u32,
    /// The largest image decoded.
    max_pixels: u64,
    schema: SchemaRef,
}

struct Found {
    bbox: [u32; 4],
    crop: Vec<u8>,
    raw: String,
}

/// The first `bbox_2d` (or `bbox`, `box`) of an answer.
fn first_box(answer: &str) -> std::result::Result<[f64; 4], String> {
    let json = parse::embedded_json(answer).ok_or_else(|| format!("no JSON box in the answer: {:?}", super::client::clip(answer, 200)))?;
    let items: Vec<&Value> = match &json {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let coords = items
        .iter()
        .find_map(|item| ["bbox_2d", "bbox", "box"].iter().find_map(|k| item.get(*k)).and_then(Value::as_array))
        .ok_or_else(|| format!("no bbox_2d in the answer: {:?}", super::client::clip(answer, 200)))?;
    let values: Vec<f64> = coords.iter().filter_map(Value::as_f64).collect();
    <[f64; 4]>::try_from(values).map_err(|v| format!("a box has 4 numbers, got {v:?}"))
}

impl Detector {
    fn detect(&self, bytes: &[u8], subject: &str) -> std::result::Result<Found, String> {
        let image = image_io::decode(bytes, self.max_pixels).map_err(|e| format!("`{}`: {e}", self.image))?;
        let prompt = format!(
            "Locate the {subject} in the image and output its bounding box in JSON format: \
             [{{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"{subject}\"}}]"
        );
        let messages = [
            json!({"role": "user", "content": [image_part(bytes, self.image_max_side, self.max_pixels)?, {"type": "text", "text": prompt}]}),
        ];
        let answer = self.client.complete(&messages, None).map_err(|e| e.to_string())?.content;
        let [x1, y1, x2, y2] = first_box(&answer)?;
        let (w, h) = (image.width() as f64, image.height() as f64);
        let (sx, sy) = match self.coordinates {
            Coordinates::Pixels => (1.0, 1.0),
            Coordinates::Thousandths => (w / 1000.0, h / 1000.0),
            Coordinates::Unit => (w, h),
        };
        let clamp = |v: f64, max: f64| (v.clamp(0.0, max)).round() as u32;
        let bbox = [clamp(x1 * sx, w), clamp(y1 * sy, h), clamp(x2 * sx, w), clamp(y2 * sy, h)];
        if bbox[2] <= bbox[0] || bbox[3] <= bbox[1] {
            return Err(format!("empty box {bbox:?} for {subject:?} in a {}×{} image", image.width(), image.height()));
        }
        let crop = image.crop_imm(bbox[0], bbox[1], bbox[2] - bbox[0], bbox[3] - bbox[1]);
        Ok(Found { bbox, crop: image_io::encode_png(&crop)?, raw: answer })
    }
}

impl PartitionProcessor for Detector {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let images = binary(input, &self.image)?;
        let subjects = text(input, &self.subject)?;
        let results = in_parallel(input.num_rows(), self.concurrency, |row| {
            if ctx.is_cancelled() {
                return Err("cancelled".to_string());
            }
            self.detect(bytes_at(&images, &self.image, row)?, subjects.value(row))
        });
        if ctx.is_cancelled() {
            return Err(OpError::Execution("cancelled".into()));
        }
        let results = RowResults::split(ids, results);
        let mut added: Vec<ArrayRef> =
            (0..4).map(|i| Arc::new(results.values.iter().map(|f| Some(f.bbox[i])).collect::<UInt32Array>()) as ArrayRef).collect();
        added.push(Arc::new(results.values.iter().map(|f| Some(f.crop.as_slice())).collect::<BinaryArray>()));
        added.push(Arc::new(results.values.iter().map(|f| Some(f.raw.as_str())).collect::<StringArray>()));
        Ok(PartitionOutput { rows: with_added(&self.schema, &results.kept(input)?, added)?, errors: results.errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_qwen_grounding_answers() {
        let qwen = "```json\n[\n  {\"bbox_2d\": [12, 30, 140, 200], \"label\": \"cat\"}\n]\n```";
        assert_eq!(first_box(qwen).unwrap(), [12.0, 30.0, 140.0, 200.0]);
        assert_eq!(first_box(r#"{"bbox": [0.1, 0.2, 0.5, 0.6]}"#).unwrap(), [0.1, 0.2, 0.5, 0.6]);
        assert!(first_box("I see no cat.").is_err());
        assert!(first_box(r#"[{"bbox_2d": [1, 2, 3]}]"#).is_err());
    }
}
