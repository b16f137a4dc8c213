#!/usr/bin/env bash
# Installs what flaxlayer needs to build and test, idempotently; quick when nothing is missing.
# - Debian's libclang-dev (tests/abi_check's bindgen reads pjrt_c_api.h with it; the crate
#   itself builds without it), if absent;
# - .venv with every Python pin of scripts/requirements.txt (JAX, Flax, the PJRT CPU plugins),
#   installed with uv (scripts/lib/pip.sh; pip without it), and the exporter package
#   scripts/flaxlayer_export installed with pip in editable mode;
# - the version matrix's .venv-jax012 (pyenv's Python 3.12.1, jax 0.12.0.1, flax 0.12.12) and
#   .venv-hf (transformers for the Hugging Face test zoo), by `scripts/matrix.sh setup`.
#   FLAXLAYER_NO_MATRIX=1 leaves them out.
# Nothing is written outside the repo except Debian packages, and uv with its download cache
# (~/.cache/flaxlayer-tools/uv-VERSION, ~/.cache/uv).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }
. scripts/lib/apt.sh
. scripts/lib/pip.sh

need_apt=()
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  apt_install "${need_apt[@]}"
fi

command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  make_venv .venv "$(command -v "$PY")"
fi
# The stamp covers the pins, the package's pyproject.toml and this checkout's path (an editable
# install points at it), so nothing is reinstalled when none of them changed.
stamp=.venv/.requirements.sha256
want=$( { echo "$PWD"; cat scripts/requirements.txt scripts/pyproject.toml; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python requirements into .venv"
  pip_install .venv/bin/python -r scripts/requirements.txt
  rm -f "$stamp"
fi
# The exporter package, editable: .venv imports flaxlayer_export from this checkout's scripts/.
where=$(.venv/bin/python -c 'import importlib.util as u; s = u.find_spec("flaxlayer_export"); print(s.submodule_search_locations[0] if s else "")')
if [ ! -f "$stamp" ] || [ "$where" != "$PWD/scripts/flaxlayer_export" ]; then
  log "installing the flaxlayer_export package (editable, scripts/) into .venv"
  pip_install .venv/bin/python -e ./scripts
  echo "$want" > "$stamp"
fi

# The newest end of the exporter's supported JAX range (scripts/matrix.sh).
if [ -z "${FLAXLAYER_NO_MATRIX:-}" ]; then
  scripts/matrix.sh setup
fi

# transformers 4.57.6 (the last release with Flax model classes) for .venv's Python 3.11 too:
# scripts/requirements-hf.txt (the same pins as matrix.sh's .venv-hf, which is for Python 3.12:
# regex has a compiled module per Python), --no-deps into target/hf-transformers, so it can
# never move .venv's jax, flax or numpy. For scripts/make_lm_fixtures.py,
# tests/python/test_causal_lm.py and scripts/bench_generate.py; no weights are downloaded.
hf=target/hf-transformers
hf_want=$(sha256sum scripts/requirements-hf.txt | cut -d' ' -f1)
if [ "$(cat "$hf/.pins.sha256" 2>/dev/null)" != "$hf_want" ]; then
  log "installing scripts/requirements-hf.txt (--no-deps) into $hf"
  rm -rf "$hf"
  pip_install .venv/bin/python --no-deps --target "$hf" -r scripts/requirements-hf.txt
  echo "$hf_want" > "$hf/.pins.sha256"
fi
# ... importable from .venv: a .pth file puts the folder on sys.path after .venv's own
# site-packages, so it only adds what .venv lacks (transformers), never shadows jax or numpy.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD/$hf" > "$site/flaxlayer-hf-transformers.pth"
