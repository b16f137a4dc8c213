#!/usr/bin/env bash
# The README's quick start, as a new user follows it: in a temporary directory outside this
# repository, with the steps' code taken from the README itself.
#   1. the quick start's Python exports the user's own linen model (`my_model/`) and prints JAX's
#      first row of outputs;
#   2. its shell block makes a new cargo project that depends on the crate by path
#      (`cargo add --path ../flaxlayer`, the clone being a link to this checkout), installs the
#      `flaxlayer` command with `cargo install` and gets the plugin with `flaxlayer plugin install`
#      (into a per-user directory under the temporary one: XDG_DATA_HOME);
#   3. its Rust is the project's src/main.rs, and `cargo run` must print JAX's numbers.
# Where it departs from a fresh machine, to stay fast and offline-friendly:
#   - `pip install ./flaxlayer/scripts` is not run: the repo's .venv has that package already
#     (scripts/setup.sh installs it, editable), and its python is the `python3` on PATH, so
#     `flaxlayer plugin install` copies the plugin from the package installed there instead of
#     downloading it;
#   - the new project starts from this repo's Cargo.lock (the versions that were tested);
#   - `cargo install` builds the debug profile (`--debug --locked`) in this repo's target/
#     (dependencies reused from the test build), and so does the new project (dependencies
#     reused from scripts/package_check.sh's dependent app), from a fixed temporary path, so
#     that a second run rebuilds nothing.
# Usage: scripts/quickstart_check.sh   (scripts/test.sh runs it as its own phase)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ -x "$repo/.venv/bin/python" ] || { echo "quickstart_check: no .venv; run scripts/setup.sh" >&2; exit 1; }

# A fixed directory (the dependency's path is part of its build's identity), locked against
# concurrent runs, emptied first and removed at the end.
tmp="${TMPDIR:-/tmp}/flaxlayer-quickstart-$(id -u)"
exec 9>"$tmp.lock"
flock 9
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# The quick start's code blocks, as the README has them.
"$repo/.venv/bin/python" - "$repo/README.md" "$tmp" <<'PY'
import re, sys, pathlib
text = pathlib.Path(sys.argv[1]).read_text()
out = pathlib.Path(sys.argv[2])
start = text.index("\n## Quick start")
section = text[start:text.index("\n## ", start + 1)]
blocks = re.findall(r"```([a-z_,]+)\n(.*?)```", section, re.S)
kinds = [k for k, _ in blocks]
assert kinds == ["sh", "python", "sh", "rust,no_run"], kinds
(out / "pip.sh").write_text(blocks[0][1])
(out / "export.py").write_text(blocks[1][1])
(out / "setup.sh").write_text(blocks[2][1])
(out / "main.rs").write_text(blocks[3][1])
PY
grep -q '^pip install ./flaxlayer/scripts' "$tmp/pip.sh" || { echo "quickstart_check: step 1 no longer installs ./flaxlayer/scripts" >&2; exit 1; }

cd "$tmp"
ln -s "$repo" flaxlayer          # "a clone of this repository (flaxlayer/ below)"
# A new user's environment: no plugin named, no virtualenv active, nothing of this checkout's
# per-user state; python3 is a Python that has the exporter (and the plugin package).
unset PJRT_PLUGIN_PATH VIRTUAL_ENV PJRT_C_API_HEADER
export XDG_DATA_HOME="$tmp/data" CARGO_INSTALL_ROOT="$tmp/cargo-root"
export PATH="$CARGO_INSTALL_ROOT/bin:$repo/.venv/bin:$PATH"

echo "== 1. export: python3 export.py (the quick start's Python)"
jax_row=$(python3 export.py | tail -n1)
[ -f my_model/manifest.json ] || { echo "quickstart_check: the export wrote no my_model/" >&2; exit 1; }
echo "JAX:  $jax_row"

echo "== 2. the project and the plugin (the quick start's shell block)"
# cargo install: the debug build, in the repo's target directory (see above).
# cargo add: the new project starts from this repo's Cargo.lock, so that it builds the
# dependency versions that were tested (and already built) instead of the newest ones.
cargo() {
  if [ "$1" = install ]; then
    shift
    command cargo install --quiet --debug --locked "$@"
  else
    if [ "$1" = add ] && [ ! -e Cargo.lock ]; then cp "$repo/Cargo.lock" .; fi
    command cargo "$@"
  fi
}
export -f cargo
# The new project builds in the repo's target directory too: its dependencies are those of
# the library without default features, which scripts/package_check.sh's dependent app builds.
export CARGO_TARGET_DIR="$repo/target"
# Without debug info, as the test build's dependencies are (Cargo.toml's dev profile).
export CARGO_PROFILE_DEV_DEBUG=false
( set -e; . "$tmp/setup.sh" )
[ -x "$CARGO_INSTALL_ROOT/bin/flaxlayer" ] || { echo "quickstart_check: cargo install gave no flaxlayer" >&2; exit 1; }
ls "$XDG_DATA_HOME"/flaxlayer/plugins/*.so >/dev/null || { echo "quickstart_check: no plugin in the per-user directory" >&2; exit 1; }
grep -q 'flaxlayer = { version = "[0-9.]*", path = "../flaxlayer", default-features = false }' my_app/Cargo.toml \
  || { echo "quickstart_check: cargo add wrote another line than the README says:" >&2; cat my_app/Cargo.toml >&2; exit 1; }

echo "== 3. cargo run (the quick start's Rust as src/main.rs)"
cp main.rs my_app/src/main.rs
out=$(cd my_app && command cargo run --quiet)
echo "$out"
echo "$out" | grep -qx 'takes inputs: float32\[?, 8\]' || { echo "quickstart_check: inputs() did not print the spec" >&2; exit 1; }
rust_row=$(echo "$out" | tail -n1)
"$repo/.venv/bin/python" - "$jax_row" "$rust_row" <<'PY'
import ast, sys
jax, rust = (ast.literal_eval(s) for s in sys.argv[1:])
assert len(jax) == len(rust) == 3, (jax, rust)
err = max(abs(a - b) for a, b in zip(jax, rust))
assert err <= 2e-5, f"Rust {rust} vs JAX {jax}: max abs error {err:e}"
print(f"Rust matches JAX: max abs error {err:.1e}")
PY
