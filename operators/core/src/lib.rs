//! unoflow's compute layer: the contract between the engine and the operators, and the operators
//! themselves.
//!
//! An operator turns one partition of input rows (an Arrow [`RecordBatch`]) into output rows. It
//! knows nothing of DAG files, workspaces or scheduling: the engine reads the DAG, validates each
//! node's parameters against the operator's [`OpSpec`], checks column requirements against the
//! producer's schema, splits the input into partitions, calls [`Operator::process`] for each one
//! and commits the results.
//!
//! ```text
//!   OpSpec ──► engine validation (params, columns, schemas) ──► plan
//!   Operator::process(partition) ──► PartitionOutput { rows, errors } ──► atomic commit
//! ```
//!
//! [`RecordBatch`]: arrow::record_batch::RecordBatch

pub mod columns;
pub mod curation;
pub mod draws;
pub mod embed;
mod error;
pub mod evaluate;
pub mod generate;
pub mod image_io;
pub mod image_similarity;
pub mod metrics;
mod operator;
pub mod params;
pub mod preprocess;
pub mod rowid;
pub mod rows;
pub mod thumbnail;
pub mod training;

pub use error::{OpError, Result};
pub use operator::{Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowError, RowMapping};
pub use params::{ParamSpec, ParamType, ParamValue, Params};

/// Every operator this crate provides, in the order `unoflow ops` lists them.
pub fn builtin_operators() -> Vec<std::sync::Arc<dyn Operator>> {
    use std::sync::Arc;
    vec![
        Arc::new(thumbnail::Thumbnail),
        Arc::new(image_similarity::ImageSimilarity),
        Arc::new(curation::vlm::subjects::LlmSubjects),
        Arc::new(curation::diptych_prompts::DiptychPrompts),
        Arc::new(curation::incontext_generate::IncontextGenerate),
        Arc::new(curation::split_diptych::SplitDiptych),
        Arc::new(curation::dino_filter::DinoFilter),
        Arc::new(curation::vlm::score::VlmScore),
        Arc::new(curation::vlm::detect::VlmDetect),
        Arc::new(training::train_lora::TrainLora),
        Arc::new(training::regenerate_ref::RegenerateRef),
        Arc::new(evaluate::Evaluate),
    ]
}
