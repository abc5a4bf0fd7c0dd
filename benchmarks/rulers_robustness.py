"""Benchmark: how far the acquisition checks move the shipped estimator's answers on real images.

For every image of the given index CSVs (every N-th), the estimate of the image as it is and of the
image after each acquisition check (``histomag.magnification.acquisition.ACQUISITION_CHECKS``:
unsharp mask radius 2 px 150%, Gaussian blur σ 1 px, JPEG q70, stain shift, noise); prints per check
the median |log change|, the share of images moved more than 10%, the worst factor, and the change
of the median estimate. Not a test (the suite checks a few fields); run it by hand:

    .venv/bin/python benchmarks/rulers_robustness.py ../shared/data/monuseg/index.csv \\
        ../shared/data/cpm15/index.csv ../shared/data/bach/index.csv ../shared/data/breakhis/index.csv --every 4
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", nargs="+")
    parser.add_argument("--every", type=int, default=4, help="Every N-th image of each CSV.")
    args = parser.parse_args()

    from histomag.errors import HistomagError
    from histomag.magnification.acquisition import ACQUISITION_CHECKS
    from histomag.magnification.rulers.estimator import load_ruler_estimator
    from histomag.magnification.sources import collect_entries, load_source

    est = load_ruler_estimator()
    entries = [e for p in args.index for e in collect_entries([p])[:: args.every]]
    base, moved = [], {k: [] for k in ACQUISITION_CHECKS}
    for e in entries:
        try:
            rgb = load_source(e).rgb
            m0 = est.estimate_rgb(rgb).magnification
        except HistomagError:
            continue
        base.append(m0)
        for name, check in ACQUISITION_CHECKS.items():
            try:
                moved[name].append(math.log(est.estimate_rgb(check(rgb)).magnification / m0))
            except HistomagError:
                moved[name].append(float("nan"))
    print(f"{len(base)} images; median |log change|, share moved > 10%, worst factor, change of the median estimate")
    for name, logs in moved.items():
        a = np.abs(np.array(logs))
        ok = a[np.isfinite(a)]
        median_est = np.median(np.array(base) * np.exp(np.nan_to_num(np.array(logs))))
        print(f"{name:9s} {np.median(ok):.3f}  {np.mean(ok > math.log(1.1)):.2f}  x{np.exp(ok.max()):.2f}  "
              f"{median_est / np.median(base) - 1:+.3f}  ({len(a) - ok.size} unanswered)")


if __name__ == "__main__":
    main()
