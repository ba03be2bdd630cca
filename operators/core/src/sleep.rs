//! `sleep`: passes its rows through after a fixed time per row. It stands in for a model whose
//! time per row is known (a FLUX step on a GPU) in scheduling tests and benchmarks: what they
//! measure is the engine's overhead around the work, not the work.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow::array::{ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::columns::ColumnRequirement;
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params};
use crate::rows::{extend_schema, with_added};
use crate::{OpError, Result};

/// The `sleep` operator.
#[derive(Debug, Clone, Copy)]
pub struct Sleep;

crate::params! {
    /// `sleep`'s parameters.
    pub struct SleepParams {
        /// milliseconds spent on each row
        pub ms: u64 = optional(ParamType::int(0, 3_600_000), 100i64),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "sleep",
    version: 1,
    summary: "pass rows through after `ms` milliseconds per row (a stand-in for a model, for tests and benchmarks)",
    doc: "Each unit is one row, and it takes `ms` milliseconds, like a GPU model whose time per row is known; the rows come \
          out unchanged with a `slept_ms` column. Used to measure scheduling (workers, leases, commits) without a model.",
    params: SleepParams::specs(),
    inputs: (1, 1),
    resource: Resource::Gpu,
    mapping: RowMapping::Preserve,
    partition_rows: 1,
    device_dependence: DeviceDependence::Independent,
});

impl Operator for Sleep {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(SleepParams::parse(params)?))
    }
}

impl Configured for SleepParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![Vec::new()]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(extend_schema(&inputs[0], vec![Field::new("slept_ms", DataType::UInt64, false)]))
    }

    fn prepare(&self, _env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        Ok(Arc::new(Sleeper { ms: self.ms, schema: self.output_schema(&[Arc::clone(input_schema)])? }))
    }
}

struct Sleeper {
    ms: u64,
    schema: SchemaRef,
}

impl PartitionProcessor for Sleeper {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        for _ in 0..input.num_rows() {
            if ctx.is_cancelled() {
                return Err(OpError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.ms));
        }
        let slept: ArrayRef = Arc::new(UInt64Array::from(vec![self.ms; input.num_rows()]));
        Ok(PartitionOutput { rows: with_added(&self.schema, input, vec![slept])?, errors: Vec::new() })
    }
}
