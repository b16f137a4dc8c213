# Sourced by setup.sh and matrix.sh: installs pinned Python packages into the repo's
# virtualenvs with uv (from PyPI, pinned below, kept beside uv's own per-user cache in
# ~/.cache/flaxlayer-tools/uv-VERSION), which downloads in parallel, keeps a per-user cache
# (~/.cache/uv) and links files from it: a fresh clone's
# environments take seconds, where pip took minutes (it keeps no cache on this kind of machine
# and compiles every module). Without uv (no network for it, FLAXLAYER_NO_UV=1), pip does the
# same installs.
#
# The exporter package itself is installed with pip, as the README tells users to, so that
# the check that it never moves an environment's JAX (matrix.sh) is a check of what pip does.

UV_VERSION=0.13.9
# The system's CA bundle (as PIP_CERT names it) for uv's downloads.
export UV_NATIVE_TLS=1

# uv_bin: prints the path of uv, installing it first; prints nothing when it can't be had.
uv_bin() {
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/flaxlayer-tools/uv-$UV_VERSION"
  if [ -z "${FLAXLAYER_NO_UV:-}" ] && [ ! -x "$dir/bin/uv" ]; then
    "${PYTHON:-python3}" -m pip install -q --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
      --target "$dir" "uv==$UV_VERSION" >&2 || rm -rf "$dir"
  fi
  if [ -z "${FLAXLAYER_NO_UV:-}" ] && [ -x "$dir/bin/uv" ]; then echo "$dir/bin/uv"; fi
}

# make_venv DIR PYTHON: a virtualenv at DIR (with pip in it) unless one is there.
make_venv() {
  local dir=$1 py=$2 uv
  [ -x "$dir/bin/python" ] && return
  uv=$(uv_bin)
  if [ -n "$uv" ]; then
    "$uv" venv -q --seed --python "$py" "$dir"
  else
    "$py" -m venv "$dir"
  fi
}

# pip_install PYTHON ARGS...: `pip install ARGS` into PYTHON's environment (ARGS: -r FILE,
# --no-deps, --target DIR, packages).
pip_install() {
  local py=$1 uv
  shift
  uv=$(uv_bin)
  if [ -n "$uv" ]; then
    local links=()
    [ -n "${PIP_FIND_LINKS:-}" ] && [ -d "$PIP_FIND_LINKS" ] && links=(--find-links "$PIP_FIND_LINKS")
    "$uv" pip install -q "${links[@]}" --python "$py" "$@"
  else
    "$py" -m pip install -q --disable-pip-version-check "$@"
  fi
}
