//! `command`: any program as an operator. The input rows go to its standard input as an Arrow IPC
//! stream, the added columns come back on its standard output as one, a row for each row.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use unoflow_api::columns::ColumnRequirement;
use unoflow_api::params::ParamType;
use unoflow_api::{
    Configured, Device, DeviceDependence, Environment, ExecContext, OpError, OpSpec, Operator, ParamValue, Params, PartitionOutput,
    PartitionProcessor, Resource, Result, RowMapping,
};

use crate::call::{Call, Failure, process};
use crate::child::{StderrTail, Waited, describe, show_devices, wait};
use crate::outputs::OutputColumns;
use crate::{ResourceChoice, file_digest, ipc};

/// The `command` operator.
#[derive(Debug, Clone, Copy)]
pub struct CommandOp;

unoflow_api::params! {
    /// `command`'s parameters.
    pub struct CommandParams {
        /// the program and its arguments, e.g. ["./caption", "--lang", "en"]; files are relative to the DAG file's folder;
        /// it reads the rows as an Arrow IPC stream on standard input and writes the added columns as one on standard
        /// output (enters the fingerprint as written, with each file it names by content)
        pub command: Vec<String> = required(ParamType::Command).not_fingerprinted(),
        /// the columns the program adds and their Arrow types, e.g. { caption = "utf8", score = "float64" }
        pub outputs: BTreeMap<String, ParamValue> = required(ParamType::Table),
        /// environment variables for the program, e.g. { MODEL_DIR = "/models/x" } (a `${secret}` keeps them out of the fingerprint)
        pub env: BTreeMap<String, ParamValue> = optional(ParamType::Table, ParamValue::Table(BTreeMap::new())),
        /// rows per run of the program (and per unit of work)
        pub batch_size: usize = optional(ParamType::int(1, 1_000_000), 64i64),
        /// seconds one run of the program may take; past it the program is killed and its rows are tried one by one,
        /// each with this limit (a row that times out is an error row)
        pub timeout_s: u64 = optional(ParamType::int(1, 7 * 24 * 3600), 600i64).not_fingerprinted(),
        /// where it computes: "gpu" shows it this worker's GPU (CUDA_VISIBLE_DEVICES) and runs one batch at a time; "cpu"
        /// hides the GPUs and runs batches in parallel
        pub resource: ResourceChoice = choice(ResourceChoice::Cpu).not_fingerprinted(),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "command",
    version: 1,
    summary: "run a program in any language over batches of rows: Arrow IPC on standard input, the added columns on standard output",
    doc: "For each batch of `batch_size` rows the program is started with `command`; it reads the rows (all input columns,
          `row_id` included) as an Arrow IPC stream on standard input and writes the columns named in `outputs` as an Arrow IPC
          stream on standard output, one row per input row, in order. The columns are added to the input's (row ids kept). A run
          that exits with an error, is killed or passes `timeout_s` is retried row by row, and only the rows that fail become
          rows of `errors.NODE` with its last lines of standard error; output with other columns or another row count fails the
          node. The fingerprint holds the command as written, the content of every file it names (the program itself when it
          is a file; a program found on PATH by its content too) and `env`.",
    params: CommandParams::specs(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: 64,
    device_dependence: DeviceDependence::Independent,
});

impl Operator for CommandOp {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let parsed = CommandParams::parse(params)?;
        let outputs = OutputColumns::parse(&parsed.outputs)?;
        let env = string_table("env", &parsed.env)?;
        Ok(Arc::new(ConfiguredCommand { params: parsed, outputs, env }))
    }
}

/// A table of strings (`env`): numbers and booleans are written as TOML would.
fn string_table(name: &str, table: &BTreeMap<String, ParamValue>) -> Result<BTreeMap<String, String>> {
    table
        .iter()
        .map(|(key, value)| match value {
            ParamValue::Str(s) => Ok((key.clone(), s.clone())),
            ParamValue::Int(_) | ParamValue::Float(_) | ParamValue::Bool(_) => Ok((key.clone(), value.to_string())),
            other => Err(OpError::Param { name: name.into(), message: format!("`{key}` must be a string, found {}", other.kind()) }),
        })
        .collect()
}

#[derive(Debug)]
struct ConfiguredCommand {
    params: CommandParams,
    outputs: OutputColumns,
    env: BTreeMap<String, String>,
}

impl Configured for ConfiguredCommand {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![Vec::new()]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        self.outputs.output_schema(&inputs[0])
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let schema = self.outputs.output_schema(input_schema)?;
        Ok(Arc::new(CommandProcessor {
            program: Program {
                words: self.params.command.clone(),
                env: self.env.clone(),
                timeout: Duration::from_secs(self.params.timeout_s),
                resource: self.params.resource.into(),
                device: env.device,
            },
            outputs: self.outputs.clone(),
            schema,
        }))
    }

    fn rows_per_unit(&self) -> Option<usize> {
        Some(self.params.batch_size)
    }

    fn resource(&self) -> Option<Resource> {
        Some(self.params.resource.into())
    }

    /// The command as written, each word naming a file by that file's name and content (the
    /// engine made such words absolute paths, which must not enter: the same program elsewhere
    /// is the same node), and the program found on PATH by its content.
    fn runtime(&self) -> Result<BTreeMap<String, String>> {
        let mut words = Vec::with_capacity(self.params.command.len());
        for (i, word) in self.params.command.iter().enumerate() {
            let path = Path::new(word);
            let file = if path.is_absolute() && path.is_file() {
                Some(path.to_path_buf())
            } else if i == 0 && !word.contains('/') {
                find_on_path(word)
            } else {
                None
            };
            words.push(match file {
                Some(file) => {
                    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    format!("{name}@{}", file_digest(&file).map_err(|e| OpError::Param { name: "command".into(), message: e })?)
                }
                None => word.clone(),
            });
        }
        Ok(BTreeMap::from([("command".to_string(), serde_json::to_string(&words).unwrap_or_default())]))
    }
}

/// The file `program` names on PATH, as the shell would find it.
fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// The most a program may write on standard output for one batch: what one Arrow binary column
/// holds (32-bit offsets), far above any batch's added columns.
const MAX_OUTPUT_BYTES: u64 = 2 << 30;

/// How to start the program.
#[derive(Debug, Clone)]
struct Program {
    words: Vec<String>,
    env: BTreeMap<String, String>,
    timeout: Duration,
    resource: Resource,
    device: Device,
}

struct CommandProcessor {
    program: Program,
    outputs: OutputColumns,
    schema: SchemaRef,
}

impl PartitionProcessor for CommandProcessor {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        process(&self.program, &self.outputs, &self.schema, ctx, input)
    }
}

impl Call for Program {
    fn call(&self, ctx: &ExecContext, batch: &RecordBatch) -> std::result::Result<RecordBatch, Failure> {
        let request = ipc::encode(batch).map_err(Failure::Fatal)?;
        let mut command = Process::new(&self.words[0]);
        command.args(&self.words[1..]).envs(&self.env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        show_devices(&mut command, self.resource, self.device);
        let mut child = command.spawn().map_err(|e| {
            Failure::Fatal(OpError::Param {
                name: "command".into(),
                message: format!("cannot start `{}`: {e}; give an executable file or a program on PATH", self.words[0]),
            })
        })?;
        let mut tail = StderrTail::follow(child.stderr.take().expect("piped"), format!("[{}]", self.name_short()));
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        // Written and read at once: a program may answer before it has read all its input, and
        // either pipe filling up would stall both sides.
        let writer = std::thread::spawn(move || {
            // A program that exits without reading all its input is judged by its exit status.
            let _ = stdin.write_all(&request);
        });
        // Bounded: past the limit the pipe closes and the program is judged on what it wrote.
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            (&mut stdout).take(MAX_OUTPUT_BYTES + 1).read_to_end(&mut bytes).map(|_| bytes)
        });
        let waited = wait(&mut child, Instant::now() + self.timeout, &|| ctx.is_cancelled())
            .map_err(|e| Failure::Fatal(OpError::Execution(format!("waiting for {}: {e}", self.name()))))?;
        let _ = writer.join();
        let output = reader.join().unwrap_or_else(|_| Ok(Vec::new()));
        let stderr = tail.finish();
        if output.as_ref().is_ok_and(|bytes| bytes.len() as u64 > MAX_OUTPUT_BYTES) {
            return Err(Failure::Fatal(OpError::Execution(format!(
                "{} wrote more than {} GiB on standard output for {} rows; write only the added columns there",
                self.name(),
                MAX_OUTPUT_BYTES >> 30,
                batch.num_rows()
            ))));
        }
        match waited {
            Waited::Cancelled => Err(Failure::Fatal(OpError::Cancelled)),
            Waited::TimedOut => {
                Err(Failure::Rows(format!("{} ran past timeout_s = {} and was killed{stderr}", self.name(), self.timeout.as_secs())))
            }
            Waited::Exited(status) if !status.success() => Err(Failure::Rows(format!("{} {}{stderr}", self.name(), describe(status)))),
            Waited::Exited(_) => {
                let bytes =
                    output.map_err(|e| Failure::Fatal(OpError::Execution(format!("reading the output of {}: {e}", self.name()))))?;
                ipc::decode(&bytes).map_err(|why| {
                    Failure::Fatal(OpError::Execution(format!(
                        "{} exited successfully, but its standard output is {why}; write the added columns there as an Arrow IPC
                         stream (and everything else to standard error)",
                        self.name()
                    )))
                })
            }
        }
    }

    fn name(&self) -> String {
        format!("`{}`", self.name_short())
    }
}

impl Program {
    /// The program's file name and the first argument naming a file, if any: `python3 score.py`.
    fn name_short(&self) -> String {
        let base = |w: &str| Path::new(w).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| w.to_string());
        match self.words.iter().skip(1).find(|w| Path::new(w).is_absolute()) {
            Some(file) => format!("{} {}", base(&self.words[0]), base(file)),
            None => base(&self.words[0]),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use arrow::array::{ArrayRef, StringArray};

    use super::*;

    fn configured(command: &[&str], timeout_s: i64) -> Arc<dyn Configured> {
        let mut params = Params::new();
        for spec in CommandParams::specs() {
            if let Some(default) = spec.default {
                params.insert(spec.name, default);
            }
        }
        params.insert("command", ParamValue::from(command));
        params.insert("outputs", ParamValue::Table(BTreeMap::from([("echoed".to_string(), ParamValue::from("utf8"))])));
        params.insert("timeout_s", ParamValue::Int(timeout_s));
        CommandOp.configure(&params).unwrap()
    }

    fn rows() -> RecordBatch {
        let ids = StringArray::from(vec!["a", "b"]);
        RecordBatch::try_from_iter([("row_id", Arc::new(ids) as ArrayRef)]).unwrap()
    }

    fn run(command: &[&str], timeout_s: i64) -> Result<PartitionOutput> {
        let configured = configured(command, timeout_s);
        let processor = configured.prepare(&Environment::default(), rows().schema_ref()).unwrap();
        processor.process(&ExecContext::new(1, 0, Arc::new(AtomicBool::new(false))), &rows())
    }

    #[test]
    fn a_program_that_fails_gives_error_rows_with_its_stderr() {
        let out = run(&["sh", "-c", "cat >/dev/null; echo 'no model here' >&2; exit 4"], 30).unwrap();
        assert_eq!(out.rows.num_rows(), 0);
        assert_eq!(out.errors.len(), 2);
        assert_eq!(out.errors[1].row_id, "b");
        assert_eq!(out.errors[1].message, "`sh` exited with status 4; its last output:\nno model here");
    }

    #[test]
    fn a_program_past_its_timeout_is_killed_row_by_row() {
        let out = run(&["sleep", "20"], 1).unwrap();
        assert_eq!(out.errors.len(), 2);
        assert!(out.errors[0].message.starts_with("`sleep` ran past timeout_s = 1 and was killed"), "{:?}", out.errors);
    }

    #[test]
    fn output_that_is_not_arrow_fails_the_node_and_a_missing_program_is_named() {
        let err = run(&["sh", "-c", "cat >/dev/null; echo hello"], 30).unwrap_err().to_string();
        assert!(err.contains("`sh` exited successfully, but its standard output is not an Arrow IPC stream"), "{err}");
        let err = run(&["/nonexistent/caption"], 30).unwrap_err().to_string();
        assert!(err.starts_with("parameter `command`: cannot start `/nonexistent/caption`"), "{err}");
    }

    #[test]
    fn the_program_and_its_files_enter_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("tool.sh");
        std::fs::write(&script, "echo 1").unwrap();
        let path = script.to_str().unwrap();
        let before = configured(&["sh", path, "--fast"], 30).runtime().unwrap();
        assert!(before["command"].contains("\"tool.sh@") && before["command"].contains("\"--fast\""), "{before:?}");
        assert!(!before["command"].contains(dir.path().to_str().unwrap()), "no absolute path enters: {before:?}");
        std::fs::write(&script, "echo 2").unwrap();
        assert_ne!(configured(&["sh", path, "--fast"], 30).runtime().unwrap(), before);
    }
}
