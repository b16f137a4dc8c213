#!/usr/bin/env bash
# Runs every test: the Rust suite (unit, integration, doc tests), clippy, the ABI check of our PJRT
# mirror against pjrt_c_api.h, the generated gRPC code against its .proto, a fixed sample under
# valgrind, the packaged crate on its own (which also builds the library without the `cli`
# feature, as a dependent crate does), the README's quick start in a new project, the Python
# suite (Python 3.11, jax 0.10.2), and the version matrix's other end with the Hugging Face zoo
# (scripts/matrix.sh: Python 3.12, jax 0.12.0.1).
#
# After the setup and one build of every Rust target, two streams run side by side on the
# machine's cores: the Rust checks (in this terminal) and the Python suites (logged to
# target/test-logs/python.log, printed when they end). The Python suites use the CLI binary
# that the build made ($FLAXLAYER_BIN), so no test runs cargo.
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
phase "build: every Rust target (cargo test --no-run)"
cargo test --locked --all-targets --features serve --no-run
# The CLI as this build made it, in a place of its own: the Python suites run it while the
# Rust stream's later cargo commands (package, quick start) build other feature sets.
mkdir -p target/test-bin
cp target/debug/flaxlayer target/test-bin/flaxlayer
export FLAXLAYER_BIN="$PWD/target/test-bin/flaxlayer"
end_phase

# The Python stream, in the background.
python_stream() {
  set -euo pipefail
  phase_file="$logs/phases.python"
  phase "pytest (jax 0.10.2)"
  # The test marked `network` (it downloads wheels into target/pip-wheelhouse) runs only with
  # FLAXLAYER_NETWORK_TESTS=1 (tests/python/conftest.py).
  .venv/bin/python -m pytest tests/python -q --durations=12
  phase "version matrix: jax 0.12 (scripts/matrix.sh)"
  scripts/matrix.sh
  end_phase
}
python_stream > "$logs/python.log" 2>&1 &
python_pid=$!
# On a failure here, the Python stream and what it started end too.
killtree() { local c; for c in $(pgrep -P "$1" || true); do killtree "$c"; done; kill "$1" 2>/dev/null || true; }
trap 'killtree "$python_pid"' EXIT
echo "== the Python suites run in the background: $logs/python.log"

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

echo "== waiting for the Python suites ($logs/python.log)"
python_status=0
wait "$python_pid" || python_status=$?
trap - EXIT
echo "== the Python suites' output"
cat "$logs/python.log"
echo "== time per phase (the two streams ran side by side after the build)"
while IFS=$'\t' read -r took name; do printf '%6ds  %s\n' "$took" "$name"; done < "$logs/phases.main"
while IFS=$'\t' read -r took name; do printf '%6ds  [python] %s\n' "$took" "$name"; done < "$logs/phases.python"
if [ "$python_status" != 0 ]; then
  echo "== the Python suites failed (exit $python_status): see above" >&2
  exit "$python_status"
fi
echo "== all tests passed in ${SECONDS}s"
