#!/usr/bin/env bash
# Runs every test: the Rust suite (unit, integration, doc tests) and the Python exporter suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Compiled executables are cached inside the repo for test runs (see README: compile cache).
export FLAXLAYER_CACHE="${FLAXLAYER_CACHE:-$PWD/target/compile-cache}"
echo "== cargo test"
cargo test --locked --all-targets --features serve
cargo test --locked --doc
echo "== pytest"
.venv/bin/python -m pytest tests/python -q
