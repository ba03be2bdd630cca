//! `unoflow worker` (one of many processes sharing a workspace) and `unoflow run --workers N` /
//! `--devices LIST` (several workers on this host under one command).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use unoflow_api::Device;

use super::{RunArgs, VarArgs, WorkspaceArg, parse_device, print_report, progress};
use crate::dag;
use crate::error::{Error, Result};
use crate::exec::{self, DEFAULT_LEASE, RunOptions, WorkerOptions};
use crate::interrupt::Interrupt;
use crate::ops::Registry;
use crate::workspace::Workspace;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The DAG file.
    pub dag: PathBuf,
    #[command(flatten)]
    pub workspace: WorkspaceArg,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Where models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// This worker's rank (default: SLURM_ARRAY_TASK_ID, or JOB_COMPLETION_INDEX, or 0).
    #[arg(long)]
    pub rank: Option<usize>,
    /// How many workers were started (default: SLURM_ARRAY_TASK_COUNT, or 1).
    #[arg(long)]
    pub world: Option<usize>,
    /// Seconds a claim on a unit lasts without renewal (renewed every third of it); a dead
    /// worker's units are taken over after this and a quarter more.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_LEASE.as_secs_f64(), value_parser = parse_lease)]
    pub lease_s: f64,
    /// Failed attempts at a unit (by any workers) after which its rows go to the error table.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Work only on these nodes (and what they need).
    #[arg(long, num_args = 1.., value_name = "NODE")]
    pub only: Vec<String>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Tags this worker's run record (set by `run --workers`).
    #[arg(long, hide = true)]
    pub group: Option<String>,
    /// Set by `run --workers`: standard input is a pipe from that command, and the worker stops
    /// when the pipe closes (the command ended, even by SIGKILL).
    #[arg(long, hide = true)]
    pub stop_with_parent: bool,
}

fn parse_lease(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    if !v.is_finite() || !(0.5..=86_400.0).contains(&v) {
        return Err(format!("{s} is not a lease: use 0.5 to 86400 seconds (units of minutes: 120 or more)"));
    }
    Ok(v)
}

/// Rank and world size: from the flags, else from the launcher's environment.
fn rank_and_world(rank: Option<usize>, world: Option<usize>, env: &dyn Fn(&str) -> Option<String>) -> Result<(usize, usize)> {
    let number = |name: &str| -> Result<Option<usize>> {
        env(name).map(|v| v.trim().parse::<usize>().map_err(|_| Error::Usage(format!("{name}={v:?} is not a number")))).transpose()
    };
    let (slurm_id, slurm_count, slurm_min) =
        (number("SLURM_ARRAY_TASK_ID")?, number("SLURM_ARRAY_TASK_COUNT")?, number("SLURM_ARRAY_TASK_MIN")?);
    let rank = match (rank, slurm_id, number("JOB_COMPLETION_INDEX")?) {
        (Some(r), _, _) => r,
        (None, Some(id), _) => id - slurm_min.unwrap_or(0).min(id),
        (None, None, Some(index)) => index,
        (None, None, None) => 0,
    };
    let world = world.or(slurm_count).unwrap_or(1);
    if world == 0 || rank >= world {
        return Err(Error::Usage(format!(
            "rank {rank} is not below the world size {world}: pass --rank R --world W with R < W (Kubernetes: --world = completions)"
        )));
    }
    Ok((rank, world))
}

/// `unoflow worker`: works on the DAG's units with whoever else shares the workspace, until
/// the DAG is complete or nothing is left it can do.
pub async fn worker(args: WorkerArgs, registry: &Registry, interrupt: Interrupt) -> Result<i32> {
    if args.stop_with_parent {
        stop_with_parent(&interrupt);
    }
    let (rank, world) = rank_and_world(args.rank, args.world, &|name| std::env::var(name).ok())?;
    let options = dag::LoadOptions { device: args.device, ..args.vars.load_options(args.workspace.workspace.as_deref()) };
    let dag = Arc::new(dag::load_with(&args.dag, options, registry).await?);
    let worker = WorkerOptions {
        rank,
        world,
        lease: Duration::from_secs_f64(args.lease_s),
        max_attempts: args.max_attempts as usize,
        group: args.group,
    };
    let opts = RunOptions { only: args.only, device: args.device, worker: Some(worker), ..RunOptions::default() };
    let command: Vec<String> = std::env::args().collect();
    let report = exec::run(Arc::clone(&dag), opts, command, interrupt, Arc::new(progress::Progress::new(args.quiet))).await?;
    let dag_arg = super::shell_word(&args.dag.display().to_string());
    let ws_flag = args.workspace.workspace.as_ref().map(|w| format!(" --workspace {}", super::shell_word(w))).unwrap_or_default()
        + &args.vars.flags();
    print_report(&dag, &report, &dag_arg, &ws_flag, false).await
}

/// Makes this worker stop when the `run --workers` command that started it ends, however it
/// ends (kill -9 included), so that no worker outlives it unseen, holding the workspace's lock.
/// That command keeps the write end of a pipe that is this worker's standard input, and writes
/// nothing to it; when the command's process is gone, the kernel closes its end and the read
/// below returns (end of file, or an error): the worker then stops as on SIGTERM, taking no
/// more units and committing what it runs. A parent-death signal (`prctl(PR_SET_PDEATHSIG)`)
/// would do as well on Linux only, and the safe crate that offers it would change `libc`'s
/// features, and so rebuild nearly every dependency; the pipe needs neither, on any system.
fn stop_with_parent(interrupt: &Interrupt) {
    let interrupt = interrupt.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut byte = [0u8; 1];
        // Anything written (nothing is) is read and ignored, and a read cut short by a signal
        // (the worker's own SIGTERM) is not the end: the loop ends with the pipe.
        loop {
            match std::io::stdin().read(&mut byte) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if !interrupt.stop_requested() {
            super::output::error_line("the `unoflow run --workers` that started this worker has ended: stopping");
            interrupt.raise();
        }
    });
}

/// The devices `run --devices` names: a list, or `all` (every CUDA device that answers).
fn devices(text: &str) -> Result<Vec<Device>> {
    if text == "all" {
        let found: Vec<Device> = (0..64).map(Device::Cuda).take_while(|d| unoflow_models::device::check_available(*d).is_ok()).collect();
        if found.is_empty() {
            return Err(Error::Usage("--devices all: no CUDA device answers (is this binary built with `--features cuda`?)".into()));
        }
        return Ok(found);
    }
    let listed = text
        .split(',')
        .map(|s| parse_device(s.trim()).map_err(|e| Error::Usage(format!("--devices {text}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    // One fingerprint per node: workers on a CPU and a GPU would make different bytes for it.
    if listed.iter().any(|d| d.compute_class() != listed[0].compute_class()) {
        return Err(Error::Usage(format!("--devices {text}: one class of device per run (all cpu or all cuda)")));
    }
    Ok(listed)
}

/// `run --workers N` / `--devices LIST`: one worker process per device (or N on the CPU) on
/// this host, one progress line, and one summary at the end. Whatever a worker left undone
/// (it died) is finished by this process before the summary.
pub async fn run_many(args: RunArgs, registry: &Registry, interrupt: Interrupt) -> Result<i32> {
    let devices = match &args.devices {
        Some(text) => devices(text)?,
        None => vec![args.device; args.workers.max(1) as usize],
    };
    if !args.force.is_empty() {
        return Err(Error::Usage("--force cannot be combined with several workers: run `unoflow run DAG --force NODE` first".into()));
    }
    // Every worker's device is of one class (`devices` refuses a mix).
    let options = dag::LoadOptions { device: devices[0], ..args.vars.load_options(args.workspace.workspace.as_deref()) };
    let dag = Arc::new(dag::load_with(&args.dag, options, registry).await?);
    // Make the workspace (and refuse a foreign folder) before the workers start.
    let ws = Workspace::create(&dag.workspace)?;
    let group = format!("{}-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"), std::process::id());
    let exe = std::env::current_exe().map_err(|e| Error::Internal(format!("cannot find this program's path: {e}")))?;
    let world = devices.len();
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for (rank, device) in devices.iter().enumerate() {
        let mut command = Command::new(&exe);
        command.arg("worker").arg(&args.dag).arg("--workspace").arg(dag.workspace.to_string());
        command.args(["--rank", &rank.to_string(), "--world", &world.to_string(), "--device", &device.to_string()]);
        command.args(["--quiet", "--group", &group, "--lease-s", &args.lease_s.to_string()]);
        // The workers load the DAG with the same variables, or they would work on other nodes.
        for var in &args.vars.vars {
            command.arg("--var").arg(var.arg());
        }
        // The worker stops when its standard input, a pipe whose write end only this process
        // holds (std opens pipes close-on-exec: other workers do not inherit it), closes.
        command.arg("--stop-with-parent").stdin(std::process::Stdio::piped());
        if !args.only.is_empty() {
            command.arg("--only").args(&args.only);
        }
        command.stdout(std::process::Stdio::null());
        children.push(command.spawn().map_err(|e| Error::io(&exe, e))?);
    }
    let statuses = watch(&ws, &dag, children, args.quiet, &interrupt).await?;
    for (rank, status) in statuses.iter().enumerate() {
        if !status.success() {
            super::output::error_line(&format!("warning: worker {rank} ({}) ended with {status}", devices[rank]));
        }
    }
    if interrupt.stop_requested() {
        return Err(Error::Interrupted("the workers stopped; committed work is kept: run the same command again to resume".into()));
    }
    // Finish what no worker finished, and gather the workers' outcomes into one summary.
    let worker = WorkerOptions { lease: Duration::from_secs_f64(args.lease_s), group: Some(group.clone()), ..WorkerOptions::default() };
    let opts = RunOptions { only: args.only, device: devices[0], worker: Some(worker), ..RunOptions::default() };
    let command: Vec<String> = std::env::args().collect();
    let mut report = exec::run(Arc::clone(&dag), opts, command, interrupt, Arc::new(progress::Progress::new(true))).await?;
    exec::merge_group(&ws, &group, &mut report)?;
    let dag_arg = super::shell_word(&args.dag.display().to_string());
    let ws_flag = args.workspace.workspace.as_ref().map(|w| format!(" --workspace {}", super::shell_word(w))).unwrap_or_default()
        + &args.vars.flags();
    print_report(&dag, &report, &dag_arg, &ws_flag, true).await
}

/// Waits for the workers, showing the units committed over all nodes; a signal is passed on
/// to every worker (each stops taking units and commits what it runs).
async fn watch(ws: &Workspace, dag: &dag::Dag, mut children: Vec<Child>, quiet: bool, interrupt: &Interrupt) -> Result<Vec<ExitStatus>> {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} units committed by {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} workers", children.len()));
    let nodes = crate::status::nodes_of(ws, Some(dag))?;
    let mut forwarded = false;
    let mut last_poll = Instant::now() - Duration::from_secs(10);
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    while statuses.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().map_err(|e| Error::Internal(format!("waiting for a worker: {e}")))?;
            }
        }
        if interrupt.stop_requested() && !forwarded {
            forwarded = true;
            for (child, status) in children.iter().zip(&statuses) {
                if status.is_none() {
                    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                }
            }
        }
        if !quiet && last_poll.elapsed() >= Duration::from_secs(1) {
            last_poll = Instant::now();
            let ws = ws.clone();
            let nodes = nodes.clone();
            if let Ok(Ok(progress)) = tokio::task::spawn_blocking(move || crate::status::progress(&ws, &nodes)).await {
                let (done, total) = progress.totals();
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    Ok(statuses.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn rank_and_world_come_from_flags_then_slurm_then_kubernetes() {
        assert_eq!(rank_and_world(Some(2), Some(4), &env(&[("SLURM_ARRAY_TASK_ID", "1")])).unwrap(), (2, 4));
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "8"), ("SLURM_ARRAY_TASK_MIN", "0")]);
        assert_eq!(rank_and_world(None, None, &slurm).unwrap(), (5, 8));
        assert_eq!(rank_and_world(None, Some(16), &env(&[("JOB_COMPLETION_INDEX", "15")])).unwrap(), (15, 16));
        assert_eq!(rank_and_world(None, None, &env(&[])).unwrap(), (0, 1));
        assert!(matches!(rank_and_world(None, None, &env(&[("JOB_COMPLETION_INDEX", "3")])), Err(Error::Usage(_))));
        assert!(matches!(rank_and_world(Some(0), Some(0), &env(&[])), Err(Error::Usage(_))));
        assert!(matches!(rank_and_world(None, None, &env(&[("SLURM_ARRAY_TASK_ID", "x")])), Err(Error::Usage(_))));
    }
}
