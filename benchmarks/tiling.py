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

    .venv/bin/python benchmarks/tiling.py [--slide PATH | --synthetic --size 20480] [--fields 300] [--end-to-end]

``--end-to-end`` adds one table: `histomag tile` per image encoder (the shipped formats and the
candidates measured for the lossless default), pairs/s, ratio to cache-less extraction of the same
fields, and MB per 1000 pairs (``--e2e-only``: that table alone).
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
    ap.add_argument("--end-to-end", action="store_true",
                    help="also time `histomag tile` per image encoder against cache-less extraction (one table)")
    ap.add_argument("--e2e-overlap", type=float, default=0.75, help="grid overlap of the end-to-end plan")
    ap.add_argument("--e2e-repeats", type=int, default=2, help="paired passes per end-to-end row (best of)")
    ap.add_argument("--e2e-only", action="store_true", help="skip the reader comparison, run only the end-to-end table")
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
    if args.e2e_only:
        end_to_end(path, top, args)
        return

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
        end_to_end(path, top, args)


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


def _candidates() -> list[tuple[str, str, str, object]]:
    """(encoder, settings, image_format, ImageFormat to register or None) for the end-to-end table.

    The shipped formats (png, jpeg, webp, qoi, jxl) run as they are; the others are candidates that
    were measured for the choice and are registered only for this run.
    """
    import io

    import imagecodecs
    from PIL import Image

    from histomag.data.encoders import IMAGE_FORMATS, ImageFormat, encode_png

    def pil(fmt: str, **kw):
        def encode(rgb, quality):
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format=fmt, **kw)
            return buf.getvalue()
        return encode

    def npy_zstd(rgb, quality):
        buf = io.BytesIO()
        np.save(buf, rgb)
        return imagecodecs.zstd_encode(buf.getvalue(), level=1)

    png_ok = IMAGE_FORMATS["png"].complete
    extra = {
        "png-l6": ("png (ours)", "Up filter, libdeflate level 6", ImageFormat("png-l6", ".png", True,
                   lambda rgb, q: encode_png(rgb, 6), png_ok)),
        "png-pil1": ("png (Pillow)", "compress_level=1 (the former default)", ImageFormat(
            "png-pil1", ".png", True, pil("PNG", compress_level=1), png_ok)),
        "png-pil6": ("png (Pillow)", "compress_level=6", ImageFormat(
            "png-pil6", ".png", True, pil("PNG", compress_level=6), png_ok)),
        "png-libpng": ("png (imagecodecs libpng)", "level=1", ImageFormat(
            "png-libpng", ".png", True, lambda rgb, q: imagecodecs.png_encode(rgb, level=1), png_ok)),
        "png-spng": ("png (imagecodecs libspng)", "level=1", ImageFormat(
            "png-spng", ".png", True, lambda rgb, q: imagecodecs.spng_encode(rgb, level=1), png_ok)),
        "webp-ll": ("webp lossless (imagecodecs)", "method=0", ImageFormat(
            "webp-ll", ".webp", True, lambda rgb, q: imagecodecs.webp_encode(rgb, lossless=True, method=0),
            IMAGE_FORMATS["webp"].complete)),
        "npy-zstd": ("npy + zstd (imagecodecs)", "level=1", ImageFormat(
            "npy-zstd", ".npy.zst", True, npy_zstd, lambda h, t, n: n > 0)),
        "jpeg-pil": ("jpeg (Pillow)", "q90 4:4:4 (the former encoder)", ImageFormat(
            "jpeg-pil", ".jpg", False, pil("JPEG", quality=90, subsampling=0), IMAGE_FORMATS["jpeg"].complete)),
    }
    rows = [("png (ours) [default]", "Up filter, libdeflate level 1", "png", None)]
    rows += [(*extra[k][:2], k, extra[k][2]) for k in ("png-l6", "png-pil1", "png-pil6", "png-libpng", "png-spng")]
    rows += [("qoi (imagecodecs)", "-", "qoi", None), ("jpeg xl lossless (imagecodecs)", "effort=1", "jxl", None)]
    rows += [(*extra[k][:2], k, extra[k][2]) for k in ("webp-ll", "npy-zstd")]
    rows += [("jpeg (simplejpeg)", "q90 4:4:4", "jpeg", None), (*extra["jpeg-pil"][:2], "jpeg-pil", extra["jpeg-pil"][2]),
             ("webp lossy (Pillow)", "q90 method=4", "webp", None)]
    return rows


def end_to_end(path: Path, top: float, args: argparse.Namespace) -> None:
    """`histomag tile` end to end (plan, read, encode, atomic writes, journal, manifest) per encoder, one worker.

    Every row is paired with a pass of cache-less extraction (the direct path without its tile cache:
    ``read_tuple`` on ``TileSlide(cache_mb=0)``) over the same planned fields, run right before it, and
    each is the best of ``--e2e-repeats``: on a shared machine a ratio of neighbours is steadier than
    one of passes a minute apart.
    """
    import histomag.tiling.jobs as tiler
    from histomag.data.encoders import IMAGE_FORMATS
    from histomag.data.folder import TileSettings
    from histomag.slide import open_slide
    from histomag.slide.tiles import TileSlide
    from histomag.tiling.fields import read_tuple

    base = dict(magnifications=(top, top / 2), size=args.patch, placement="grid", overlap=args.e2e_overlap,
                min_tissue=0.25, seed=args.seed)
    with open_slide(path) as slide:
        plan = tiler.plan_slide(slide, tiler.SlideJob(str(path)), TileSettings(**base))
    fields = [p.field for p in plan.fields]

    def extraction() -> float:
        handle = TileSlide(path, cache_mb=0)
        t = time.perf_counter()
        for f in fields:
            read_tuple(handle, plan.spec, f)
        return len(fields) / (time.perf_counter() - t)

    def tile(fmt: str) -> tuple[float, int, int]:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            (result,) = tiler.tile_slides([tiler.SlideJob(str(path))], TileSettings(**base, image_format=fmt), out,
                                          progress=False)
            rate = result.tuples_written / (time.perf_counter() - t)
            size = sum(p.stat().st_size for p in (Path(out) / "images").rglob("*") if p.is_file())
        return rate, size, result.tuples_written

    default_threads = tiler.WRITER_THREADS
    tile("png")  # warm: imports, the OS file cache
    rows = []
    for encoder, setting, fmt, registered in _candidates():
        if registered is not None:
            IMAGE_FORMATS[fmt] = registered
        for threads in (default_threads, 1) if fmt in ("png", "jpeg") else (default_threads,):
            tiler.WRITER_THREADS = threads
            best_ref, best_rate = 0.0, 0.0
            for _ in range(args.e2e_repeats):
                best_ref = max(best_ref, extraction())
                rate, size, n = tile(fmt)
                best_rate = max(best_rate, rate)
            rows.append((encoder, setting, threads, best_rate, best_ref, size / max(n, 1) * 1000 / 2**20))
        tiler.WRITER_THREADS = default_threads
        if registered is not None:
            del IMAGE_FORMATS[fmt]
    print(f"\n`histomag tile` end to end: {len(fields)} tuples ({args.patch} px at {top:g}x + {plan.spec.members[1].size} px "
          f"at {top / 2:g}x; grid, overlap {args.e2e_overlap}), best of {args.e2e_repeats}, each paired with cache-less "
          "extraction of the same fields")
    print(f"| encoder | settings | writer threads | pairs/s | ratio to cache-less extraction | extraction pairs/s "
          "| MB per 1000 pairs |")
    print("|---|---|---|---|---|---|---|")
    for encoder, setting, threads, rate, ref, mb in rows:
        print(f"| {encoder} | {setting} | {threads} | {rate:.0f} | {rate / ref:.2f} | {ref:.0f} | {mb:.0f} |")


if __name__ == "__main__":
    main()
