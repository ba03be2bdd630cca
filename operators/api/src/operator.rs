//! The [`Operator`] trait: the one seam between the engine and the compute layer.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::Result;
use crate::columns::ColumnRequirement;
use crate::params::{ParamSpec, Params};

/// Which scarce resource an operator occupies while it runs. The engine runs at most one `Gpu`
/// node per device at a time and shares the CPU cores among the partitions of `Cpu` nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Cpu,
    Gpu,
}

/// How output rows relate to input rows; it decides how lineage walks back from a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowMapping {
    /// Each output row is an input row with columns changed or added; it keeps its `row_id`.
    Preserve,
    /// Output rows are new rows; each carries the ids of its input rows in `parent_ids`.
    Derive,
}

/// Whether an operator's output bytes depend on the device it runs on.
///
/// Models compute in another precision on a GPU (bf16) than on the CPU (f32), and even at one
/// precision the kernels of another device sum in another order: a CPU output reused by a CUDA
/// run (or the other way) would be another result under the same fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceDependence {
    /// The same bytes on every device (image processing, SQL, a remote service's answers).
    Independent,
    /// Runs models: the device class and precision ([`crate::Device::compute_class`]) enter
    /// the fingerprint.
    ClassAndPrecision,
}

/// What an operator declares about itself. `unoflow ops` prints it; validation checks DAG nodes
/// against it.
#[derive(Debug, Clone)]
pub struct OpSpec {
    /// The name DAG files use in `op = "…"`.
    pub name: &'static str,
    /// Bumped whenever the operator's output for the same input and parameters changes; part of
    /// every fingerprint, so a bump recomputes the nodes that use the operator. For the
    /// model-running operators the integration test `operator_outputs` fails when their bytes
    /// change without a bump.
    pub version: u32,
    /// One line for listings.
    pub summary: &'static str,
    /// Longer help for `unoflow ops NAME`.
    pub doc: &'static str,
    pub params: Vec<ParamSpec>,
    /// How many inputs the node takes: `min..=max`.
    pub inputs: (usize, usize),
    pub resource: Resource,
    pub mapping: RowMapping,
    /// Rows per partition: the unit of parallelism, of progress and of resume.
    pub partition_rows: usize,
    /// Whether the output's bytes depend on where it is computed; if so, the device class and
    /// precision of the run are part of the node's fingerprint.
    pub device_dependence: DeviceDependence,
}

impl OpSpec {
    /// The spec of a parameter.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// A per-row failure: the row is left out of the output and recorded in the node's error table.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub row_id: String,
    pub message: String,
}

/// The result of one partition.
#[derive(Debug)]
pub struct PartitionOutput {
    /// Rows that succeeded.
    pub rows: RecordBatch,
    /// Rows that failed; the run goes on without them.
    pub errors: Vec<RowError>,
}

/// What the engine tells an operator about the partition at hand.
#[derive(Debug, Clone)]
pub struct ExecContext {
    /// The DAG's seed; operators derive per-row seeds from it and the row id.
    pub seed: u64,
    /// Index of this partition within the node.
    pub partition: usize,
    cancelled: Arc<AtomicBool>,
    /// The peers computing this partition together, when the engine formed a gang for it (see
    /// [`Configured::data_parallel`]).
    gang: Option<Arc<dyn crate::gang::Gang>>,
}

impl ExecContext {
    /// A context for one partition; `cancelled` is shared with the engine's signal handler.
    pub fn new(seed: u64, partition: usize, cancelled: Arc<AtomicBool>) -> Self {
        Self { seed, partition, cancelled, gang: None }
    }

    /// The context with this worker's end of a gang.
    pub fn with_gang(mut self, gang: Arc<dyn crate::gang::Gang>) -> Self {
        self.gang = Some(gang);
        self
    }

    /// This worker's end of the gang computing the partition, if there is one.
    pub fn gang(&self) -> Option<crate::gang::GangRole<'_>> {
        self.gang.as_deref().map(|g| g.role())
    }

    /// Whether the run is stopping; long operators check it between rows and return early.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// The largest image (width × height) an operator decodes: the DAG's `max_image_pixels`. A
/// header that claims more (a decompression bomb: a few KB that would inflate to gigabytes) is a
/// row error before any pixel buffer is allocated. A value, not a process-wide setting, so two
/// DAGs run in one process keep their own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PixelLimit(pub u64);

impl PixelLimit {
    /// 8192 × 8192: far above the paper's sizes (1024² panels, 2048×1024 diptychs) and a
    /// 50-megapixel camera's photos.
    pub const DEFAULT: Self = Self(8192 * 8192);

    /// The limit in pixels.
    pub fn pixels(self) -> u64 {
        self.0
    }
}

impl Default for PixelLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where and how a node runs, as the engine resolved it.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// The device named by `run --device`.
    pub device: crate::Device,
    /// The DAG's seed.
    pub seed: u64,
    /// A folder operators may keep caches in that outlive a run (the VLM response cache); `None`
    /// when there is no workspace.
    pub cache_dir: Option<std::path::PathBuf>,
    /// This node's own folder for files that outlive a run (training checkpoints), keyed by
    /// the node's fingerprint; `None` when there is no workspace.
    pub artifacts_dir: Option<std::path::PathBuf>,
    /// The workspace's files. Files an operator makes are named in its rows relative to the
    /// workspace, so the same run in two workspaces gives the same rows, and a moved workspace
    /// (or one in object storage, read from another host) keeps working.
    pub files: Option<std::sync::Arc<dyn WorkspaceFiles>>,
    /// The largest image operators decode (the DAG's `max_image_pixels`).
    pub max_image_pixels: PixelLimit,
}

/// The files of a workspace as operators see them: local paths, fetched from object storage
/// when the workspace is there.
pub trait WorkspaceFiles: Send + Sync + std::fmt::Debug {
    /// A local path holding the file a row names relative to the workspace.
    fn local(&self, reference: &str) -> std::io::Result<std::path::PathBuf>;

    /// How a row names a local file the operator made (relative to the workspace when it is in
    /// the workspace or its local mirror).
    fn reference(&self, local: &std::path::Path) -> String;
}

impl Environment {
    /// How a row names a file the operator made: relative to the workspace when it lies in it.
    pub fn reference(&self, path: &std::path::Path) -> String {
        match &self.files {
            Some(files) => files.reference(path),
            None => path.to_string_lossy().into_owned(),
        }
    }

    /// The local file a row names: a relative name is in the workspace (fetched when the
    /// workspace is in object storage), an absolute one is itself.
    pub fn resolve(&self, reference: &str) -> std::io::Result<std::path::PathBuf> {
        let path = std::path::Path::new(reference);
        match &self.files {
            Some(files) if path.is_relative() => files.local(reference),
            _ => Ok(path.to_path_buf()),
        }
    }
}

/// The per-node state of an operator (parsed parameters, loaded models), shared by all the
/// node's partitions, possibly from several threads at once.
pub trait PartitionProcessor: Send + Sync {
    /// Processes one partition of the (first) input.
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput>;
}

/// An operator turns partitions of input rows into output rows.
///
/// Implementors provide:
/// 1. [`spec`](Operator::spec): name, version, parameters, arity, resource class.
/// 2. [`configure`](Operator::configure): the node's checked parameters read into the
///    operator's typed form (usually a [`params!`](crate::params!) struct), once, when the DAG
///    is validated. Everything else is asked of the [`Configured`] it returns.
///
/// # Example
/// ```
/// use std::sync::{Arc, LazyLock};
/// use unoflow_api::params::ParamType;
/// use unoflow_api::columns::ColumnRequirement;
/// use unoflow_api::*;
/// # use arrow::datatypes::SchemaRef;
///
/// params! {
///     /// `noop`'s parameters.
///     pub struct NoopParams {
///         /// the column to require
///         pub column: String = optional(ParamType::Str, "image"),
///     }
/// }
///
/// static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
///     name: "noop",
///     version: 1,
///     summary: "passes rows through",
///     doc: "",
///     params: NoopParams::specs(),
///     inputs: (1, 1),
///     resource: Resource::Cpu,
///     mapping: RowMapping::Preserve,
///     partition_rows: 64,
///     device_dependence: DeviceDependence::Independent,
/// });
///
/// #[derive(Debug)]
/// struct Noop;
///
/// impl Operator for Noop {
///     fn spec(&self) -> &OpSpec {
///         &SPEC
///     }
///     fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
///         Ok(Arc::new(NoopParams::parse(params)?))
///     }
/// }
///
/// impl Configured for NoopParams {
///     fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
///         vec![vec![ColumnRequirement::image(&self.column)]]
///     }
///     fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
///         Ok(Arc::clone(&inputs[0]))
///     }
///     fn prepare(&self, _env: &Environment, _input: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
///         Ok(Arc::new(Pass))
///     }
/// }
///
/// struct Pass;
/// impl PartitionProcessor for Pass {
///     fn process(&self, _ctx: &ExecContext, input: &arrow::record_batch::RecordBatch) -> Result<PartitionOutput> {
///         Ok(PartitionOutput { rows: input.clone(), errors: Vec::new() })
///     }
/// }
/// ```
pub trait Operator: Send + Sync + Debug {
    /// The operator's declaration.
    fn spec(&self) -> &OpSpec;

    /// Reads the node's checked parameters (defaults filled in) into the operator's typed
    /// form. An error here points the user at the DAG file (`OpError::Param` names the
    /// parameter).
    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>>;
}

/// A node's operator with its parameters read: what the engine asks before and while running
/// it.
///
/// # Rows and ids
/// Every input batch has a `row_id` column. With [`RowMapping::Preserve`] the output keeps each
/// row's id; with [`RowMapping::Derive`] the operator makes new ids and fills `parent_ids`.
///
/// # Errors
/// A failure that concerns one row (an undecodable image) is a [`RowError`] in the output, and
/// the run continues. An `Err` fails the whole partition and, unless the user asked otherwise,
/// the node.
///
/// # Determinism
/// The same input, parameters and seed must give the same output: caching and exactly-once
/// resume rely on it.
pub trait Configured: Send + Sync + Debug {
    /// The columns each input must have (a parameter may name the column, as `thumbnail`'s
    /// `column` does), so a DAG wiring a producer that lacks one fails validation.
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>>;

    /// The output schema for these input schemas, from the schemas alone (no data). Called
    /// only after the required columns were found.
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef>;

    /// What the node needs for all its partitions (models loaded once) as a
    /// [`PartitionProcessor`]. The engine drops it when the node is done, which frees them.
    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>>;

    /// [`prepare`](Configured::prepare) for an operator of several inputs: the inputs after the
    /// first (an evaluation set to compare against) are read whole, in row order, and handed
    /// over here once per node, while the first input is still processed unit by unit.
    /// Operators of one input keep this default.
    fn prepare_with_inputs(
        &self,
        env: &Environment,
        input_schema: &SchemaRef,
        _others: &[RecordBatch],
    ) -> Result<Arc<dyn PartitionProcessor>> {
        self.prepare(env, input_schema)
    }

    /// Whether this node's output depends on the device, when its parameters decide (a model
    /// run only for some methods); `None` keeps the spec's [`OpSpec::device_dependence`].
    fn device_dependence(&self) -> Option<DeviceDependence> {
        None
    }

    /// Whether the operator compares the rows of its input with one another (a deduplication):
    /// its one unit is then the whole first input, in row order.
    fn whole_input(&self) -> bool {
        false
    }

    /// Whether workers sharing a workspace compute each partition together, as a gang (see
    /// [`crate::gang`]): the engine then hands the processor a leader's or a follower's end in
    /// [`ExecContext::gang`], and commits the leader's output only.
    fn data_parallel(&self) -> bool {
        false
    }

    /// Rows per unit for this node, when a parameter sets it (a Python operator's
    /// `batch_size`); `None` keeps the spec's [`OpSpec::partition_rows`].
    fn rows_per_unit(&self) -> Option<usize> {
        None
    }

    /// The resource this node occupies, when a parameter chooses it (a Python operator's
    /// `resource`); `None` keeps the spec's [`OpSpec::resource`].
    fn resource(&self) -> Option<Resource> {
        None
    }

    /// What the output depends on besides the parameters and the files of `Path` parameters:
    /// the version of an interpreter, of the packages a script imports, the digest of a
    /// program. Each entry enters the node's fingerprint, and `plan` names the entries that
    /// changed. May run a program to find out, so it is asked once per process and node; an
    /// `Err` (the interpreter cannot start) fails planning with its message.
    fn runtime(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(std::collections::BTreeMap::new())
    }
}
