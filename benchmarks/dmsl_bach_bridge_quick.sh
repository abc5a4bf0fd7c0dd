#!/usr/bin/env bash
# The bridge on BACH with the shipped estimator, quickly (docs/dmsl-bach.md, "The bridge again"):
# tile BACH at 10x+5x (150 µm), a 2-fold 6-epoch sim model (about a minute), then the bridge benchmark.
# Run from the repository root: bash benchmarks/dmsl_bach_bridge_quick.sh [OUT]   (needs ../shared/data)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/build/bridge}
H="$ROOT/.venv/bin/histomag"
D=${DATA:-$ROOT/../shared/data/bach/index.csv}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -f "$OUT/ds10-5/manifest.csv" ] || $H tile "$D" --out "$OUT/ds10-5" --mags 10,5 --size 150 --placement random \
    --n-random 12 --min-tissue 0.5 -q   # exits 1: one adipose image (n025) gives no tissue
[ -f "$OUT/sim/metrics.json" ] || $H dmsl train "$OUT/ds10-5" --out "$OUT/sim" --mode sim --mags 10,5 --backbone tiny \
    --folds 2 --epochs 6 --patience 3 -j 0 -q || exit 2
PYTHONPATH="$ROOT/src" "$ROOT/.venv/bin/python" "$ROOT/benchmarks/dmsl_bach_bridge.py" "$OUT/sim" "$D" --out "$OUT/bridge"
