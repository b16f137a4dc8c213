#!/usr/bin/env bash
# The main job: export a Flax model with JAX, load it from Rust through PJRT, run it, and
# print its outputs beside JAX's with their max difference.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CLI and the tests find the CPU plugin in the repository's .venv as in an activated
# virtualenv (plugin discovery never searches the working directory).
export VIRTUAL_ENV="${VIRTUAL_ENV:-$PWD/.venv}"
scripts/setup.sh
out=target/demo
mkdir -p "$out"
echo "== 1. Python: export Keras' FlaxLayer example (Conv/relu/avg_pool/Dense/softmax) with jax.export"
.venv/bin/flaxlayer-export flaxlayer_export.examples.models:MyFlaxModule \
  --input inputs=4,28,28,1:float32 --out "$out/cnn"
echo "   and Dense+BatchNorm+Dropout, whose training calls update batch stats and draw dropout masks"
.venv/bin/flaxlayer-export flaxlayer_export.examples.models:DenseBNDropout \
  --input inputs=4,12:float32 --out "$out/dense_bn_dropout"
echo "== 2. Rust: build"
cargo build --release --locked --example demo --bin flaxlayer 2>&1 | tail -1
echo "== 3. Rust: load the bundle, run it, compare with JAX"
target/release/examples/demo "$out/cnn"
echo
target/release/examples/demo "$out/dense_bn_dropout"
echo
echo "== 4. the CLI on the same bundle"
target/release/flaxlayer inspect "$out/cnn"
target/release/flaxlayer bench "$out/cnn" --iters 200 --warmup 20
echo
echo "== 5. training from Rust: MLP + BatchNorm + Dropout on scikit-learn's digits (hlo/digits_train)"
target/release/flaxlayer train hlo/digits_train --data hlo/digits/data.safetensors \
  --epochs 6 --batch-size 32 --seed 0 --json
