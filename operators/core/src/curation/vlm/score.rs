//! `vlm_score`: UNO's second filter (uno-method §5.5, the paper's Fig. 14): a three-round
//! chain of thought in one conversation: describe both images and break the subject into parts,
//! compare each part in detail, score each part 0–4; the final score is the mean.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Float64Array, Int32Builder, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{Value, json};

use super::client::ChatClient;
use super::{ConnectionParams, ImageSendParams, image_part, in_parallel, parse};
use crate::Result;
use crate::columns::ColumnRequirement;
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params};
use crate::rows::{RowResults, binary, bytes_at, extend_schema, row_ids, text, with_added};

/// The `vlm_score` operator.
#[derive(Debug, Clone, Copy)]
pub struct VlmScore;

/// The system prompt, verbatim from the paper.
pub const SYSTEM: &str =
    "You are an expert AI assistant specializing in the objective evaluation of the consistency of subjects in two images.";

/// What to ignore, in every round (the paper's instructions).
const IGNORE: &str = "Ignore differences in background, pose, viewpoint, lighting and extra accessories; \
                      text written on the subject counts as a part of its own.";

/// Round 1: describe and break down.
pub fn step1(subject: Option<&str>) -> String {
    let named = subject.map(|s| format!(" The subject is: {s}.")).unwrap_or_default();
    format!(
        "Step 1: The first image is the reference, the second the target.{named} Describe both images and identify the \
         subject they share, then break the subject down into its parts (shape, colours, materials, patterns, logos, \
         text, distinctive details). {IGNORE} Answer in the form:\n[subject]: …\n[caption1]: …\n[caption2]: …\n\
         [Break down]: part 1; part 2; …"
    )
}

/// Round 2: compare.
pub const STEP2: &str = "Step 2: Compare each part of the subject between the two images in extreme detail, \
                         quantitatively where you can (sizes, counts, colours, positions of details). Ignore differences \
                         in background, pose, viewpoint, lighting and extra accessories.";

/// Round 3: score.
pub const STEP3: &str = "Step 3: Score each part with an integer from 0 to 4: Very Poor (0): no resemblance; Poor (1): \
                         minimal resemblance; Fair (2): moderate resemblance; Good (3): minor but noticeable \
                         differences; Excellent (4): near-identical. Output one line per part as [Part i]: [score], \
                         or JSON {\"parts\": [{\"part\": name, \"score\": integer}]}.";

/// The JSON schema of the step-3 answer, for servers with structured output.
fn step3_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"parts": {"type": "array", "items": {
            "type": "object",
            "properties": {"part": {"type": "string"}, "score": {"type": "integer", "minimum": 0, "maximum": 4}},
            "required": ["part", "score"], "additionalProperties": false}}},
        "required": ["parts"], "additionalProperties": false
    })
}

crate::params! {
    /// `vlm_score`'s own parameters.
    pub struct VlmScoreParams {
        /// the reference image column
        pub left: String = optional(ParamType::Str, "ref_image"),
        /// the target image column
        pub right: String = optional(ParamType::Str, "target_image"),
        /// a column naming the subject, given to the model in step 1 (empty: the model finds it)
        pub subject: Option<String> = optional(ParamType::Str, ""),
    }
}

/// A configured `vlm_score` node: its own parameters, the connection's and the images'.
#[derive(Debug)]
pub struct VlmScoreConfig {
    params: VlmScoreParams,
    connection: ConnectionParams,
    images: ImageSendParams,
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "vlm_score",
    version: 1,
    summary: "UNO's VLM chain-of-thought consistency score (3 rounds: describe, compare, score parts 0–4; mean)",
    doc: "Asks a vision-language model, through the OpenAI-compatible chat completions API, the \
          paper's three rounds in one conversation: describe both images and break the \
          subject into parts; compare each part in detail; score each part 0–4. The final \
          score is the mean of the part scores (the paper keeps score 4; UNO-1M advises ≥ 3.5). \
          Step 3 asks for JSON-schema structured output where the server accepts it and is \
          parsed tolerantly where not. Answers are cached in the workspace by request digest, \
          so a rerun sends no request it has an answer for; rows whose requests fail after \
          retries, or whose answers carry no scores, go to the error table. Adds vlm_parts, \
          vlm_part_scores, vlm_score, vlm_reasoning (rounds 1–2), vlm_model, vlm_raw (JSON of \
          the three answers).",
    params: [VlmScoreParams::specs(), ConnectionParams::specs(), ImageSendParams::specs()].concat(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: 64,
    device_dependence: DeviceDependence::Independent,
});

fn added_fields() -> Vec<Field> {
    vec![
        Field::new("vlm_parts", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
        Field::new("vlm_part_scores", DataType::List(Arc::new(Field::new("item", DataType::Int32, true))), false),
        Field::new("vlm_score", DataType::Float64, false),
        Field::new("vlm_reasoning", DataType::Utf8, false),
        Field::new("vlm_model", DataType::Utf8, false),
        Field::new("vlm_raw", DataType::Utf8, false),
    ]
}

impl Operator for VlmScore {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let connection = ConnectionParams::parse(params)?;
        connection.endpoint()?;
        Ok(Arc::new(VlmScoreConfig { params: VlmScoreParams::parse(params)?, connection, images: ImageSendParams::parse(params)? }))
    }
}

impl Configured for VlmScoreConfig {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let p = &self.params;
        let mut needed = vec![ColumnRequirement::image(&p.left), ColumnRequirement::image(&p.right)];
        needed.extend(p.subject.as_deref().map(ColumnRequirement::text));
        vec![needed]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(extend_schema(&inputs[0], added_fields()))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let p = &self.params;
        Ok(Arc::new(Scorer {
            client: self.connection.client(env)?,
            left: p.left.clone(),
            right: p.right.clone(),
            subject: p.subject.clone(),
            concurrency: self.connection.concurrency,
            image_max_side: self.images.image_max_side,
            max_pixels: env.max_image_pixels.pixels(),
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Scorer {
    client: ChatClient,
    left: String,
    right: String,
    subject: Option<String>,
    concurrency: usize,
    image_max_side: u32,
    /// The largest image decoded.
    max_pixels: u64,
    schema: SchemaRef,
}

/// One row's verdict.
struct Scored {
    parts: Vec<(String, i32)>,
    reasoning: String,
    raw: String,
}

impl Scored {
    fn mean(&self) -> f64 {
        self.parts.iter().map(|(_, s)| *s as f64).sum::<f64>() / self.parts.len() as f64
    }
}

impl Scorer {
    /// The three rounds for one pair of images.
    fn score(&self, reference: &[u8], target: &[u8], subject: Option<&str>) -> std::result::Result<Scored, String> {
        let (side, max) = (self.image_max_side, self.max_pixels);
        let images = [image_part(reference, side, max)?, image_part(target, side, max)?];
        let mut first = images.to_vec();
        first.push(json!({"type": "text", "text": step1(subject)}));
        let mut messages = vec![json!({"role": "system", "content": SYSTEM}), json!({"role": "user", "content": first})];
        let mut answers = Vec::with_capacity(3);
        for (round, next) in [Some(STEP2), Some(STEP3), None].into_iter().enumerate() {
            let schema = (round == 2).then(step3_schema);
            let answer = self.client.complete(&messages, schema.as_ref()).map_err(|e| format!("round {}: {e}", round + 1))?.content;
            messages.push(json!({"role": "assistant", "content": answer}));
            answers.push(answer);
            if let Some(next) = next {
                messages.push(json!({"role": "user", "content": next}));
            }
        }
        let parts = parse::part_scores(&answers[2]).map_err(|e| format!("round 3: {e}"))?;
        Ok(Scored { parts, reasoning: format!("{}\n\n{}", answers[0], answers[1]), raw: Value::from(answers).to_string() })
    }
}

impl PartitionProcessor for Scorer {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let (lefts, rights) = (binary(input, &self.left)?, binary(input, &self.right)?);
        let subjects: Option<StringArray> = self.subject.as_deref().map(|s| text(input, s)).transpose()?;
        let results = in_parallel(input.num_rows(), self.concurrency, |row| {
            if ctx.is_cancelled() {
                return Err("cancelled".to_string());
            }
            let subject = subjects.as_ref().map(|s| s.value(row)).filter(|s| !s.is_empty());
            self.score(bytes_at(&lefts, &self.left, row)?, bytes_at(&rights, &self.right, row)?, subject)
        });
        if ctx.is_cancelled() {
            return Err(crate::OpError::Execution("cancelled".into()));
        }
        let results = RowResults::split(ids, results);
        let mut names = ListBuilder::new(StringBuilder::new());
        let mut scores = ListBuilder::new(Int32Builder::new());
        for scored in &results.values {
            for (name, score) in &scored.parts {
                names.values().append_value(name);
                scores.values().append_value(*score);
            }
            names.append(true);
            scores.append(true);
        }
        let n = results.values.len();
        let added: Vec<ArrayRef> = vec![
            Arc::new(names.finish()),
            Arc::new(scores.finish()),
            Arc::new(results.values.iter().map(|s| Some(s.mean())).collect::<Float64Array>()),
            Arc::new(results.values.iter().map(|s| Some(s.reasoning.as_str())).collect::<StringArray>()),
            Arc::new(StringArray::from(vec![self.client.model(); n])),
            Arc::new(results.values.iter().map(|s| Some(s.raw.as_str())).collect::<StringArray>()),
        ];
        Ok(PartitionOutput { rows: with_added(&self.schema, &results.kept(input)?, added)?, errors: results.errors })
    }
}
