"""Benchmark: time to estimate the magnification of one 1000 x 1000 image with the default model.

Compares, in one run and on the same image:
  ours       histomag's whole estimate (tissue mask, 32 crops spread over the tissue, test-time
             scales as calibrated, median of logs, interval): ``Estimator.estimate_rgb``
  reference  torchvision's ResNet-18 forward pass on the same number of 128 px crops (an outside
             network of the size commonly used for such regressors), no pre- or post-processing
and prints seconds per image and the ratio ours / reference. Not a test: run it by hand,

    .venv/bin/python benchmarks/magnification_speed.py [--image PATH] [--repeats 5] [--threads 2]

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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torchvision.models import resnet18

    from histomag.magnification.infer import load_estimator

    rgb, name = load_image(args.image)
    est = load_estimator()
    first = est.estimate_rgb(rgb)  # warm-up (and the answer)
    n_crops = first.n_crops
    ours = best_of(lambda: est.estimate_rgb(rgb), args.repeats)

    ref_net = resnet18().eval()
    crops = torch.randn(n_crops, 3, est.config.crop, est.config.crop)

    def reference() -> None:
        with torch.no_grad():
            ref_net(crops)

    reference()
    ref = best_of(reference, args.repeats)
    print(f"image: {name}, {rgb.shape[1]} x {rgb.shape[0]} px; estimate {first.describe()}")
    print(f"ours (whole estimate, {n_crops} crop predictions, tta {est.tta}): {ours:.3f} s/image")
    print(f"reference (torchvision ResNet-18 forward on {n_crops} crops of {est.config.crop} px): {ref:.3f} s")
    print(f"ratio ours / reference: {ours / ref:.2f} ({args.threads} threads, best of {args.repeats})")


if __name__ == "__main__":
    main()
