#!/usr/bin/env bash
# Issue 24 ablation (docs/dmsl-fusion.md): one change at a time against mm with the default loss (fused CE
# alone), seed 0 x 5 folds (the same folds as seed 0 of the main runs, so each row pairs with them). Run after
# benchmarks/dmsl_fusion_twoscale.sh or benchmarks/dmsl_fusion_bach.sh, from the root:
#     bash benchmarks/dmsl_fusion_ablation.sh twoscale [OUT]   (default OUT: build/twoscale; tuple level)
#     bash benchmarks/dmsl_fusion_ablation.sh bach [OUT]       (default OUT: build/fusion-bach; image level)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
  twoscale) OUT=${2:-$ROOT/build/twoscale}; DATA=tiles; MAGS=40,20; LEVEL=tuple; EXTRA=abl-ds-half ;;
  bach) OUT=${2:-$ROOT/build/fusion-bach}; DATA=ds10-5; MAGS=10,5; LEVEL=slide; EXTRA="" ;;
  *) echo "usage: bash benchmarks/dmsl_fusion_ablation.sh twoscale|bach [OUT]" >&2; exit 2 ;;
esac
H="$ROOT/.venv/bin/histomag"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$OUT" || exit 2
COMMON="--backbone tiny --folds 5 --epochs ${EPOCHS:-10} --patience 4 -j 0 -q --seed 0"
run() {
  local name=$1; shift
  [ -f "$name/metrics.json" ] && return 0
  local again=""; [ -e "$name" ] && again="--resume"
  /usr/bin/time -f "$name %e s" -a -o times.txt $H dmsl train $DATA "$@" --out "$name" $COMMON $again \
    > "logs/$name.log" 2>&1 || echo "$name FAILED (logs/$name.log)" >> times.txt
}
run sim-fused --mode sim --mags $MAGS --branch-ce 0 --seeds 3   # the default SIM, all three seeds
run abl-learned --mode mm --mags $MAGS --branch-ce 0 --fusion learned
run abl-shared --mode mm --mags $MAGS --branch-ce 0 --shared-backbone
run abl-select-ce --mode mm --mags $MAGS --branch-ce 0 --select-on ce
[ -n "$EXTRA" ] && run abl-ds-half --mode mm --mags $MAGS --branch-ce 0.5   # two-scale only
run abl-sim-paper --mode sim --mags $MAGS --branch-ce 0 --beta 0.5 --sim-warmup 0 --sim-form paper
cmp() { echo "## $1 vs $2"; $H dmsl compare "$1" "$2" --level $LEVEL; echo; }
{ for r in mm-ds $EXTRA abl-learned abl-shared abl-select-ce sim-fused abl-sim-paper; do cmp $r mm-fused; done; } > ablation.md
cat ablation.md
