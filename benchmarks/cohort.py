"""Cohort tiling rates: one process, a process pool, a Dask cluster and shards + merge, on the same slides.

Every way must give the same dataset (the manifests are compared); the rates are tuples written
per second of wall time, including planning and the manifest. The Dask cluster is a
``LocalCluster`` of ``--workers`` processes on this machine: the same code path as a real
cluster, without the network.

Usage::

    python benchmarks/cohort.py                       # 4 synthetic slides of 3072 px
    python benchmarks/cohort.py --cohort DIR --work DIR --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cohort", type=Path, help="folder of slides (default: a synthetic cohort in --work)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--slides", type=int, default=4)
    p.add_argument("--slide-size", type=int, default=3072)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tile", default="--mags 40,20 --size 256 --overlap 0", help="tile options")
    args = p.parse_args()

    from distributed import LocalCluster

    from histomag.cli.main import run
    from histomag.synth.cohort import make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        cohort = args.cohort or work / "cohort"
        if args.cohort is None and not cohort.is_dir():
            make_cohort(cohort, n_slides=args.slides, seed=0, size_px=args.slide_size)
        opts = args.tile.split() + ["-q"]
        results: list[tuple[str, float, str]] = []

        def timed(name: str, *commands: list[str]) -> Path:
            out = work / name.replace(" ", "-").replace("/", "")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            for cmd in commands:
                code = run([c.replace("OUT", str(out)) for c in cmd])
                if code != 0:
                    raise SystemExit(f"{name}: exit {code}")
            results.append((name, time.perf_counter() - t0, str(out)))
            return out

        base = ["tile", str(cohort), "--out", "OUT", *opts]
        timed("1 process", base)
        timed(f"{args.workers} processes", [*base, "--workers", str(args.workers)])
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=50) as lc:
            timed(f"Dask LocalCluster, {args.workers} workers", [*base, "--cluster", lc.scheduler_address])
        n = args.workers
        timed(f"{n} shards run one after another + merge",
              *[[*base, "--shard", f"{k}/{n}"] for k in range(1, n + 1)], ["merge", "OUT"])
        ref = (Path(results[0][2]) / "manifest.csv").read_text()
        tuples = ref.count("\n") - 1
        print(f"{tuples} tuples from {cohort} ({args.tile})")
        print("| way | wall s | tuples/s | vs 1 process | same manifest |\n|---|---|---|---|---|")
        for name, secs, out in results:
            same = (Path(out) / "manifest.csv").read_text() == ref
            print(f"| {name} | {secs:.1f} | {tuples / secs:.1f} | {results[0][1] / secs:.2f} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
