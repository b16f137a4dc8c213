//! Times ONNX Runtime host-to-host calls on one `.onnx` model and prints one JSON line.
//!
//! Inputs come from a safetensors file holding one tensor per model input, by input name.
//! Each timed call builds the input values over host memory, runs the session and copies
//! every output into host memory (see `call.rs`). `--save-outputs` writes the first call's
//! outputs, by output name, so the driver (scripts/bench_peers.py) can check them against JAX.

mod call;
mod host;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

#[derive(Parser)]
struct Args {
    /// libonnxruntime.so to load (e.g. the one inside the onnxruntime wheel).
    #[arg(long)]
    ort_lib: PathBuf,
    /// The model.
    #[arg(long)]
    model: PathBuf,
    /// safetensors file with one tensor per model input, named as the input.
    #[arg(long)]
    inputs: PathBuf,
    /// Write the outputs of the first call here (safetensors, by output name).
    #[arg(long)]
    save_outputs: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    #[arg(long, default_value_t = 0)]
    intra_threads: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let env = ort::init_from(&args.ort_lib)
        .with_context(|| format!("loading {}", args.ort_lib.display()))?
        .with_name("flaxlayer-peers-bench")
        .build()?;
    let mut builder =
        Session::builder(&env)?.with_optimization_level(GraphOptimizationLevel::All).map_err(ort::Error::<()>::from)?;
    if args.intra_threads > 0 {
        builder = builder.with_intra_threads(args.intra_threads).map_err(ort::Error::<()>::from)?;
    }
    let mut session = builder
        .commit_from_file(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut given = host::load(&args.inputs)?;
    let mut names = Vec::new();
    let mut inputs = Vec::new();
    for outlet in session.inputs() {
        let t = given.remove(outlet.name()).with_context(|| {
            format!("{} has no tensor for model input {:?}", args.inputs.display(), outlet.name())
        })?;
        names.push(outlet.name().to_string());
        inputs.push(t);
    }
    if let Some(extra) = given.keys().next() {
        bail!("{} has tensor {extra:?}, which is not a model input", args.inputs.display());
    }
    let out_names: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();

    let first = call::call(&mut session, &names, &inputs)?;
    if let Some(path) = &args.save_outputs {
        host::save(path, &out_names.into_iter().zip(first).collect::<Vec<_>>())?;
    }
    for _ in 0..args.warmup {
        call::call(&mut session, &names, &inputs)?;
    }
    let mut us = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        let out = call::call(&mut session, &names, &inputs)?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        drop(out);
    }
    us.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "model": args.model, "iters": args.iters, "warmup": args.warmup,
        "intra_threads": args.intra_threads,
        "median_us": percentile(&us, 0.5), "p10_us": percentile(&us, 0.1), "p90_us": percentile(&us, 0.9),
        "min_us": us[0], "max_us": us[us.len() - 1], "ort_build": ort::info(),
    });
    println!("{line}");
    Ok(())
}
