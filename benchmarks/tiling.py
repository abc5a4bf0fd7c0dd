"""Benchmark: 40x+20x same-field-of-view tuple extraction on a large synthetic 40x slide.

Compares, in one run and on the same fields:
  ours   histomag's read_tuple: one read at 40x (best level), 20x area-downsampled from it
  naive  read level 0 for each magnification separately and resize with PIL (what many scripts do)
  limit  one best-level read per field and nothing else (the decode limit for our approach)
and prints tuples/s and the ratios ours/naive and ours/limit. Not a test: run it by hand,

    .venv/bin/python benchmarks/tiling.py [--size 20480] [--fields 300] [--keep PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_slide(path: Path, size: int, seed: int) -> None:
    from histomag.synth import render_tissue, write_pyramidal_tiff

    t = time.perf_counter()
    tissue = render_tissue(size, size, mpp=0.25, seed=seed)
    write_pyramidal_tiff(path, tissue.rgb, mpp=0.25, objective_power=40)
    print(f"synthesised {size} x {size} px slide in {time.perf_counter() - t:.1f} s -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20480, help="slide side in px at 40x (>= 20000 for the README)")
    ap.add_argument("--fields", type=int, default=300, help="fields to extract")
    ap.add_argument("--patch", type=int, default=600, help="px at 40x")
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the slide at this path")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from histomag.slide import open_slide
    from histomag.tiling import make_tuple_spec, plan_fields, read_tuple
    from histomag.tissue import tissue_mask

    tmp = tempfile.TemporaryDirectory()
    path = args.keep or Path(tmp.name) / "bench.svs"
    if not path.exists():
        make_slide(path, args.size, args.seed)
    slide = open_slide(path)
    spec = make_tuple_spec([40, 20], args.patch, "same-fov")
    fields = plan_fields(slide, spec, tissue_mask(slide), overlap=0.0)
    rng = np.random.default_rng(args.seed)
    fields = [fields[i] for i in rng.permutation(len(fields))[: args.fields]]
    print(f"slide {slide.dimensions[0]} x {slide.dimensions[1]} px, {len(slide.level_dimensions)} levels, "
          f"{len(fields)} fields of {args.patch} px at 40x (+ {args.patch // 2} px at 20x)")

    def ours(f):
        return read_tuple(slide, spec, f)

    def naive(f):
        out = []
        for m in spec.members:
            side = int(round(f.width))
            region = slide._read_level(int(f.left), int(f.top), 0, side, side)  # level 0, every time
            out.append(np.asarray(Image.fromarray(region).resize((m.size, m.size), Image.Resampling.LANCZOS)))
        return out

    def limit(f):
        return slide.read((f.x, f.y), spec.reference.size, magnification=40)

    timings = {}
    for name, fn in (("ours", ours), ("naive", naive), ("limit", limit), ("ours", ours)):
        t = time.perf_counter()
        for f in fields:
            fn(f)
        timings[name] = len(fields) / (time.perf_counter() - t)  # second "ours" pass: warm cache for all
    for name in ("ours", "naive", "limit"):
        print(f"{name:>6}: {timings[name]:8.1f} tuples/s")
    print(f"ratio ours/naive = {timings['ours'] / timings['naive']:.2f}x, "
          f"ours/limit = {timings['ours'] / timings['limit']:.2f} (1.0 = at the decode limit)")


if __name__ == "__main__":
    main()
