//! `unoflow submit`: launches many `unoflow worker` processes on a cluster that exists already.
//!
//! It writes one file and hands it to the cluster's own tool:
//!
//! - Slurm: a batch script (`NAME.sbatch`) for a job array, one array task per worker, given to
//!   `sbatch`. A worker takes its rank from `SLURM_ARRAY_TASK_ID` and the world size from
//!   `SLURM_ARRAY_TASK_COUNT`.
//! - Kubernetes: a manifest (`NAME.k8s.yaml`) with a ConfigMap holding the DAG file and an
//!   Indexed Job, given to `kubectl apply`. A worker takes its rank from `JOB_COMPLETION_INDEX`
//!   and the world size from `--world`.
//!
//! Why the settings:
//!
//! - Workers share the workspace's units through leases, so a worker that stops (preempted, at
//!   the time limit, its node lost) leaves its units to the others and committed work is kept.
//!   Hence requeueing (Slurm `--requeue`) and not counting disruptions as failures (Kubernetes
//!   `podFailurePolicy`).
//! - The grace period is for the worker's SIGTERM handling: it stops taking units, commits what
//!   it runs, releases its leases and exits 130 before the scheduler's SIGKILL.
//! - Exit 2 is a usage error (a wrong DAG or flag): Kubernetes fails that index at once instead
//!   of retrying what cannot heal.
//! - Credentials come from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`): Slurm passes the
//!   submitting shell's, Kubernetes the keys of a Secret named by `--secret`. Their values are
//!   never written into the file.
//! - The workspace must be visible from every node: an object-store URL, or an absolute folder on
//!   a shared filesystem. A relative folder is refused: workers on other hosts cannot see it.
//! - Kubernetes pods get what the DAG needs from the flags: `--volume` mounts claims, `--env`
//!   passes variables through Secrets, and every file the DAG names must be on a volume or a URL
//!   ([`pod`] says why and how).
//!
//! A file at the output path is replaced only if `unoflow submit` wrote it (its marker line).
//! `--dry-run` writes and prints the file without submitting it.

mod kubernetes;
mod pod;

use std::env::consts::EXE_SUFFIX;
use std::ffi::OsStr;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use clap::Args;

use self::kubernetes::kubernetes_manifest;
use self::pod::{PodEnv, VolumeMount};
use super::{VarArgs, output, shell_word};
use crate::error::{Error, IoContext, Result};
use crate::ops::Registry;
use crate::workspace::Location;

/// The first lines of a file `unoflow submit` wrote start with this; other files are never replaced.
const MARKER: &str = "# written by unoflow submit";

/// The most workers: Kubernetes' limit for an Indexed Job with `backoffLimitPerIndex`.
const MAX_WORKERS: usize = 100_000;

/// The longest job name: Kubernetes' Job names are labels (63), less room for the ConfigMap's
/// `-dag` and the pods' suffixes.
const MAX_NAME: usize = 52;

/// The longest grace period: Slurm's `--signal` takes at most 65535 seconds.
const MAX_GRACE_S: u64 = 65_535;

/// The largest DAG file a ConfigMap holds: Kubernetes objects are at most 1 MiB, with the rest of
/// the ConfigMap.
const MAX_CONFIGMAP_DAG: usize = 1_000_000;

/// The cluster's scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A Slurm job array, submitted with `sbatch`.
    Slurm,
    /// A Kubernetes Indexed Job, applied with `kubectl`.
    #[value(alias = "k8s")]
    Kubernetes,
}

impl Backend {
    /// What the written file is called in messages.
    fn file_kind(self) -> &'static str {
        match self {
            Self::Slurm => "script",
            Self::Kubernetes => "manifest",
        }
    }

    /// The written file's extension, beside the DAG file by default.
    fn extension(self) -> &'static str {
        match self {
            Self::Slurm => "sbatch",
            Self::Kubernetes => "k8s.yaml",
        }
    }

    /// The cluster's tool and its arguments before the file.
    fn tool(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Slurm => ("sbatch", &[]),
            Self::Kubernetes => ("kubectl", &["apply", "-f"]),
        }
    }

    /// Where to run the tool when this machine lacks it.
    fn elsewhere(self) -> &'static str {
        match self {
            Self::Slurm => "submit it from a login node",
            Self::Kubernetes => "apply it from a machine with access to the cluster",
        }
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The DAG file.
    pub dag: PathBuf,
    /// The shared workspace: s3://bucket/prefix, gs://…, az://…, or an absolute folder every node mounts.
    #[arg(long, value_name = "URL")]
    pub workspace: String,
    /// How many workers (array tasks / indexed pods).
    #[arg(long, value_name = "N")]
    pub workers: usize,
    /// The cluster's scheduler.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// GPUs per worker; 0 for CPU workers. A worker runs on its first GPU (cuda:0) and leaves any
    /// others idle, so ask for one unless the cluster only hands out whole nodes.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub gpus_per_worker: u32,
    /// CPU cores per worker (Slurm `--cpus-per-task`, Kubernetes CPU request).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cpus_per_worker: u32,
    /// The Slurm partition (Slurm only; default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// The container image, with `unoflow` on its PATH (Kubernetes; required there).
    #[arg(long)]
    pub image: Option<String>,
    /// The Slurm time limit: MINUTES, HH:MM:SS or DAYS-HH:MM:SS (Slurm only).
    #[arg(long, default_value = "24:00:00")]
    pub time: String,
    /// How long a worker's lease on a unit lasts without renewal (default: the worker's).
    #[arg(long, value_name = "SECONDS")]
    pub lease_s: Option<u64>,
    /// Seconds a worker has to commit and release its leases on SIGTERM: sent this long before
    /// the time limit (Slurm), the pods' termination grace period (Kubernetes).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub grace_s: u64,
    /// Where to write the script or manifest (default: beside the DAG file, `NAME.sbatch` / `NAME.k8s.yaml`).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The unoflow binary the workers run (default: Slurm, this binary's path; Kubernetes,
    /// `unoflow` on the image's PATH).
    #[arg(long, value_name = "PATH")]
    pub unoflow: Option<String>,
    /// Kubernetes: a Secret whose keys become the workers' environment (credentials), named only.
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,
    /// Kubernetes: pass the variable NAME to every worker (repeatable). Set in this shell, its
    /// value goes into a Secret `unoflow submit` applies (never into the manifest file); unset
    /// here, it is the key NAME of the --secret Secret.
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,
    /// Kubernetes: mount the PersistentVolumeClaim CLAIM at /PATH in every worker pod, as the
    /// pod volume NAME (repeatable). Every file the DAG names must be under one, or a URL.
    #[arg(long = "volume", value_name = "NAME=CLAIM:/PATH")]
    pub volumes: Vec<VolumeMount>,
    /// Write the script or manifest and print it, but do not submit.
    #[arg(long)]
    pub dry_run: bool,
    /// Passed on to every worker.
    #[command(flatten)]
    pub vars: VarArgs,
}

/// What both launchers need, validated.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The job's name: `unoflow-` and the DAG file's stem, in Kubernetes' DNS-1123 alphabet.
    pub name: String,
    pub backend: Backend,
    /// The DAG file, absolute: Slurm workers read it there.
    pub dag_path: PathBuf,
    /// The DAG file's text: Kubernetes workers read it from a ConfigMap.
    pub dag_text: String,
    pub workspace: String,
    pub workers: usize,
    pub gpus_per_worker: u32,
    pub cpus_per_worker: u32,
    pub partition: Option<String>,
    pub image: Option<String>,
    /// The Slurm time limit, as given (checked).
    pub time: String,
    pub lease_s: Option<u64>,
    pub grace_s: u64,
    /// The unoflow binary the workers run.
    pub unoflow: String,
    pub secret: Option<String>,
    /// Kubernetes: the `--env` variables and where each one's value comes from.
    pub env: Vec<PodEnv>,
    /// Kubernetes: the `--volume` claims.
    pub volumes: Vec<VolumeMount>,
    /// `--var` overrides every worker loads the DAG with.
    pub vars: Vec<crate::dag::VarOverride>,
}

impl Launch {
    /// Checks the arguments and reads the DAG file. Errors are usage errors naming the flag and
    /// the fix.
    pub fn from_args(args: &SubmitArgs) -> Result<Self> {
        check_workers(args.workers)?;
        check_grace(args.grace_s)?;
        if args.lease_s == Some(0) {
            return Err(usage("--lease-s 0: a lease lasts at least a second; leave the flag out for the worker's default"));
        }
        check_backend_flags(args)?;
        pod::check_volumes(&args.volumes)?;
        check_workspace(&args.workspace, args.backend, &args.volumes)?;
        let env = match args.backend {
            Backend::Kubernetes => pod::pod_env(&args.env, args.secret.as_deref(), &|name| std::env::var_os(name))?,
            Backend::Slurm => Vec::new(),
        };
        let unoflow = match (&args.unoflow, args.backend) {
            (Some(path), _) => {
                check_text("--unoflow", path)?;
                path.clone()
            }
            (None, Backend::Slurm) => this_binary()?,
            (None, Backend::Kubernetes) => "unoflow".to_string(),
        };
        let (dag_path, dag_text) = read_dag(&args.dag)?;
        // The pods mount the DAG file at its path here (see `pod`), and a mount path has no `:`.
        if args.backend == Backend::Kubernetes && dag_path.to_string_lossy().contains(':') {
            return Err(usage(format!(
                "the DAG file {}: pods mount it at its path here, and Kubernetes refuses a mount path with `:`; move it to a \
                 folder whose path has none",
                dag_path.display()
            )));
        }
        // A `--var` the DAG does not declare would stop every worker with the same error.
        crate::dag::check_vars(&args.dag, &dag_text, &args.vars.vars)?;
        // A --var is written into the script or manifest as a worker argument: a secret's value
        // goes through the environment instead (a Secret for pods, the shell for Slurm).
        if let Some(var) = args.vars.vars.iter().find(|v| crate::dag::interpolate::is_secret_name(&v.name)) {
            return Err(usage(format!(
                "--var {}=…: a variable whose name says it is a secret would be written into the {} in clear; declare it \
                 `{} = \"${{env:NAME}}\"` in [vars] and pass NAME in the environment{}",
                var.name,
                if args.backend == Backend::Kubernetes { "manifest" } else { "sbatch script" },
                var.name,
                if args.backend == Backend::Kubernetes { " (--env NAME)" } else { " of the shell that submits" }
            )));
        }
        if args.backend == Backend::Kubernetes && dag_text.len() > MAX_CONFIGMAP_DAG {
            return Err(usage(format!(
                "the DAG file {} has {} bytes; a Kubernetes ConfigMap holds at most {MAX_CONFIGMAP_DAG}: move inline data into files",
                args.dag.display(),
                dag_text.len()
            )));
        }
        Ok(Self {
            name: job_name(&dag_path),
            backend: args.backend,
            dag_path,
            dag_text,
            workspace: args.workspace.clone(),
            workers: args.workers,
            gpus_per_worker: args.gpus_per_worker,
            cpus_per_worker: args.cpus_per_worker,
            partition: args.partition.clone(),
            image: args.image.clone(),
            time: args.time.clone(),
            lease_s: args.lease_s,
            grace_s: args.grace_s,
            unoflow,
            secret: args.secret.clone(),
            env,
            volumes: args.volumes.clone(),
            vars: args.vars.vars.clone(),
        })
    }
}

fn usage(message: impl Into<String>) -> Error {
    Error::Usage(message.into())
}

fn check_workers(workers: usize) -> Result<()> {
    if (1..=MAX_WORKERS).contains(&workers) {
        return Ok(());
    }
    Err(usage(format!("--workers {workers}: use 1 to {MAX_WORKERS} (one worker per array task or pod)")))
}

fn check_grace(grace_s: u64) -> Result<()> {
    if grace_s <= MAX_GRACE_S {
        return Ok(());
    }
    Err(usage(format!("--grace-s {grace_s}: use at most {MAX_GRACE_S} (Slurm's longest signal lead time)")))
}

/// Refuses an empty value or one with control characters: a newline would end a script's line.
fn check_text(flag: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(usage(format!("{flag}: empty; give a value")));
    }
    if value.chars().any(char::is_control) {
        return Err(usage(format!("{flag} {value:?}: has control characters (a newline?); remove them")));
    }
    Ok(())
}

/// Each backend's own flags; a flag the backend would ignore is refused rather than dropped.
fn check_backend_flags(args: &SubmitArgs) -> Result<()> {
    match args.backend {
        Backend::Slurm => {
            if args.image.is_some() || args.secret.is_some() || !args.env.is_empty() || !args.volumes.is_empty() {
                return Err(usage(
                    "--image, --secret, --env and --volume are for --backend kubernetes; Slurm workers run --unoflow on \
                     the nodes, see the filesystems the nodes mount, and take the submitting shell's environment",
                ));
            }
            if let Some(partition) = &args.partition {
                check_partition(partition)?;
            }
            check_time(&args.time, args.grace_s)
        }
        Backend::Kubernetes => {
            if args.partition.is_some() {
                return Err(usage("--partition is for --backend slurm; Kubernetes places pods by their resource requests"));
            }
            let Some(image) = &args.image else {
                return Err(usage("--backend kubernetes needs --image IMAGE: a container image with `unoflow` on its PATH"));
            };
            check_image(image)?;
            if let Some(secret) = &args.secret {
                check_secret(secret)?;
            }
            Ok(())
        }
    }
}

fn check_partition(partition: &str) -> Result<()> {
    let word = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if partition.split(',').all(word) {
        return Ok(());
    }
    Err(usage(format!("--partition {partition:?}: not a Slurm partition name (letters, digits, `-_.`; several joined by `,`)")))
}

fn check_image(image: &str) -> Result<()> {
    check_text("--image", image)?;
    if image.chars().any(char::is_whitespace) {
        return Err(usage(format!("--image {image:?}: an image reference has no spaces")));
    }
    Ok(())
}

/// A Secret's name is a DNS-1123 subdomain: dot-separated labels of a-z, 0-9 and inner `-`.
fn check_secret(name: &str) -> Result<()> {
    if pod::is_dns_subdomain(name) {
        return Ok(());
    }
    Err(usage(format!("--secret {name:?}: not a Kubernetes Secret name (lowercase letters, digits, `-` and `.`)")))
}

/// The time limit must be one Slurm reads, and longer than the grace period, or the workers
/// would be told to stop as soon as they start.
fn check_time(time: &str, grace_s: u64) -> Result<()> {
    let Some(limit) = slurm_time_s(time) else {
        return Err(usage(format!(
            "--time {time:?}: not a Slurm time limit; use MINUTES, HH:MM:SS or DAYS-HH:MM:SS (e.g. 24:00:00 or 2-00:00:00)"
        )));
    };
    // Slurm reads a limit of 0 as none.
    if limit != 0 && grace_s >= limit {
        return Err(usage(format!(
            "--grace-s {grace_s}: the workers would be told to stop {grace_s} s before a time limit of {time}, that is at once; \
             use a smaller --grace-s or a longer --time"
        )));
    }
    Ok(())
}

/// The seconds in a Slurm time limit: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, or
/// `UNLIMITED`/`INFINITE` (`u64::MAX`); `None` for anything else.
fn slurm_time_s(time: &str) -> Option<u64> {
    if time.eq_ignore_ascii_case("unlimited") || time.eq_ignore_ascii_case("infinite") {
        return Some(u64::MAX);
    }
    let (days, rest) = match time.split_once('-') {
        Some((days, rest)) => (Some(time_number(days)?), rest),
        None => (None, time),
    };
    let parts = rest.split(':').map(time_number).collect::<Option<Vec<u64>>>()?;
    let (h, m, s) = match (days.is_some(), parts.as_slice()) {
        (false, [m]) => (0, *m, 0),
        (false, [m, s]) => (0, *m, *s),
        (_, [h, m, s]) => (*h, *m, *s),
        (true, [h]) => (*h, 0, 0),
        (true, [h, m]) => (*h, *m, 0),
        _ => return None,
    };
    Some(days.unwrap_or(0) * 86_400 + h * 3_600 + m * 60 + s)
}

/// A field of a time limit: digits only (no sign, no spaces), few enough that the sum cannot overflow.
fn time_number(field: &str) -> Option<u64> {
    if field.is_empty() || field.len() > 9 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

/// A workspace every worker can reach: an object-store URL, or an absolute folder (which must be
/// on a filesystem the nodes share; Kubernetes pods share only the `--volume` claims). The
/// text is read as the workers will read it ([`Location::parse`]): a malformed URL is refused
/// here, not written into a job whose every worker would fail (or work in a folder named
/// like a URL).
fn check_workspace(workspace: &str, backend: Backend, volumes: &[VolumeMount]) -> Result<()> {
    check_text("--workspace", workspace)?;
    let folder = match Location::parse(workspace, Path::new(""))? {
        Location::Url(url) if url.starts_with("memory://") => {
            return Err(usage(format!(
                "--workspace {workspace}: memory lives in one process, and workers are many; use s3://, gs://, az:// or a shared folder"
            )));
        }
        Location::Url(_) => return Ok(()),
        Location::Folder(path) => path,
    };
    if !folder.is_absolute() {
        return Err(usage(format!(
            "--workspace {workspace}: a relative folder, and workers on other hosts cannot see this machine's folders; use an \
             absolute path on a filesystem every node mounts, or an object-store URL (s3://, gs://, az://)"
        )));
    }
    // `..` would make "under a volume" untrue, so the folder is compared in its plain form.
    let on_volume = pod::plain_absolute(&folder).is_some_and(|plain| volumes.iter().any(|v| v.holds(&plain)));
    if backend == Backend::Kubernetes && !on_volume {
        return Err(usage(format!(
            "--workspace {workspace}: pods share no folder but a mounted claim; mount a shared (ReadWriteMany) \
             PersistentVolumeClaim at it or a folder above it with --volume NAME=CLAIM:/PATH, or use an object-store URL \
             (s3://, gs://, az://)"
        )));
    }
    Ok(())
}

/// The DAG file's absolute path and text; one that cannot be read is the user's to fix.
fn read_dag(dag: &Path) -> Result<(PathBuf, String)> {
    let path = std::path::absolute(dag).map_err(|e| usage(format!("the DAG file {}: {e}", dag.display())))?;
    let text = std::fs::read_to_string(&path).map_err(|e| usage(format!("the DAG file {}: {e}", dag.display())))?;
    Ok((path, text))
}

/// This binary's path: Slurm nodes that mount the same filesystem run the same build.
fn this_binary() -> Result<String> {
    let exe = std::env::current_exe()
        .map_err(|e| usage(format!("cannot find this unoflow binary's path ({e}); name the nodes' one with --unoflow PATH")))?;
    Ok(exe.to_string_lossy().into_owned())
}

/// `unoflow-` and the DAG file's stem in DNS-1123's alphabet (a-z, 0-9, inner `-`), at most
/// [`MAX_NAME`] long: a valid Job, ConfigMap and Slurm job name.
fn job_name(dag: &Path) -> String {
    let stem = dag.file_stem().map(|s| s.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let mut name = String::from("unoflow-");
    for c in stem.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if c != '-' || !name.ends_with('-') {
            name.push(c);
        }
    }
    // Only ASCII is left, so any byte length is a character boundary.
    name.truncate(MAX_NAME);
    name.trim_end_matches('-').to_string()
}

/// The worker's command line, reading the DAG at `dag`; `world` where the scheduler does not
/// tell the worker its world size.
fn worker_command(l: &Launch, dag: &str, world: Option<usize>) -> Vec<String> {
    let mut command = vec![l.unoflow.clone(), "worker".into(), dag.to_string(), "--workspace".into(), l.workspace.clone()];
    if let Some(world) = world {
        command.extend(["--world".to_string(), world.to_string()]);
    }
    if l.gpus_per_worker > 0 {
        // Both schedulers show a worker only the GPUs it was given, numbered from 0.
        command.extend(["--device".to_string(), "cuda:0".to_string()]);
    }
    if let Some(lease_s) = l.lease_s {
        command.extend(["--lease-s".to_string(), lease_s.to_string()]);
    }
    for var in &l.vars {
        command.extend(["--var".to_string(), var.arg()]);
    }
    command
}

const SLURM_HEADER: &str = "#!/bin/bash
# written by unoflow submit (rerunning it replaces this file)
#
# unoflow workers as a Slurm job array: array task i is worker rank i, and the array's size is the
# world size (a worker reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT itself). The workers
# share the workspace's units through leases, so any of them may stop early, fail or be requeued
# without losing committed work; to finish what the time limit left, submit again.
#
# Credentials for the workspace (the AWS_*, GOOGLE_*, AZURE_* variables) are never written here:
# sbatch passes the submitting shell's environment to the job (its default, --export=ALL; where the
# cluster sets SBATCH_EXPORT=NONE, submit with `sbatch --export=ALL`).
#
# A worker reads the DAG file at its absolute path: the DAG, the files it names by relative paths,
# and a workspace that is a folder must be on a filesystem every node mounts.
#
# The log of array task i is NAME-JOBID_i.out in the folder sbatch was run from.
";

/// The log's first line: which worker this is, where.
const SLURM_GREETING: &str =
    r#"echo "unoflow worker ${SLURM_ARRAY_TASK_ID:-?}/${SLURM_ARRAY_TASK_COUNT:-?}, job ${SLURM_ARRAY_JOB_ID:-?}, on $(hostname)" >&2"#;

/// The Slurm batch script: a job array of `l.workers` workers. Values on `#SBATCH` lines were
/// checked to need no quoting (sbatch reads them, not the shell); the command line is quoted.
pub fn slurm_script(l: &Launch) -> String {
    let mut lines: Vec<String> = SLURM_HEADER.lines().map(str::to_string).collect();
    lines.extend([
        format!("#SBATCH --job-name={}", l.name),
        format!("#SBATCH --array=0-{}", l.workers.saturating_sub(1)),
        "#SBATCH --nodes=1".into(),
        "#SBATCH --ntasks=1".into(),
        format!("#SBATCH --cpus-per-task={}", l.cpus_per_worker),
    ]);
    if l.gpus_per_worker > 0 {
        lines.push("# Slurm sets CUDA_VISIBLE_DEVICES to the task's GPUs, so cuda:0 below is the first of them.".into());
        lines.push(format!("#SBATCH --gres=gpu:{}", l.gpus_per_worker));
    }
    if let Some(partition) = &l.partition {
        lines.push(format!("#SBATCH --partition={partition}"));
    }
    lines.extend([
        format!("#SBATCH --time={}", l.time),
        "# A task whose node failed, or that was preempted, runs again; its worker resumes from the commits.".into(),
        "#SBATCH --requeue".into(),
        "#SBATCH --open-mode=append".into(),
        format!("#SBATCH --output={}-%A_%a.out", l.name),
        format!("# SIGTERM {} s before the time limit. `B:` sends it to the batch shell only, and the shell `exec`s", l.grace_s),
        "# the worker, so the worker gets it (without `B:` it would go to job steps, and there are none).".into(),
        "# The worker then stops taking units, commits what it runs, releases its leases and exits 130.".into(),
        format!("#SBATCH --signal=B:TERM@{}", l.grace_s),
        String::new(),
        "set -euo pipefail".into(),
        SLURM_GREETING.into(),
    ]);
    let command = worker_command(l, &l.dag_path.to_string_lossy(), None);
    lines.push(format!("exec {}", command.iter().map(String::as_str).map(shell_word).collect::<Vec<_>>().join(" ")));
    lines.join("\n") + "\n"
}

/// Writes the script or manifest, submits it unless `--dry-run`, and says how to follow the run.
pub async fn submit(args: SubmitArgs, registry: &Registry) -> Result<i32> {
    let launch = Launch::from_args(&args)?;
    if launch.backend == Backend::Kubernetes {
        check_pod_files(&launch, registry).await?;
    }
    write_and_submit(args, &launch)
}

/// [`submit`] once the arguments are checked.
fn write_and_submit(args: SubmitArgs, launch: &Launch) -> Result<i32> {
    let text = match launch.backend {
        Backend::Slurm => slurm_script(launch),
        Backend::Kubernetes => kubernetes_manifest(launch),
    };
    let path = args.output.unwrap_or_else(|| default_output(&launch.dag_path, launch.backend));
    write_owned(&path, &text, launch.backend)?;
    output::error_line(&format!("wrote {}", path.display()));
    let shown = tool_command(launch.backend, &path);
    if args.dry_run {
        write!(output::stdout(), "{text}").at(output::STDOUT)?;
        let secret = match kubernetes::env_secret(launch) {
            Some(_) => format!("{} and then ", env_secret_command(launch)),
            None => String::new(),
        };
        output::error_line(&format!("not submitted (--dry-run); submit it with {secret}`{shown}`"));
        return Ok(0);
    }
    hand_over(launch, &path, &shown)?;
    let watch = match launch.backend {
        Backend::Slurm => format!("squeue --name {}", launch.name),
        Backend::Kubernetes => format!("kubectl get job {}", launch.name),
    };
    output::error_line(&format!(
        "submitted {} workers; watch the progress with\n  unoflow status --workspace {}\n  {watch}",
        launch.workers,
        shell_word(&launch.workspace)
    ));
    Ok(0)
}

/// Refuses a DAG whose files a pod would not see ([`pod::check_files`]), and warns of each
/// `${env:NAME}` it reads that no `--env` passes. The DAG is loaded here as the pods will load it
/// (the same variables, the DAG at the same path): one that does not validate here is refused,
/// since its paths cannot be checked, and its pods would stop on the same errors.
async fn check_pod_files(l: &Launch, registry: &Registry) -> Result<()> {
    let options = crate::dag::LoadOptions::new(Some(&l.workspace), &l.vars);
    let dag = crate::dag::load_with(&l.dag_path, options, registry).await?;
    pod::check_files(&dag.file_params(), &l.volumes)?;
    for name in pod::unpassed_env_refs(&l.dag_text, &l.env) {
        let secret = l.secret.as_ref().map(|s| format!(" (unless the Secret `{s}` has a key {name})")).unwrap_or_default();
        output::error_line(&format!(
            "warning: the DAG reads ${{env:{name}}}, which the pods do not get from this shell{secret}; pass --env {name}"
        ));
    }
    Ok(())
}

/// How to create the Secret of `--env` values by hand (after `--dry-run`), from this shell's
/// variables: the command names them, never their values.
fn env_secret_command(l: &Launch) -> String {
    let mut words = vec!["`kubectl create secret generic".to_string(), kubernetes::env_secret_name(l)];
    for e in l.env.iter().filter(|e| matches!(e.from, pod::EnvFrom::Shell(_))) {
        words.push(format!("--from-literal={0}=\"${0}\"", e.name));
    }
    words.join(" ") + "`"
}

/// `NAME.sbatch` or `NAME.k8s.yaml` beside the DAG file.
fn default_output(dag: &Path, backend: Backend) -> PathBuf {
    let mut file = dag.file_stem().unwrap_or(OsStr::new("dag")).to_os_string();
    file.push(".");
    file.push(backend.extension());
    dag.with_file_name(file)
}

/// Writes `text` at `path`, replacing only a file `unoflow submit` wrote: never one of the user's.
fn write_owned(path: &Path, text: &str, backend: Backend) -> Result<()> {
    if path.is_dir() {
        return Err(usage(format!("--output {}: is a folder; name a file", path.display())));
    }
    if !replaceable(path)? {
        return Err(usage(format!(
            "{}: the file exists and was not written by `unoflow submit`; pass --output to write the {} elsewhere",
            path.display(),
            backend.file_kind()
        )));
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Whether `path` is absent, or one of its first lines is the marker (a script's first is `#!`).
fn replaceable(path: &Path) -> Result<bool> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut head = Vec::new();
    file.take(4096).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
    Ok(String::from_utf8_lossy(&head).lines().take(3).any(|line| line.starts_with(MARKER)))
}

/// The command that submits the file, to show (pasteable).
fn tool_command(backend: Backend, path: &Path) -> String {
    let (tool, flags) = backend.tool();
    let mut words = vec![tool.to_string()];
    words.extend(flags.iter().map(|f| f.to_string()));
    words.push(shell_word(&path.display().to_string()));
    words.join(" ")
}

/// Runs the cluster's tool on the file, its output passed through.
fn hand_over(l: &Launch, path: &Path, shown: &str) -> Result<()> {
    let (tool, flags) = l.backend.tool();
    let Some(program) = find_on_path(tool) else {
        return Err(usage(format!(
            "`{tool}` is not on PATH, so this machine cannot submit to the cluster. The {} is at {}; {} with `{shown}`",
            l.backend.file_kind(),
            path.display(),
            l.backend.elsewhere()
        )));
    };
    if let Some(secret) = kubernetes::env_secret(l) {
        apply_from_memory(&program, &secret, &kubernetes::env_secret_name(l))?;
    }
    let status = std::process::Command::new(&program)
        .args(flags)
        .arg(path)
        .status()
        .map_err(|e| Error::Execution(format!("could not run `{shown}` ({}): {e}", program.display())))?;
    if status.success() {
        return Ok(());
    }
    let hint = match l.backend {
        Backend::Slurm => String::new(),
        // A Job's pod template cannot change, so applying over an existing Job fails.
        Backend::Kubernetes => format!(
            "; if a Job `{0}` exists already, delete it first with `kubectl delete job {0}` (the workspace keeps committed work)",
            l.name
        ),
    };
    Err(Error::Execution(format!("`{shown}` failed ({status}){hint}")))
}

/// Runs `kubectl apply -f -` with `yaml` on its standard input: the Secret of `--env` values
/// reaches the cluster without touching this machine's disk.
fn apply_from_memory(kubectl: &Path, yaml: &str, what: &str) -> Result<()> {
    let shown = format!("kubectl apply -f - (the Secret {what})");
    let failed = |e: std::io::Error| Error::Execution(format!("could not run `{shown}` ({}): {e}", kubectl.display()));
    let mut child =
        std::process::Command::new(kubectl).args(["apply", "-f", "-"]).stdin(std::process::Stdio::piped()).spawn().map_err(failed)?;
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(yaml.as_bytes()));
    let status = child.wait().map_err(failed)?;
    if let Some(Err(e)) = written.filter(|_| status.success()) {
        return Err(failed(e));
    }
    if status.success() {
        return Ok(());
    }
    Err(Error::Execution(format!("`{shown}` failed ({status}); the Job was not applied")))
}

/// `tool` in one of PATH's absolute folders (a relative entry, such as an empty one for the
/// current folder, is skipped: a file there is not a tool the user installed).
fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let file = format!("{tool}{EXE_SUFFIX}");
    std::env::split_paths(&path).filter(|dir| dir.is_absolute()).map(|dir| dir.join(&file)).find(|p| is_executable(p.as_path()))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && (m.permissions().mode() & 0o111) != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAG: &str = "[dag]\nname = \"flow\"\n";
    const IMAGE: &str = "ghcr.io/unoflow/unoflow:0.1";

    /// Arguments for 8 one-GPU workers on S3, writing into `dir`, as a dry run.
    fn args(dir: &Path, backend: Backend) -> SubmitArgs {
        let dag = dir.join("My Flow.toml");
        std::fs::write(&dag, DAG).unwrap();
        let kubernetes = backend == Backend::Kubernetes;
        SubmitArgs {
            dag,
            workspace: "s3://bucket/runs".into(),
            workers: 8,
            backend,
            gpus_per_worker: 1,
            cpus_per_worker: 8,
            partition: None,
            image: kubernetes.then(|| IMAGE.to_string()),
            time: "24:00:00".into(),
            lease_s: None,
            grace_s: 300,
            output: Some(dir.join("out")),
            unoflow: (!kubernetes).then(|| "/opt/unoflow/bin/unoflow".to_string()),
            secret: None,
            dry_run: true,
            vars: VarArgs::default(),
            env: Vec::new(),
            volumes: Vec::new(),
        }
    }

    fn launch(backend: Backend, edit: impl FnOnce(&mut SubmitArgs)) -> Launch {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path(), backend);
        edit(&mut a);
        Launch::from_args(&a).unwrap()
    }

    fn assert_usage(backend: Backend, edit: impl FnOnce(&mut SubmitArgs), want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path(), backend);
        edit(&mut a);
        match Launch::from_args(&a) {
            Err(Error::Usage(message)) => assert!(message.contains(want), "{want:?} not in {message:?}"),
            other => panic!("expected a usage error naming {want:?}, got {other:?}"),
        }
    }

    fn exec_line(script: &str) -> &str {
        script.lines().find(|line| line.starts_with("exec ")).unwrap()
    }

    #[test]
    fn slurm_script_runs_an_array_of_workers() {
        let l = launch(Backend::Slurm, |a| a.workspace = "/shared/my runs".into());
        let s = slurm_script(&l);
        assert!(s.starts_with(&format!("#!/bin/bash\n{MARKER}")), "{s}");
        for want in [
            "#SBATCH --job-name=unoflow-my-flow\n",
            "#SBATCH --array=0-7\n",
            "#SBATCH --requeue\n",
            "#SBATCH --signal=B:TERM@300\n",
            "#SBATCH --time=24:00:00\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --output=unoflow-my-flow-%A_%a.out\n",
            "\nset -euo pipefail\n",
        ] {
            assert!(s.contains(want), "{want:?} not in\n{s}");
        }
        assert!(!s.contains("--partition"), "{s}");
        let exec = exec_line(&s);
        assert!(exec.starts_with("exec /opt/unoflow/bin/unoflow worker '/"), "the DAG path has a space: {exec}");
        assert!(exec.contains("My Flow.toml' --workspace '/shared/my runs' "), "{exec}");
        assert!(exec.ends_with(" --device cuda:0"), "{exec}");
        assert!(s.ends_with(&format!("{exec}\n")), "the worker is the last command");
        assert!(!s.contains("AWS_SECRET"), "{s}");
    }

    #[test]
    fn slurm_cpu_workers_ask_for_no_gpu() {
        let l = launch(Backend::Slurm, |a| {
            a.gpus_per_worker = 0;
            a.lease_s = Some(600);
            a.partition = Some("cpu,batch".into());
            a.time = "2-00:00:00".into();
        });
        let s = slurm_script(&l);
        assert!(!s.contains("--device") && !s.contains("gpu:") && !s.contains("cuda"), "{s}");
        assert!(s.contains("#SBATCH --partition=cpu,batch\n") && s.contains("#SBATCH --time=2-00:00:00\n"), "{s}");
        assert_eq!(exec_line(&s).split_once(" --workspace ").unwrap().1, "s3://bucket/runs --lease-s 600");
    }

    #[test]
    fn kubernetes_manifest_is_a_config_map_and_an_indexed_job() {
        let l = launch(Backend::Kubernetes, |a| a.secret = Some("unoflow-s3".into()));
        let m = kubernetes_manifest(&l);
        // The DAG file is at its path here, so that paths relative to it resolve as they do here.
        let dag = l.dag_path.display();
        assert!(m.starts_with(MARKER), "{m}");
        let docs: Vec<&str> = m.split("\n---\n").collect();
        assert_eq!(docs.len(), 2, "{m}");
        assert!(docs[0].contains("\nkind: ConfigMap\n") && docs[1].contains("\nkind: Job\n"), "{m}");
        assert!(docs[0].contains(r#"dag.toml: "[dag]\nname = \"flow\"\n""#), "{m}");
        for want in [
            "  name: \"unoflow-my-flow-dag\"\n",
            "  name: \"unoflow-my-flow\"\n",
            "  completionMode: Indexed\n",
            "  completions: 8\n",
            "  parallelism: 8\n",
            "  backoffLimitPerIndex: 3\n",
            "  maxFailedIndexes: 8\n",
            "      - action: Ignore\n        onPodConditions:\n          - type: DisruptionTarget\n            status: \"True\"\n",
            "      - action: FailIndex\n",
            "          values: [2]\n",
            "      restartPolicy: Never\n",
            "      terminationGracePeriodSeconds: 300\n",
            "          image: \"ghcr.io/unoflow/unoflow:0.1\"\n",
            &format!(
                r#"          command: ["unoflow", "worker", "{dag}", "--workspace", "s3://bucket/runs", "--world", "8", "--device", "cuda:0"]"#
            ),
            "          envFrom:\n            - secretRef:\n                name: \"unoflow-s3\"\n",
            "              cpu: \"8\"\n",
            "            limits:\n              nvidia.com/gpu: 1\n",
            &format!("              mountPath: \"{dag}\"\n              subPath: dag.toml\n"),
            "          configMap:\n            name: \"unoflow-my-flow-dag\"\n",
        ] {
            assert!(m.contains(want), "{want:?} not in\n{m}");
        }
        assert_yaml_shape(&m);
        assert!(!m.contains("AWS_SECRET") && !m.contains("ReadWriteMany"), "{m}");
    }

    /// What a YAML parser would need of this hand-written YAML: no tabs, two-space indentation,
    /// one mapping per document.
    fn assert_yaml_shape(m: &str) {
        for line in m.lines().filter(|line| !line.trim_start().starts_with('#') && !line.is_empty()) {
            let indent = line.len() - line.trim_start_matches(' ').len();
            assert!(!line.contains('\t') && indent % 2 == 0, "{line:?}");
            assert!(line == "---" || line.trim_start().starts_with("- ") || line.contains(": ") || line.ends_with(':'), "{line:?}");
        }
    }

    #[test]
    fn kubernetes_cpu_workers_without_secret() {
        let l = launch(Backend::Kubernetes, |a| {
            a.gpus_per_worker = 0;
            a.lease_s = Some(120);
        });
        let m = kubernetes_manifest(&l);
        assert!(!m.contains("nvidia.com/gpu") && !m.contains("--device") && !m.contains("envFrom:"), "{m}");
        assert!(m.contains(r#""--world", "8", "--lease-s", "120"]"#), "{m}");
        assert_yaml_shape(&m);
    }

    #[test]
    fn kubernetes_folder_workspace_needs_a_claim() {
        // A folder workspace needs a shared claim mounted at it or above it.
        assert_usage(Backend::Kubernetes, |a| a.workspace = "/mnt/shared/ws".into(), "object-store URL");
        let on_claim = |a: &mut SubmitArgs| {
            a.workspace = "/mnt/shared/ws".into();
            a.volumes = vec!["shared=team-rwx:/mnt/shared".parse().unwrap()];
        };
        let m = kubernetes_manifest(&launch(Backend::Kubernetes, on_claim));
        assert!(m.contains("claimName: \"team-rwx\"") && m.contains("mountPath: \"/mnt/shared\""), "{m}");
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        assert_usage(Backend::Slurm, |a| a.workers = 0, "--workers 0");
        assert_usage(Backend::Kubernetes, |a| a.workers = MAX_WORKERS + 1, "--workers");
        assert_usage(Backend::Kubernetes, |a| a.image = None, "--image");
        assert_usage(Backend::Slurm, |a| a.workspace = "runs/ws".into(), "relative folder");
        assert_usage(Backend::Kubernetes, |a| a.workspace = "runs/ws".into(), "relative folder");
        assert_usage(Backend::Slurm, |a| a.workspace = "file://runs/ws".into(), "relative folder");
        assert_usage(Backend::Slurm, |a| a.workspace = "memory://ws".into(), "memory");
        assert_usage(Backend::Slurm, |a| a.workspace = "ftp://host/ws".into(), "unknown scheme");
        assert_usage(Backend::Slurm, |a| a.workspace = "s3://b/ws\nrm -rf /".into(), "control characters");
        assert_usage(Backend::Slurm, |a| a.dag = a.dag.with_file_name("missing.toml"), "missing.toml");
        assert_usage(Backend::Slurm, |a| a.time = "24h".into(), "--time");
        assert_usage(Backend::Slurm, |a| a.time = "5".into(), "--grace-s");
        assert_usage(Backend::Slurm, |a| a.grace_s = MAX_GRACE_S + 1, "--grace-s");
        assert_usage(Backend::Slurm, |a| a.lease_s = Some(0), "--lease-s");
        assert_usage(Backend::Slurm, |a| a.partition = Some("gpu; reboot".into()), "--partition");
        assert_usage(Backend::Slurm, |a| a.image = Some(IMAGE.into()), "--image");
        assert_usage(Backend::Kubernetes, |a| a.partition = Some("gpu".into()), "--partition");
        assert_usage(Backend::Kubernetes, |a| a.secret = Some("My_Secret".into()), "--secret");
        assert_usage(Backend::Kubernetes, |a| a.image = Some("my image".into()), "--image");
    }

    #[test]
    fn secret_vars_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path(), Backend::Kubernetes);
        std::fs::write(&a.dag, "[dag]\nname = \"flow\"\n\n[vars]\nhf_token = \"\"\n").unwrap();
        a.vars.vars = vec![crate::dag::VarOverride { name: "hf_token".into(), value: "abc".into(), text: "abc".into() }];
        match Launch::from_args(&a) {
            Err(Error::Usage(message)) => assert!(message.contains("--env NAME") && !message.contains("abc"), "{message}"),
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn slurm_time_limits() {
        assert_eq!(slurm_time_s("24:00:00"), Some(86_400));
        assert_eq!(slurm_time_s("90"), Some(5_400));
        assert_eq!(slurm_time_s("90:30"), Some(5_430));
        assert_eq!(slurm_time_s("2-12"), Some(216_000));
        assert_eq!(slurm_time_s("1-00:30"), Some(88_200));
        assert_eq!(slurm_time_s("1-02:03:04"), Some(93_784));
        assert_eq!(slurm_time_s("UNLIMITED"), Some(u64::MAX));
        for bad in ["", "24h", "1:2:3:4", "-1", "1-", "1-2-3", "::", "1 0", "+5", "10;reboot", "9999999999"] {
            assert_eq!(slurm_time_s(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn job_names_are_dns_labels() {
        assert_eq!(job_name(Path::new("/x/My Flow.toml")), "unoflow-my-flow");
        assert_eq!(job_name(Path::new("/x/__a..B__.toml")), "unoflow-a-b");
        assert_eq!(job_name(Path::new("/x/数据.toml")), "unoflow");
        let long = job_name(Path::new(&format!("/x/{}-{}.toml", "a".repeat(43), "b".repeat(20))));
        assert!(long.len() <= MAX_NAME && long.starts_with("unoflow-a") && !long.ends_with('-'), "{long}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_word("s3://b/p"), "s3://b/p");
        assert_eq!(shell_word("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("$HOME"), "'$HOME'");
        assert_eq!(kubernetes::yaml_str("a \"b\"\n\\"), r#""a \"b\"\n\\""#);
        assert_eq!(kubernetes::yaml_str("x\u{7f}\u{85}\u{2028}é"), "\"x\\u007f\\u0085\\u2028é\"");
    }

    /// [`super::submit`] without the warnings about the DAG's files (which need a runtime).
    fn submit(args: SubmitArgs) -> Result<i32> {
        let launch = Launch::from_args(&args)?;
        write_and_submit(args, &launch)
    }

    #[test]
    fn submit_replaces_only_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = || SubmitArgs { output: None, ..args(dir.path(), Backend::Slurm) };
        let script = dir.path().join("My Flow.sbatch");
        assert_eq!(submit(fresh()).unwrap(), 0);
        assert!(std::fs::read_to_string(&script).unwrap().contains("#SBATCH --array=0-7\n"));
        assert_eq!(submit(fresh()).unwrap(), 0, "its own file is replaced");

        let mine = "#!/bin/bash\necho mine\n";
        std::fs::write(&script, mine).unwrap();
        match submit(fresh()) {
            Err(Error::Usage(message)) => assert!(message.contains("--output"), "{message}"),
            other => panic!("expected a usage error, got {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&script).unwrap(), mine);

        let manifest = SubmitArgs { output: None, ..args(dir.path(), Backend::Kubernetes) };
        assert_eq!(submit(manifest).unwrap(), 0);
        assert!(std::fs::read_to_string(dir.path().join("My Flow.k8s.yaml")).unwrap().starts_with(MARKER));
    }

    #[test]
    fn tools_are_found_on_path() {
        assert_eq!(find_on_path("unoflow-surely-not-a-tool"), None);
        #[cfg(unix)]
        assert!(find_on_path("sh").is_some());
    }
}
