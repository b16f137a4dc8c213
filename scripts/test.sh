#!/usr/bin/env bash
# Runs every test: the Rust suite (unit, integration, doc tests), the library alone (no CLI
# feature), the ABI check of our PJRT mirror against pjrt_c_api.h, the generated gRPC code
# against its .proto, a fixed sample under valgrind, the packaged crate on its own, the README's
# quick start in a new project, the Python suite (Python 3.11, jax 0.10.2), and the version
# matrix's other end with the Hugging Face zoo (scripts/matrix.sh: Python 3.12, jax 0.12.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
# The CLI and the tests find the CPU plugin in the repository's .venv as in an activated
# virtualenv (plugin discovery never searches the working directory).
export VIRTUAL_ENV="${VIRTUAL_ENV:-$PWD/.venv}"
# Compiled executables are cached inside the repo for test runs (see README: compile cache).
export FLAXLAYER_CACHE="${FLAXLAYER_CACHE:-$PWD/target/compile-cache}"
# Each phase's wall time, printed as it ends and as a table at the end (README, "Testing").
phases=()
phase_name=""
phase_start=0
end_phase() {
  if [ -n "$phase_name" ]; then
    local took=$((SECONDS - phase_start))
    phases+=("$(printf '%6ds  %s' "$took" "$phase_name")")
    echo "== $phase_name: ${took}s"
  fi
}
phase() {
  end_phase
  phase_name="$*"
  phase_start=$SECONDS
  echo "== $* (at ${SECONDS}s)"
}
# Tests that download from the package index (the plugin wheel, the exporter's wheels) are
# opt-in: FLAXLAYER_NETWORK_TESTS=1 scripts/test.sh runs them too.
export FLAXLAYER_NETWORK_TESTS="${FLAXLAYER_NETWORK_TESTS:-0}"
phase "setup (.venv, pinned Python packages)"
scripts/setup.sh
phase "cargo test"
cargo test --locked --all-targets --features serve
cargo test --locked --doc
if [ "$FLAXLAYER_NETWORK_TESTS" = 1 ]; then
  phase "network tests (FLAXLAYER_NETWORK_TESTS=1)"
  cargo test --locked --features serve --test it -- --ignored --exact plugin_cli::plugin_install_fills_the_per_user_directory_that_discovery_reads
fi
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
phase "gRPC code: src/server/grpc/inference.rs is what proto/grpc_service.proto gives"
scripts/gen_grpc.sh --check
phase "valgrind"
scripts/valgrind.sh
phase "cargo package"
scripts/package_check.sh
phase "quick start: the README's steps in a new project outside the repo"
scripts/quickstart_check.sh
phase "pytest"
# The test marked `network` (it downloads wheels into target/pip-wheelhouse) runs only with
# FLAXLAYER_NETWORK_TESTS=1 (tests/python/conftest.py).
.venv/bin/python -m pytest tests/python -q --durations=12
phase "version matrix: jax 0.12 (scripts/matrix.sh)"
scripts/matrix.sh
end_phase
echo "== time per phase"
printf '%s\n' "${phases[@]}"
echo "== all tests passed in ${SECONDS}s"
