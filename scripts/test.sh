#!/usr/bin/env bash
# Runs every test: the Rust suite (unit, integration, doc tests) and the Python exporter suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== cargo test"
cargo test --locked --all-targets
cargo test --locked --doc
echo "== pytest"
.venv/bin/python -m pytest tests/python -q
