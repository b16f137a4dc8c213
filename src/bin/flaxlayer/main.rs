//! The `flaxlayer` command line: inspect and run bundles.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use flaxlayer::tensor::{read_safetensors, write_safetensors};
use flaxlayer::{Bundle, JaxLayer, Mode, PyTree, Tensor};

mod bench;
mod generate;
mod plugin;
#[cfg(feature = "serve")]
mod serve;
mod train;

#[derive(Parser)]
#[command(name = "flaxlayer", version, about = "Run Flax (JAX) bundles through PJRT")]
struct Cli {
    /// PJRT plugin .so (default: $PJRT_PLUGIN_PATH, else the first found: see `flaxlayer plugin show`).
    #[arg(long, global = true)]
    plugin: Option<PathBuf>,
    /// Treat the bundle as untrusted: compile it in a child process with a time limit, so a
    /// payload that crashes or hangs XLA's compiler is an error instead of a crash.
    #[arg(long, global = true)]
    untrusted: bool,
    /// The time limit of one isolated compile, in seconds (with --untrusted).
    #[arg(long, global = true, default_value_t = 120)]
    compile_timeout: u64,
    /// On a CPU plugin, the number of (virtual) devices of the client (default: the plugin's,
    /// 4, or $FLAXLAYER_CPU_DEVICES). A bundle exported for N devices needs at least N.
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=4096))]
    devices: Option<u64>,
    /// Never run a bundle's frozen inference (params compiled in as constants, exported with
    /// `frozen=True`): always pass the params as arguments. Frozen inference is used by default
    /// while the params are the bundle's own.
    #[arg(long, global = true)]
    no_frozen: bool,
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
    /// Generate token ids after a prompt of token ids from a causal LM bundle (no tokenizer).
    Generate(generate::GenerateArgs),
    /// Train a bundle with a train section on a safetensors data set; optionally checkpoint.
    Train(train::TrainArgs),
    /// Which PJRT plugin loads; install the CPU plugin for this user.
    Plugin(plugin::PluginArgs),
    /// Serve a model repository over HTTP: KServe v2 (with binary tensors) and TF Serving REST,
    /// with dynamic batching and Prometheus metrics.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Compile a program read on stdin and write the executable to stdout (the child process
    /// of --untrusted; not for direct use).
    #[command(name = "compile-worker", hide = true)]
    CompileWorker {
        /// The request: plugin and compile options, as JSON.
        #[arg(long)]
        request: String,
    },
}

/// Global settings every command that builds a layer uses.
pub struct Common {
    /// `--plugin`.
    pub plugin: Option<PathBuf>,
    /// `--untrusted`, with its time limit.
    pub isolation: Option<flaxlayer::layer::isolate::Isolation>,
    /// `--devices`.
    pub devices: Option<usize>,
    /// `--no-frozen`.
    pub no_frozen: bool,
}

impl Common {
    /// Applies the settings to a builder.
    pub fn apply<T: flaxlayer::layer::Build>(&self, mut b: flaxlayer::Builder<T>) -> flaxlayer::Builder<T> {
        if let Some(p) = &self.plugin {
            b = b.plugin(p);
        }
        if let Some(iso) = &self.isolation {
            b = b.untrusted(iso.clone());
        }
        if let Some(n) = self.devices {
            b = b.cpu_devices(n);
        }
        if self.no_frozen {
            b = b.without_frozen();
        }
        b
    }

    /// The PJRT client these settings name (for commands that share one client).
    pub fn client(&self) -> flaxlayer::Result<flaxlayer::pjrt::Client> {
        flaxlayer::layer::Options { plugin: self.plugin.clone(), cpu_devices: self.devices, ..Default::default() }.client()
    }
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
    /// Variables to start from (by Flax path) instead of the bundle's own.
    #[arg(long, conflicts_with = "init")]
    variables: Option<PathBuf>,
    /// Run the bundle's init on the device with the seed instead of starting from the
    /// bundle's own variables.
    #[arg(long)]
    init: bool,
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
    let isolation = cli.untrusted.then(|| flaxlayer::layer::isolate::Isolation {
        worker: std::env::current_exe().ok(),
        timeout: std::time::Duration::from_secs(cli.compile_timeout),
    });
    let common = Common { plugin: cli.plugin, isolation, devices: cli.devices.map(|n| n as usize), no_frozen: cli.no_frozen };
    match cli.command {
        Command::Inspect { bundle } => inspect(&bundle, common.plugin.as_deref()),
        Command::Run(args) => run_bundle(args, &common),
        Command::Bench(args) => bench::run(args, &common),
        Command::Train(args) => train::run(args, &common),
        Command::Generate(args) => generate::run(args, &common),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(args, &common),
        Command::CompileWorker { request } => {
            let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
            Ok(flaxlayer::layer::isolate::run_worker(&request, &mut stdin, &mut stdout)?)
        }
        Command::Plugin(args) => plugin::run(args, common.plugin),
    }
}

fn build_layer(args: &RunArgs, common: &Common) -> Result<JaxLayer> {
    let mut b = common.apply(JaxLayer::builder(&args.bundle));
    if let Some(m) = &args.method {
        b = b.method(m);
    }
    if let Some(s) = args.seed {
        b = b.seed(s);
    }
    if let Some(v) = &args.variables {
        b = b.variables_file(v);
    }
    if args.init {
        b = b.init_variables();
    }
    b.build().with_context(|| format!("loading bundle {}", args.bundle.display()))
}

fn shape(dtype: flaxlayer::DType, dims: &[usize]) -> String {
    format!("{dtype}{dims:?}")
}

fn inspect(path: &Path, plugin: Option<&Path>) -> Result<()> {
    let bundle = Bundle::open(path)?;
    let m = bundle.manifest();
    println!("bundle {}  (module {}, seed {}, platforms {:?})", path.display(), m.module, m.seed, m.platforms);
    println!("rng streams: {:?}", m.rng_streams);
    let origin = match (bundle.variables_path().is_file(), m.variables_origin.as_deref()) {
        (false, _) => "none bundled: init runs on the device".to_string(),
        (true, Some(o)) => format!("variables.safetensors ({o})"),
        (true, None) => "variables.safetensors".to_string(),
    };
    println!("variables: {origin}");
    if let Some(g) = &m.generation {
        let lens: Vec<usize> = g.prefill.iter().map(|p| p.length).collect();
        println!("generation: max_len {}, vocab {}, eos {:?}, prefill lengths {lens:?}, decode {:?}, sample {:?} (flaxlayer generate)", g.max_len, g.vocab_size, g.eos_token_id, g.decode, g.sample);
    }
    if m.init.is_none() {
        println!("init: none (the variables cannot be built again on the device)");
    }
    let (params, state): (Vec<_>, Vec<_>) = m.variables.iter().partition(|v| v.is_param());
    let count = |vs: &[&flaxlayer::TensorSpec]| -> u64 { vs.iter().map(|v| v.num_elements().unwrap_or(0) as u64).sum() };
    println!("trainable weights: {} ({} params)", params.len(), count(&params));
    println!("non-trainable weights: {} ({} values)", state.len(), count(&state));
    let mesh = bundle.mesh().filter(|_| bundle.devices() > 1);
    if let Some(mesh) = &mesh {
        let axes: Vec<String> = mesh.axis_names.iter().zip(&mesh.axis_sizes).map(|(n, s)| format!("{n}={s}")).collect();
        let partitioner = m.partitioner.as_deref().unwrap_or("shardy");
        println!("mesh: {} ({} devices, partitioner {partitioner})", axes.join(" x "), bundle.devices());
    }
    for v in &m.variables {
        let split = match &mesh {
            None => String::new(),
            Some(_) => sharding_text(bundle.variable_sharding(&m.default_method, &v.name), &v.shape),
        };
        println!("  {:<48} {:<20}{split}", v.name, shape(v.dtype, &v.shape));
    }
    for (name, method) in &m.methods {
        let default = if *name == m.default_method { " (default)" } else { "" };
        println!("method {name}{default}");
        let b = &method.batching;
        let batching = if b.paddable {
            format!("any batch size (padded to an exported size, split above the largest; pad value {})", b.pad_value)
        } else {
            format!("exported sizes only ({})", b.reason.as_deref().unwrap_or("not marked paddable"))
        };
        println!("  batching: {batching}{}", if b.stateful { "; stateful inference" } else { "" });
        for (mode, comps) in [("inference", &method.inference), ("training", &method.training)] {
            for c in comps {
                let comp = bundle.computation(&c.file)?;
                let exp = &comp.exported;
                let split = exp.nr_devices > 1;
                let leaves = |slots: &[flaxlayer::bundle::Slot], avals: &[flaxlayer::bundle::Aval], shardings: &[Option<flaxlayer::bundle::NamedSharding>], role| -> Vec<String> {
                    slots.iter().zip(avals).enumerate()
                        .filter(|(_, (s, _))| s.role == role)
                        .map(|(i, (s, a))| {
                            let how = if split { format!(" {}", spec_only(shardings.get(i).and_then(Option::as_ref))) } else { String::new() };
                            format!("{}: {}{how}", s.name.as_deref().unwrap_or(""), shape(a.dtype, &a.shape.clone()))
                        })
                        .collect()
                };
                let ins = leaves(&c.args, &exp.in_avals, &exp.in_shardings, flaxlayer::bundle::Role::Input);
                let outs = leaves(&c.results, &exp.out_avals, &exp.out_shardings, flaxlayer::bundle::Role::Output);
                let frozen = if c.frozen.is_some() { "  + frozen (params compiled in)" } else { "" };
                println!("  {mode:<9} batch {:>4}  in ({})  out ({}){frozen}", c.batch_size.map_or("-".into(), |b| b.to_string()), ins.join(", "), outs.join(", "));
            }
        }
    }
    if let Some(p) = plugin {
        let client = flaxlayer::pjrt::Client::new(Some(p))?;
        println!("plugin: {:?}", client.plugin());
    }
    Ok(())
}

/// A recorded sharding in JAX's notation (`P(None, 'model')`; `P()` when replicated).
fn spec_only(sharding: Option<&flaxlayer::bundle::NamedSharding>) -> String {
    let mut axes = sharding.map(|s| s.spec.clone()).unwrap_or_default();
    while axes.last().is_some_and(Vec::is_empty) {
        axes.pop();
    }
    flaxlayer::bundle::spec_text(&axes)
}

/// How a variable of `shape` is held: `P(None, 'model') -> [64, 64] per device`, or
/// `replicated`.
fn sharding_text(sharding: Option<&flaxlayer::bundle::NamedSharding>, shape: &[usize]) -> String {
    match sharding.map(|s| (spec_only(Some(s)), s.shard_shape(shape))) {
        Some((spec, Ok(block))) if block != shape => format!("{spec} -> {block:?} per device"),
        Some((spec, Err(e))) => format!("{spec} (cannot be laid out: {e})"),
        _ => "replicated".to_string(),
    }
}

fn run_bundle(args: RunArgs, common: &Common) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut layer = build_layer(&args, common)?;
    let named = read_safetensors(&args.input).with_context(|| format!("reading --input {}", args.input.display()))?;
    let inputs = PyTree::from_named_leaves(layer.input_tree(), "inputs", named).context("building the inputs from --input")?;
    let mut outputs = PyTree::None;
    for _ in 0..args.steps {
        outputs = layer.call(&inputs, Mode::from_training(args.training))?;
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
