//! `flaxlayer bench`: per-call latency of a bundle's method, host in to host out.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use flaxlayer::layer::raw::RawLoop;
use flaxlayer::{FlaxLayer, Mode, PyTree};

#[derive(clap::Args)]
pub struct BenchArgs {
    bundle: PathBuf,
    #[arg(long)]
    method: Option<String>,
    /// Time the training computation.
    #[arg(long)]
    training: bool,
    /// Timed calls (default: 1000; 20 with --cold-start, where each one compiles or loads
    /// from the compile cache).
    #[arg(long)]
    iters: Option<usize>,
    /// Untimed calls first.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// The batch size; default: the first exported. Paddable bundles take any size at
    /// inference (padded to an exported size, or split above the largest).
    #[arg(long)]
    batch: Option<usize>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// Time cold starts instead: each iteration opens the bundle, builds the layer with the
    /// bundle's variables, compiles the computation it calls (or loads it from the compile
    /// cache when `FLAXLAYER_CACHE` allows) and makes the first call. The plugin is loaded
    /// once per process, before timing.
    #[arg(long)]
    cold_start: bool,
    /// Time the same computation through a raw PJRT loop without the layer (the floor):
    /// upload, execute, copy outputs into memory allocated once.
    #[arg(long, conflicts_with = "cold_start")]
    raw: bool,
    /// Throughput of `predict` (shared inference) from this many threads on one layer, each
    /// making --iters calls: prints calls/s over all threads and per-call latency.
    #[arg(long, conflicts_with_all = ["cold_start", "raw", "training"])]
    threads: Option<usize>,
}

/// The bundle file of the method's computation for the mode and an exported batch size.
fn computation_file(layer: &FlaxLayer, mode: Mode, batch: Option<usize>) -> Result<String> {
    let method = layer.method_spec()?;
    let list = if mode.is_training() { method.training() } else { method.inference() };
    let spec = match batch {
        None => list.first(),
        Some(b) => list.iter().find(|c| c.batch_size() == Some(b)),
    };
    Ok(spec.context("--raw needs an exported batch size")?.file().to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn run(args: BenchArgs, common: &crate::Common) -> Result<()> {
    let iters = args.iters.unwrap_or(if args.cold_start { 20 } else { 1000 });
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    let mode = Mode::from_training(args.training);
    let mut b = common.apply(FlaxLayer::builder(&args.bundle));
    if let Some(m) = &args.method {
        b = b.method(m);
    }
    let mut layer = b.build().with_context(|| format!("loading {}", args.bundle.display()))?;
    let inputs = crate::run::synthetic_inputs(&layer, mode, args.batch, crate::run::Fill::Random(0))?;
    // The batch that runs: the one asked for, else the first exported size.
    let batch = match args.batch {
        Some(b) => b,
        None => layer.batch_sizes(mode).first().copied().context("the method has no computations")?,
    };
    if let Some(threads) = args.threads {
        return threads_bench(&layer, &inputs, threads, batch, iters, &args);
    }
    let mut us = Vec::with_capacity(iters);
    if args.raw {
        let file = computation_file(&layer, mode, args.batch)?;
        let leaves = layer.input_tree().flatten(&inputs)?.into_iter().cloned().collect();
        let mut raw = RawLoop::new(layer.client(), layer.bundle(), &file, layer.seed(), leaves)?;
        for _ in 0..args.warmup {
            raw.step()?;
        }
        for _ in 0..iters {
            let t = Instant::now();
            raw.step()?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    } else if args.cold_start {
        let client = layer.client().clone();
        let method = layer.method().to_string();
        for _ in 0..iters {
            let t = Instant::now();
            let mut fresh = FlaxLayer::builder(&args.bundle).method(&method).client(client.clone()).compile_cache(flaxlayer::layer::cache::CacheSetting::FromEnv).build()?;
            let out = fresh.call(&inputs, mode)?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
            drop(out);
        }
    } else {
        for _ in 0..args.warmup {
            layer.call(&inputs, mode)?;
        }
        for _ in 0..iters {
            let t = Instant::now();
            let out = layer.call(&inputs, mode)?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
            drop(out);
        }
    }
    us.sort_by(f64::total_cmp);
    let (p10, median, p90) = (percentile(&us, 0.1), percentile(&us, 0.5), percentile(&us, 0.9));
    let plugin = layer.client().plugin().path().to_path_buf();
    let frozen = !args.training && layer.runs_frozen();
    let mode_text = match (args.training, frozen) {
        (true, _) => "training",
        (false, true) => "inference, frozen",
        (false, false) => "inference",
    };
    let timed = if args.raw {
        "one execution through a raw PJRT loop without the layer: upload, execute, copy outputs".to_string()
    } else if args.cold_start {
        let cache = match flaxlayer::layer::cache::cache_dir() {
            Some(d) => format!("compile cache {}", d.display()),
            None => "no compile cache".to_string(),
        };
        format!("a cold start: open the bundle, build the layer, compile the computation ({cache}) and make the first call")
    } else {
        "one call, host in to host out (upload inputs, execute, copy outputs)".to_string()
    };
    if args.json {
        let line = serde_json::json!({
            "bundle": args.bundle, "method": layer.method(), "mode": mode_text, "training": args.training,
            "batch": batch, "timed": timed,
            "cold_start": args.cold_start, "raw": args.raw, "cache": flaxlayer::layer::cache::cache_dir(),
            "iters": iters, "warmup": if args.cold_start { 0 } else { args.warmup },
            "median_us": median, "p10_us": p10, "p90_us": p90, "plugin": plugin,
            "frozen": frozen,
        });
        outln!("{line}");
    } else {
        let (unit, scale) = if args.cold_start { ("ms", 1e-3) } else { ("µs", 1.0) };
        let what = if args.cold_start { "cold starts" } else { "iters" };
        outln!("{} {} ({mode_text}), batch {batch}, {} {what}: median {:.1} {unit}, p10 {:.1} {unit}, p90 {:.1} {unit}",
            args.bundle.display(), layer.method(), iters, median * scale, p10 * scale, p90 * scale);
        outln!("timed: {timed}");
    }
    Ok(())
}

/// `threads` threads call `predict` on one layer, `--iters` times each after `--warmup`.
fn threads_bench(layer: &FlaxLayer, inputs: &PyTree, threads: usize, batch: usize, iters: usize, args: &BenchArgs) -> Result<()> {
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    for _ in 0..args.warmup {
        layer.predict(inputs)?;
    }
    let barrier = std::sync::Barrier::new(threads);
    let started = Instant::now();
    let mut us: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || -> flaxlayer::Result<Vec<f64>> {
                    barrier.wait();
                    let mut us = Vec::with_capacity(iters);
                    for _ in 0..iters {
                        let t = Instant::now();
                        drop(layer.predict(inputs)?);
                        us.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    Ok(us)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a bench thread panicked")).collect::<flaxlayer::Result<Vec<_>>>()
    })?
    .concat();
    let seconds = started.elapsed().as_secs_f64();
    us.sort_by(f64::total_cmp);
    let calls = us.len() as f64 / seconds;
    let (p10, median, p90) = (percentile(&us, 0.1), percentile(&us, 0.5), percentile(&us, 0.9));
    if args.json {
        outln!("{}", serde_json::json!({
            "bundle": args.bundle, "threads": threads, "batch": batch, "mode": "inference", "timed": "predict (shared inference), host in to host out", "iters": iters,
            "calls_per_s": calls, "median_us": median, "p10_us": p10, "p90_us": p90,
        }));
    } else {
        outln!("{} predict from {threads} thread(s), batch {batch}: {calls:.0} calls/s; per call median {median:.1} µs, p10 {p10:.1} µs, p90 {p90:.1} µs",
            args.bundle.display());
    }
    Ok(())
}
