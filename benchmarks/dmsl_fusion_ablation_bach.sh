#!/usr/bin/env bash
# Issue 24 ablation on BACH (docs/dmsl-fusion.md): one change at a time against mm with the
# default loss (fused CE alone), seed 0 x 5 folds (the same folds as seed 0 of dmsl_fusion_twoscale.sh, so each row pairs
# with its runs). Run after benchmarks/dmsl_fusion_bach.sh, from the root:
#     bash benchmarks/dmsl_fusion_ablation.sh [OUT]      (default OUT: build/fusion-bach)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/build/fusion-bach}
H="$ROOT/.venv/bin/histomag"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$OUT" || exit 2
COMMON="--backbone tiny --folds 5 --epochs ${EPOCHS:-10} --patience 4 -j 0 -q --seed 0"
run() {
  local name=$1; shift
  [ -f "$name/metrics.json" ] && return 0
  local again=""; [ -e "$name" ] && again="--resume"
  /usr/bin/time -f "$name %e s" -a -o times.txt $H dmsl train ds10-5 "$@" --out "$name" $COMMON $again \
    > "logs/$name.log" 2>&1 || echo "$name FAILED (logs/$name.log)" >> times.txt
}
run sim-fused --mode sim --mags 10,5 --branch-ce 0 --seeds 3   # the default SIM, all three seeds
run abl-learned --mode mm --mags 10,5 --branch-ce 0 --fusion learned
run abl-shared --mode mm --mags 10,5 --branch-ce 0 --shared-backbone
run abl-select-ce --mode mm --mags 10,5 --branch-ce 0 --select-on ce
run abl-sim-paper --mode sim --mags 10,5 --branch-ce 0 --beta 0.5 --sim-warmup 0 --sim-form paper
cmp() { echo "## $1 vs $2"; $H dmsl compare "$1" "$2" --level slide; echo; }
{ for r in mm-ds abl-learned abl-shared abl-select-ce sim-fused abl-sim-paper; do cmp $r mm-fused; done; } > ablation.md
cat ablation.md
