#!/usr/bin/env bash
# Checks that `cargo package` gives a crate that stands alone: unpacks the .crate into a temp
# directory (no .venv, no hlo/, no scripts, no build-machine paths reachable from it), then
# builds it and runs its unit tests there (library and CLI), and builds a new project that depends on the
# unpacked package (the library alone, without the `cli` feature), which runs a bundle and compares its outputs with
# JAX's golden values.
#
# Builds are reused: the package is unpacked at one fixed path with the files' own times
# (cargo rebuilds what changed, not everything), it builds in the repository's target
# directory (dependencies shared with the test command's builds), and the dependent app takes
# the package's Cargo.lock, so it builds the same dependency versions.
#
# Unit tests that need a PJRT plugin get it the way a user of the published crate would:
# through PJRT_PLUGIN_PATH, pointed at the CPU plugin that setup.sh installed (the only
# thing taken from this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

plugin=$(ls "$repo"/.venv/lib/python3*/site-packages/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so 2>/dev/null | head -n1 || true)
[ -n "$plugin" ] || { echo "package_check: no CPU plugin in .venv; run scripts/setup.sh" >&2; exit 1; }

cargo package --locked --allow-dirty --no-verify --quiet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
crate="$repo/target/package/flaxlayer-$version.crate"

# A fixed directory outside the repo (so that cargo finds no parent workspace), locked against
# concurrent runs: the package keeps one path, so its build is
# replaced run after run instead of piling up.
tmp="${TMPDIR:-/tmp}/flaxlayer-package-check-$(id -u)"
exec 9>"$tmp.lock"
flock 9
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$crate" -C "$tmp"
cd "$tmp/flaxlayer-$version"
# The tarball keeps the files' times and the path is the same every run, so the previous
# run's build is up to date exactly for the files that did not change.
[ ! -e .venv ] && [ ! -e hlo/mlp ] && [ ! -e scripts ] || { echo "package_check: the package holds more than it should" >&2; exit 1; }

# The repository's target directory, so that every dependency build is shared with the test
# command's own builds (same lock, same features). Cargo gives the packaged crate the same
# artifact names as the repo's (a path package's hash leaves its path out): a profile setting
# of its own (an unused codegen-units value) gives it other names; its CLI is built as a test
# harness only, so that target/debug/flaxlayer stays the repo's.
export CARGO_TARGET_DIR="$repo/target"
own=(--config 'profile.dev.package.flaxlayer.codegen-units=255')
export PJRT_PLUGIN_PATH="$plugin"
unset VIRTUAL_ENV
export FLAXLAYER_CACHE=0
echo "== package: the library's and the CLI's unit tests (default features), in $PWD"
# One command builds the library, its unit tests and the CLI's (a `cargo check` would check
# every dependency again instead of reusing their builds).
cargo test "${own[@]}" --locked --quiet --lib --bins
package=$PWD

echo "== a new project that depends on the unpacked package by path (no default features), outside the repo, with no .venv anywhere"
app="$tmp/app"
cargo new --quiet --vcs none "$app"
cd "$app"
unset PJRT_C_API_HEADER
# Without debug info, as the test build's dependencies are (the repo's dev profile), and as the
# quick start's project (scripts/quickstart_check.sh), which shares these builds.
export CARGO_PROFILE_DEV_DEBUG=false
cp "$package/Cargo.lock" .
cargo add --quiet --path "$package" --no-default-features
cat > src/main.rs <<'RUST'
//! Built against flaxlayer as a path dependency: loads a committed bundle on the plugin named
//! on the command line, runs it on the inputs of the bundle's golden file and compares the
//! outputs with JAX's.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (bundle, plugin) = (args.next().expect("BUNDLE"), args.next().expect("PLUGIN"));
    let golden = flaxlayer::tensor::read_safetensors(format!("{bundle}/golden.safetensors"))?;
    let get = |name: &str| golden.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).ok_or(format!("no {name} in golden.safetensors"));
    let (x, want) = (get("inputs/inputs")?, get("inference/outputs")?);
    let layer = flaxlayer::FlaxLayer::builder(bundle).plugin(plugin).build()?;
    let y = layer.predict(&x)?;
    let diff = y[0].max_abs_diff(&want)?;
    println!("outputs {}, max abs diff from JAX {diff:e}", y[0]);
    if diff > 1e-5 {
        return Err(format!("outputs differ from JAX's by {diff}").into());
    }
    Ok(())
}
RUST
# Not --locked: the lock gains the app itself; every dependency keeps the copied version.
cargo build "${own[@]}" --quiet
out=$(env -i PATH="$PATH" HOME="$HOME" FLAXLAYER_CACHE=0 "$CARGO_TARGET_DIR/debug/app" "$repo/hlo/mlp" "$plugin")
echo "$out"
case "$out" in "outputs float32[1,10]"*"max abs diff from JAX"*) ;; *) echo "package_check: the dependent app did not run the bundle" >&2; exit 1 ;; esac
