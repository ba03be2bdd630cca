//! One partition through the user's code: the batch in one call; when that fails, row by row, so
//! only the rows that fail become error rows.

use arrow::array::{ArrayRef, UInt32Array, new_empty_array};
use arrow::compute::{concat, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use unoflow_api::rows::{row_ids, with_added};
use unoflow_api::{ExecContext, OpError, PartitionOutput, Result, RowError};

use crate::outputs::OutputColumns;

/// Why a call of the user's code gave nothing back.
#[derive(Debug)]
pub enum Failure {
    /// The code failed on the rows it was given (it raised, exited with an error, crashed or ran
    /// out of time). A batch is retried row by row; a single row's failure is its error row.
    Rows(String),
    /// The code cannot run (it does not start or load) or broke the contract (it returned other
    /// columns or another row count): the partition fails, as retrying cannot help.
    Fatal(OpError),
}

/// The user's code, called on a batch: returns the added columns (checked by the caller).
pub trait Call: Send + Sync {
    fn call(&self, ctx: &ExecContext, batch: &RecordBatch) -> std::result::Result<RecordBatch, Failure>;

    /// The code's name for messages: "`score.py`'s `aesthetic`", "`./caption`".
    fn name(&self) -> String;
}

/// Runs `input` through `code`: the output is the input rows that succeeded with the declared
/// columns added (`schema` is the node's output schema), and an error row for each other row.
pub fn process(
    code: &dyn Call,
    outputs: &OutputColumns,
    schema: &SchemaRef,
    ctx: &ExecContext,
    input: &RecordBatch,
) -> Result<PartitionOutput> {
    let rows = input.num_rows();
    if rows == 0 {
        let added = outputs.schema().fields().iter().map(|f| new_empty_array(f.data_type())).collect();
        return Ok(PartitionOutput { rows: with_added(schema, input, added)?, errors: Vec::new() });
    }
    match call_checked(code, outputs, ctx, input) {
        Ok(added) => return Ok(PartitionOutput { rows: with_added(schema, input, added)?, errors: Vec::new() }),
        Err(Failure::Fatal(e)) => return Err(e),
        Err(Failure::Rows(message)) if rows == 1 => {
            let id = row_ids(input)?.value(0).to_string();
            let kept = input.slice(0, 0);
            let added = outputs.schema().fields().iter().map(|f| new_empty_array(f.data_type())).collect();
            return Ok(PartitionOutput { rows: with_added(schema, &kept, added)?, errors: vec![RowError { row_id: id, message }] });
        }
        Err(Failure::Rows(_)) => {}
    }
    // Some row of the batch failed: each row on its own finds which.
    let ids = row_ids(input)?;
    let (mut kept, mut parts, mut errors): (Vec<u32>, Vec<Vec<ArrayRef>>, Vec<RowError>) = (Vec::new(), Vec::new(), Vec::new());
    for row in 0..rows {
        if ctx.is_cancelled() {
            return Err(OpError::Cancelled);
        }
        match call_checked(code, outputs, ctx, &input.slice(row, 1)) {
            Ok(added) => {
                kept.push(row as u32);
                parts.push(added);
            }
            Err(Failure::Rows(message)) => errors.push(RowError { row_id: ids.value(row).to_string(), message }),
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
    let kept_rows = take_record_batch(input, &UInt32Array::from(kept))?;
    let added = (0..outputs.schema().fields().len())
        .map(|column| {
            let pieces: Vec<&dyn arrow::array::Array> = parts.iter().map(|p| p[column].as_ref()).collect();
            if pieces.is_empty() { Ok(new_empty_array(outputs.schema().field(column).data_type())) } else { concat(&pieces) }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(PartitionOutput { rows: with_added(schema, &kept_rows, added)?, errors })
}

/// One call, its result held to the declared columns: a result that breaks the contract fails
/// the partition, naming the code.
fn call_checked(
    code: &dyn Call,
    outputs: &OutputColumns,
    ctx: &ExecContext,
    batch: &RecordBatch,
) -> std::result::Result<Vec<ArrayRef>, Failure> {
    let returned = code.call(ctx, batch)?;
    outputs.conform(&returned, batch.num_rows()).map_err(|why| Failure::Fatal(OpError::Execution(format!("{} {why}", code.name()))))
}

/// The output's column names, for tests.
#[cfg(test)]
pub(crate) fn added_names(output: &PartitionOutput) -> Vec<String> {
    output.rows.schema().fields().iter().map(|f| f.name().clone()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use arrow::array::{AsArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Float64Type;
    use unoflow_api::ParamValue;

    use super::*;

    /// Doubles `n`; fails on negative numbers, breaks the contract on 99.
    struct Doubler {
        calls: AtomicUsize,
    }

    impl Call for Doubler {
        fn call(&self, _ctx: &ExecContext, batch: &RecordBatch) -> std::result::Result<RecordBatch, Failure> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let n = batch.column_by_name("n").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
            if n.values().contains(&99) {
                return Ok(
                    RecordBatch::try_from_iter([("wrong", Arc::new(Int64Array::from(vec![1; batch.num_rows()])) as ArrayRef)]).unwrap()
                );
            }
            if let Some(bad) = n.values().iter().find(|v| **v < 0) {
                return Err(Failure::Rows(format!("ValueError: {bad} is negative")));
            }
            let doubled: Float64Array = n.values().iter().map(|v| Some(*v as f64 * 2.0)).collect();
            Ok(RecordBatch::try_from_iter([("doubled", Arc::new(doubled) as ArrayRef)]).unwrap())
        }

        fn name(&self) -> String {
            "`doubler`".into()
        }
    }

    fn input(values: &[i64]) -> RecordBatch {
        let ids: StringArray = values.iter().map(|v| Some(format!("id{v}"))).collect();
        RecordBatch::try_from_iter([("row_id", Arc::new(ids) as ArrayRef), ("n", Arc::new(Int64Array::from(values.to_vec())) as ArrayRef)])
            .unwrap()
    }

    fn run(values: &[i64]) -> (Result<PartitionOutput>, usize) {
        let outputs = OutputColumns::parse(&BTreeMap::from([("doubled".to_string(), ParamValue::from("float64"))])).unwrap();
        let batch = input(values);
        let schema = outputs.output_schema(batch.schema_ref()).unwrap();
        let code = Doubler { calls: AtomicUsize::new(0) };
        let ctx = ExecContext::new(1, 0, Arc::new(AtomicBool::new(false)));
        let out = process(&code, &outputs, &schema, &ctx, &batch);
        (out, code.calls.load(Ordering::Relaxed))
    }

    #[test]
    fn a_batch_that_succeeds_is_one_call() {
        let (out, calls) = run(&[1, 2, 3]);
        let out = out.unwrap();
        assert_eq!(calls, 1);
        assert_eq!(added_names(&out), ["row_id", "n", "doubled"]);
        assert_eq!(out.rows.column(2).as_primitive::<Float64Type>().values(), &[2.0, 4.0, 6.0]);
    }

    #[test]
    fn a_failing_row_is_found_row_by_row_and_the_others_are_kept() {
        let (out, calls) = run(&[1, -2, 3]);
        let out = out.unwrap();
        assert_eq!(calls, 4, "the batch, then each row");
        assert_eq!(out.rows.column(1).as_primitive::<arrow::datatypes::Int64Type>().values(), &[1, 3]);
        assert_eq!(out.rows.column(2).as_primitive::<Float64Type>().values(), &[2.0, 6.0]);
        assert_eq!(out.errors, [RowError { row_id: "id-2".into(), message: "ValueError: -2 is negative".into() }]);
    }

    #[test]
    fn a_broken_contract_fails_the_partition() {
        let err = run(&[1, 99]).0.unwrap_err().to_string();
        assert!(err.contains("`doubler` returned columns not in `outputs`: wrong"), "{err}");
        let (out, calls) = run(&[]);
        assert_eq!((out.unwrap().rows.num_rows(), calls), (0, 0), "no call for no rows");
    }
}
