"""Build a magnification set (Hagnifinder's Hagni40 recipe) from sources of known resolution.

From every source (a slide, or an image listed in an index CSV with its magnification/mpp) cut
square regions at its native resolution — the paper's 2560, 4480 and 8960 px at 40x, i.e. 640,
1120 and 2240 µm, or the largest square that fits a smaller source — downsample each region with
area averaging to every integer magnification in a range (never above the source's own), crop to
at most ``max_crop`` px, drop crops with too much background, and write a manifest. Splits are
assigned by source, so no slide or image is in two splits.

Layout::

    DIR/manifest.csv   image, source_id, organ, magnification, mpp, split, region_um, width, height,
                       tissue_fraction, source_path
    DIR/sources.csv    source_id, path, organ, mpp, magnification, mpp_source, split, status, crops, error
    DIR/images/<source_id>/<source_id>_r<k>_<mag>x.png

A build is all or nothing: it first removes the manifest of any earlier build in DIR, writes
``manifest.csv`` atomically once every source is done, then deletes crops no row lists. A crash
leaves no manifest (so nothing reads a half-made set) and a rerun rebuilds the same set.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from histomag.data.atomic import atomic_write_csv, atomic_write_json, atomic_write_png, remove_unreferenced
from histomag.data.runlock import FolderLock
from histomag.errors import ConfigError, HistomagError
from histomag.progress import progress_bar
from histomag.slide import open_slide
from histomag.slide.base import Slide, slide_id_from_path
from histomag.tissue import TissueMask, tissue_mask

log = logging.getLogger(__name__)

#: the paper's region sizes (2560, 4480, 8960 px at 40x = 0.25 µm/px), in µm
PAPER_REGIONS_UM = (640.0, 1120.0, 2240.0)
MANIFEST_COLUMNS = ["image", "source_id", "organ", "magnification", "mpp", "split", "region_um", "width",
                    "height", "tissue_fraction", "source_path"]
SOURCE_COLUMNS = ["source_id", "path", "organ", "mpp", "magnification", "mpp_source", "split", "status",
                  "crops", "error"]
SPLITS = ("train", "val", "test")
#: what a finished build writes besides the crops (manifest.csv last: its presence means complete)
RESULT_FILES = ("manifest.csv", "sources.csv", "magset.json")


@dataclass(frozen=True)
class Source:
    """One slide or image with its resolution (None: take it from the file's metadata)."""

    path: str
    source_id: str
    organ: str = ""
    mpp: float | tuple[float, float] | None = None  # (mpp_x, mpp_y) for pixels that are not square
    origin: str = "file"  # "index-csv" when the resolution comes from an index, not the file


@dataclass(frozen=True)
class MagSetSettings:
    """How regions are cut and resampled."""

    magnifications: tuple[float, ...] = tuple(float(m) for m in range(1, 41))
    regions_um: tuple[float, ...] = PAPER_REGIONS_UM
    regions_per_size: int = 2
    max_crop: int = 500
    min_crop: int = 32
    max_background: float = 0.4
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    extra: dict = field(default_factory=dict)


def read_index_csv(path: Path) -> list[Source]:
    """Sources from an index CSV (see :mod:`histomag.data.index`; every row needs a resolution)."""
    from histomag.data.index import read_index

    return [Source(r.path, r.image_id, r.organ, r.mpp, origin="index-csv") for r in read_index(path)]


def collect_sources(paths: Sequence[Path], mpp: float | None = None) -> list[Source]:
    """Slides/images as given, index CSVs expanded; ``mpp`` overrides slide metadata."""
    out: list[Source] = []
    for p in paths:
        p = Path(p)
        if p.suffix.lower() == ".csv":
            out.extend(read_index_csv(p))
        else:
            out.append(Source(str(p), slide_id_from_path(p), "", mpp))
    ids = [s.source_id for s in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"two sources share the id {sorted(dup)[0]!r}: give each slide/image a unique file name")
    return out


def assign_splits(source_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Split sources (never crops) into train/val/test; each split gets ≥ 1 source when there are ≥ 3."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("val_fraction= and test_fraction= must be in [0, 1) and sum below 1")
    ids = sorted(source_ids)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n = len(ids)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    splits = {}
    for i, sid in enumerate(ids):
        splits[sid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def source_tissue_mask(slide: Slide) -> TissueMask:
    """Tissue mask at up to 8 µm/px, fine enough for at least ~256 px across the short side."""
    mpp = slide.resolution.mpp
    short_um = min(slide.dimensions) * mpp
    return tissue_mask(slide, mpp=min(8.0, max(mpp, short_um / 256)))


def region_plan(slide: Slide, settings: MagSetSettings, rng: np.random.Generator,
                mask: TissueMask) -> list[tuple[float, float, float]]:
    """Square regions ``(left, top, side)`` in level-0 px, on tissue, at each size that fits."""
    W, H = slide.dimensions
    mpp = slide.resolution.mpp
    short_um = min(W, H) * mpp
    sizes = [s for s in settings.regions_um if s <= short_um] or [short_um]
    regions: list[tuple[float, float, float]] = []
    for size_um in sizes:
        side = size_um / mpp
        if math.isclose(side, W, rel_tol=1e-6) or math.isclose(side, H, rel_tol=1e-6) or side >= min(W, H):
            side = float(min(W, H))
        candidates = []
        for _ in range(200):
            left = float(rng.uniform(0, W - side)) if W > side else 0.0
            top = float(rng.uniform(0, H - side)) if H > side else 0.0
            frac = mask.fraction(left, top, side, side)
            candidates.append((frac, left, top))
            if W <= side and H <= side:
                break
        candidates.sort(reverse=True)
        chosen: list[tuple[float, float, float]] = []
        for frac, left, top in candidates:
            if len(chosen) >= settings.regions_per_size or frac < 1 - settings.max_background:
                break
            if all(abs(left - l) > side / 2 or abs(top - t) > side / 2 for l, t, _ in chosen):
                chosen.append((left, top, side))
        regions.extend(chosen)
    return regions


def build_source(source: Source, split: str, settings: MagSetSettings, out_dir: Path,
                 report=None) -> tuple[list[dict], dict]:
    """Cut one source into crops at every magnification; returns manifest rows and a sources.csv row."""
    info = {"source_id": source.source_id, "path": source.path, "organ": source.organ, "split": split,
            "status": "failed", "crops": 0, "error": ""}
    rows: list[dict] = []
    try:
        with open_slide(source.path, mpp=source.mpp) as slide:
            res = slide.resolution
            info.update(mpp=round(res.mpp, 5), magnification=round(res.magnification, 3),
                        mpp_source="index-csv" if source.origin == "index-csv" else slide.mpp_source)
            # str hashes change per process (PYTHONHASHSEED): a stable checksum keeps the set reproducible
            rng = np.random.default_rng([settings.seed, zlib.crc32(source.source_id.encode())])
            mask = source_tissue_mask(slide)
            regions = region_plan(slide, settings, rng, mask)
            # a 39.6x scan serves "40x" at its own resolution (labelled 39.6): never an upsample
            mags = sorted({res.magnification if abs(m / res.magnification - 1) <= slide.rel_tol else m
                           for m in settings.magnifications if m <= res.magnification * (1 + slide.rel_tol)})
            for k, (left, top, side) in enumerate(regions):
                for m in mags:
                    rows.extend(_crop_row(slide, source, split, settings, out_dir, mask, k, left, top, side, m, rng))
            info["status"] = "ok" if rows else "failed"
            if not rows:
                info["error"] = (f"{Path(source.path).name}: no crop with ≤ {settings.max_background:.0%} background "
                                 "at any magnification; check the image shows tissue")
    except HistomagError as exc:
        info["error"] = str(exc)
    info["crops"] = len(rows)
    if report:
        report(1)
    return rows, info


def _crop_row(slide: Slide, source: Source, split: str, settings: MagSetSettings, out_dir: Path, mask,
              k: int, left: float, top: float, side: float, m: float, rng: np.random.Generator) -> list[dict]:
    res = slide.resolution
    scale = m / res.magnification  # output px per level-0 px
    full = side * scale
    out_px = int(math.floor(min(full, settings.max_crop)))
    if out_px < settings.min_crop:
        return []
    crop_side0 = out_px / scale  # level-0 px covered by the crop
    cl = left + float(rng.uniform(0, side - crop_side0)) if side > crop_side0 else left
    ct = top + float(rng.uniform(0, side - crop_side0)) if side > crop_side0 else top
    frac = mask.fraction(cl, ct, crop_side0, crop_side0)
    if frac < 1 - settings.max_background:
        return []
    rgb = slide.read_rect(cl, ct, crop_side0, crop_side0, (out_px, out_px))
    name = f"{source.source_id}_r{k}_{m:.4g}x.png"
    rel = Path("images") / source.source_id / name
    atomic_write_png(out_dir / rel, rgb)
    return [{"image": rel.as_posix(), "source_id": source.source_id, "organ": source.organ,
             "magnification": f"{m:.4g}", "mpp": f"{res.mpp * res.magnification / m:.5g}", "split": split,
             "region_um": round(side * res.mpp, 1), "width": out_px, "height": out_px,
             "tissue_fraction": round(frac, 3), "source_path": source.path}]


def build_magnification_set(sources: Sequence[Source], out_dir: Path, settings: MagSetSettings, *,
                            progress: bool = True) -> tuple[int, list[dict]]:
    """Build the whole set; bad sources are reported in ``sources.csv`` and skipped.

    Returns:
        (number of crops written, the sources.csv rows).
    """
    if not sources:
        raise ConfigError("no sources given: pass slides, images or an index CSV")
    out_dir = Path(out_dir)
    splits = assign_splits([s.source_id for s in sources], settings.val_fraction, settings.test_fraction,
                           settings.seed)
    with FolderLock(out_dir):  # one build per folder at a time
        # images are overwritten in place: a manifest of an earlier build must not outlive that
        for name in RESULT_FILES:
            (out_dir / name).unlink(missing_ok=True)
        all_rows: list[dict] = []
        infos: list[dict] = []
        with progress_bar(progress) as bar:
            task = bar.add_task("building magnification set", total=len(sources)) if bar else None
            for src in sources:
                rows, info = build_source(src, splits[src.source_id], settings, out_dir,
                                          (lambda n: bar.advance(task, n)) if bar else None)
                all_rows.extend(rows)
                infos.append(info)
        atomic_write_csv(out_dir / "sources.csv", SOURCE_COLUMNS, infos)
        atomic_write_json(out_dir / "magset.json", {
            "magnifications": list(settings.magnifications), "regions_um": list(settings.regions_um),
            "regions_per_size": settings.regions_per_size, "max_crop": settings.max_crop,
            "min_crop": settings.min_crop, "max_background": settings.max_background,
            "val_fraction": settings.val_fraction, "test_fraction": settings.test_fraction, "seed": settings.seed})
        atomic_write_csv(out_dir / "manifest.csv", MANIFEST_COLUMNS, all_rows)  # last: the set is complete
        remove_orphans(out_dir, all_rows)
    return len(all_rows), infos


def remove_orphans(out_dir: Path, rows: Sequence[dict]) -> int:
    """Delete crops no manifest row lists (from a killed or an earlier build) and temporary files; returns how many."""
    return remove_unreferenced(out_dir, {out_dir / row["image"] for row in rows}, _crop_file)


def _crop_file(path: Path, source_id: str) -> bool:
    """A crop this builder names (``<source>_r<k>_<mag>x.png``) or its temporary file; nothing else is deleted."""
    name = path.name
    ours = (name.startswith(f"{source_id}_r") and name.endswith("x.png")) or \
        (name.startswith(f".{source_id}_r") and name.endswith(".tmp"))
    return ours and path.is_file()
