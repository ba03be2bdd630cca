//! Several single-partition plans read at once, their rows yielded one plan after another.
//!
//! DataFusion's way to read in parallel is partitions merged as they finish
//! (`CoalescePartitionsExec`): the row order would follow thread timing. A node's parts are
//! instead split into contiguous runs ([`super::parts`]), each read by its own task into a
//! short queue, and the runs' rows come out in run order: the order of one partition, the
//! decoding and filtering of several. Memory stays bounded: a run that gets ahead of the one
//! being yielded waits once its queue holds 64 MiB, and what it holds is counted in the query's
//! memory pool: read-ahead uses only memory the pool has free, and under pressure a run holds
//! one batch at a time, as a plain scan does.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of batches a run may hold ahead of the run being yielded, in KiB: narrow rows (a
/// filtered count's) run far ahead, image rows a few at a time. A batch larger than this is
/// held alone.
const READ_AHEAD_KIB: u32 = 64 * 1024;

/// The rows of `inputs` (one partition each, one schema), input after input, read concurrently;
/// at most `fetch` of them.
#[derive(Debug)]
pub(super) struct OrderedConcatExec {
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    fetch: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl OrderedConcatExec {
    pub(super) fn try_new(inputs: Vec<Arc<dyn ExecutionPlan>>, fetch: Option<usize>) -> Result<Self> {
        let Some(first) = inputs.first() else {
            return internal_err!("an ordered concatenation needs at least one input");
        };
        let schema = first.schema();
        for input in &inputs {
            if input.output_partitioning().partition_count() != 1 {
                return internal_err!("an ordered concatenation reads inputs of one partition, not {}", input.name());
            }
            if input.schema().fields() != schema.fields() {
                return internal_err!("the inputs of an ordered concatenation differ in schema");
            }
        }
        let boundedness = inputs.iter().map(|i| i.boundedness()).find(|b| b.is_unbounded()).unwrap_or(Boundedness::Bounded);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(SchemaRef::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            boundedness,
        );
        Ok(Self { inputs, fetch, properties: Arc::new(properties) })
    }
}

impl DisplayAs for OrderedConcatExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "OrderedConcatExec: inputs={}", self.inputs.len())?;
        match self.fetch {
            Some(n) => write!(f, ", fetch={n}"),
            None => Ok(()),
        }
    }
}

impl ExecutionPlan for OrderedConcatExec {
    fn name(&self) -> &str {
        "OrderedConcatExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().collect()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.inputs.len()]
    }

    fn apply_expressions(&self, _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::try_new(children, self.fetch)?))
    }

    /// A filter above holds row by row, so it may be evaluated in each input (a top-K's
    /// dynamic filter reaches the part files).
    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("an ordered concatenation has one partition, not {partition}");
        }
        let runs = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let memory = MemoryConsumer::new(format!("OrderedConcatExec[run {i}]")).register(context.memory_pool());
                Ok(Run::start(input.execute(0, Arc::clone(&context))?, memory))
            })
            .collect::<Result<Vec<_>>>()?;
        // The runs not yet yielded stay in the iterator: dropping the stream (a `LIMIT` met, a
        // query cancelled) drops their tasks, which aborts them.
        let rows = futures::stream::iter(runs).flat_map(Run::into_stream);
        let rows = match self.fetch {
            None => rows.boxed(),
            Some(fetch) => at_most(rows, fetch),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), rows)))
    }
}

/// The first `fetch` rows of `rows`; the stream ends (dropping what reads ahead) once they are out.
fn at_most(rows: impl Stream<Item = Result<RecordBatch>> + Send + 'static, fetch: usize) -> BoxStream<'static, Result<RecordBatch>> {
    rows.scan(fetch, |left, batch| {
        let next = (*left > 0).then(|| {
            batch.map(|b| {
                let kept = b.num_rows().min(*left);
                *left -= kept;
                b.slice(0, kept)
            })
        });
        futures::future::ready(next)
    })
    .boxed()
}

/// A batch read ahead, with what it holds of the run's budget and of the memory pool; both
/// are returned when it is yielded.
type Queued = (Result<RecordBatch>, OwnedSemaphorePermit, MemoryReservation);

/// One input, read by its own task into a queue bounded in bytes.
struct Run {
    queue: tokio::sync::mpsc::UnboundedReceiver<Queued>,
    reader: SpawnedTask<()>,
}

impl Run {
    fn start(mut input: SendableRecordBatchStream, memory: MemoryReservation) -> Self {
        let (send, queue) = tokio::sync::mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(READ_AHEAD_KIB as usize));
        let reader = SpawnedTask::spawn(async move {
            while let Some(batch) = input.next().await {
                let bytes = batch.as_ref().map_or(0, |b| b.get_array_memory_size());
                let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).clamp(1, READ_AHEAD_KIB);
                let Ok(mut held) = Arc::clone(&budget).acquire_many_owned(kib).await else { break };
                if memory.try_grow(bytes).is_err() {
                    // The pool has no room to read ahead: wait until this run's queue is empty
                    // and hold this one batch alone. It is still counted, so that the pool's
                    // other consumers (a sort, a join) see it and give way.
                    drop(held);
                    let Ok(whole) = Arc::clone(&budget).acquire_many_owned(READ_AHEAD_KIB).await else { break };
                    held = whole;
                    memory.grow(bytes);
                }
                let counted = memory.split(bytes);
                let failed = batch.is_err();
                if send.send((batch, held, counted)).is_err() || failed {
                    break;
                }
            }
        });
        Self { queue, reader }
    }

    /// The run's batches, then an error if its reader died (a panic) rather than finished:
    /// a queue that closes early must not pass for the end of the rows.
    fn into_stream(self) -> BoxStream<'static, Result<RecordBatch>> {
        let Self { queue, reader } = self;
        let batches = futures::stream::unfold(queue, |mut queue| async move { queue.recv().await.map(|(b, _held, _counted)| (b, queue)) });
        let ended = futures::stream::once(async move { reader.join().await }).filter_map(|joined| async move {
            joined.err().map(|e| Err(DataFusionError::Execution(format!("reading the parts of a table failed: {e}"))))
        });
        batches.chain(ended).boxed()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::collect;
    use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

    use super::*;

    /// A partition of one batch, or one whose reader panics.
    #[derive(Debug)]
    struct Partition {
        schema: SchemaRef,
        panics: bool,
    }

    impl PartitionStream for Partition {
        fn schema(&self) -> &SchemaRef {
            &self.schema
        }

        fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
            let batch = RecordBatch::try_new(SchemaRef::clone(&self.schema), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]);
            let panics = self.panics;
            let rows = futures::stream::once(async move {
                assert!(!panics, "a reader panics");
                Ok(batch?)
            });
            Box::pin(RecordBatchStreamAdapter::new(SchemaRef::clone(&self.schema), rows))
        }
    }

    fn input(schema: &SchemaRef, panics: bool) -> Arc<dyn ExecutionPlan> {
        let partition: Arc<dyn PartitionStream> = Arc::new(Partition { schema: SchemaRef::clone(schema), panics });
        Arc::new(StreamingTableExec::try_new(SchemaRef::clone(schema), vec![partition], None, vec![], false, None).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_panics_fails_the_query_instead_of_ending_its_rows_early() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let context = Arc::new(TaskContext::default());
        let whole = OrderedConcatExec::try_new(vec![input(&schema, false), input(&schema, false)], None).unwrap();
        let rows: usize = collect(Arc::new(whole), Arc::clone(&context)).await.unwrap().iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 6);
        let broken = OrderedConcatExec::try_new(vec![input(&schema, false), input(&schema, true)], None).unwrap();
        let error = collect(Arc::new(broken), context).await.expect_err("the rows of a dead reader passed for the end of a table");
        assert!(error.to_string().contains("reading the parts of a table failed"), "{error}");
    }
}
