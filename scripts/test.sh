#!/usr/bin/env bash
# Runs every test: the Rust suite (unit, integration, doc tests), the library alone (no CLI
# feature), the ABI check of our PJRT mirror against pjrt_c_api.h, a fixed sample under
# valgrind, the packaged crate on its own, the Python exporter suite (Python 3.11, jax
# 0.10.2), and the version matrix's other end with the Hugging Face zoo (scripts/matrix.sh:
# Python 3.12, jax 0.12.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Compiled executables are cached inside the repo for test runs (see README: compile cache).
export FLAXLAYER_CACHE="${FLAXLAYER_CACHE:-$PWD/target/compile-cache}"
phase() { echo "== $* (at ${SECONDS}s)"; }
phase "cargo test"
cargo test --locked --all-targets --features serve
cargo test --locked --doc
phase "library without the cli feature"
cargo build --locked --no-default-features --lib
phase "ABI check: src/pjrt's #[repr(C)] mirror against pjrt_c_api.h (bindgen)"
header="${PJRT_C_API_HEADER:-$(ls "$PWD"/.venv/lib/python3*/site-packages/xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h 2>/dev/null | head -n1 || true)}"
# The build script runs in tests/abi_check: hand it an absolute path.
if [ -n "$header" ] && [ -f "$header" ]; then header="$(realpath "$header")"; fi
if [ -n "$header" ] && [ -f "$header" ] && ldconfig -p | grep -q 'libclang[-.0-9]*\.so'; then
  PJRT_C_API_HEADER="$header" cargo run --locked --quiet --manifest-path tests/abi_check/Cargo.toml --target-dir target/abi_check
else
  echo "skipped: needs libclang (Debian: libclang-dev) and pjrt_c_api.h (.venv, or PJRT_C_API_HEADER)"
fi
phase "valgrind"
scripts/valgrind.sh
phase "cargo package"
scripts/package_check.sh
phase "pytest"
# One test downloads wheels into target/pip-wheelhouse on its first run (marked `network`);
# offline, run: .venv/bin/python -m pytest tests/python -q -m 'not network'
.venv/bin/python -m pytest tests/python -q --durations=12
matrix_start=$SECONDS
phase "version matrix: jax 0.12 (scripts/matrix.sh)"
scripts/matrix.sh
echo "== version matrix took $((SECONDS - matrix_start))s"
echo "== all tests passed in ${SECONDS}s"
