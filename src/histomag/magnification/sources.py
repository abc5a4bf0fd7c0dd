"""Real images of known resolution, held in memory at square pixels, and the crops a magnification model learns from.

A *source* is one image or slide with its true µm per pixel; a *group* is what leaves together in
cross-validation (a dataset at one scan resolution: "all of BACH", "the CPM-15 20x tiles", one
slide). Sources come from index CSVs (``image`` plus ``mpp``, or ``mpp_x`` and ``mpp_y``, or
``magnification``; optional ``group`` and ``organ``; paths relative to the CSV) and from slide files
(their metadata resolution). Pixels that are not square are resampled to square on loading
(:func:`histomag.resolution.square_pixels`), before anything else.

:class:`ScaleSampleDataset` draws training crops online: a source (groups weighted equally), a
magnification log-uniformly between what the source can give and its own, a tissue-rich region
of the matching physical size, and one randomised acquisition of it
(:func:`~histomag.magnification.acquisition.simulate_acquisition`). Nothing is written to disk and no
crop is ever resized after it is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from histomag.magnification.acquisition import AcquisitionSettings, resample, simulate_acquisition
from histomag.errors import (ConfigError, DatasetError, DecoderLimitError, HistomagError, InputPathError,
                             UnreadableSlideError)
from histomag.progress import progress_bar
from histomag.resolution import DEFAULT_POWER_MPP, square_pixels
from histomag.slide import PLAIN_IMAGE_SUFFIXES, SLIDE_AND_IMAGE_SUFFIXES
from histomag.tissue import TissueMask, tissue_mask_from_rgb

#: slides larger than this many level-0 pixels are read as a centred window of this area
MAX_SLIDE_PIXELS = 6000 * 6000


def expand_image_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given (missing ones kept, so they are reported per file); folders expanded to their images/slides."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and p.suffix.lower() != ".mrxs":
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SLIDE_AND_IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


@dataclass
class RealSource:
    """One image of known resolution, at square pixels.

    Attributes:
        source_id: unique name (file stem, or CSV-relative path).
        group: cross-validation group.
        organ: organ or tissue ("" when unknown).
        mpp: µm per (square) pixel.
        rgb: ``(H, W, 3)`` uint8 pixels.
        path: where it came from.
        mask: tissue mask (level-0 = ``rgb`` pixels).
    """

    source_id: str
    group: str
    organ: str
    mpp: float
    rgb: np.ndarray
    path: str
    mask: TissueMask | None = None

    @property
    def magnification(self) -> float:
        return DEFAULT_POWER_MPP / self.mpp

    def min_magnification(self, crop: int) -> float:
        """The lowest magnification at which a ``crop`` px crop fits in this image."""
        return self.magnification * crop / min(self.rgb.shape[:2])


@dataclass(frozen=True)
class SourceEntry:
    """Where a source is and what is known of it, before loading."""

    path: str
    source_id: str
    group: str
    organ: str = ""
    mpp_x: float | None = None
    mpp_y: float | None = None


#: the objective powers scans and snapshots are named by
NOMINAL_MAGNIFICATIONS = (1.25, 2.5, 4.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0)


def nominal_magnification(magnification: float) -> float:
    """The nearest conventional objective power (in log scale): 39.6x and 40.6x are both 40x."""
    return min(NOMINAL_MAGNIFICATIONS, key=lambda m: abs(math.log(magnification / m)))


def read_index_entries(path: str | Path) -> list[SourceEntry]:
    """Entries of an index CSV (see :mod:`histomag.data.index`; every row needs a resolution).

    The group is the ``group`` (or ``patient``) column when present, else the CSV's folder name,
    with the magnification appended (``cpm15-20x``) when the CSV holds several scan resolutions.

    Raises:
        DatasetError: missing columns, an ``mpp_x`` without ``mpp_y`` (or the reverse), a value
            that is not a plausible positive number, or a row with no resolution (each names the row).
    """
    from histomag.data.index import read_index as read_rows

    path = Path(path)
    rows = read_rows(path)
    mags = {nominal_magnification(DEFAULT_POWER_MPP / max(r.mpp_x, r.mpp_y)) for r in rows}  # type: ignore[type-var]
    out = []
    for r in rows:
        group = r.group
        if not group:
            name = path.parent.name or "index"
            mag = nominal_magnification(DEFAULT_POWER_MPP / max(r.mpp_x, r.mpp_y))  # type: ignore[type-var]
            group = f"{name}-{mag:g}x" if len(mags) > 1 else name
        out.append(SourceEntry(r.path, r.image_id, group, r.organ, r.mpp_x, r.mpp_y))
    return out


def collect_entries(paths: Sequence[str | Path]) -> list[SourceEntry]:
    """Index CSVs expanded, slides and images as themselves (each slide is its own group)."""
    out: list[SourceEntry] = []
    for p in paths:
        p = Path(p)
        if p.suffix.lower() == ".csv":
            out.extend(read_index_entries(p))
        elif not p.exists():
            raise InputPathError(f"{p}: no such file; check the path")
        else:
            out.append(SourceEntry(str(p.resolve()), p.name.split(".")[0], p.name.split(".")[0]))
    ids = [e.source_id for e in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"two sources share the id {dup[0]!r}; give each image or slide a unique file name")
    if not out:
        raise ConfigError("no sources given: pass index CSVs, slides or images of known resolution")
    return out


def load_rgb_square(path: str | Path, mpp_x: float, mpp_y: float) -> tuple[np.ndarray, float]:
    """A plain image file as square-pixel uint8 RGB (transparent pixels become white) and its mpp."""
    from histomag.slide.image import open_image

    try:
        with open_image(path) as im:  # DecoderLimitError (one line) for a header over histomag's limits
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            rgb = np.asarray(im.convert("RGB"))
    except UnreadableSlideError as exc:
        if isinstance(exc, DecoderLimitError):
            raise
        raise DatasetError(f"{path}: cannot read the image ({str(exc).split(': ', 1)[-1]}); check the file") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read the image ({type(exc).__name__}); check the file") from None
    return square_pixels(rgb, mpp_x, mpp_y)


def load_source(entry: SourceEntry) -> RealSource:
    """Load one source into memory at square pixels, with its tissue mask.

    Raises:
        HistomagError: unreadable file, unknown resolution, no tissue.
    """
    plain = Path(entry.path).suffix.lower() in PLAIN_IMAGE_SUFFIXES
    given = entry.mpp_x is not None and entry.mpp_y is not None
    if given and plain:
        rgb, mpp = load_rgb_square(entry.path, entry.mpp_x, entry.mpp_y)
    elif plain:
        raise DatasetError(f"{entry.path}: a plain image has no trustworthy resolution; list it in an index CSV "
                           "with its mpp")
    else:
        # a slide: read through the slide readers (never decoded whole), the index's mpp winning over metadata
        from histomag.slide import open_slide

        override = (entry.mpp_x, entry.mpp_y) if given else None
        with open_slide(entry.path, mpp=override) as slide:
            res = slide.resolution  # raises MissingResolutionError without metadata
            W, H = slide.dimensions
            side_w, side_h = W, H
            if W * H > MAX_SLIDE_PIXELS:
                side_w = side_h = int(math.sqrt(MAX_SLIDE_PIXELS))
            left, top = (W - min(W, side_w)) // 2, (H - min(H, side_h)) // 2
            w, h = min(W, side_w), min(H, side_h)
            rgb = slide.read_rect(left, top, w, h, (w, h))
            mpp = res.mpp
    mask = tissue_mask_from_rgb(rgb[::4, ::4], downsample=(4.0, 4.0))
    return RealSource(entry.source_id, entry.group, entry.organ, float(mpp), np.ascontiguousarray(rgb), entry.path,
                      mask)


def load_sources(entries: Sequence[SourceEntry], *, progress: bool = True) -> tuple[list[RealSource], list[str]]:
    """Load every source; a bad one is reported (in the returned messages) and skipped."""
    out: list[RealSource] = []
    errors: list[str] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("loading sources", total=len(entries)) if bar else None
        for entry in entries:
            try:
                out.append(load_source(entry))
            except HistomagError as exc:
                errors.append(str(exc))
            if bar:
                bar.advance(task, 1)
    return out, errors


def tissue_region(source: RealSource, side: float, rng: np.random.Generator, min_tissue: float = 0.5,
                  tries: int = 8) -> tuple[int, int]:
    """Top-left corner of a ``side`` px square with the most tissue among a few random candidates."""
    H, W = source.rgb.shape[:2]
    best, best_frac = (0, 0), -1.0
    for _ in range(tries):
        x = int(rng.integers(0, max(1, int(W - side) + 1)))
        y = int(rng.integers(0, max(1, int(H - side) + 1)))
        frac = source.mask.fraction(x, y, side, side) if source.mask is not None else 1.0
        if frac > best_frac:
            best, best_frac = (x, y), frac
        if frac >= min_tissue:
            break
    return best


def _to_tensor(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    x = rgb.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class ScaleSampleDataset(Dataset):
    """Crops drawn online from real sources at random magnifications, with randomised acquisition.

    Item ``i`` is ``(image (3, crop, crop), magnification)``. In training mode every call draws a
    new crop (torch's RNG, seeded per loader worker); with ``fixed=True`` item ``i`` is always the
    same crop (for validation), drawn with box resampling and no acquisition randomisation.

    Args:
        sources: loaded sources.
        length: items per epoch.
        crop: crop side in px.
        settings: acquisition randomisation (training).
        mag_range: magnifications to draw from (log-uniform), clipped per source.
        native_share: share of crops taken at the source's own scale (no resampling).
        fixed: deterministic items (validation).
        seed: seed of the fixed items.
        mean, std: normalisation.

    Raises:
        DatasetError: no source can give a crop in ``mag_range``.
    """

    def __init__(self, sources: Sequence[RealSource], length: int, crop: int, *,
                 settings: AcquisitionSettings | None = None, mag_range: tuple[float, float] = (1.0, 40.0),
                 native_share: float = 0.2, fixed: bool = False, seed: int = 0,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        self.sources = [s for s in sources if s.min_magnification(crop) <= min(s.magnification, mag_range[1])]
        if not self.sources:
            raise DatasetError(f"no source is large enough for {crop} px crops in {mag_range[0]:g}x-{mag_range[1]:g}x; "
                               "add larger images or lower the crop size")
        self.groups = sorted({s.group for s in self.sources})
        self.by_group = {g: [i for i, s in enumerate(self.sources) if s.group == g] for g in self.groups}
        self.length = int(length)
        self.crop = int(crop)
        self.settings = settings or AcquisitionSettings()
        self.mag_range = (float(mag_range[0]), float(mag_range[1]))
        self.native_share = float(native_share)
        self.fixed = fixed
        self.seed = int(seed)
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if self.fixed:
            return np.random.default_rng([self.seed, index])
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))

    def sample(self, index: int) -> tuple[np.ndarray, float, RealSource]:
        """The uint8 crop, its magnification and its source."""
        rng = self._rng(index)
        group = self.groups[int(rng.integers(len(self.groups)))]
        src = self.sources[self.by_group[group][int(rng.integers(len(self.by_group[group])))]]
        hi = min(src.magnification, self.mag_range[1])
        lo = max(self.mag_range[0], src.min_magnification(self.crop))
        if rng.random() < self.native_share and src.magnification <= self.mag_range[1]:
            mag = src.magnification
        else:
            mag = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else hi
        side = min(self.crop * src.magnification / mag, float(min(src.rgb.shape[:2])))
        mag = src.magnification * self.crop / side
        x, y = tissue_region(src, side, rng)
        iside = int(round(side))
        region = src.rgb[y : y + iside, x : x + iside]
        if self.fixed:
            out = resample(region, self.crop)
        else:
            out = simulate_acquisition(region, self.crop, self.settings, rng)
            out = np.rot90(out, int(rng.integers(4)))
            if rng.random() < 0.5:
                out = out[:, ::-1]
        return np.ascontiguousarray(out), float(mag), src

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rgb, mag, _ = self.sample(index)
        return _to_tensor(rgb, self.mean, self.std), torch.tensor(mag, dtype=torch.float32)


@dataclass(frozen=True)
class EvalView:
    """A held-out image at one known magnification (its own, or box-downsampled from it)."""

    source_id: str
    group: str
    organ: str
    magnification: float
    rgb: np.ndarray


def eval_views(source: RealSource, min_side: int, factors: Sequence[float] = (1, 2, 4, 8, 16)) -> list[EvalView]:
    """The source at its own scale and box-downsampled by ``factors`` while its short side stays ≥ ``min_side``."""
    out = []
    H, W = source.rgb.shape[:2]
    for f in factors:
        h, w = int(round(H / f)), int(round(W / f))
        if min(h, w) < min_side:
            break
        rgb = source.rgb if f == 1 else np.asarray(Image.fromarray(source.rgb).resize((w, h), Image.Resampling.BOX))
        out.append(EvalView(source.source_id, source.group, source.organ, source.magnification * w / W, rgb))
    return out
