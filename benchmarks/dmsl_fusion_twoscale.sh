#!/usr/bin/env bash
# Issue 24 on the two-scale synthetic cohort (docs/dmsl-fusion.md): four classes = nuclear detail (visible at
# 40x only) x arrangement (visible across the field at 20x); single branches, late fusion, MM and SIM with and
# without deep supervision; 5-fold grouped CV x 3 seeds, tiny backbone, one thread. Run from the root:
#     bash benchmarks/dmsl_fusion_twoscale.sh [OUT]      (default OUT: build/twoscale; about 1 h on one core)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/build/twoscale}
H="$ROOT/.venv/bin/histomag"
SEEDS=${SEEDS:-3}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT/logs" && cd "$OUT" || exit 2
[ -f cohort/index.csv ] || $H synth --kind two-scale --out cohort --slides 12 --images-per-class 2 --seed 0 -q
[ -f tiles/manifest.csv ] || $H tile cohort/index.csv --out tiles --mags 40,20 --size 128 --placement random \
  --n-random 8 -q
COMMON="--backbone tiny --folds 5 --epochs ${EPOCHS:-10} --patience 4 -j 0 -q"
run() {
  local name=$1; shift
  [ -f "$name/metrics.json" ] && return 0
  local again=""; [ -e "$name" ] && again="--resume"
  /usr/bin/time -f "$name %e s" -a -o times.txt $H dmsl train tiles "$@" --out "$name" $COMMON --seeds $SEEDS $again \
    > "logs/$name.log" 2>&1 || echo "$name FAILED (logs/$name.log)" >> times.txt
}
run single-40 --mode single --mags 40
run single-20 --mode single --mags 20
run mm-ds --mode mm --mags 40,20 --branch-ce 1
run mm-fused --mode mm --mags 40,20 --branch-ce 0
run sim-ds --mode sim --mags 40,20 --branch-ce 1
cmp() { echo "## $1 vs $2"; $H dmsl compare "$1" "$2" --level slide; echo; }
{
  cmp single-40 single-20; cmp single-40+single-20 single-40
  cmp mm-ds single-40; cmp mm-ds single-40+single-20; cmp mm-fused single-40; cmp mm-fused single-40+single-20
  cmp mm-ds mm-fused; cmp sim-ds mm-ds; cmp sim-ds single-40+single-20
} > compare.md
cat times.txt compare.md
