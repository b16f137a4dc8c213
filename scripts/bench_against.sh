#!/usr/bin/env bash
# Wall-clock latency of `flaxlayer bench` workloads, this build against another binary (e.g. an
# older commit's release build), in alternating rounds so that both see the same machine load.
# Prints each workload's per-round medians and the ratio of the medians of those medians.
#
# Usage: scripts/bench_against.sh --base BIN [--bin BIN] [--rounds N] [--only TEXT]
#   --base BIN   the binary to compare with
#   --bin BIN    the binary to measure (default: builds and uses target/release/flaxlayer)
#   --rounds N   alternating rounds (default 5)
#   --only TEXT  only the workloads whose name contains TEXT
# Timings on a shared machine are noisy: compare within one run, and see
# scripts/bench_instructions.sh for a load-independent measure.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CLI and the tests find the CPU plugin in the repository's .venv as in an activated
# virtualenv (plugin discovery never searches the working directory).
export VIRTUAL_ENV="${VIRTUAL_ENV:-$PWD/.venv}"

BASE="" BIN="" ROUNDS=5 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -n "$BASE" ] || { echo "--base BIN is required" >&2; exit 2; }
export FLAXLAYER_CACHE="${FLAXLAYER_CACHE:-$PWD/target/compile-cache}"
if [ -z "$BIN" ]; then
  cargo build --release --bin flaxlayer >&2
  BIN=target/release/flaxlayer
fi

# name | bundle | batch | extra flags | iterations per round
WORKLOADS=(
  "mlp b1 inference|hlo/mlp|1||20000"
  "dense_bn_dropout b4 training|hlo/dense_bn_dropout|4|--training|10000"
  "decoder b1 decode step|hlo/decoder|1||10000"
  "mlp b256 inference|hlo/mlp|256||1000"
  "cnn b4 inference|hlo/cnn|4||1000"
)

# The median in µs that `flaxlayer bench` prints, or "n/a".
median() {
  local out
  out=$("$@" 2>/dev/null) || { echo n/a; return; }
  sed -n 's/.*median \([0-9.]*\) µs.*/\1/p' <<<"$out"
}

middle() {
  tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "Wall-clock medians per round (µs), $ROUNDS alternating rounds; this build: $BIN; base: $BASE; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| workload | this build: median of rounds (rounds) | base | this / base |"
echo "|---|---|---|---|"
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r name bundle batch extra iters <<<"$w"
  if [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]]; then continue; fi
  head=() base=()
  for _ in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    head+=("$(median "$BIN" bench "$bundle" --batch "$batch" $extra --iters "$iters")")
    # shellcheck disable=SC2086
    base+=("$(median "$BASE" bench "$bundle" --batch "$batch" $extra --iters "$iters")")
  done
  h=$(echo "${head[*]}" | middle) b=$(echo "${base[*]}" | middle)
  ratio=$(awk -v h="$h" -v b="$b" 'BEGIN { if (h + 0 > 0 && b + 0 > 0) printf "%.3f", h / b; else print "n/a" }')
  echo "| $name | $h (${head[*]}) | $b (${base[*]}) | $ratio |"
done
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
