//! `python`: a Python function over batches of rows, in long-lived interpreters.

mod interpreter;
mod pool;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use unoflow_api::columns::ColumnRequirement;
use unoflow_api::params::{ParamType, PathKind};
use unoflow_api::{
    Configured, DeviceDependence, Environment, ExecContext, OpError, OpSpec, Operator, ParamValue, Params, PartitionOutput,
    PartitionProcessor, Resource, Result, RowMapping,
};

use self::interpreter::Launch;
use self::pool::Pool;
use crate::ResourceChoice;
use crate::call::process;
use crate::child::{StderrTail, Waited, describe, wait};
use crate::outputs::OutputColumns;

const PROBE: &str = include_str!("probe.py");

/// How long reading the interpreter's version and its packages' may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// The `python` operator.
#[derive(Debug, Clone, Copy)]
pub struct PythonOp;

unoflow_api::params! {
    /// `python`'s parameters.
    pub struct PythonParams {
        /// the Python file defining the function (enters the fingerprint by content)
        pub script: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// the function to call: it takes a pyarrow.RecordBatch (and `params` as keyword arguments) and returns a
        /// RecordBatch or a dict of columns, one value per input row
        pub function: String = required(ParamType::Str),
        /// the columns the function adds and their Arrow types, e.g. { score = "float64", tags = "list<utf8>" }
        pub outputs: BTreeMap<String, ParamValue> = required(ParamType::Table),
        /// keyword arguments for the function, e.g. { threshold = 0.5 }
        pub params: BTreeMap<String, ParamValue> = optional(ParamType::Table, ParamValue::Table(BTreeMap::new())),
        /// the interpreter: a name on PATH or an absolute path (a virtual environment's bin/python); its version and
        /// the versions of the packages the script imports enter the fingerprint
        pub python: String = optional(ParamType::Str, "python3").not_fingerprinted(),
        /// rows per call of the function (and per unit of work)
        pub batch_size: usize = optional(ParamType::int(1, 1_000_000), 64i64),
        /// where it computes: "gpu" gives one interpreter this worker's GPU (CUDA_VISIBLE_DEVICES); "cpu" hides the
        /// GPUs and runs an interpreter per core
        pub resource: ResourceChoice = choice(ResourceChoice::Cpu).not_fingerprinted(),
        /// seconds loading the script or one call may take; past it the interpreter is stopped and restarted, and the
        /// batch's rows are tried one by one (a row that times out is an error row)
        pub timeout_s: u64 = optional(ParamType::int(1, 7 * 24 * 3600), 600i64).not_fingerprinted(),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "python",
    version: 1,
    summary: "call a Python function on batches of rows (pyarrow in, columns out), in long-lived interpreters",
    doc: "The script is loaded once per interpreter; `function(batch, **params)` gets each batch of `batch_size` rows as a
          pyarrow.RecordBatch (all input columns, `row_id` included; images are PNG bytes) and returns the columns named in
          `outputs` as a RecordBatch or a dict of column name to values (a list, a NumPy array or a pyarrow array), one per
          row. They are added to the input's columns (row ids kept). A call that raises is retried row by row, and only the
          rows that raise become rows of `errors.NODE` with the exception and the script's line; an interpreter that
          crashes or passes `timeout_s` is restarted and its rows tried one by one. What the script prints goes to standard
          error. Needs pyarrow in the interpreter. The fingerprint holds the script's content, `function`, `outputs`,
          `params`, `batch_size`, the interpreter's version and the versions of the packages the script imports (modules
          beside the script by content).",
    params: PythonParams::specs(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: 64,
    device_dependence: DeviceDependence::Independent,
});

impl Operator for PythonOp {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let parsed = PythonParams::parse(params)?;
        let outputs = OutputColumns::parse(&parsed.outputs)?;
        let keywords = ParamValue::Table(parsed.params.clone()).to_json();
        Ok(Arc::new(ConfiguredPython { params: parsed, outputs, keywords }))
    }
}

#[derive(Debug)]
struct ConfiguredPython {
    params: PythonParams,
    outputs: OutputColumns,
    keywords: serde_json::Value,
}

impl Configured for ConfiguredPython {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![Vec::new()]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        self.outputs.output_schema(&inputs[0])
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let resource: Resource = self.params.resource.into();
        let launch = Launch {
            python: self.params.python.clone(),
            script: self.params.script.clone(),
            function: self.params.function.clone(),
            params: self.keywords.clone(),
            outputs: Arc::clone(self.outputs.schema()),
            timeout: Duration::from_secs(self.params.timeout_s),
            resource,
            device: env.device,
        };
        // One interpreter holds the GPU; on the CPU, one per core the engine may run units on.
        let size = match resource {
            Resource::Gpu => 1,
            Resource::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Arc::new(PythonProcessor {
            pool: Pool::new(launch, size),
            outputs: self.outputs.clone(),
            schema: self.outputs.output_schema(input_schema)?,
        }))
    }

    fn rows_per_unit(&self) -> Option<usize> {
        Some(self.params.batch_size)
    }

    fn resource(&self) -> Option<Resource> {
        Some(self.params.resource.into())
    }

    fn runtime(&self) -> Result<BTreeMap<String, String>> {
        probe(&self.params.python, &self.params.script, &self.params.function)
    }
}

struct PythonProcessor {
    pool: Pool,
    outputs: OutputColumns,
    schema: SchemaRef,
}

impl PartitionProcessor for PythonProcessor {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        process(&self.pool, &self.outputs, &self.schema, ctx, input)
    }
}

/// The interpreter's version and the versions of the packages `script` imports, read by running
/// `probe.py` in that interpreter; also the first check that the script parses and defines
/// `function`.
fn probe(python: &str, script: &std::path::Path, function: &str) -> Result<BTreeMap<String, String>> {
    let bad = |name: &str, message: String| OpError::Param { name: name.into(), message };
    let mut child = Command::new(python)
        .args(["-c", PROBE])
        .arg(script)
        .arg(function)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| bad("python", format!("cannot start `{python}`: {e}; give an interpreter on PATH or its absolute path")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let mut stderr = StderrTail::follow(child.stderr.take().expect("piped"), format!("[{python}]"));
    let waited = wait(&mut child, Instant::now() + PROBE_TIMEOUT, &|| false)
        .map_err(|e| OpError::Execution(format!("waiting for `{python}`: {e}")))?;
    let text = reader.join().unwrap_or_else(|_| Ok(String::new())).unwrap_or_default();
    let status = match waited {
        Waited::Exited(status) => status,
        _ => return Err(bad("python", format!("`{python}` did not tell its version within {} s", PROBE_TIMEOUT.as_secs()))),
    };
    if !status.success() {
        return Err(bad("python", format!("`{python}` could not read the script's imports: it {}{}", describe(status), stderr.finish())));
    }
    let answer: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| bad("python", format!("`{python}` gave no version ({e}): {text:?}")))?;
    if let Some(error) = answer["error"].as_str() {
        return Err(bad("script", error.to_string()));
    }
    let mut runtime = BTreeMap::from([("python".to_string(), answer["python"].as_str().unwrap_or_default().to_string())]);
    if let Some(packages) = answer["packages"].as_object() {
        runtime.extend(packages.iter().map(|(name, version)| (name.clone(), version.as_str().unwrap_or_default().to_string())));
    }
    Ok(runtime)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use arrow::array::{ArrayRef, AsArray, Int64Array, StringArray};
    use arrow::datatypes::Float64Type;

    use super::*;

    /// Whether the tests' interpreter has pyarrow; CI requires it (`UNOFLOW_REQUIRE_PYARROW`).
    fn have_pyarrow() -> bool {
        let ok = Command::new("python3").args(["-c", "import pyarrow"]).status().is_ok_and(|s| s.success());
        if !ok {
            assert!(std::env::var_os("UNOFLOW_REQUIRE_PYARROW").is_none(), "python3 with pyarrow is required here");
            eprintln!("skipped: python3 with pyarrow is not installed");
        }
        ok
    }

    const SCRIPT: &str = r#"
import os
import time

def halve(batch, offset=0.0):
    n = batch.column("n").to_pylist()
    if 7 in n:
        raise ValueError("seven is not allowed")
    if 13 in n:
        os._exit(3)
    if 21 in n:
        time.sleep(30)
    return {"half": [v / 2 + offset for v in n]}
"#;

    fn configured(dir: &std::path::Path, script: &str, function: &str) -> Result<Arc<dyn Configured>> {
        let path = dir.join("halve.py");
        std::fs::write(&path, script).unwrap();
        let mut params = Params::new();
        for spec in PythonParams::specs() {
            if let Some(default) = spec.default {
                params.insert(spec.name, default);
            }
        }
        params.insert("script", path.to_string_lossy().as_ref().into());
        params.insert("function", function.into());
        params.insert("outputs", ParamValue::Table(BTreeMap::from([("half".to_string(), "float64".into())])));
        params.insert("params", ParamValue::Table(BTreeMap::from([("offset".to_string(), ParamValue::Float(0.25))])));
        params.insert("timeout_s", ParamValue::Int(2));
        PythonOp.configure(&params)
    }

    fn batch(values: &[i64]) -> RecordBatch {
        let ids: StringArray = values.iter().map(|v| Some(format!("id{v}"))).collect();
        RecordBatch::try_from_iter([("row_id", Arc::new(ids) as ArrayRef), ("n", Arc::new(Int64Array::from(values.to_vec())) as ArrayRef)])
            .unwrap()
    }

    #[test]
    fn raising_crashing_and_hanging_rows_become_error_rows_and_the_others_are_computed() {
        if !have_pyarrow() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let configured = configured(dir.path(), SCRIPT, "halve").unwrap();
        let runtime = configured.runtime().unwrap();
        assert!(runtime["python"].starts_with('3') && runtime.contains_key("pyarrow"), "{runtime:?}");
        let input = batch(&[2, 7, 13, 21, 4]);
        let processor = configured.prepare(&Environment::default(), input.schema_ref()).unwrap();
        let ctx = ExecContext::new(1, 0, Arc::new(AtomicBool::new(false)));
        let out = processor.process(&ctx, &input).unwrap();
        assert_eq!(out.rows.column(2).as_primitive::<Float64Type>().values(), &[1.25, 2.25]);
        let errors: Vec<(&str, &str)> = out.errors.iter().map(|e| (e.row_id.as_str(), e.message.as_str())).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0], ("id7", "ValueError: seven is not allowed (halve.py, line 8, in halve)"));
        assert!(errors[1].1.starts_with("the Python interpreter exited with status 3 while running `halve.py`'s `halve`"), "{errors:?}");
        assert_eq!(errors[2], ("id21", "`halve.py`'s `halve` ran past timeout_s = 2 and was stopped"));
        // The interpreters that crashed or hung were replaced: the next batch is computed.
        let again = processor.process(&ctx, &batch(&[10])).unwrap();
        assert_eq!(again.rows.column(2).as_primitive::<Float64Type>().values(), &[5.25]);
    }

    #[test]
    fn a_script_that_does_not_parse_or_lacks_the_function_is_named_before_anything_runs() {
        if !have_pyarrow() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let err = configured(dir.path(), "def halve(batch:\n", "halve").unwrap().runtime().unwrap_err().to_string();
        assert!(err.starts_with("parameter `script`: halve.py, line 1: SyntaxError"), "{err}");
        let err = configured(dir.path(), SCRIPT, "double").unwrap().runtime().unwrap_err().to_string();
        assert_eq!(err, "parameter `script`: halve.py defines no function `double` (it defines: halve, os, time)");
        let wrong = "def halve(batch, offset=0.0):\n    return {'half': [1.0]}\n";
        let configured = configured(dir.path(), wrong, "halve").unwrap();
        let input = batch(&[1, 2]);
        let processor = configured.prepare(&Environment::default(), input.schema_ref()).unwrap();
        let err = processor.process(&ExecContext::new(1, 0, Arc::new(AtomicBool::new(false))), &input).unwrap_err().to_string();
        assert_eq!(err, "`halve.py`'s `halve`: column `half` has 1 values for 2 rows; return one value per input row");
    }
}
