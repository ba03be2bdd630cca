//! A program with unoflow's whole command line and one operator of its own, written in Rust:
//! `word_count` adds the number of words of a text column. The third way to bring an operator,
//! beside `op = "python"` and `op = "command"`, for code that should run in-process.
//!
//! ```sh
//! cargo run --example own_operator -- ops word_count
//! cargo run --example own_operator -- run my-dag.toml      # a DAG with `op = "word_count"`
//! ```
//!
//! The operator implements `unoflow_api::Operator` (the contract crate: no engine, no burn);
//! the engine validates its parameters, plans, partitions, caches, resumes and queries it with
//! no further code.

use std::sync::{Arc, LazyLock};

use clap::Parser;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use unoflow_api::columns::ColumnRequirement;
use unoflow_api::params::ParamType;
use unoflow_api::rows::{extend_schema, text, with_added};
use unoflow_api::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, Params, PartitionOutput, PartitionProcessor, Resource,
    RowMapping,
};

unoflow_api::params! {
    /// `word_count`'s parameters.
    pub struct WordCountParams {
        /// the text column whose words are counted
        pub column: String = optional(ParamType::Str, "caption"),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "word_count",
    version: 1,
    summary: "add `words`: the number of whitespace-separated words of a text column",
    doc: "An example of an operator compiled into a program of one's own (examples/own_operator.rs).",
    params: WordCountParams::specs(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: 1024,
    device_dependence: DeviceDependence::Independent,
});

#[derive(Debug)]
struct WordCount;

impl Operator for WordCount {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> unoflow_api::Result<Arc<dyn Configured>> {
        Ok(Arc::new(WordCountParams::parse(params)?))
    }
}

fn words_field() -> Field {
    Field::new("words", DataType::UInt32, true)
}

impl Configured for WordCountParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![vec![ColumnRequirement::text(&self.column)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> unoflow_api::Result<SchemaRef> {
        Ok(extend_schema(&inputs[0], vec![words_field()]))
    }

    fn prepare(&self, _env: &Environment, input: &SchemaRef) -> unoflow_api::Result<Arc<dyn PartitionProcessor>> {
        Ok(Arc::new(Counter { column: self.column.clone(), schema: extend_schema(input, vec![words_field()]) }))
    }
}

struct Counter {
    column: String,
    schema: SchemaRef,
}

impl PartitionProcessor for Counter {
    fn process(&self, _ctx: &ExecContext, input: &RecordBatch) -> unoflow_api::Result<PartitionOutput> {
        let texts = text(input, &self.column)?;
        let words: UInt32Array = texts.iter().map(|t| t.map(|t| t.split_whitespace().count() as u32)).collect();
        Ok(PartitionOutput { rows: with_added(&self.schema, input, vec![Arc::new(words) as ArrayRef])?, errors: Vec::new() })
    }
}

fn main() {
    let cli = unoflow::cli::Cli::parse();
    let registry = match unoflow::builtin_registry().with(Arc::new(WordCount)) {
        Ok(registry) => registry,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("an async runtime");
    let code = runtime.block_on(unoflow::cli::main_with(cli, unoflow::interrupt::Interrupt::new(), registry)).unwrap_or_else(|e| {
        match &e {
            // A DAG file's problems are rendered with their places in the file.
            unoflow::Error::Spec(_) => eprintln!("{e}"),
            _ => eprintln!("error: {e}"),
        }
        e.exit_code()
    });
    std::process::exit(code);
}
