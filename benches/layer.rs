//! Criterion benchmarks: each workload through `FlaxLayer` and through a raw PJRT loop over
//! the same executable (`RawLoop`, the floor). Clocks stop after the outputs are on the host.
//!
//! Run: `cargo bench --bench layer` (`scripts/bench_vs_jax.py` compares with JAX).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flaxlayer::layer::cache::CacheSetting;
use flaxlayer::layer::raw::{zero_inputs, RawLoop};
use flaxlayer::pjrt::Client;
use flaxlayer::{Bundle, FlaxLayer, Mode, PyTree};

fn hlo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo").join(name)
}

/// Times `n` calls of `f`.
fn timed(n: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed()
}

/// One workload: the layer's call and the raw loop on the same computation and inputs.
fn layer_vs_raw(c: &mut Criterion, group: &str, bundle: &str, file: &str, mode: Mode, batch: Option<u64>) {
    let client = Client::new(None).expect("PJRT plugin");
    let b = Bundle::open(hlo(bundle)).expect("bundle");
    let inputs = zero_inputs(&b, file).expect("inputs");
    let mut layer = FlaxLayer::builder(hlo(bundle)).client(client.clone()).build().expect("layer");
    let tree = PyTree::from_named_leaves(
        layer.input_tree(),
        "inputs",
        layer.input_tree().leaf_paths("inputs").into_iter().zip(inputs.iter().cloned()),
    )
    .expect("input tree");
    let mut raw = RawLoop::new(&client, &b, file, 0, inputs).expect("raw loop");
    let mut g = c.benchmark_group(group);
    if let Some(n) = batch {
        g.throughput(Throughput::Elements(n));
    }
    g.bench_function(BenchmarkId::new("flaxlayer", bundle), |bench| {
        bench.iter_custom(|n| timed(n, || drop(layer.call(&tree, mode).expect("call"))))
    });
    g.bench_function(BenchmarkId::new("raw_pjrt", bundle), |bench| {
        bench.iter_custom(|n| timed(n, || raw.step().expect("step")))
    });
    g.finish();
}

fn mlp_latency(c: &mut Criterion) {
    layer_vs_raw(c, "mlp_b1_latency", "mlp", "__call__.inference.b1.jaxexport", Mode::Inference, None);
}

fn cnn_throughput(c: &mut Criterion) {
    layer_vs_raw(c, "cnn_b256_throughput", "cnn", "__call__.inference.b256.jaxexport", Mode::Inference, Some(256));
}

fn training_call(c: &mut Criterion) {
    layer_vs_raw(c, "dense_bn_dropout_training", "dense_bn_dropout", "__call__.training.b4.jaxexport", Mode::Training, None);
}

fn decode_step(c: &mut Criterion) {
    layer_vs_raw(c, "decoder_step", "decoder", "__call__.inference.b1.jaxexport", Mode::Inference, None);
}

/// From opening the bundle to the first output, with and without the compile cache. The
/// plugin and client are set up once, outside the clock.
fn cold_start(c: &mut Criterion) {
    let client = Client::new(None).expect("PJRT plugin");
    let cache = std::env::temp_dir().join(format!("flaxlayer-bench-cache-{}", std::process::id()));
    let mut g = c.benchmark_group("cold_start");
    g.sample_size(10);
    for (label, setting) in [("no_cache", CacheSetting::Off), ("warm_cache", CacheSetting::Dir(cache.clone()))] {
        let first = || {
            let mut layer = FlaxLayer::builder(hlo("mlp"))
                .variables_file(hlo("mlp").join("variables.safetensors"))
                .compile_cache(setting.clone())
                .client(client.clone())
                .build()
                .expect("layer");
            let x = PyTree::leaf(flaxlayer::Tensor::zeros(flaxlayer::DType::F32, vec![1, 64]).expect("x"));
            drop(layer.call(&x, Mode::Inference).expect("call"));
        };
        first(); // fills the cache in the warm case
        g.bench_function(label, |bench| bench.iter_custom(|n| timed(n, first)));
    }
    let _ = std::fs::remove_dir_all(&cache);
    g.finish();
}

/// The cost of padding: `buckets` (exported at 1, 4 and 16 rows) at 3 rows, padded to 4,
/// against 4 rows, which run as exported; and the MLP at 2 rows (padded to 8) against 8.
fn padding(c: &mut Criterion) {
    let client = Client::new(None).expect("PJRT plugin");
    let mut g = c.benchmark_group("padding");
    let rows = |n: usize, cols: usize| flaxlayer::Tensor::zeros(flaxlayer::DType::F32, vec![n, cols]).expect("rows");
    let buckets = FlaxLayer::builder(hlo("buckets")).client(client.clone()).build().expect("layer");
    let cols = |layer: &FlaxLayer, i: usize| layer.input_specs(Mode::Inference)[0][i].shape[1];
    for n in [3usize, 4] {
        let x = PyTree::dict([("a", PyTree::leaf(rows(n, cols(&buckets, 0)))), ("b", PyTree::leaf(rows(n, cols(&buckets, 1))))]);
        g.bench_function(BenchmarkId::new("buckets", n), |bench| bench.iter_custom(|k| timed(k, || drop(buckets.predict(&x).expect("predict")))));
    }
    let mlp = FlaxLayer::builder(hlo("mlp")).client(client.clone()).build().expect("layer");
    for n in [2usize, 8] {
        let x = rows(n, 64);
        g.bench_function(BenchmarkId::new("mlp", n), |bench| bench.iter_custom(|k| timed(k, || drop(mlp.predict(&x).expect("predict")))));
    }
    g.finish();
}

criterion_group!(benches, mlp_latency, cnn_throughput, training_call, decode_step, cold_start, padding);
criterion_main!(benches);
