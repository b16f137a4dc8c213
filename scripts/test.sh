#!/usr/bin/env bash
# Runs every test: the Rust suite (unit, integration, doc tests), clippy, the ABI check of our PJRT
# mirror against pjrt_c_api.h, the generated gRPC code against its .proto, a fixed sample under
# valgrind, the packaged crate on its own (which also builds the library without the `cli`
# feature, as a dependent crate does), the README's quick start in a new project, the Python
# suite (Python 3.11, jax 0.10.2), and the version matrix's other end with the Hugging Face zoo
# (scripts/matrix.sh: Python 3.12, jax 0.12.0.1).
#
# After the setup, three streams run side by side on the machine's cores: the Rust build and
# checks (in this terminal), pytest and the version matrix (logged to target/test-logs/, printed
# when they end). The Python suites use the CLI binary that the Rust build makes
# ($FLAXLAYER_BIN; the tests that run it wait for it), so no test runs cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CLI and the tests find the CPU plugin in the repository's .venv as in an activated
# virtualenv (plugin discovery never searches the working directory).
export VIRTUAL_ENV="${VIRTUAL_ENV:-$PWD/.venv}"
# Compiled executables are cached inside the repo for test runs (see README: compile cache).
export FLAXLAYER_CACHE="${FLAXLAYER_CACHE:-$PWD/target/compile-cache}"
# A test run builds once: incremental compilation only costs time and disk here (several GB).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Tests that download from the package index (the plugin wheel, the exporter's wheels) are
# opt-in: FLAXLAYER_NETWORK_TESTS=1 scripts/test.sh runs them too.
export FLAXLAYER_NETWORK_TESTS="${FLAXLAYER_NETWORK_TESTS:-0}"

logs=target/test-logs
mkdir -p "$logs"
# Each phase's wall time, printed as it ends and as a table at the end (README, "Testing").
# A stream appends "SECONDS<TAB>STREAM<TAB>PHASE" lines to its own file.
: > "$logs/phases.main"
: > "$logs/phases.python"
: > "$logs/phases.matrix"
phase_name=""
phase_start=0
phase_file="$logs/phases.main"
end_phase() {
  if [ -n "$phase_name" ]; then
    local took=$((SECONDS - phase_start))
    printf '%d\t%s\n' "$took" "$phase_name" >> "$phase_file"
    echo "== $phase_name: ${took}s"
  fi
  phase_name=""
}
phase() {
  end_phase
  phase_name="$*"
  phase_start=$SECONDS
  echo "== $* (at ${SECONDS}s)"
}

phase "setup (.venv, pinned Python packages)"
scripts/setup.sh
end_phase

# The CLI that the Python suites run: the build below writes it; the tests that start it wait
# for it (tests/python/cli_binary.py), the others run while the build does.
mkdir -p target/test-bin
rm -f target/test-bin/flaxlayer
export FLAXLAYER_BIN="$PWD/target/test-bin/flaxlayer" FLAXLAYER_BIN_WAIT=3600

# The Python streams, in the background, each logged to its own file.
python_stream() {
  set -euo pipefail
  local name=$1
  phase_file="$logs/phases.$name"
  if [ "$name" = python ]; then
    phase "pytest (jax 0.10.2)"
    # The test marked `network` (it downloads wheels into target/pip-wheelhouse) runs only with
    # FLAXLAYER_NETWORK_TESTS=1 (tests/python/conftest.py).
    .venv/bin/python -m pytest tests/python -q --durations=12
  else
    phase "version matrix: jax 0.12 (scripts/matrix.sh)"
    scripts/matrix.sh
  fi
  end_phase
}
python_stream python > "$logs/python.log" 2>&1 &
python_pid=$!
python_stream matrix > "$logs/matrix.log" 2>&1 &
matrix_pid=$!
# On a failure here, the Python streams and what they started end too.
killtree() { local c; for c in $(pgrep -P "$1" || true); do killtree "$c"; done; kill "$1" 2>/dev/null || true; }
trap 'killtree "$python_pid"; killtree "$matrix_pid"' EXIT
echo "== the Python suites run in the background: $logs/python.log, $logs/matrix.log"

phase "build: every Rust target (cargo test --no-run)"
cargo test --locked --all-targets --features serve --no-run
# The CLI as this build made it, in a place of its own (moved in whole): the later cargo
# commands of this stream (package, quick start) build other feature sets into target/debug.
cp target/debug/flaxlayer target/test-bin/flaxlayer.tmp
mv target/test-bin/flaxlayer.tmp "$FLAXLAYER_BIN"

phase "cargo test (unit, integration, benches in test mode)"
cargo test --locked --all-targets --features serve
phase "doc tests"
cargo test --locked --doc
phase "clippy (warnings are errors; src/pjrt denies unsafe blocks without a SAFETY comment)"
cargo clippy --locked --quiet --all-targets --features serve -- -D warnings
if [ "$FLAXLAYER_NETWORK_TESTS" = 1 ]; then
  phase "network tests (FLAXLAYER_NETWORK_TESTS=1)"
  cargo test --locked --features serve --test it -- --ignored --exact plugin_cli::plugin_install_fills_the_per_user_directory_that_discovery_reads
fi
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
phase "cargo package (and the library without the cli feature, in a dependent crate)"
scripts/package_check.sh
phase "quick start: the README's steps in a new project outside the repo"
scripts/quickstart_check.sh
end_phase

echo "== waiting for the Python suites ($logs/python.log, $logs/matrix.log)"
python_status=0
matrix_status=0
wait "$python_pid" || python_status=$?
wait "$matrix_pid" || matrix_status=$?
trap - EXIT
echo "== pytest's output"
cat "$logs/python.log"
echo "== the version matrix's output"
cat "$logs/matrix.log"
echo "== time per phase (the three streams ran side by side after the setup)"
while IFS=$'\t' read -r took name; do printf '%6ds  %s\n' "$took" "$name"; done < "$logs/phases.main"
for stream in python matrix; do
  while IFS=$'\t' read -r took name; do printf '%6ds  [%s] %s\n' "$took" "$stream" "$name"; done < "$logs/phases.$stream"
done
if [ "$python_status" != 0 ] || [ "$matrix_status" != 0 ]; then
  echo "== the Python suites failed (pytest exit $python_status, matrix exit $matrix_status): see above" >&2
  exit 1
fi
echo "== all tests passed in ${SECONDS}s"
