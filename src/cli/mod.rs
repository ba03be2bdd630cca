//! The `unoflow` command line: argument definitions and one function per command. Only this
//! module and `main` print.

mod generate;
mod ops;
pub mod output;
mod progress;
mod submit;
mod tiny;
mod worker;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use unoflow_api::Device;
use unoflow_operators::generate::{Pe, Shift};

use crate::catalog::Catalog;
use crate::dag::{self, Dag};
use crate::error::{Error, IoContext, Result};
use crate::exec::{self, RunOptions, Status};
use crate::format::{self, OutputFormat};
use crate::interrupt::Interrupt;
use crate::ops::Registry;
use crate::plan::{self, State};
use crate::workspace::Location;
use output::STDOUT;

/// Declarative, cached, resumable dataflow for UNO subject-driven image generation.
#[derive(Debug, Parser)]
#[command(name = "unoflow", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a DAG file without running anything (exit 2 on errors).
    #[command(
        after_help = "Examples:\n  unoflow validate dags/quickstart.toml\n  unoflow validate dags/quickstart.toml --var datasets=/data/my-datasets"
    )]
    Validate {
        /// The DAG file.
        dag: PathBuf,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Show what `run` would do: each node's fingerprint and state (cached, stale, missing), and why.
    #[command(after_help = "Examples:\n  unoflow plan dags/quickstart.toml\n  unoflow plan dags/quickstart.toml --json")]
    Plan {
        dag: PathBuf,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        device: DeviceArg,
        /// Print a JSON array of {node, fingerprint, state, reasons}.
        #[arg(long)]
        json: bool,
    },
    /// Run the nodes that are not cached; committed work survives interruptions.
    #[command(
        after_help = "Examples:\n  unoflow run dags/quickstart.toml\n  unoflow run dags/quickstart.toml --only dino --force dino\n  unoflow run dags/uno.toml --devices all          # one worker per GPU of this host"
    )]
    Run(RunArgs),
    /// Work on a DAG's units together with other workers sharing the workspace (started by
    /// Slurm, Kubernetes, or by hand), until the DAG is complete.
    #[command(after_help = "Examples:\n  unoflow worker dags/uno.toml --workspace s3://bucket/uno --device cuda:0")]
    Worker(worker::WorkerArgs),
    /// Start workers on a cluster: write an sbatch array script or a Kubernetes Indexed Job, and submit it.
    #[command(
        after_help = "Examples:\n  unoflow submit dags/uno.toml --backend slurm --workspace /shared/uno --workers 8 --dry-run\n  unoflow submit dags/uno.toml --backend kubernetes --workspace s3://bucket/uno --workers 8 --image ghcr.io/me/unoflow"
    )]
    Submit(submit::SubmitArgs),
    /// Show a workspace's progress: per node units done, held and pending, live workers, rate and time left.
    #[command(after_help = "Examples:\n  unoflow status --dag dags/quickstart.toml\n  unoflow status --workspace s3://bucket/uno --json")]
    Status {
        /// Report on this DAG's current nodes (default: the nodes the workspace's index names).
        #[arg(long)]
        dag: Option<PathBuf>,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        device: DeviceArg,
        /// Print the progress as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Query node outputs with SQL; every node's output is a table named after it, its failed rows `errors.NODE`.
    #[command(
        after_help = "Examples:\n  unoflow sql --dag dags/quickstart.toml \"SELECT subject1, dino_mean, dino_pass FROM dino\"\n  unoflow sql --dag dags/quickstart.toml --format parquet -o curated.parquet \"SELECT * FROM curated\"\n  unoflow sql --dag dags/quickstart.toml \"SELECT * FROM errors.dino\""
    )]
    Sql {
        /// The query (read-only).
        query: String,
        /// Use the outputs of this DAG's current nodes.
        #[arg(long)]
        dag: Option<PathBuf>,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        device: DeviceArg,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = output_format())]
        format: OutputFormat,
        /// Write the result to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The most rows the `table` format prints (the data formats print every row).
        #[arg(long, default_value_t = format::TABLE_ROWS)]
        max_rows: usize,
    },
    /// List the operators, or show one in full.
    #[command(after_help = "Examples:\n  unoflow ops\n  unoflow ops dino_filter\n  unoflow ops --markdown > docs/operators.md")]
    Ops {
        /// An operator name.
        name: Option<String>,
        /// Print the operator reference of the book (docs/operators.md) in Markdown: every
        /// operator, its parameters, and the columns it reads and writes.
        #[arg(long)]
        markdown: bool,
    },
    /// List the runs recorded in a workspace.
    #[command(after_help = "Examples:\n  unoflow runs --dag dags/quickstart.toml")]
    Runs {
        #[arg(long)]
        dag: Option<PathBuf>,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        vars: VarArgs,
        /// Print the run records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate images with UNO: a prompt and reference images (like the reference inference.py).
    #[command(
        after_help = "Examples:\n  unoflow generate --tiny --prompt \"a cat on a sofa\" --out cat.png --width 128 --height 128 --steps 4\n  unoflow generate --model-dir /models/FLUX.1-dev --lora /models/UNO/dit_lora.safetensors --ref dog.jpg --prompt \"the dog on a beach\" --out dog.png --device cuda"
    )]
    Generate(GenerateArgs),
    /// Models: check one against its reference implementation's fixture (`check`), or write a
    /// tiny random one in a release's layout (`tiny`).
    #[command(
        after_help = "Examples:\n  unoflow model tiny /tmp/flux-tiny --kind flux-dev\n  unoflow model check flux --weights operators/models/fixtures/flux/tiny.safetensors --fixture operators/models/fixtures/flux/ref1.fixture.safetensors"
    )]
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Open the review page: the DAG, any node's rows and pairs with thumbnails, lineage, runs,
    /// accept/reject labels and threshold calibration, in a browser.
    #[command(after_help = "Examples:\n  unoflow serve --dag dags/quickstart.toml            # then open http://127.0.0.1:8787")]
    Serve(ServeArgs),
    /// Show where a row came from: its values, the node's parameters, and the rows it was made from.
    #[command(after_help = "Example:\n  unoflow lineage --dag dags/quickstart.toml dino 3f2a9c0d1e4b5a6f")]
    Lineage {
        /// The node holding the row.
        node: String,
        /// The row's `row_id`.
        row_id: String,
        #[arg(long)]
        dag: Option<PathBuf>,
        #[command(flatten)]
        workspace: WorkspaceArg,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        device: DeviceArg,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("models").required(true).args(["model_dir", "tiny"])))]
pub struct GenerateArgs {
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// A reference image (repeat for several subjects).
    #[arg(long = "ref", value_name = "IMAGE")]
    pub refs: Vec<PathBuf>,
    /// Where to write the PNG (with several images: OUT_0.png, OUT_1.png, …).
    #[arg(long)]
    pub out: PathBuf,
    /// Width in pixels, 16 to 4096 (rounded down to a multiple of 16).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=MAX_SIDE))]
    pub width: u32,
    /// Height in pixels, 16 to 4096 (rounded down to a multiple of 16).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=MAX_SIDE))]
    pub height: u32,
    /// Denoising steps.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steps: u32,
    /// Distilled guidance strength, 0 to 100 (UNO: 4, plain FLUX.1-dev: 3.5).
    #[arg(long, default_value_t = 4.0, value_parser = parse_guidance)]
    pub guidance: f32,
    /// Seed; image j uses seed + j.
    #[arg(long, default_value_t = 3407)]
    pub seed: u64,
    /// Images to generate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub num_images: u32,
    /// A model folder (BFL layout, or diffusers with ae.safetensors or a vae/ folder).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Use a tiny random model set (no downloads; for trying the pipeline).
    #[arg(long)]
    pub tiny: bool,
    /// UNO LoRA weights (dit_lora.safetensors).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Position ids of the references: d (diagonal UnoPE), h, w, o (none).
    #[arg(long, default_value = "d", value_parser = choice::<Pe>())]
    pub pe: Pe,
    /// The references' long side, up to 4096 (0: 512 for one reference, 320 for several).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MAX_SIDE))]
    pub ref_size: u32,
    /// Refuse reference images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = unoflow_api::PixelLimit::DEFAULT.pixels())]
    pub max_image_pixels: u64,
    /// How the schedule's shift is computed: uno (the released pipeline) or flux (image tokens).
    #[arg(long, default_value = "uno", value_parser = choice::<Shift>())]
    pub shift: Shift,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Run a model on a reference fixture and compare: the last line is `rel_err=… max_abs_err=…`;
    /// exit 1 above the tolerance, 2 on bad input.
    Check {
        /// The model kind: flux, ae, t5, clip_text, clip, dinov2 or dino.
        kind: String,
        /// The weights, in the checkpoint's own layout (a file, or a diffusers folder).
        #[arg(long)]
        weights: PathBuf,
        /// UNO LoRA weights to attach.
        #[arg(long)]
        lora: Option<PathBuf>,
        /// The fixture (safetensors with `input.*`, `expected.*`, metadata `kind`, `config`).
        #[arg(long)]
        fixture: PathBuf,
        /// The largest acceptable relative error ‖out − expected‖ / ‖expected‖.
        #[arg(long, default_value_t = 1e-4)]
        tol: f64,
        /// The compute precision.
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        dtype: Precision,
        /// Where to run: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: Device,
    },
    /// Write a tiny random model folder in the exact file and key layout of a public release,
    /// to rehearse a DAG before downloading the weights (FLUX.1-dev alone is 37 GB).
    Tiny {
        /// The folder to create (absent or empty).
        dir: PathBuf,
        /// Which release the folder mimics.
        #[arg(long, value_enum)]
        kind: TinyKind,
        /// FLUX only: the transformer and autoencoder layout [default: bfl].
        #[arg(long, value_enum)]
        layout: Option<TinyLayout>,
        /// The seed of the random weights: the same seed writes the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// The release a `model tiny` folder mimics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TinyKind {
    /// black-forest-labs/FLUX.1-dev: transformer, autoencoder, CLIP-L and T5 encoders, tokenizers.
    FluxDev,
    /// facebook/dinov2-small (transformers Dinov2Model).
    Dinov2,
    /// facebook/dino-vits16 (transformers ViTModel).
    Dino,
    /// openai/clip-vit-base-patch32 (transformers CLIPModel with its tokenizer).
    Clip,
}

/// How a tiny FLUX folder stores the transformer and autoencoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TinyLayout {
    /// flux1-dev.safetensors and ae.safetensors at the root, as BFL releases them.
    Bfl,
    /// model_index.json, transformer/ (sharded), vae/, scheduler/, as diffusers saves a pipeline.
    Diffusers,
}

/// A compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    Bf16,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Show this DAG's current nodes (and follow the file as it changes).
    #[arg(long)]
    pub dag: Option<PathBuf>,
    #[command(flatten)]
    pub workspace: WorkspaceArg,
    #[command(flatten)]
    pub vars: VarArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    /// The address to listen on; one that is not loopback requires a token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// The port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// The token every request must carry (default on a non-loopback address: a random one,
    /// printed in the URL). Also read from UNOFLOW_SERVE_TOKEN.
    #[arg(long, env = "UNOFLOW_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub limits: crate::serve::Limits,
}

#[derive(Debug, Args)]
pub struct WorkspaceArg {
    /// The workspace: a folder, or s3://bucket/prefix, gs://…, az://… (default: the DAG's
    /// `[dag] workspace`).
    #[arg(long, value_name = "DIR|URL")]
    pub workspace: Option<String>,
}

/// `--var NAME=VALUE`, on every command that loads a DAG file.
#[derive(Debug, Clone, Default, Args)]
pub struct VarArgs {
    /// Override a variable of the DAG's [vars] (repeatable; the last of a name wins). VALUE is a
    /// TOML value of the declared type (4, 0.5, true, ["512x512"], "text"); a bare word that is
    /// not valid TOML is taken as a string (--var datasets=/data/x).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<dag::VarOverride>,
}

impl VarArgs {
    /// The options to load a DAG with these variables and `workspace`.
    pub fn load_options<'a>(&'a self, workspace: Option<&'a str>) -> dag::LoadOptions<'a> {
        dag::LoadOptions::new(workspace, &self.vars)
    }

    /// The flags that give these variables again, for commands printed to paste.
    pub fn flags(&self) -> String {
        let arg = |v: &crate::dag::VarOverride| match crate::dag::interpolate::is_secret_name(&v.name) {
            true => format!("{}=…", v.name),
            false => v.arg(),
        };
        self.vars.iter().map(|v| format!(" --var {}", shell_word(&arg(v)))).collect()
    }
}

/// `--device` on the commands that compute fingerprints without running anything.
#[derive(Debug, Clone, Copy, Args)]
pub struct DeviceArg {
    /// The device the outputs are computed on (cpu, cuda or cuda:N): model nodes' fingerprints
    /// hold its class and precision (cpu/f32, cuda/bf16). Give what `run` was given; no such
    /// device is needed here.
    #[arg(long, default_value = "cpu", value_parser = parse_device_name)]
    pub device: Device,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The DAG file.
    pub dag: PathBuf,
    #[command(flatten)]
    pub workspace: WorkspaceArg,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Run only these nodes, and whatever they need that is not cached.
    #[arg(long, num_args = 1.., value_name = "NODE")]
    pub only: Vec<String>,
    /// Recompute these nodes even if they are cached.
    #[arg(long, num_args = 1.., value_name = "NODE")]
    pub force: Vec<String>,
    /// Where models run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Stop at the first row that fails instead of recording it and going on.
    #[arg(long)]
    pub fail_fast: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// If another run holds the workspace, wait for it instead of refusing.
    #[arg(long)]
    pub wait: bool,
    /// Run this many worker processes on this host (on --device), sharing the units; a
    /// `train_lora` node is trained by all of them together (data parallel).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// One worker per device: a list (cuda:0,cuda:1) or `all`; a `train_lora` node is trained
    /// on all of them together.
    #[arg(long, value_name = "LIST|all", conflicts_with = "workers")]
    pub devices: Option<String>,
    /// With several workers: seconds a claim on a unit lasts without renewal.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::exec::DEFAULT_LEASE.as_secs_f64())]
    pub lease_s: f64,
}

/// A parser for a choice enum's words: clap lists them in `--help` and in errors.
fn choice<C: unoflow_api::Choice + std::str::FromStr<Err = String> + Send + Sync + 'static>()
-> impl clap::builder::TypedValueParser<Value = C> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(C::NAMES).try_map(|s| s.parse::<C>())
}

/// The largest image side `generate` makes: 16 megapixels, a 256 MB f32 latent working set per
/// image at this size already.
pub const MAX_SIDE: i64 = 4096;

fn parse_guidance(s: &str) -> std::result::Result<f32, String> {
    let g: f32 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if !g.is_finite() || !(0.0..=100.0).contains(&g) {
        return Err(format!("{s} is not a guidance strength: use a finite number from 0 to 100 (UNO uses 4)"));
    }
    Ok(g)
}

/// `--format`'s words, listed in `--help` and checked by clap.
fn output_format() -> impl clap::builder::TypedValueParser<Value = OutputFormat> {
    use clap::builder::TypedValueParser;
    use unoflow_api::params::Choice;
    clap::builder::PossibleValuesParser::new(OutputFormat::NAMES).map(|s| s.parse::<OutputFormat>().expect("one of its names"))
}

/// A device name, whether or not this host has the device (for commands that only plan).
fn parse_device_name(s: &str) -> std::result::Result<Device, String> {
    s.parse::<Device>().map_err(|e| e.to_string())
}

fn parse_device(s: &str) -> std::result::Result<Device, String> {
    let device = s.parse::<Device>().map_err(|e| e.to_string())?;
    unoflow_models::device::check_available(device).map_err(|e| e.to_string())
}

/// Runs a parsed command line with the built-in operators; returns the process exit code.
pub async fn main(cli: Cli, interrupt: Interrupt) -> Result<i32> {
    main_with(cli, interrupt, crate::builtin_registry()).await
}

/// Runs a parsed command line with the operators of `registry`: the whole CLI for a program
/// that adds operators of its own (`examples/own_operator.rs`). Workers it starts are this
/// same program, so they know the same operators.
pub async fn main_with(cli: Cli, interrupt: Interrupt, registry: Registry) -> Result<i32> {
    match cli.command {
        Command::Validate { dag, vars } => {
            let options = dag::LoadOptions { depth: dag::Depth::EveryRecord, ..vars.load_options(None) };
            let d = dag::load_with(&dag, options, &registry).await?;
            writeln!(output::stdout(), "{}: ok ({} nodes)", dag.display(), d.nodes.len()).at(STDOUT)?;
            Ok(0)
        }
        Command::Plan { dag, workspace, vars, device, json } => {
            let options = dag::LoadOptions { device: device.device, ..vars.load_options(workspace.workspace.as_deref()) };
            let d = dag::load_with(&dag, options, &registry).await?;
            print_plan(&d, json)
        }
        Command::Run(args) if args.workers > 1 || args.devices.is_some() => worker::run_many(args, &registry, interrupt).await,
        Command::Run(args) => run(args, &registry, interrupt).await,
        Command::Worker(args) => worker::worker(args, &registry, interrupt).await,
        Command::Submit(args) => submit::submit(args, &registry).await,
        Command::Status { dag, workspace, vars, device, json } => {
            let options = dag::LoadOptions { device: device.device, ..vars.load_options(workspace.workspace.as_deref()) };
            status(dag.as_deref(), options, json, &registry).await
        }
        Command::Sql { query, dag, workspace, vars, device, format, output, max_rows } => {
            let options = dag::LoadOptions { device: device.device, ..vars.load_options(workspace.workspace.as_deref()) };
            let catalog = catalog(dag.as_deref(), options, &registry).await?;
            sql(&catalog, &query, format, output.as_deref(), max_rows).await
        }
        Command::Ops { name, markdown } => {
            let listing = match (name.as_deref(), markdown) {
                (Some(_), true) => return Err(Error::Usage("`--markdown` lists every operator; leave out the operator's name".into())),
                (Some(name), false) => ops::Listing::One(name),
                (None, true) => ops::Listing::Markdown,
                (None, false) => ops::Listing::Short,
            };
            ops::ops(&registry, listing).await
        }
        Command::Runs { dag, workspace, vars, json } => {
            let root = workspace_root(dag.as_deref(), vars.load_options(workspace.workspace.as_deref()), &registry).await?;
            runs(&root, json)
        }
        Command::Generate(args) => generate::run(args, interrupt).await,
        Command::Model { command: ModelCommand::Tiny { dir, kind, layout, seed } } => tiny::write(dir, kind, layout, seed).await,
        Command::Model { command: ModelCommand::Check { kind, weights, lora, fixture, tol, dtype, device } } => {
            let dtype = match dtype {
                Precision::F32 => unoflow_models::Precision::F32,
                Precision::Bf16 => unoflow_models::Precision::Bf16,
            };
            let result = tokio::task::spawn_blocking(move || {
                unoflow_models::fixture::check(&kind, &fixture, &weights, lora.as_deref(), device, dtype)
            })
            .await
            .map_err(|e| Error::Internal(format!("model check panicked: {e}")))?;
            let comparison = result.map_err(|e| Error::Usage(e.to_string()))?;
            let verdict = if comparison.rel_err <= tol { "ok" } else { "FAILED" };
            writeln!(output::stdout(), "{verdict}: tolerance {tol:e}\n{comparison}").at(STDOUT)?;
            Ok(if comparison.rel_err <= tol { 0 } else { 1 })
        }
        Command::Serve(args) => {
            let options = crate::serve::ServeOptions {
                dag: args.dag,
                workspace: args.workspace.workspace,
                vars: args.vars.vars,
                device: args.device.device,
                host: args.host,
                port: args.port,
                token: args.token,
                limits: args.limits,
            };
            crate::serve::serve(options, registry).await
        }
        Command::Lineage { node, row_id, dag, workspace, vars, device } => {
            let options = dag::LoadOptions { device: device.device, ..vars.load_options(workspace.workspace.as_deref()) };
            let catalog = catalog(dag.as_deref(), options, &registry).await?;
            write!(output::stdout(), "{}", crate::lineage::lineage(&catalog, &node, &row_id).await?).at(STDOUT)?;
            Ok(0)
        }
    }
}

async fn workspace_root(dag: Option<&Path>, options: dag::LoadOptions<'_>, registry: &Registry) -> Result<Location> {
    match (dag, options.workspace) {
        (_, Some(w)) => Location::parse(w, &std::path::absolute(".").map_err(|e| Error::io(".", e))?),
        (Some(d), None) => Ok(dag::load_with(d, options, registry).await?.workspace),
        (None, None) => Err(Error::Usage("say which workspace: --dag DAG or --workspace DIR|URL".into())),
    }
}

async fn catalog(dag: Option<&Path>, options: dag::LoadOptions<'_>, registry: &Registry) -> Result<Catalog> {
    match dag {
        Some(d) => Catalog::of_dag(&dag::load_with(d, options, registry).await?),
        None => Catalog::of_workspace(&workspace_root(None, options, registry).await?),
    }
}

fn print_plan(dag: &Dag, json: bool) -> Result<i32> {
    let plan = plan::plan(dag)?;
    let mut out = output::stdout();
    if json {
        let text = serde_json::to_string_pretty(&plan.nodes).map_err(|e| Error::Internal(e.to_string()))?;
        writeln!(out, "{text}").at(STDOUT)?;
        return Ok(0);
    }
    let width = plan.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:width$}  {:7}  {:12}  why", "node", "state", "fingerprint").at(STDOUT)?;
    for n in &plan.nodes {
        let why = if n.reasons.is_empty() { "-".to_string() } else { n.reasons.join("; ") };
        writeln!(out, "{:width$}  {:7}  {:12}  {why}", n.node, n.state.as_str(), &n.fingerprint[..12]).at(STDOUT)?;
    }
    let todo = plan.nodes.iter().filter(|n| !matches!(n.state, State::Cached | State::View)).count();
    writeln!(out, "\n{todo} of {} nodes to compute (workspace {})", plan.nodes.len(), dag.workspace).at(STDOUT)?;
    Ok(0)
}

async fn run(args: RunArgs, registry: &Registry, interrupt: Interrupt) -> Result<i32> {
    let workspace_arg = args.workspace.workspace.clone();
    let options = dag::LoadOptions { device: args.device, ..args.vars.load_options(args.workspace.workspace.as_deref()) };
    let dag = Arc::new(dag::load_with(&args.dag, options, registry).await?);
    let opts =
        RunOptions { only: args.only, force: args.force, fail_fast: args.fail_fast, wait: args.wait, device: args.device, worker: None };
    let command: Vec<String> = std::env::args().collect();
    let progress = Arc::new(progress::Progress::new(args.quiet));
    let report = exec::run(Arc::clone(&dag), opts, command, interrupt, progress).await?;
    let dag_arg = shell_word(&args.dag.display().to_string());
    let ws_flag = workspace_arg.as_ref().map(|w| format!(" --workspace {}", shell_word(w))).unwrap_or_default() + &args.vars.flags();
    print_report(&dag, &report, &dag_arg, &ws_flag, false).await
}

/// Prints a run's summary (and, after a success, what to look at next); the exit code.
async fn print_report(dag: &Dag, report: &exec::RunReport, dag_arg: &str, ws_flag: &str, several: bool) -> Result<i32> {
    let width = report.outcomes.iter().map(|o| o.name.len()).max().unwrap_or(4).max(4);
    let op_width = report.outcomes.iter().map(|o| o.op.len()).max().unwrap_or(2).max(2);
    let mut out = output::stdout();
    writeln!(out, "{:width$}  {:op_width$}  {:11}  {:>9}  {:>7}  {:>8}", "node", "op", "status", "rows", "errors", "seconds").at(STDOUT)?;
    for o in &report.outcomes {
        writeln!(
            out,
            "{:width$}  {:op_width$}  {:11}  {:>9}  {:>7}  {:>8.2}",
            o.name,
            o.op,
            o.status.as_str(),
            o.rows,
            o.error_rows,
            o.seconds
        )
        .at(STDOUT)?;
    }
    for o in report.outcomes.iter().filter(|o| o.status == Status::Failed) {
        output::error_line(&format!("error: node `{}` failed: {}", o.name, o.message.as_deref().unwrap_or("unknown error")));
    }
    let count = |s: Status| report.outcomes.iter().filter(|o| o.status == s).count();
    let errors: u64 = report.outcomes.iter().map(|o| o.error_rows).sum();
    writeln!(
        out,
        "\nrun {}: {} computed, {} resumed, {} cached, {} view{}, {} failed, {} skipped; {errors} row error{} (workspace {})",
        report.run_id,
        count(Status::Computed),
        count(Status::Resumed),
        count(Status::Cached),
        count(Status::View),
        if count(Status::View) == 1 { "" } else { "s" },
        count(Status::Failed),
        count(Status::Skipped),
        if errors == 1 { "" } else { "s" },
        dag.workspace
    )
    .at(STDOUT)?;
    if several {
        writeln!(out, "(computed by several workers; `unoflow runs` lists each worker's record)").at(STDOUT)?;
    }
    if let Some(bad) = report.outcomes.iter().find(|o| o.error_rows > 0) {
        writeln!(out, "failed rows: unoflow sql --dag {dag_arg}{ws_flag} \"SELECT * FROM errors.{}\"", bad.name).at(STDOUT)?;
    }
    if !report.interrupted && !report.failed() {
        print_next_steps(&mut out, dag, report, dag_arg, ws_flag).await?;
    }
    if report.interrupted {
        return Err(Error::Interrupted(format!("committed work is kept; run `unoflow run {dag_arg}{ws_flag}` again to resume")));
    }
    Ok(if report.failed() || count(Status::Interrupted) > 0 { 1 } else { 0 })
}

/// Ends a successful run's summary with the commands to look at what it made: a query and the
/// lineage of one row of the last node that is not an export.
async fn print_next_steps(out: &mut impl Write, dag: &Dag, report: &exec::RunReport, dag_arg: &str, ws_flag: &str) -> Result<()> {
    let Some(last) = dag.nodes.iter().rev().find(|n| n.op_name() != "export" && report.outcomes.iter().any(|o| o.name == n.name)) else {
        return Ok(());
    };
    let row = async {
        let catalog = Catalog::of_dag(dag).ok()?;
        let query = format!("SELECT row_id FROM {} LIMIT 1", last.name);
        let ctx = catalog.session_for(&query).await.ok()?;
        let batches = crate::query::plan(&ctx, &query).await.ok()?.collect().await.ok()?;
        let ids = batches.first()?.column(0).as_any().downcast_ref::<datafusion::arrow::array::StringArray>()?.clone();
        use datafusion::arrow::array::Array;
        (!ids.is_empty()).then(|| ids.value(0).to_string())
    };
    writeln!(out, "\nnext:").at(STDOUT)?;
    writeln!(out, "  unoflow plan {dag_arg}{ws_flag}").at(STDOUT)?;
    writeln!(out, "  unoflow sql --dag {dag_arg}{ws_flag} \"SELECT * FROM {} LIMIT 5\"", last.name).at(STDOUT)?;
    if let Some(row) = row.await {
        writeln!(out, "  unoflow lineage --dag {dag_arg}{ws_flag} {} {row}", last.name).at(STDOUT)?;
    }
    writeln!(out, "look at it, label pairs and calibrate thresholds in a browser:\n  unoflow serve --dag {dag_arg}{ws_flag}").at(STDOUT)?;
    Ok(())
}

async fn sql(catalog: &Catalog, query: &str, format: OutputFormat, output: Option<&Path>, max_rows: usize) -> Result<i32> {
    let ctx = catalog.session_for(query).await?;
    let df = crate::query::plan(&ctx, query).await.map_err(|e| {
        let mut names: Vec<&str> = catalog.tables.iter().map(|t| t.data.name()).collect();
        names.sort();
        Error::Usage(format!("{}\ntables: {}", e.strip_backtrace(), names.join(", ")))
    })?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let stream = crate::query::ordered_stream(df).await.map_err(query_error)?;
    match output {
        Some(path) => {
            if path.is_dir() {
                return Err(Error::Usage(format!("--output {}: is a folder; name a file", path.display())));
            }
            // Written beside the destination and renamed into place, so a query that fails
            // halfway leaves no half-written file (and an existing one untouched).
            let tmp = path.with_file_name(format!(".{}.unoflow-tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
            let file = std::fs::File::create(&tmp).map_err(|e| Error::Usage(format!("--output {}: {e}", path.display())))?;
            let written = write_results(std::io::BufWriter::new(file), format, &schema, stream, max_rows).await;
            if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        None => {
            if format == OutputFormat::Parquet && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return Err(Error::Usage("Parquet is binary: pass --output FILE or redirect standard output".into()));
            }
            write_results(std::io::BufWriter::new(output::stdout()), format, &schema, stream, max_rows).await?;
        }
    }
    Ok(0)
}

/// Streams a query's batches into the output format; nothing holds the whole result.
async fn write_results<W: Write + Send>(
    out: W,
    format: OutputFormat,
    schema: &Arc<datafusion::arrow::datatypes::Schema>,
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    max_rows: usize,
) -> Result<()> {
    use futures::StreamExt;
    let mut writer = format::ResultWriter::new(out, format, schema, max_rows)?;
    while let Some(batch) = stream.next().await {
        writer.write(&batch.map_err(query_error)?)?;
        if writer.is_full() {
            break;
        }
    }
    writer.finish()
}

/// An error while running the user's query: the query's fault (exit 2) unless it is the
/// storage's (exit 1).
fn query_error(e: datafusion::error::DataFusionError) -> Error {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::IoError(_) | E::ObjectStore(_) | E::ParquetError(_) | E::ResourcesExhausted(_) | E::External(_) => Error::DataFusion(e),
        _ => Error::Usage(format!("the query failed: {}", e.strip_backtrace())),
    }
}

/// `word` quoted for a POSIX shell when it needs it, so printed commands can be pasted.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn runs(root: &Location, json: bool) -> Result<i32> {
    let ws = crate::workspace::Workspace::open(root)?;
    let list = ws.runs()?;
    // A record still saying `running` while no run holds the workspace belongs to a process
    // that was killed before it could finish the record.
    let live = ws.run_is_live();
    let mut out = output::stdout();
    if json {
        let text = serde_json::to_string_pretty(&list.records).map_err(|e| Error::Internal(e.to_string()))?;
        writeln!(out, "{text}").at(STDOUT)?;
    } else {
        writeln!(out, "{:22}  {:11}  {:19}  {:>8}  {:>8}  {:>6}  dag", "run", "status", "started", "computed", "cached", "failed")
            .at(STDOUT)?;
        let mut killed = false;
        for r in &list.records {
            let count = |s: &str| r.nodes.iter().filter(|n| n.status == s).count();
            let started = r.started_at.get(..19).unwrap_or(&r.started_at).replace('T', " ");
            let status = if r.status == "running" && !live {
                killed = true;
                "killed*"
            } else {
                r.status.as_str()
            };
            writeln!(
                out,
                "{:22}  {:11}  {:19}  {:>8}  {:>8}  {:>6}  {}",
                r.id,
                status,
                started,
                count("computed") + count("resumed"),
                count("cached"),
                count("failed"),
                r.dag_path
            )
            .at(STDOUT)?;
        }
        if killed {
            writeln!(out, "* the process ended without finishing its record (killed); a rerun resumes from its commits").at(STDOUT)?;
        }
    }
    for (path, why) in &list.damaged {
        output::error_line(&format!("warning: damaged run record {}: {why}", path.display()));
    }
    Ok(0)
}

/// `unoflow status`: per node units done / held / pending, the live workers, rate and time left.
async fn status(dag: Option<&Path>, options: dag::LoadOptions<'_>, json: bool, registry: &Registry) -> Result<i32> {
    let (location, loaded) = match dag {
        Some(d) => {
            let loaded = dag::load_with(d, options, registry).await?;
            (loaded.workspace.clone(), Some(loaded))
        }
        None => (workspace_root(None, options, registry).await?, None),
    };
    let ws = crate::workspace::Workspace::open(&location)?;
    let nodes = crate::status::nodes_of(&ws, loaded.as_ref())?;
    let progress = tokio::task::spawn_blocking(move || crate::status::progress(&ws, &nodes))
        .await
        .map_err(|e| Error::Internal(format!("reading the workspace panicked: {e}")))??;
    let mut out = output::stdout();
    if json {
        let text = serde_json::to_string_pretty(&progress).map_err(|e| Error::Internal(e.to_string()))?;
        writeln!(out, "{text}").at(STDOUT)?;
        return Ok(0);
    }
    let width = progress.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:width$}  {:>8}  {:>6}  {:>8}  {:>9}  {:>10}", "node", "done", "held", "pending", "units/min", "time left")
        .at(STDOUT)?;
    for n in &progress.nodes {
        let pending = n.pending.map_or_else(|| "?".to_string(), |p| p.to_string());
        let left = match (n.complete, n.eta_s) {
            (true, _) => "complete".to_string(),
            (false, Some(s)) => format_duration(s),
            (false, None) => "-".to_string(),
        };
        writeln!(out, "{:width$}  {:>8}  {:>6}  {:>8}  {:>9.1}  {:>10}", n.node, n.done, n.held, pending, n.units_per_s * 60.0, left)
            .at(STDOUT)?;
    }
    let now = crate::workspace::now_ms();
    writeln!(out, "\n{} live worker{} (workspace {location})", progress.workers.len(), if progress.workers.len() == 1 { "" } else { "s" })
        .at(STDOUT)?;
    for w in &progress.workers {
        let ago = (now - w.beat_at_ms).max(0) as f64 / 1000.0;
        writeln!(
            out,
            "  rank {:>4}/{:<4} {:30} {:8} {:>6} units done, {}, last beat {ago:.0} s ago",
            w.rank, w.world, w.id, w.device, w.units_done, w.state
        )
        .at(STDOUT)?;
    }
    for g in &progress.gangs {
        let n = g.peers.len();
        writeln!(
            out,
            "\ngang training `{}` (unit {}): {n} peer{}, led by {} at {}, from step {}",
            g.node,
            g.unit,
            if n == 1 { "" } else { "s" },
            g.leader,
            g.address,
            g.step + 1
        )
        .at(STDOUT)?;
        for peer in &g.peers {
            writeln!(out, "  {peer}").at(STDOUT)?;
        }
    }
    Ok(0)
}

/// Seconds as `1h02m`, `3m05s` or `12s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_commands_hide_secret_vars() {
        let var = |name: &str, text: &str| dag::VarOverride { name: name.into(), value: text.into(), text: text.into() };
        let args = VarArgs { vars: vec![var("steps", "4"), var("hf_token", "hf_abc"), var("data", "/my data")] };
        assert_eq!(args.flags(), " --var steps=4 --var 'hf_token=…' --var 'data=/my data'");
    }
}
