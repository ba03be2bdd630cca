//! Batches as Arrow IPC streams: what crosses the pipe to and from the user's process.

use arrow::compute::concat_batches;
use arrow::datatypes::Schema;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use unoflow_api::Result;

/// `batch` as a complete IPC stream (schema, the batch, end of stream).
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    let mut writer = StreamWriter::try_new(&mut bytes, batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(bytes)
}

/// A stream holding only `schema` (no batch).
pub fn encode_schema(schema: &Schema) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut writer = StreamWriter::try_new(&mut bytes, schema)?;
    writer.finish()?;
    drop(writer);
    Ok(bytes)
}

/// The rows of an IPC stream as one batch (a stream may hold several). The error is a sentence
/// for a message.
pub fn decode(bytes: &[u8]) -> std::result::Result<RecordBatch, String> {
    let reader = StreamReader::try_new(bytes, None).map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| format!("a broken Arrow IPC stream: {e}"))?;
    concat_batches(&schema, &batches).map_err(|e| format!("cannot join the stream's batches: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};

    use super::*;

    #[test]
    fn a_batch_round_trips_and_garbage_is_named() {
        let batch = RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef)]).unwrap();
        assert_eq!(decode(&encode(&batch).unwrap()).unwrap(), batch);
        let empty = decode(&encode_schema(batch.schema_ref()).unwrap()).unwrap();
        assert_eq!((empty.num_rows(), empty.schema()), (0, batch.schema()));
        assert!(decode(b"hello").unwrap_err().starts_with("not an Arrow IPC stream"));
    }
}
