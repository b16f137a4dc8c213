//! The `flaxlayer` command line: inspect and run bundles.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use flaxlayer::Bundle;

#[macro_use]
mod out;
mod bench;
mod cost;
mod generate;
mod run;
mod plugin;
#[cfg(feature = "serve")]
mod serve;
mod train;

#[derive(Parser)]
#[command(name = "flaxlayer", version, about = "Run Flax (JAX) bundles through PJRT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--plugin`, for the commands that load a plugin.
#[derive(clap::Args, Clone, Default)]
pub struct PluginFlag {
    /// PJRT plugin .so (default: $PJRT_PLUGIN_PATH, else the first found: see `flaxlayer plugin show`).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
}

/// Where and how a command that builds layers runs them.
#[derive(clap::Args, Clone)]
pub struct LayerFlags {
    #[command(flatten)]
    pub plugin: PluginFlag,
    /// Treat the bundle as untrusted: compile it in a child process with a time limit, so a
    /// payload that crashes or hangs XLA's compiler is an error instead of a crash.
    #[arg(long)]
    pub untrusted: bool,
    /// The time limit of one isolated compile, in seconds (with --untrusted).
    #[arg(long, default_value_t = 120, requires = "untrusted")]
    pub compile_timeout: u64,
    /// On a CPU plugin, the number of (virtual) devices of the client (default: the plugin's,
    /// 4, or $FLAXLAYER_CPU_DEVICES). A bundle exported for N devices needs at least N.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub devices: Option<u64>,
    /// Never run a bundle's frozen inference (params compiled in as constants, exported with
    /// `frozen=True`): always pass the params as arguments. Frozen inference is used by default
    /// while the params are the bundle's own.
    #[arg(long)]
    pub no_frozen: bool,
    /// Never run a bundle's hoisted inference (a params-only prologue, run once per param
    /// change, and a per-call body; exported with `hoist=True`, the default): run the single
    /// computation that takes the params.
    #[arg(long)]
    pub no_hoisted: bool,
}

/// The flags of `serve`: as [`LayerFlags`], without `--no-frozen` (a model's config says).
#[derive(clap::Args, Clone)]
pub struct ServeFlags {
    #[command(flatten)]
    pub plugin: PluginFlag,
    /// Treat the bundles as untrusted: compile them in a child process with a time limit.
    #[arg(long)]
    pub untrusted: bool,
    /// The time limit of one isolated compile, in seconds (with --untrusted).
    #[arg(long, default_value_t = 120, requires = "untrusted")]
    pub compile_timeout: u64,
    /// On a CPU plugin, the number of (virtual) devices of the client.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub devices: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Methods, modes, inputs and outputs with shapes, and weight counts of a bundle.
    Inspect {
        bundle: PathBuf,
        /// Also load this PJRT plugin and print what it is.
        #[command(flatten)]
        plugin: PluginFlag,
    },
    /// Run a method on inputs from files (.safetensors, .npy, .json) or on zeros or random
    /// values; print the outputs or write them to a safetensors file.
    Run {
        #[command(flatten)]
        args: run::RunArgs,
        #[command(flatten)]
        flags: LayerFlags,
    },
    /// Per-call latency (median, p10, p90 µs), host in to host out, on random inputs.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        #[command(flatten)]
        flags: LayerFlags,
    },
    /// Generate token ids after a prompt of token ids from a causal LM bundle (no tokenizer).
    Generate {
        #[command(flatten)]
        args: generate::GenerateArgs,
        #[command(flatten)]
        flags: LayerFlags,
    },
    /// Train a bundle with a train section on a safetensors data set; optionally checkpoint.
    Train {
        #[command(flatten)]
        args: train::TrainArgs,
        #[command(flatten)]
        flags: LayerFlags,
    },
    /// Which PJRT plugin loads; install the CPU plugin for this user.
    Plugin(plugin::PluginArgs),
    /// Serve a model repository: KServe v2 over HTTP (with binary tensors) and gRPC, TF Serving REST,
    /// with dynamic batching and Prometheus metrics.
    #[cfg(feature = "serve")]
    Serve {
        #[command(flatten)]
        args: serve::ServeArgs,
        #[command(flatten)]
        flags: ServeFlags,
    },
}

/// Settings every command that builds a layer uses.
pub struct Common {
    /// `--plugin`.
    pub plugin: Option<PathBuf>,
    /// `--untrusted`, with its time limit.
    pub isolation: Option<flaxlayer::layer::isolate::Isolation>,
    /// `--devices`.
    pub devices: Option<usize>,
    /// `--no-frozen`.
    pub no_frozen: bool,
    /// `--no-hoisted`.
    pub no_hoisted: bool,
}

/// Bytes as `inspect` shows them: KiB below 1 MiB, else MiB.
fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

fn isolation(untrusted: bool, seconds: u64) -> Option<flaxlayer::layer::isolate::Isolation> {
    // The worker is this executable, run again (`main` calls `maybe_run_worker` first).
    untrusted.then(|| flaxlayer::layer::isolate::Isolation {
        timeout: std::time::Duration::from_secs(seconds),
        ..Default::default()
    })
}

impl From<LayerFlags> for Common {
    fn from(f: LayerFlags) -> Common {
        Common {
            plugin: f.plugin.plugin,
            isolation: isolation(f.untrusted, f.compile_timeout),
            devices: f.devices.map(|n| n as usize),
            no_frozen: f.no_frozen,
            no_hoisted: f.no_hoisted,
        }
    }
}

impl From<ServeFlags> for Common {
    fn from(f: ServeFlags) -> Common {
        Common {
            plugin: f.plugin.plugin,
            isolation: isolation(f.untrusted, f.compile_timeout),
            devices: f.devices.map(|n| n as usize),
            no_frozen: false,
            no_hoisted: false,
        }
    }
}

impl Common {
    /// Applies the settings to a builder. The CLI keeps the compile cache on
    /// (`~/.cache/flaxlayer`, `$FLAXLAYER_CACHE`; `FLAXLAYER_CACHE=0` turns it off), where the
    /// library leaves it off unless asked.
    pub fn apply<T: flaxlayer::layer::Build>(&self, mut b: flaxlayer::Builder<T>) -> flaxlayer::Builder<T> {
        b = b.compile_cache(flaxlayer::layer::cache::CacheSetting::FromEnv);
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
        if self.no_hoisted {
            b = b.without_hoisted();
        }
        b
    }

    /// The PJRT client these settings name (for commands that share one client).
    pub fn client(&self) -> flaxlayer::Result<flaxlayer::pjrt::Client> {
        flaxlayer::layer::Options { plugin: self.plugin.clone(), cpu_devices: self.devices, ..Default::default() }.client()
    }
}

/// Set to `1` to see the plugin's own log lines (absl INFO and up).
const PLUGIN_LOG_ENV: &str = "FLAXLAYER_PLUGIN_LOG";

/// Keeps the plugin's INFO logs (and absl's "All log messages before absl::InitializeLog()"
/// warning that comes with the first of them) off the user's stderr: `TF_CPP_MIN_LOG_LEVEL=1`,
/// unless the user set it or asked for the logs with `FLAXLAYER_PLUGIN_LOG=1`. Measured with
/// the CPU plugins: level 1 removes both lines and keeps warnings and errors. Done here, first
/// thing in `main` while the process has one thread, and not in the library, where setting
/// the environment would race with C code reading it on other threads.
fn quiet_plugin_logs() {
    let wants_logs = std::env::var_os(PLUGIN_LOG_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if !wants_logs && std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "1");
    }
}

fn main() {
    // Run as the compile worker of --untrusted (this executable, started again by the
    // library), this compiles and exits.
    flaxlayer::layer::isolate::maybe_run_worker();
    quiet_plugin_logs();
    if let Err(e) = run(Cli::parse()) {
        // A reader that went away (`flaxlayer inspect B | head -1`) is not an error: stop
        // quietly, as `cat` does.
        if out::is_broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {}", chain(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, each once: a cause whose text the message so far already
/// holds (flaxlayer's errors say their I/O, JSON or PJRT cause in their own message and also
/// return it as `source()`) is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
    }
    text
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { bundle, plugin } => inspect(&bundle, plugin.plugin.as_deref()),
        Command::Run { args, flags } => run::run(args, &flags.into()),
        Command::Bench { args, flags } => bench::run(args, &flags.into()),
        Command::Train { args, flags } => train::run(args, &flags.into()),
        Command::Generate { args, flags } => generate::run(args, &flags.into()),
        #[cfg(feature = "serve")]
        Command::Serve { args, flags } => serve::run(args, &flags.into()),
        Command::Plugin(args) => plugin::run(args),
    }
}

fn shape(dtype: flaxlayer::DType, dims: &[usize]) -> String {
    format!("{dtype}{dims:?}")
}

fn inspect(path: &Path, plugin: Option<&Path>) -> Result<()> {
    let bundle = Bundle::open(path).with_context(|| format!("opening bundle {}", path.display()))?;
    let m = bundle.manifest();
    outln!("bundle {}  (module {}, seed {}, platforms {:?})", path.display(), m.module(), m.seed(), m.platforms());
    outln!("rng streams: {:?}", m.rng_streams());
    let origin = match (bundle.variables_file(), m.variables_origin()) {
        (Ok(None), _) => "none bundled (init-only): init runs on the device under the seed".to_string(),
        (Ok(Some(_)), Some(o)) => format!("variables.safetensors ({o})"),
        (Ok(Some(_)), None) => "variables.safetensors".to_string(),
        (Err(e), _) => format!("UNUSABLE: {e}"),
    };
    outln!("variables: {origin}");
    let mut versions: Vec<String> = m
        .computations()
        .filter_map(|c| bundle.computation(c.file()).ok())
        .map(|c| match c.exported().jax_version() {
            Some(jax) => format!("{} (jax {jax})", c.exported().serialization_version()),
            None => c.exported().serialization_version().to_string(),
        })
        .collect();
    versions.sort();
    versions.dedup();
    outln!("jax.export serialization version: {}", versions.join(", "));
    if let Some(g) = m.generation() {
        let lens: Vec<usize> = g.prefill().iter().map(|p| p.length()).collect();
        outln!("generation: max_len {}, vocab {}, eos {:?}, prefill lengths {lens:?}, decode {:?}, sample {:?} (flaxlayer generate)", g.max_len(), g.vocab_size(), g.eos_token_id(), g.decode(), g.sample());
    }
    if m.init().is_none() {
        outln!("init: none (the variables cannot be built again on the device)");
    }
    let (params, state): (Vec<_>, Vec<_>) = m.variables().iter().partition(|v| v.is_param());
    let count = |vs: &[&flaxlayer::TensorSpec]| -> u64 { vs.iter().map(|v| v.num_elements().unwrap_or(0) as u64).sum() };
    outln!("trainable weights: {} ({} params)", params.len(), count(&params));
    outln!("non-trainable weights: {} ({} values)", state.len(), count(&state));
    let mesh = bundle.mesh().filter(|_| bundle.devices() > 1);
    if let Some(mesh) = &mesh {
        let axes: Vec<String> = mesh.axis_names().iter().zip(mesh.axis_sizes()).map(|(n, s)| format!("{n}={s}")).collect();
        let partitioner = m.partitioner().unwrap_or("shardy");
        outln!("mesh: {} ({} devices, partitioner {partitioner})", axes.join(" x "), bundle.devices());
    }
    for v in m.variables() {
        let split = match &mesh {
            None => String::new(),
            Some(_) => sharding_text(bundle.variable_sharding(m.default_method(), &v.name), &v.shape),
        };
        outln!("  {:<48} {:<20}{split}", v.name, shape(v.dtype, &v.shape));
    }
    for (name, method) in m.methods() {
        let default = if *name == m.default_method() { " (default)" } else { "" };
        outln!("method {name}{default}");
        let b = method.batching();
        let batching = if b.paddable() {
            format!("any batch size (padded to an exported size, split above the largest; pad value {})", b.pad_value())
        } else {
            format!("exported sizes only ({})", b.reason().unwrap_or("not marked paddable"))
        };
        outln!("  batching: {batching}{}", if b.stateful() { "; stateful inference" } else { "" });
        for (mode, comps) in [("inference", method.inference()), ("training", method.training())] {
            for c in comps {
                let comp = bundle.computation(c.file())?;
                let exp = comp.exported();
                let split = exp.nr_devices() > 1;
                let leaves = |slots: &[flaxlayer::bundle::Slot], avals: &[flaxlayer::TensorSpec], shardings: &[Option<flaxlayer::bundle::NamedSharding>], role| -> Vec<String> {
                    slots.iter().zip(avals).enumerate()
                        .filter(|(_, (s, _))| s.role() == role)
                        .map(|(i, (s, a))| {
                            let how = if split { format!(" {}", spec_only(shardings.get(i).and_then(Option::as_ref))) } else { String::new() };
                            format!("{}: {}{how}", s.name().unwrap_or(""), shape(a.dtype, &a.shape.clone()))
                        })
                        .collect()
                };
                let ins = leaves(c.args(), &exp.in_avals(), exp.in_shardings(), flaxlayer::bundle::Role::Input);
                let outs = leaves(c.results(), &exp.out_avals(), exp.out_shardings(), flaxlayer::bundle::Role::Output);
                let frozen = if c.frozen().is_some() { "  + frozen (params compiled in)" } else { "" };
                outln!("  {mode:<9} batch {:>4}  in ({})  out ({}){frozen}", c.batch_size().map_or("-".into(), |b| b.to_string()), ins.join(", "), outs.join(", "));
                if let Some(h) = c.hoisted() {
                    outln!(
                        "            + hoisted: prologue {} once per param change (reads {} params, {}; keeps {} residuals, {}), body {} per call",
                        h.prologue().file(),
                        h.params_read().len(),
                        mib(h.params_read_bytes()),
                        h.prologue().results().len(),
                        mib(h.residual_bytes()),
                        h.body().file()
                    );
                }
            }
        }
    }
    cost::print_files(&bundle)?;
    if let Some(p) = plugin {
        let client = flaxlayer::pjrt::Client::new(Some(p))?;
        outln!("plugin: {:?}", client.plugin());
    }
    Ok(())
}

/// A recorded sharding in JAX's notation (`P(None, 'model')`; `P()` when replicated).
fn spec_only(sharding: Option<&flaxlayer::bundle::NamedSharding>) -> String {
    let mut axes = sharding.map(|s| s.spec().to_vec()).unwrap_or_default();
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
