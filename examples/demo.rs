//! The main job of `scripts/demo.sh`: load a bundle that `scripts/export_flax.py` just wrote,
//! run it from Rust (inference, then two training calls), and print each output beside the
//! one JAX computed at export time, with their max difference.
//!
//! Run: `cargo run --release --example demo -- BUNDLE_DIR`

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use flaxlayer::tensor::read_safetensors;
use flaxlayer::{FlaxLayer, Mode, PyTree, Tensor};

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).context("usage: demo BUNDLE_DIR")?;
    let t0 = Instant::now();
    let mut layer = FlaxLayer::builder(&dir).build().with_context(|| format!("loading {dir}"))?;
    let client = layer.client();
    println!("loaded {dir} on {} ({}) in {:.0} ms", client.platform_name()?, client.plugin().path().display(), t0.elapsed().as_secs_f64() * 1e3);
    println!("method {}: {} trainable / {} non-trainable weights, {} values", layer.method(), layer.trainable_weights().len(), layer.non_trainable_weights().len(), layer.count_params());

    let golden: BTreeMap<String, Tensor> = read_safetensors(format!("{dir}/golden.safetensors"))?.into_iter().collect();
    let group = |prefix: &str| -> Vec<(String, Tensor)> {
        golden.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
    };
    let inputs = PyTree::from_named_leaves(layer.input_tree(), "inputs", group("inputs/"))?;

    let mut worst = 0f64;
    for (label, mode, golden_prefix) in
        [("inference", Mode::Inference, "inference/"), ("training call 1", Mode::Training, "training/0/"), ("training call 2", Mode::Training, "training/1/")]
    {
        let t = Instant::now();
        let out = layer.call(&inputs, mode)?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        println!("\n{label} ({us:.0} µs)");
        let outputs: BTreeMap<String, &Tensor> = out.flatten_with_paths("outputs").into_iter().collect();
        for (name, want) in group(golden_prefix) {
            let got = outputs.get(&name).with_context(|| format!("output {name} missing"))?;
            let diff = got.max_abs_diff(&want)?;
            worst = worst.max(diff);
            let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
            println!("  {name} {:?} {}", got.shape(), got.dtype());
            println!("    {:>5}  {:>14}  {:>14}", "i", "flaxlayer", "JAX");
            for i in 0..g.len().min(6) {
                println!("    {i:>5}  {:>14.8}  {:>14.8}", g[i], w[i]);
            }
            println!("    max |flaxlayer - JAX| = {diff:e}");
        }
    }
    println!("\nmax difference over all outputs: {worst:e}");
    if worst > 1e-4 {
        bail!("outputs differ from JAX by {worst:e}");
    }
    Ok(())
}
