"""Benchmark: time to estimate the magnification of one 1000 x 1000 image (and one slide) with the
shipped estimator (the rulers).

Compares, in one run and on the same image:
  ours       histomag's whole estimate (tissue mask, non-overlapping fields, every ruler's reading,
             pooling, interval and objective odds): ``RulerEstimator.estimate_rgb``
  reference  OpenCV's blob detector (``cv2.SimpleBlobDetector``, default settings: thresholds,
             contours, area/circularity/inertia/convexity filters; an outside library's answer to
             the same find-the-round-dark-objects task) on the grey image, after OpenCV's own
             colour conversion
and prints seconds per image and the ratio ours / reference; then the seconds for one slide
(CMU-1 when ../shared/data is present) against the issue's 20 s. Not a test: run it by hand,

    .venv/bin/python benchmarks/magnification_speed.py [--image PATH] [--slide PATH] [--repeats 3]

The default image is ../shared/data/monuseg/images/<first>.png when present, else synthetic tissue.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def load_image(path: str | None) -> tuple[np.ndarray, str]:
    from PIL import Image

    if path is None:
        found = sorted((REPO.parent / "shared" / "data" / "monuseg" / "images").glob("*.png"))
        if found:
            path = str(found[0])
    if path is not None:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[:1000, :1000], Path(path).name
    from histomag.synth import render_tissue

    return render_tissue(1000, 1000, mpp=0.25, seed=0).rgb, "synthetic 40x tissue"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None)
    parser.add_argument("--slide", default=str(REPO.parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)

    import cv2

    from histomag.magnification.infer import load_estimator

    rgb, name = load_image(args.image)
    est = load_estimator()
    first = est.estimate_rgb(rgb)  # warm-up (and the answer)
    ours = best_of(lambda: est.estimate_rgb(rgb), args.repeats)

    detector = cv2.SimpleBlobDetector_create()

    def reference() -> None:
        detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))

    reference()
    ref = best_of(reference, args.repeats)
    print(f"image: {name}, {rgb.shape[1]} x {rgb.shape[0]} px; estimate {first.describe()}")
    print(f"ours (whole estimate, {first.n_crops} fields): {ours:.3f} s/image")
    print(f"reference (OpenCV SimpleBlobDetector, default settings, on the grey image): {ref:.3f} s")
    print(f"ratio ours / reference: {ours / ref:.2f} ({args.threads} threads, best of {args.repeats})")
    if Path(args.slide).is_file():
        from histomag.slide import open_slide

        t = time.perf_counter()
        with open_slide(args.slide) as slide:
            e = est.estimate_slide(slide)
        print(f"slide: {Path(args.slide).name} {slide.dimensions[0]} x {slide.dimensions[1]} px: "
              f"{time.perf_counter() - t:.2f} s (target <= 20 s); {e.describe()}")


if __name__ == "__main__":
    main()
