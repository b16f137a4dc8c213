#!/usr/bin/env bash
# Checks that `cargo package` gives a crate that stands alone: unpacks the .crate into a temp
# directory (no .venv, no hlo/, no scripts, no build-machine paths reachable from it), then
# builds it and runs its unit tests there.
#
# Unit tests that need a PJRT plugin get it the way a user of the published crate would:
# through PJRT_PLUGIN_PATH, pointed at the CPU plugin that setup.sh installed (the only
# thing taken from this checkout). Compiled dependencies stay in target/package_check.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

plugin=$(ls "$repo"/.venv/lib/python3*/site-packages/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so 2>/dev/null | head -n1 || true)
[ -n "$plugin" ] || { echo "package_check: no CPU plugin in .venv; run scripts/setup.sh" >&2; exit 1; }

cargo package --locked --allow-dirty --no-verify --quiet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
crate="$repo/target/package/flaxlayer-$version.crate"

# A fixed directory outside the repo (so that cargo finds no parent workspace), locked against
# concurrent runs: the package keeps one path, so its build in target/package_check is
# replaced run after run instead of piling up.
tmp="${TMPDIR:-/tmp}/flaxlayer-package-check-$(id -u)"
exec 9>"$tmp.lock"
flock 9
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$crate" -C "$tmp"
cd "$tmp/flaxlayer-$version"
# The tarball keeps the files' times, so cargo would take the previous run's build (made in
# another temp directory, with its paths compiled in) as up to date: make every file new.
find . -type f -exec touch {} +
[ ! -e .venv ] && [ ! -e hlo/mlp ] && [ ! -e scripts ] || { echo "package_check: the package holds more than it should" >&2; exit 1; }

# Its own target directory: cargo gives the packaged crate the same artifact names as the
# repo's (a path package's hash leaves its path out), so a shared one would mix the two builds.
export CARGO_TARGET_DIR="$repo/target/package_check"
export PJRT_PLUGIN_PATH="$plugin"
unset VIRTUAL_ENV
export FLAXLAYER_CACHE=0
echo "== package: build (default features, then the library alone) and unit tests in $PWD"
cargo build --locked --quiet
cargo build --locked --quiet --no-default-features --lib
cargo test --locked --quiet --lib

echo "== a new project that depends on the crate by path, outside the repo, with no .venv anywhere"
app="$tmp/app"
cargo new --quiet --vcs none "$app"
cd "$app"
unset PJRT_C_API_HEADER
cargo add --quiet --path "$repo" --no-default-features
cat > src/main.rs <<'RUST'
//! Built against flaxlayer as a path dependency: loads a committed bundle on the plugin named
//! on the command line and prints its outputs for zeros.
fn main() -> flaxlayer::Result<()> {
    let mut args = std::env::args().skip(1);
    let (bundle, plugin) = (args.next().expect("BUNDLE"), args.next().expect("PLUGIN"));
    let layer = flaxlayer::FlaxLayer::builder(bundle).plugin(plugin).build()?;
    let x = flaxlayer::Tensor::zeros(flaxlayer::DType::F32, vec![1, 64])?;
    let y = layer.predict(&x)?;
    println!("outputs {}", y[0]);
    Ok(())
}
RUST
cargo build --quiet
out=$(env -i PATH="$PATH" HOME="$HOME" FLAXLAYER_CACHE=0 "$CARGO_TARGET_DIR/debug/app" "$repo/hlo/mlp" "$plugin")
echo "$out"
case "$out" in "outputs float32[1,10]"*) ;; *) echo "package_check: the dependent app did not run the bundle" >&2; exit 1 ;; esac
