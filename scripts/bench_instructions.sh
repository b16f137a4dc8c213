#!/usr/bin/env bash
# Instructions per call of `flaxlayer bench` workloads, counted by valgrind's callgrind: a
# measure that does not depend on the machine's load (wall-clock times on a shared 2-core machine
# do). Delta method: each workload runs under callgrind with --iters LO and --iters HI
# (--warmup 0); everything outside the timed loop (plugin load, bundle open, loading the
# executable from the compile cache, the first call) is in both runs and cancels, so
# (Ir(HI) - Ir(LO)) / (HI - LO) is the work of one call. The start-up is not exactly the same
# from run to run (up to a few million instructions), so HI - LO is large where calls are cheap.
# One plain run per workload first fills FLAXLAYER_CACHE, so nothing is compiled under valgrind.
#
# Usage: scripts/bench_instructions.sh [--base BIN] [--bin BIN]
#   --base BIN  another flaxlayer binary to compare (e.g. an older commit's release build)
#   --bin BIN   the binary to measure (default: builds and uses target/profiling/flaxlayer, the
#               release build with line tables for callgrind_annotate: Cargo.toml's `profiling`)
#   --only TEXT only the workloads whose name contains TEXT (e.g. "b1")
# Prints a markdown table. Callgrind output files go to target/bench-instructions/.
# Installs valgrind with apt if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CLI and the tests find the CPU plugin in the repository's .venv as in an activated
# virtualenv (plugin discovery never searches the working directory).
export VIRTUAL_ENV="${VIRTUAL_ENV:-$PWD/.venv}"

BASE=""
BIN=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

. scripts/lib/apt.sh
need_command valgrind valgrind

export FLAXLAYER_CACHE="${FLAXLAYER_CACHE:-$PWD/target/compile-cache}"
if [ -z "$BIN" ]; then
  cargo build --profile profiling --bin flaxlayer >&2
  BIN=target/profiling/flaxlayer
fi
OUT=target/bench-instructions
mkdir -p "$OUT"

# name | bundle | batch | extra flags | LO HI. The heavy workloads make few calls: under
# valgrind their multi-threaded kernels take seconds per call.
WORKLOADS=(
  "mlp b1 inference|hlo/mlp|1||100 2100"
  "dense_bn_dropout b4 training|hlo/dense_bn_dropout|4|--training|100 2100"
  "decoder b1 decode step|hlo/decoder|1||100 2100"
  "mlp b256 inference|hlo/mlp|256||5 25"
  "cnn b4 inference|hlo/cnn|4||5 25"
  "buckets b3 inference, padded to 4|hlo/buckets|3||100 2100"
  "buckets b4 inference|hlo/buckets|4||100 2100"
  "mlp_frozen b1 inference (params compiled in)|hlo/mlp_frozen|1||100 2100"
  "decoder_frozen b1 decode step (params compiled in)|hlo/decoder_frozen|1||100 2100"
)

# Total instructions (Ir) in callgrind output files (one per thread with --separate-threads).
total_ir() {
  awk '/^(totals|summary):/ { n += $2; nextfile } END { printf "%.0f\n", n }' "$@"
}

# Every flag in "$@" is one that `BIN bench --help` lists.
has_flags() {
  local bin=$1; shift
  local help flag
  help=$("$bin" bench --help)
  for flag in "$@"; do
    grep -q -- "$flag" <<<"$help" || return 1
  done
}

# Instructions per call of one workload with one binary, "CALLING ALL" (the calling thread,
# all threads), or "n/a: why".
per_call() {
  local bin=$1 tag=$2 bundle=$3 batch=$4 extra=$5 lo=$6 hi=$7
  local -a args=(bench "$bundle" --batch "$batch" --warmup 0)
  [ -n "$extra" ] && args+=($extra)
  if ! has_flags "$bin" --batch --warmup --iters $extra; then
    echo "n/a: $bin lacks a flag"
    return
  fi
  # Fills the compile cache; a binary that can't run the workload (an older build) gives n/a.
  "$bin" "${args[@]}" --iters 1 >/dev/null 2>"$OUT/$tag.warmup.log" \
    || { echo "n/a: $(tail -1 "$OUT/$tag.warmup.log")"; return; }
  local n main=() all=()
  for n in "$lo" "$hi"; do
    local file="$OUT/$tag.$n.callgrind"
    rm -f "$file" "$file"-*
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$file" \
      "$bin" "${args[@]}" --iters "$n" >"$OUT/$tag.$n.log" 2>&1 \
      || { echo "n/a: failed, see $OUT/$tag.$n.log"; return; }
    main+=("$(total_ir "$file"-01)")
    all+=("$(total_ir "$file"-*)")
  done
  echo $(( (main[1] - main[0]) / (hi - lo) )) $(( (all[1] - all[0]) / (hi - lo) ))
}

# 1234567 -> 1,234,567
group() {
  sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"
}

change() {
  awk -v h="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", (h - b) * 100 / b }'
}

echo "Instructions per call: (Ir(--iters hi) - Ir(--iters lo)) / (hi - lo), valgrind --tool=callgrind --separate-threads=yes; FLAXLAYER_CACHE=$FLAXLAYER_CACHE"
echo "This build: $BIN${BASE:+; base: $BASE}"
echo "Calling thread: the thread that calls the layer (repeats within ~0.2% for training and decode, ~5% for mlp b1)."
echo "All threads: adds the plugin's worker threads (intra-op kernels, and idle spinning that varies by millions of instructions per run)."
echo
if [ -n "$BASE" ]; then
  echo "| workload | calling thread: this build | base | change | all threads: this build | base | change |"
  echo "|---|---|---|---|---|---|---|"
else
  echo "| workload | calling thread | all threads |"
  echo "|---|---|---|"
fi
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r name bundle batch extra counts <<<"$w"
  if [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]]; then continue; fi
  tag=$(tr ' ' '_' <<<"$name")
  read -r lo hi <<<"$counts"
  name="$name ($lo/$hi calls)"
  # The two binaries run side by side: instruction counts don't depend on the load.
  per_call "$BIN" "head.$tag" "$bundle" "$batch" "$extra" "$lo" "$hi" >"$OUT/head.$tag.result" &
  head_pid=$!
  if [ -n "$BASE" ]; then
    per_call "$BASE" "base.$tag" "$bundle" "$batch" "$extra" "$lo" "$hi" >"$OUT/base.$tag.result"
  fi
  wait "$head_pid"
  read -r head_main head_all <"$OUT/head.$tag.result" || true
  if [ -z "$BASE" ]; then
    case "$head_main" in n/a*) echo "| $name | $(cat "$OUT/head.$tag.result") | |" ;;
      *) echo "| $name | $(group "$head_main") | $(group "$head_all") |" ;; esac
    continue
  fi
  read -r base_main base_all <"$OUT/base.$tag.result" || true
  case "$head_main$base_main" in
    n/a*) echo "| $name | $(cat "$OUT/head.$tag.result") | $(cat "$OUT/base.$tag.result") | | | | |" ;;
    *n/a*) echo "| $name | $(group "$head_main") | $(cat "$OUT/base.$tag.result") | | $(group "$head_all") | | |" ;;
    *) echo "| $name | $(group "$head_main") | $(group "$base_main") | $(change "$head_main" "$base_main") | $(group "$head_all") | $(group "$base_all") | $(change "$head_all" "$base_all") |" ;;
  esac
done
