#!/usr/bin/env bash
# DMSL on BACH (docs/dmsl-bach.md): the Table III / Fig. 3 analogs, 5-fold grouped CV, tiny backbone,
# random initialisation, two queues of one thread each (a 2-core machine), then Grad-CAM, similarity
# statistics, the bridge measurement and one HTML report. Run from the repository root:
#     bash benchmarks/dmsl_bach.sh [OUT]        (default OUT: build/bach; needs ../shared/data)
# Finished runs are kept, so an interrupted script continues where it stopped.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/build/bach}
DATA=${DATA:-$ROOT/../shared/data/bach/index.csv}
H="$ROOT/.venv/bin/histomag"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT/logs" && cd "$OUT" || exit 2
COMMON="--backbone tiny --folds 5 --epochs 20 --patience 8 -j 0 -q"
TILE="--size 150 --placement random --n-random 12 --min-tissue 0.5 -q"
run() {  # NAME DATASET ARGS...: one CV run, skipped when finished
  local name=$1; shift
  [ -f "$name/metrics.json" ] && return 0
  /usr/bin/time -f "$name %e s" -a -o times.txt $H dmsl train "$@" --out "$name" $COMMON > "logs/$name.log" 2>&1 \
    || echo "$name FAILED (logs/$name.log)" >> times.txt
}
[ -f ds10-5/manifest.csv ] || $H tile "$DATA" --out ds10-5 --mags 10,5 $TILE
[ -f ctx10-5/manifest.csv ] || $H tile "$DATA" --out ctx10-5 --mags 10,5 --layout context $TILE
queue_a() {
  run sim-dist ds10-5 --mode sim --mags 10,5
  run mm ds10-5 --mode mm --mags 10,5
  run single-10 ds10-5 --mode single --mags 10
  for f in 05 10 50; do run sim-dist-f$f ds10-5 --mode sim --mags 10,5 --train-fraction 0.$f; done
}
queue_b() {
  run single-5 ds10-5 --mode single --mags 5
  run sim-paper ds10-5 --mode sim --mags 10,5 --sim-form paper --beta 0.5 --sim-warmup 0
  run mscn ctx10-5 --mode mscn --mags 10,5
  for f in 05 10 50; do run single-10-f$f ds10-5 --mode single --mags 10 --train-fraction 0.$f; done
}
queue_a & queue_b & wait
$H dmsl cam sim-dist ds10-5 --out cams-sim --n 8 --fold 1 -q
$H dmsl cam mm ds10-5 --out cams-mm --n 8 --fold 1 -q
$H dmsl similarity sim-dist mm ds10-5 --out similarity
PYTHONPATH="$ROOT/src" "$ROOT/.venv/bin/python" "$ROOT/benchmarks/dmsl_bach_bridge.py" sim-dist "$DATA" --out bridge \
  > bridge.txt
$H report sim-dist mm single-10 single-5 sim-paper mscn sim-dist-f05 sim-dist-f10 sim-dist-f50 \
  single-10-f05 single-10-f10 single-10-f50 --cams cams-sim --cams cams-mm --similarity similarity \
  --title "DMSL on BACH (10x+5x, 150 µm, tiny backbone, 5-fold grouped CV)" --out bach-report.html
PYTHONPATH="$ROOT/src" "$ROOT/.venv/bin/python" "$ROOT/benchmarks/dmsl_bach_table.py" single-10 single-5 mm sim-dist \
  sim-paper mscn --reference single-10 > table.md
PYTHONPATH="$ROOT/src" "$ROOT/.venv/bin/python" "$ROOT/benchmarks/dmsl_bach_table.py" single-10-f05 single-10-f10 \
  single-10-f50 single-10 sim-dist-f05 sim-dist-f10 sim-dist-f50 sim-dist > fractions.md
cat times.txt table.md fractions.md bridge.txt
