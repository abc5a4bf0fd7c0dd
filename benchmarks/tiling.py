"""Benchmark: same-field-of-view pair extraction (native magnification + half) on a real or synthetic slide.

Compares, in one run, on the same fields, two passes each with fresh handles (cold reader caches):
  ours-B    histomag's read_tuple on backend B (openslide, tiffslide, tiles: the direct tile path):
            one read at the top magnification (best level), the lower one area-downsampled from it
  openslide raw OpenSlide ``read_region`` once per field + PIL box downsample for the lower member
            (the limit as defined outside histomag)
  naive     raw OpenSlide level-0 ``read_region`` for each magnification + PIL Lanczos (what many
            scripts do)
  tiatoolbox ``WSIReader.read_rect`` at both powers, when TIAToolbox is importable (else a note)
and prints pairs/s and every ratio to ``openslide``. The slide is ``--slide PATH`` (default: the real
CMU-1 SVS in ../shared/data when present) or, with ``--synthetic``, a large synthetic 40x TIFF.
Not a test: run it by hand,

    .venv/bin/python benchmarks/tiling.py [--slide PATH | --synthetic --size 20480] [--fields 300]
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


DEFAULT_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"


def best_of_two(fields, make) -> tuple[float, float]:
    """(first pass, best of two) pairs/s; ``make()`` opens fresh handles, so every pass starts with cold
    reader caches (the OS file cache is warm for everyone)."""
    rates = []
    for _ in range(2):
        fn = make()
        t = time.perf_counter()
        for f in fields:
            fn(f)
        rates.append(len(fields) / (time.perf_counter() - t))
    return rates[0], max(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=None, help="a real slide (default: CMU-1 from ../shared/data)")
    ap.add_argument("--synthetic", action="store_true", help="benchmark a large synthetic 40x slide instead")
    ap.add_argument("--size", type=int, default=20480, help="synthetic slide side in px at 40x")
    ap.add_argument("--fields", type=int, default=300, help="fields to extract")
    ap.add_argument("--patch", type=int, default=512, help="px at the top magnification")
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the synthetic slide at this path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--end-to-end", action="store_true", help="also time `histomag tile` per --format (png, jpeg, webp)")
    args = ap.parse_args()

    import openslide

    from histomag.slide import open_slide
    from histomag.tiling.fields import make_tuple_spec, plan_fields, read_tuple
    from histomag.tissue import tissue_mask

    tmp = tempfile.TemporaryDirectory()
    if args.synthetic or (args.slide is None and not DEFAULT_SLIDE.is_file()):
        path = args.keep or Path(tmp.name) / "bench.tif"
        if not path.exists():
            make_slide(path, args.size, args.seed)
    else:
        path = args.slide or DEFAULT_SLIDE
    slide = open_slide(path)
    top = round(slide.magnification)
    spec = make_tuple_spec([top, top / 2], args.patch, "same-fov", power_mpp=slide.power_mpp)
    fields = plan_fields(slide, spec, tissue_mask(slide), overlap=0.0, placement="random",
                         n_random=args.fields, seed=args.seed)
    small = spec.members[1].size
    print(f"{path.name}: {slide.dimensions[0]} x {slide.dimensions[1]} px at {slide.mpp:.4g} µm/px, "
          f"{len(slide.level_dimensions)} level(s); {len(fields)} fields of {args.patch} px at {top:g}x "
          f"+ {small} px at {top / 2:g}x")

    from histomag.slide.tiles import SHARED_CACHE

    def ours(backend):
        def make():
            SHARED_CACHE.clear()  # the direct path's tile cache is per process: a fresh handle starts it cold
            handle = open_slide(path, backend=backend)
            return lambda f: read_tuple(handle, spec, f)
        return make

    def limit():  # outside histomag: one read per field, the lower member a box downsample of it
        raw = openslide.OpenSlide(str(path))

        def read(f):
            side = int(round(f.width))
            big = raw.read_region((int(f.left), int(f.top)), 0, (side, side)).convert("RGB")
            if side != args.patch:
                big = big.resize((args.patch, args.patch), Image.Resampling.BOX)
            return [big, big.resize((small, small), Image.Resampling.BOX)]
        return read

    def naive():
        raw = openslide.OpenSlide(str(path))
        return lambda f: [raw.read_region((int(f.left), int(f.top)), 0, (int(round(f.width)),) * 2).convert("RGB")
                          .resize((m.size, m.size), Image.Resampling.LANCZOS) for m in spec.members]

    readers = {"openslide": limit, "naive": naive}
    for backend in ("openslide", "tiffslide", "tiles"):  # histomag on each backend that opens this slide
        try:
            open_slide(path, backend=backend).close()
        except Exception as exc:  # noqa: BLE001 - a note, not a failure
            print(f"histomag on {backend}: cannot open this slide ({str(exc)[:100]}); skipped")
            continue
        readers[f"ours-{backend}"] = ours(backend)
    if "ours-tiles" in readers:  # the direct path without its tile cache: what decoding alone gives
        from histomag.slide.tiles import TileSlide

        def no_cache():
            handle = TileSlide(path, cache_mb=0)
            return lambda f: read_tuple(handle, spec, f)

        readers["ours-tiles-nocache"] = no_cache
    try:
        from tiatoolbox.wsicore.wsireader import WSIReader

        def tiatoolbox():
            tia = WSIReader.open(str(path))
            return lambda f: [tia.read_rect((int(f.left), int(f.top)), (m.size, m.size), resolution=top / (2 ** i),
                                            units="power") for i, m in enumerate(spec.members)]

        readers["tiatoolbox"] = tiatoolbox
    except ImportError:
        print("tiatoolbox: not installed (pip install tiatoolbox to compare); skipped")
    for make in readers.values():  # warm the OS file cache for everyone
        make()(fields[0])
    passes = {name: best_of_two(fields, make) for name, make in readers.items()}
    rates = {name: best for name, (_, best) in passes.items()}
    print(f"{'reader':>15}  first pass   best of 2   (pairs/s; ratio to openslide, best of 2)")
    for name, (first, best) in passes.items():
        print(f"{name:>15}: {first:8.1f}    {best:8.1f}    {best / rates['openslide']:.2f}")
    decode_limit(path, fields, rates["openslide"])
    coarse_reads(path, fields, top)
    if args.end_to_end:
        end_to_end(path, top, args, max(v for k, v in rates.items() if k.startswith("ours-")))


def coarse_reads(path: Path, fields: list, top: float) -> None:
    """Reads coarser than a level: where the direct path decodes JPEG tiles scaled in the DCT domain.

    Per backend (``tiles+dct``: the direct path with DCT-scaled decoding switched on), with fresh
    handles: the lower member read on its own (top/2 and top/4, as the context
    layout and single-magnification runs do) and a tissue-mask read of the whole slide at 8 µm/px.
    """
    from histomag.slide import open_slide

    from histomag.slide.tiles import SHARED_CACHE, TileSlide

    def opener(backend):
        SHARED_CACHE.clear()  # every handle starts with a cold tile cache
        if backend == "tiles+dct":
            return lambda: TileSlide(path, dct_scaling=True)
        return lambda: open_slide(path, backend=backend)

    rows = {}
    for backend in ("openslide", "tiles", "tiles+dct"):
        try:
            opener(backend)()
        except Exception:  # noqa: BLE001 - a note, not a failure
            continue
        out = {}
        for factor in (2, 4):
            slide = opener(backend)()
            t = time.perf_counter()
            for f in fields:
                slide.read((f.x, f.y), 256, magnification=top / factor)
            out[f"{top / factor:g}x"] = len(fields) / (time.perf_counter() - t)
        times = []
        for _ in range(3):
            slide = opener(backend)()
            t = time.perf_counter()
            slide.read_whole(8.0)
            times.append(time.perf_counter() - t)
        out["mask"] = min(times)
        rows[backend] = out
    if "openslide" not in rows:
        return
    o = rows["openslide"]
    for name in (n for n in ("tiles", "tiles+dct") if n in rows):
        d = rows[name]
        for key in (k for k in o if k != "mask"):
            print(f"lower member alone at {key} (256 px): openslide {o[key]:.1f}/s, {name} {d[key]:.1f}/s "
                  f"({d[key] / o[key]:.2f}x)")
        print(f"tissue-mask read (whole slide at 8 µm/px): openslide {o['mask'] * 1000:.1f} ms, {name} "
              f"{d['mask'] * 1000:.1f} ms ({o['mask'] / d['mask']:.1f}x faster)")


def decode_limit(path: Path, fields: list, openslide_rate: float) -> None:
    """The physical limit per core: decoding (tifffile + imagecodecs) the level-0 tiles each field touches.

    Without a cache every field decodes all its tiles; with a perfect cache each tile once. Only for
    a tiled level 0 that tifffile can decode; otherwise a note.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not page.is_tiled:
                print("decode limit: level 0 is not tiled; skipped")
                return
            tw, th = page.tilewidth, page.tilelength
            across = -(-page.shape[1] // tw)
            touched = []
            for f in fields:
                x0, y0 = max(0, int(f.left)) // tw, max(0, int(f.top)) // th
                x1, y1 = int(f.left + f.width - 1) // tw, int(f.top + f.width - 1) // th
                touched.append([ty * across + tx for ty in range(y0, y1 + 1) for tx in range(x0, x1 + 1)])
            raw = {}
            for i in {i for t in touched for i in t}:
                tif.filehandle.seek(page.dataoffsets[i])
                raw[i] = tif.filehandle.read(page.databytecounts[i])
            t = time.perf_counter()
            for tiles in touched:
                for i in tiles:
                    page.decode(raw[i], i, jpegtables=page.jpegtables)
            per_field = len(fields) / (time.perf_counter() - t)
            t = time.perf_counter()
            for i in raw:
                page.decode(raw[i], i, jpegtables=page.jpegtables)
            cached = len(fields) / (time.perf_counter() - t)
    except Exception as exc:  # noqa: BLE001 - a benchmark note, not a failure
        print(f"decode limit: tifffile cannot decode this slide's tiles ({type(exc).__name__}); skipped")
        return
    n = np.mean([len(t) for t in touched])
    print(f"decode limit (tifffile/imagecodecs, {tw}x{th} tiles, {n:.1f} per field): {per_field:.1f} pairs/s "
          f"without a tile cache ({per_field / openslide_rate:.2f} of openslide), {cached:.1f} with a perfect one "
          f"({cached / openslide_rate:.2f})")


def end_to_end(path: Path, top: float, args: argparse.Namespace, extraction: float) -> None:
    """`histomag tile` (plan, read, encode, atomic writes, journal, manifest) per image format, one worker."""
    import histomag.tiling.jobs as tiler
    from histomag.data.folder import TileSettings

    for fmt in ("png", "jpeg", "webp"):
        for threads in (1, tiler.WRITER_THREADS):
            tiler.WRITER_THREADS = threads
            with tempfile.TemporaryDirectory() as out:
                settings = TileSettings((top, top / 2), args.patch, placement="random", n_random=args.fields,
                                        seed=args.seed, min_tissue=0.5, image_format=fmt)
                t = time.perf_counter()
                (result,) = tiler.tile_slides([tiler.SlideJob(str(path))], settings, out, progress=False)
                rate = result.tuples_written / (time.perf_counter() - t)
                size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()) / 2**20
            print(f"tile --format {fmt:>4}, {threads} writer thread(s): {rate:6.1f} pairs/s "
                  f"({result.tuples_written} pairs, {size:.0f} MB), {rate / extraction:.2f} of extraction alone")


if __name__ == "__main__":
    main()
