#!/usr/bin/env bash
# Issue 24 on BACH (docs/dmsl-fusion.md): single branches, late fusion, MM and SIM with and without deep
# supervision, 5-fold grouped CV x 3 seeds, tiny backbone from random initialisation, two queues of one
# thread each (a 2-core machine), then paired comparisons with 95% bootstrap intervals. Run from the root:
#     bash benchmarks/dmsl_fusion_bach.sh [OUT]      (default OUT: build/fusion-bach; needs ../shared/data)
# Finished runs are kept, so an interrupted script continues where it stopped (--resume).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/build/fusion-bach}
DATA=${DATA:-$ROOT/../shared/data/bach/index.csv}
H="$ROOT/.venv/bin/histomag"
SEEDS=${SEEDS:-3}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT/logs" && cd "$OUT" || exit 2
COMMON="--backbone tiny --folds 5 --epochs ${EPOCHS:-10} --patience 4 -j 0 -q"
run() {  # NAME ARGS...: one multi-seed CV run, skipped when finished, resumed when started
  local name=$1; shift
  [ -f "$name/metrics.json" ] && return 0
  local again=""; [ -e "$name" ] && again="--resume"
  /usr/bin/time -f "$name %e s" -a -o times.txt $H dmsl train ds10-5 "$@" --out "$name" $COMMON --seeds $SEEDS $again \
    > "logs/$name.log" 2>&1 || echo "$name FAILED (logs/$name.log)" >> times.txt
}
[ -f ds10-5/manifest.csv ] || $H tile "$DATA" --out ds10-5 --mags 10,5 --size 150 --placement random --n-random 8 \
  --min-tissue 0.5 -q
queue_a() {
  run mm-ds --mode mm --mags 10,5 --branch-ce 1
  run single-10 --mode single --mags 10
  run sim-ds --mode sim --mags 10,5 --branch-ce 1
}
queue_b() {
  run mm-fused --mode mm --mags 10,5 --branch-ce 0
  run single-5 --mode single --mags 5
  run sim-fused --mode sim --mags 10,5 --branch-ce 0
}
queue_a & queue_b & wait
cmp() { echo "## $1 vs $2"; $H dmsl compare "$1" "$2" --level slide; echo; }
{
  cmp mm-ds single-10; cmp mm-ds single-5; cmp mm-ds single-10+single-5
  cmp mm-fused single-10; cmp mm-fused single-10+single-5
  cmp sim-ds mm-ds; cmp sim-ds single-10; cmp sim-ds single-10+single-5
  cmp mm-ds mm-fused; cmp sim-fused mm-fused; cmp sim-ds sim-fused
  cmp single-10+single-5 single-10
} > compare.md
cat times.txt compare.md
