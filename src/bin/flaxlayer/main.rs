//! The `flaxlayer` command line: inspect and run bundles.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flaxlayer::tensor::{read_safetensors, write_safetensors};
use flaxlayer::{Bundle, FlaxLayer, PyTree, Tensor};

mod bench;
mod plugin;
mod train;

#[derive(Parser)]
#[command(name = "flaxlayer", version, about = "Run Flax (JAX) bundles through PJRT")]
struct Cli {
    /// PJRT plugin .so (default: $PJRT_PLUGIN_PATH, else the first found: see `flaxlayer plugin show`).
    #[arg(long, global = true)]
    plugin: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Methods, modes, inputs and outputs with shapes, and weight counts of a bundle.
    Inspect { bundle: PathBuf },
    /// Run a method on inputs from a safetensors file; write the outputs to another.
    Run(RunArgs),
    /// Per-call latency (median, p10, p90 µs), host in to host out, on random inputs.
    Bench(bench::BenchArgs),
    /// Train a bundle with a train section on a safetensors data set; optionally checkpoint.
    Train(train::TrainArgs),
    /// Which PJRT plugin loads; install the CPU plugin for this user.
    Plugin(plugin::PluginArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    bundle: PathBuf,
    /// Inputs, named by PyTree path (`inputs` for a bare array, `0`, `1/ids`, `image`, ...).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the outputs, named by PyTree path (`outputs` for a bare array).
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    method: Option<String>,
    /// Use the training computation (dropout on, batch stats updated, key advanced).
    #[arg(long)]
    training: bool,
    #[arg(long)]
    seed: Option<u64>,
    /// Variables to start from (by Flax path) instead of running init.
    #[arg(long)]
    variables: Option<PathBuf>,
    /// Make N successive calls on the same inputs and write the last outputs.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Write the variables after the calls.
    #[arg(long)]
    save_variables: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { bundle } => inspect(&bundle, cli.plugin.as_deref()),
        Command::Run(args) => run_bundle(args, cli.plugin.as_deref()),
        Command::Bench(args) => bench::run(args, cli.plugin),
        Command::Train(args) => train::run(args, cli.plugin),
        Command::Plugin(args) => plugin::run(args, cli.plugin),
    }
}

fn build_layer(bundle: &Path, method: Option<&str>, seed: Option<u64>, variables: Option<&Path>, plugin: Option<&Path>) -> Result<FlaxLayer> {
    let mut b = FlaxLayer::builder(bundle);
    if let Some(m) = method {
        b = b.method(m);
    }
    if let Some(s) = seed {
        b = b.seed(s);
    }
    if let Some(v) = variables {
        b = b.variables_file(v);
    }
    if let Some(p) = plugin {
        b = b.plugin(p);
    }
    b.build().with_context(|| format!("loading bundle {}", bundle.display()))
}

fn shape(dtype: flaxlayer::DType, dims: &[i64]) -> String {
    format!("{dtype}{dims:?}")
}

fn inspect(path: &Path, plugin: Option<&Path>) -> Result<()> {
    let bundle = Bundle::open(path)?;
    let m = bundle.manifest();
    println!("bundle {}  (module {}, seed {}, platforms {:?})", path.display(), m.module, m.seed, m.platforms);
    println!("rng streams: {:?}", m.rng_streams);
    let (params, state): (Vec<_>, Vec<_>) = m.variables.iter().partition(|v| v.is_param());
    let count = |vs: &[&flaxlayer::bundle::VariableSpec]| -> u64 { vs.iter().map(|v| v.shape.iter().product::<i64>() as u64).sum() };
    println!("trainable weights: {} ({} params)", params.len(), count(&params));
    println!("non-trainable weights: {} ({} values)", state.len(), count(&state));
    for v in &m.variables {
        println!("  {:<48} {}", v.name, shape(v.dtype, &v.shape));
    }
    for (name, method) in &m.methods {
        let default = if *name == m.default_method { " (default)" } else { "" };
        println!("method {name}{default}");
        for (mode, comps) in [("inference", &method.inference), ("training", &method.training)] {
            for c in comps {
                let comp = bundle.computation(&c.file)?;
                let exp = &comp.exported;
                let ins: Vec<String> = c.args.iter().zip(&exp.in_avals)
                    .filter(|(s, _)| s.role == flaxlayer::bundle::Role::Input)
                    .map(|(s, a)| format!("{}: {}", s.name.as_deref().unwrap_or(""), shape(a.dtype, &a.shape)))
                    .collect();
                let outs: Vec<String> = c.results.iter().zip(&exp.out_avals)
                    .filter(|(s, _)| s.role == flaxlayer::bundle::Role::Output)
                    .map(|(s, a)| format!("{}: {}", s.name.as_deref().unwrap_or(""), shape(a.dtype, &a.shape)))
                    .collect();
                println!("  {mode:<9} batch {:>4}  in ({})  out ({})", c.batch_size.map_or("-".into(), |b| b.to_string()), ins.join(", "), outs.join(", "));
            }
        }
    }
    if let Some(p) = plugin {
        let client = flaxlayer::pjrt::Client::new(Some(p))?;
        println!("plugin: {:?}", client.plugin());
    }
    Ok(())
}

fn run_bundle(args: RunArgs, plugin: Option<&Path>) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut layer = build_layer(&args.bundle, args.method.as_deref(), args.seed, args.variables.as_deref(), plugin)?;
    let named = read_safetensors(&args.input).with_context(|| format!("reading --input {}", args.input.display()))?;
    let inputs = PyTree::from_named_leaves(layer.input_tree(), "inputs", named).context("building the inputs from --input")?;
    let mut outputs = PyTree::None;
    for _ in 0..args.steps {
        outputs = layer.call(&inputs, args.training)?;
    }
    let named: Vec<(String, &Tensor)> = outputs.flatten_with_paths("outputs");
    write_safetensors(&args.output, &named, None).with_context(|| format!("writing --output {}", args.output.display()))?;
    println!("wrote {} output(s) to {}", named.len(), args.output.display());
    if let Some(path) = &args.save_variables {
        let vars = layer.variables()?;
        let refs: Vec<(&str, &Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(path, &refs, None)?;
        println!("wrote {} variable(s) to {}", refs.len(), path.display());
    }
    Ok(())
}
