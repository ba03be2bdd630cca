//! `diptych_prompts`: subjects and their scenes → in-context diptych prompts, with the paper's
//! two templates verbatim (uno-method §5.2).

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::columns::{ColumnRequirement, HEIGHT, WIDTH};
use crate::draws::Draws;
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{Choice, FromParam, ParamType, ParamValue, Params, PathKind};
use crate::rowid::RowIdHasher;
use crate::rows::{RowResults, derived, derived_schema, row_ids, text};
use crate::{OpError, Result};

/// The `diptych_prompts` operator.
#[derive(Debug, Clone, Copy)]
pub struct DiptychPrompts;

crate::choice! {
    /// How the two panels of a diptych sit, as the `layout` column spells it.
    pub enum Layout {
        /// Template 1: reference left, target right.
        LeftRight = "left_right",
        /// Template 2: reference top, target bottom.
        TopBottom = "top_bottom",
    }
}

impl Layout {
    /// The paper's template (Fig. 11), verbatim.
    pub fn prompt(self, subject1: &str, subject2: &str, scene1: &str, scene2: &str) -> String {
        let (first, second) = match self {
            Self::LeftRight => ("Left", "Right"),
            Self::TopBottom => ("Top", "Bottom"),
        };
        format!(
            "A diptych with two side-by-side images of same {subject1}. {first}: {subject1} in {scene1}. \
             {second}: {subject1} together with {subject2} in {scene2}."
        )
    }
}

/// A diptych size `W×H` (the whole image, both panels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

impl Resolution {
    /// Parses `"1024x768"`; both sides positive multiples of 32, so each panel is a multiple of 16.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (w, h) = text.split_once(['x', '×']).ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT (e.g. \"1024x768\")"))?;
        let side = |s: &str| s.trim().parse::<u32>().ok().filter(|v| *v > 0 && v % 32 == 0);
        match (side(w), side(h)) {
            (Some(width), Some(height)) => Ok(Self { width, height }),
            _ => Err(format!("{text:?}: both sides must be positive multiples of 32 (each panel then is a multiple of 16)")),
        }
    }

    /// The layout that keeps panels closest to square: side by side for landscape, stacked for
    /// portrait; square diptychs take either.
    fn layout(self, draws: &mut Draws) -> Layout {
        match self.width.cmp(&self.height) {
            std::cmp::Ordering::Greater => Layout::LeftRight,
            std::cmp::Ordering::Less => Layout::TopBottom,
            std::cmp::Ordering::Equal => [Layout::LeftRight, Layout::TopBottom][draws.below(2)],
        }
    }
}

/// The `resolutions` parameter: the diptych sizes to draw from, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolutions(pub Vec<Resolution>);

/// Read when the node is configured, so a bad size fails validation naming `resolutions`.
impl FromParam for Resolutions {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        let list = Vec::<String>::from_param(value)?;
        if list.is_empty() {
            return Err("give at least one size, e.g. [\"1024x1024\"]".into());
        }
        list.iter().map(|r| Resolution::parse(r)).collect::<std::result::Result<_, _>>().map(Self)
    }
}

crate::params! {
    /// `diptych_prompts`' parameters.
    pub struct DiptychPromptsParams {
        /// text file, one second subject per line (`#` comments), e.g. datasets/objects365_classes.txt
        pub companions: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// the subject column
        pub subject: String = optional(ParamType::Str, "subject"),
        /// the scenes column (a list of strings)
        pub scenes: String = optional(ParamType::Str, "scenes"),
        /// prompts drawn per subject
        pub prompts_per_subject: usize = optional(ParamType::int(1, 10_000), 1),
        /// diptych sizes WIDTHxHEIGHT to draw from (the paper's three by default)
        pub resolutions: Resolutions = optional(ParamType::StrList, ["1024x1024", "1024x768", "768x1024"]),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "diptych_prompts",
    version: 1,
    summary: "subjects × scenes → in-context diptych prompts (UNO's two templates, three resolutions)",
    doc: "For each subject row (a `subject` and its `scenes`, as the taxonomy step writes them), \
          draws `prompts_per_subject` prompts: two different scenes of the subject, a second \
          subject from the `companions` file, a resolution from `resolutions`, and the layout it \
          suits (left/right for landscape, top/bottom for portrait, either for square). The \
          prompt is the paper's Template 1 or 2 verbatim. Draws depend on the DAG seed and the \
          subject's row id only. Output: one row per prompt with subject1, subject2, scene1, \
          scene2, layout, width, height, prompt; the subject row's other columns are kept.",
    params: DiptychPromptsParams::specs(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Derive,
    partition_rows: 4096,
    device_dependence: DeviceDependence::Independent,
});

fn added_fields() -> Vec<Field> {
    let mut fields: Vec<Field> =
        ["subject1", "subject2", "scene1", "scene2", "layout"].iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect();
    fields.push(Field::new(WIDTH, DataType::UInt32, false));
    fields.push(Field::new(HEIGHT, DataType::UInt32, false));
    fields.push(Field::new("prompt", DataType::Utf8, false));
    fields
}

impl Operator for DiptychPrompts {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(DiptychPromptsParams::parse(params)?))
    }
}

impl Configured for DiptychPromptsParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let scenes = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
        let scenes_large = DataType::LargeList(Arc::new(Field::new("item", DataType::Utf8, true)));
        vec![vec![
            ColumnRequirement::text(&self.subject),
            ColumnRequirement { name: self.scenes.clone(), types: vec![scenes, scenes_large] },
        ]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(derived_schema(&inputs[0], &[&self.subject, &self.scenes], added_fields()))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let path = self.companions.display();
        let text = std::fs::read_to_string(&self.companions)
            .map_err(|e| OpError::Param { name: "companions".into(), message: format!("cannot read {path}: {e}") })?;
        let companions: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
        if companions.is_empty() {
            return Err(OpError::Param { name: "companions".into(), message: format!("{path} lists no subjects (one per line)") });
        }
        Ok(Arc::new(PromptMaker {
            companions,
            subject: self.subject.clone(),
            scenes: self.scenes.clone(),
            per_subject: self.prompts_per_subject,
            resolutions: self.resolutions.0.clone(),
            seed: env.seed,
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct PromptMaker {
    companions: Vec<String>,
    subject: String,
    scenes: String,
    per_subject: usize,
    resolutions: Vec<Resolution>,
    seed: u64,
    schema: SchemaRef,
}

/// One drawn prompt.
struct Drawn {
    subject2: String,
    scene1: String,
    scene2: String,
    layout: Layout,
    size: Resolution,
}

impl PromptMaker {
    fn draw(&self, row_id: &str, subject: &str, scenes: &[String], k: usize) -> std::result::Result<Drawn, String> {
        if scenes.len() < 2 {
            return Err(format!("subject {subject:?} has {} scene(s); a diptych needs two different scenes", scenes.len()));
        }
        let mut draws = Draws::new(self.seed, "diptych_prompts", &[row_id.as_bytes(), &(k as u64).to_le_bytes()]);
        let first = draws.below(scenes.len());
        let second = (first + 1 + draws.below(scenes.len() - 1)) % scenes.len();
        let others: Vec<&String> = self.companions.iter().filter(|c| !c.eq_ignore_ascii_case(subject)).collect();
        let subject2 = others.get(draws.below(others.len().max(1))).ok_or("the companions file lists only this subject")?;
        let size = self.resolutions[draws.below(self.resolutions.len())];
        Ok(Drawn {
            subject2: subject2.to_string(),
            scene1: scenes[first].clone(),
            scene2: scenes[second].clone(),
            layout: size.layout(&mut draws),
            size,
        })
    }
}

impl PartitionProcessor for PromptMaker {
    fn process(&self, _ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let subjects = text(input, &self.subject)?;
        let scene_lists = arrow::compute::cast(
            crate::rows::column(input, &self.scenes)?,
            &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        )?;
        let scene_lists = scene_lists.as_list::<i32>();
        let per_row = (0..input.num_rows()).map(|row| -> std::result::Result<(String, Vec<Drawn>), String> {
            if subjects.is_null(row) || subjects.value(row).trim().is_empty() {
                return Err(format!("`{}` is empty", self.subject));
            }
            let subject = subjects.value(row).trim().to_string();
            let scenes: Vec<String> = if scene_lists.is_null(row) {
                Vec::new()
            } else {
                let list = scene_lists.value(row);
                let list = list.as_string::<i32>();
                list.iter().flatten().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
            };
            let drawn =
                (0..self.per_subject).map(|k| self.draw(ids.value(row), &subject, &scenes, k)).collect::<std::result::Result<_, _>>()?;
            Ok((subject, drawn))
        });
        let results = RowResults::split(ids, per_row);
        let mut sources = Vec::new();
        let mut new_ids = Vec::new();
        let mut columns: [Vec<String>; 6] = Default::default();
        let (mut widths, mut heights) = (Vec::new(), Vec::new());
        for (row, (subject, drawn)) in results.kept_rows().zip(&results.values) {
            for (k, d) in drawn.iter().enumerate() {
                sources.push(row as u32);
                new_ids
                    .push(RowIdHasher::new("diptych_prompts").field(ids.value(row).as_bytes()).field(&(k as u64).to_le_bytes()).finish());
                let prompt = d.layout.prompt(subject, &d.subject2, &d.scene1, &d.scene2);
                for (col, value) in columns.iter_mut().zip([subject, &d.subject2, &d.scene1, &d.scene2, d.layout.name(), &prompt]) {
                    col.push(value.to_string());
                }
                widths.push(d.size.width);
                heights.push(d.size.height);
            }
        }
        let [s1, s2, sc1, sc2, layout, prompt] = columns.map(|c| Arc::new(StringArray::from(c)) as ArrayRef);
        let added = vec![s1, s2, sc1, sc2, layout, Arc::new(UInt32Array::from(widths)), Arc::new(UInt32Array::from(heights)), prompt];
        Ok(PartitionOutput { rows: derived(&self.schema, input, &sources, new_ids, added)?, errors: results.errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_the_papers() {
        assert_eq!(
            Layout::LeftRight.prompt("a red mug", "a cat", "a kitchen", "a garden"),
            "A diptych with two side-by-side images of same a red mug. Left: a red mug in a kitchen. \
             Right: a red mug together with a cat in a garden."
        );
        assert!(Layout::TopBottom.prompt("s", "t", "x", "y").contains(". Top: s in x. Bottom: s together with t in y."));
    }

    #[test]
    fn resolutions_parse_and_reject() {
        assert_eq!(Resolution::parse("1024x768"), Ok(Resolution { width: 1024, height: 768 }));
        assert!(Resolution::parse("1000x768").is_err());
        assert!(Resolution::parse("1024").is_err());
    }
}
