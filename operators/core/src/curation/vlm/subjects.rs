//! `llm_subjects`: the taxonomy step of UNO's data pipeline (uno-method §5.1, the paper's Figs.
//! 12–13) through the same chat API as the VLM operators: for each category, subject instances
//! in the paper's three styles, then scene descriptions for each subject.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::json;

use super::client::ChatClient;
use super::{ConnectionParams, in_parallel};
use crate::columns::ColumnRequirement;
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{Choice, ParamType, Params};
use crate::rowid::RowIdHasher;
use crate::rows::{RowResults, derived, derived_schema, row_ids, text};
use crate::{OpError, Result};

/// The `llm_subjects` operator.
#[derive(Debug, Clone, Copy)]
pub struct LlmSubjects;

crate::choice! {
    /// The paper's three subject styles.
    pub enum Style {
        Creative = "creative",
        Realistic = "realistic",
        TextDecorated = "text_decorated",
    }
}

/// The paper's "empty background" scene (Fig. 10).
pub const EMPTY_BACKGROUND: &str = "a white background, a pure background, shot in a studio, very detailed";

/// The instruction for `n` subjects of `category` in `style` (Fig. 12).
pub fn subjects_prompt(category: &str, style: Style, n: usize) -> String {
    let style_rule = match style {
        Style::Creative => "Please be very creative.",
        Style::Realistic => "It has to be something that can exist in the real world.",
        Style::TextDecorated => "Please add a text description in the brief subject: words printed, written or engraved on it, in quotes.",
    };
    format!(
        "Please generate {n} brief subject prompts for the category \"{category}\". {style_rule} Each prompt describes one \
         subject in at most 12 words. Write one prompt per line, with no numbering and nothing else."
    )
}

/// The instruction for `n` scenes of `subject` (Fig. 13).
pub fn scenes_prompt(subject: &str, n: usize) -> String {
    format!(
        "Write {n} scene descriptions in which \"{subject}\" could be photographed: creative environments, with the camera \
         view and the lighting. Each description is one line of fewer than 77 tokens that reads naturally after the word \
         \"in\". Write one description per line, with no numbering and nothing else."
    )
}

/// The items of a list answer: one per line, numbering, bullets and quotes removed.
pub fn list_items(answer: &str, limit: usize) -> Vec<String> {
    answer
        .lines()
        .map(|l| {
            let l = l.trim();
            // "12. x" and "12) x" are numbering; "3D-printed x" is not.
            let digits = l.len() - l.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let l = match l[digits..].chars().next() {
                Some('.' | ')') if digits > 0 => &l[digits + 1..],
                _ => l,
            };
            let l = l.trim_start_matches(|c: char| matches!(c, '-' | '*' | '•') || c.is_whitespace());
            l.trim().trim_matches('"').trim_end_matches('.').trim().to_string()
        })
        .filter(|l| !l.is_empty() && !l.ends_with(':') && !l.starts_with("```"))
        .take(limit)
        .collect()
}

crate::params! {
    /// `llm_subjects`' own parameters.
    pub struct LlmSubjectsParams {
        /// the category column
        pub category: String = optional(ParamType::Str, "category"),
        /// subject styles: creative, realistic, text_decorated
        pub styles: Vec<String> = optional(ParamType::StrList, Style::NAMES),
        /// subjects per category and style (paper: 50)
        pub subjects_per_style: usize = optional(ParamType::int(1, 1000), 50),
        /// scenes per subject (paper: 8)
        pub scenes_per_subject: usize = optional(ParamType::int(2, 100), 8),
        /// also give every subject the paper's empty-background scene
        pub empty_background: bool = optional(ParamType::Bool, true),
    }
}

/// A configured `llm_subjects` node: its own parameters and the connection's (it sends no
/// images).
#[derive(Debug)]
pub struct LlmSubjectsConfig {
    params: LlmSubjectsParams,
    connection: ConnectionParams,
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "llm_subjects",
    version: 1,
    summary: "subjects in the paper's three styles and scenes for each, from an LLM (UNO's taxonomy step)",
    doc: "For each category row, asks the model (OpenAI-compatible chat API) for \
          `subjects_per_style` brief subjects in each style (the paper's Fig. 12 \
          instructions), then for `scenes_per_subject` scene descriptions of each subject \
          (Fig. 13). Output: one row per subject with category, style, subject, scenes and \
          llm_model, ready for diptych_prompts. Same retries, cache and per-row errors as \
          vlm_score.",
    params: [LlmSubjectsParams::specs(), ConnectionParams::specs()].concat(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Derive,
    partition_rows: 8,
    device_dependence: DeviceDependence::Independent,
});

fn added_fields() -> Vec<Field> {
    vec![
        Field::new("style", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("scenes", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
        Field::new("llm_model", DataType::Utf8, false),
    ]
}

impl Operator for LlmSubjects {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let connection = ConnectionParams::parse(params)?;
        connection.endpoint()?;
        Ok(Arc::new(LlmSubjectsConfig { params: LlmSubjectsParams::parse(params)?, connection }))
    }
}

impl Configured for LlmSubjectsConfig {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![vec![ColumnRequirement::text(&self.params.category)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(derived_schema(&inputs[0], &[], added_fields()))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let p = &self.params;
        let styles = p
            .styles
            .iter()
            .map(|s| {
                s.parse::<Style>()
                    .map_err(|_| OpError::Param { name: "styles".into(), message: format!("{s:?} is not one of {:?}", Style::NAMES) })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Taxonomist {
            client: self.connection.client(env)?,
            category: p.category.clone(),
            styles,
            subjects: p.subjects_per_style,
            scenes: p.scenes_per_subject,
            empty_background: p.empty_background,
            concurrency: self.connection.concurrency,
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Taxonomist {
    client: ChatClient,
    category: String,
    styles: Vec<Style>,
    subjects: usize,
    scenes: usize,
    empty_background: bool,
    concurrency: usize,
    schema: SchemaRef,
}

/// One generated subject.
struct Subject {
    style: Style,
    text: String,
    scenes: Vec<String>,
}

impl Taxonomist {
    fn ask(&self, prompt: String) -> std::result::Result<String, String> {
        let messages = [json!({"role": "user", "content": prompt})];
        self.client.complete(&messages, None).map(|c| c.content).map_err(|e| e.to_string())
    }

    /// Every subject of one category, with its scenes.
    fn category(&self, category: &str) -> std::result::Result<Vec<Subject>, String> {
        let per_style = in_parallel(self.styles.len(), self.concurrency, |i| {
            let answer = self.ask(subjects_prompt(category, self.styles[i], self.subjects))?;
            // The paper's subjects have at most 12 words; longer lines are the model talking.
            let items: Vec<String> =
                list_items(&answer, usize::MAX).into_iter().filter(|s| s.split_whitespace().count() <= 12).take(self.subjects).collect();
            if items.is_empty() {
                return Err(format!("no {} subjects in the answer: {:?}", self.styles[i], super::client::clip(&answer, 200)));
            }
            Ok(items.into_iter().map(|text| (self.styles[i], text)).collect::<Vec<_>>())
        });
        let named: Vec<(Style, String)> =
            per_style.into_iter().collect::<std::result::Result<Vec<_>, _>>()?.into_iter().flatten().collect();
        let scenes = in_parallel(named.len(), self.concurrency, |i| {
            let answer = self.ask(scenes_prompt(&named[i].1, self.scenes))?;
            let mut scenes = list_items(&answer, self.scenes);
            if scenes.len() < 2 {
                return Err(format!("fewer than 2 scenes for {:?} in the answer: {:?}", named[i].1, super::client::clip(&answer, 200)));
            }
            if self.empty_background {
                scenes.push(EMPTY_BACKGROUND.to_string());
            }
            Ok(scenes)
        });
        named.into_iter().zip(scenes).map(|((style, text), scenes)| Ok(Subject { style, text, scenes: scenes? })).collect()
    }
}

impl PartitionProcessor for Taxonomist {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let categories = text(input, &self.category)?;
        let mut results = Vec::with_capacity(input.num_rows());
        for row in 0..input.num_rows() {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            results.push(self.category(categories.value(row)));
        }
        let results = RowResults::split(ids, results);
        let (mut sources, mut new_ids, mut styles, mut subjects) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut scenes = ListBuilder::new(StringBuilder::new());
        for (row, found) in results.kept_rows().zip(&results.values) {
            for subject in found {
                sources.push(row as u32);
                new_ids.push(
                    RowIdHasher::new("llm_subjects")
                        .field(ids.value(row).as_bytes())
                        .field(subject.style.name().as_bytes())
                        .field(subject.text.as_bytes())
                        .finish(),
                );
                styles.push(subject.style.name());
                subjects.push(subject.text.clone());
                for scene in &subject.scenes {
                    scenes.values().append_value(scene);
                }
                scenes.append(true);
            }
        }
        let n = subjects.len();
        let added: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(styles)),
            Arc::new(StringArray::from(subjects)),
            Arc::new(scenes.finish()),
            Arc::new(StringArray::from(vec![self.client.model(); n])),
        ];
        Ok(PartitionOutput { rows: derived(&self.schema, input, &sources, new_ids, added)?, errors: results.errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers_lose_numbering_bullets_and_headers() {
        let answer = "Here are the subjects:\n1. a red mug\n2) \"a blue cup\"\n- a tin cup.\n\n* a glass\n3D-printed vase";
        assert_eq!(list_items(answer, 10), ["a red mug", "a blue cup", "a tin cup", "a glass", "3D-printed vase"]);
        assert_eq!(list_items(answer, 2), ["a red mug", "a blue cup"]);
    }
}
