"""Torch datasets of multi-magnification tuples, and augmentations shared by a tuple's members.

:class:`TupleDataset` reads a tiled dataset folder (``histomag tile``); :class:`SlideTupleDataset`
streams the same tuples straight from slides with a tile plan, without writing images. Both
return ``(images, label_index, index)`` where ``images`` holds one ``(3, H_m, W_m)`` float
tensor per requested magnification, in the requested order; the default collate turns a batch
into one ``(B, 3, H_m, W_m)`` tensor per magnification.

:class:`TupleAugment` samples its random parameters once per tuple and applies them to every
member, so the 40x and 20x images of a tuple keep showing the same tissue in the same
orientation and colour.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset

from histomag.data.folder import RETILE_HINT, DatasetFolder, TileSettings, image_column, patient_of
from histomag.errors import ConfigError, DatasetError
from histomag.resolution import format_magnification

log = logging.getLogger(__name__)

TupleTransform = Callable[[list[Tensor]], list[Tensor]]
Item = tuple[list[Tensor], int, int]


def _mags_text(mags: Sequence[float]) -> str:
    return ",".join(format_magnification(m) for m in mags)


# ----- transforms ---------------------------------------------------------------------------------
class TupleAugment:
    """Random flips, 90° rotations, colour jitter and grayscale, identical for every member.

    Parameters are drawn once per call (one tuple) from torch's global RNG (which DataLoader
    seeds differently in each worker) or from ``generator``; the images must be float tensors
    in ``[0, 1]``, ``(3, H, W)``. Flips and rotations commute with area downsampling, and the
    colour operations are per pixel (contrast uses the image mean, which downsampling keeps), so
    a rescaled copy of a member stays a rescaled copy of the augmented member.

    Args:
        flip: random horizontal and vertical flips (p = 0.5 each).
        rotate: random rotation by 0, 90, 180 or 270 degrees.
        brightness: jitter factor drawn from ``[1 - b, 1 + b]``.
        contrast: jitter factor drawn from ``[1 - c, 1 + c]``.
        saturation: jitter factor drawn from ``[1 - s, 1 + s]``.
        hue: shift drawn from ``[-h, h]`` turns (at most 0.5), applied by :func:`hue_rotate`.
        grayscale_p: probability of converting the tuple to (3-channel) grayscale.
        generator: optional ``torch.Generator`` for reproducible draws.
    """

    def __init__(self, *, flip: bool = True, rotate: bool = True, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.02,
                 grayscale_p: float = 0.05, generator: torch.Generator | None = None) -> None:
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} jitter must be in [0, 1), got {value}")
        if not 0.0 <= hue <= 0.5:
            raise ConfigError(f"hue jitter must be in [0, 0.5], got {hue}")
        if not 0.0 <= grayscale_p <= 1.0:
            raise ConfigError(f"grayscale_p must be in [0, 1], got {grayscale_p}")
        self.flip, self.rotate = flip, rotate
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.grayscale_p = grayscale_p
        self.generator = generator

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def sample(self) -> dict[str, Any]:
        """Draw one set of parameters (what :meth:`apply` then uses for every member)."""
        rand = lambda: float(torch.rand((), generator=self.generator))  # noqa: E731
        return {
            "hflip": self.flip and rand() < 0.5,
            "vflip": self.flip and rand() < 0.5,
            "k90": int(torch.randint(0, 4, (), generator=self.generator)) if self.rotate else 0,
            "brightness": self._uniform(1 - self.brightness, 1 + self.brightness),
            "contrast": self._uniform(1 - self.contrast, 1 + self.contrast),
            "saturation": self._uniform(1 - self.saturation, 1 + self.saturation),
            "hue": self._uniform(-self.hue, self.hue),
            "order": torch.randperm(4, generator=self.generator).tolist(),
            "grayscale": rand() < self.grayscale_p,
        }

    @staticmethod
    def apply(image: Tensor, params: dict[str, Any]) -> Tensor:
        """Apply one parameter set (from :meth:`sample`) to one ``(3, H, W)`` image in [0, 1]."""
        if params["hflip"]:
            image = TF.horizontal_flip(image)
        if params["vflip"]:
            image = TF.vertical_flip(image)
        if params["k90"]:
            image = torch.rot90(image, params["k90"], dims=(-2, -1))  # exact, unlike an affine warp
        for op in params["order"]:
            if op == 0 and params["brightness"] != 1.0:
                image = TF.adjust_brightness(image, params["brightness"])
            elif op == 1 and params["contrast"] != 1.0:
                image = TF.adjust_contrast(image, params["contrast"])
            elif op == 2 and params["saturation"] != 1.0:
                image = TF.adjust_saturation(image, params["saturation"])
            elif op == 3 and params["hue"] != 0.0:
                image = hue_rotate(image, params["hue"])
        if params["grayscale"]:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        return image.contiguous()

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        params = self.sample()
        return [self.apply(img, params) for img in images]


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                           dtype=torch.float64)


def hue_matrix(hue: float) -> np.ndarray:
    """The 3x3 RGB matrix that shifts hue by ``hue`` turns (torchvision's sign): a rotation of YIQ's chroma plane."""
    theta = -2.0 * math.pi * hue
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    yiq = _RGB_TO_YIQ.numpy()
    return np.linalg.inv(yiq) @ rot @ yiq


def hue_rotate(image: Tensor, hue: float) -> Tensor:
    """Shift the hue of a ``(3, H, W)`` image in [0, 1] by ``hue`` turns (a rotation in YIQ space).

    A linear 3x3 colour transform: about 10x faster than torchvision's HSV round trip (which
    dominated the data-loading time at 600 px) and, being per pixel and linear, it commutes
    exactly with area downsampling. Luma is kept; the result is clipped to [0, 1].
    """
    matrix = torch.from_numpy(hue_matrix(hue)).to(image.dtype)
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp_(0.0, 1.0)


class TupleNormalize:
    """Normalise every member with a backbone's ``input_mean``/``input_std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        return [TF.normalize(img, self.mean, self.std) for img in images]


class TupleCompose:
    """Apply tuple transforms in order."""

    def __init__(self, transforms: Sequence[TupleTransform | None]) -> None:
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        for t in self.transforms:
            images = t(images)
        return images


def tuple_transform(mean: Sequence[float], std: Sequence[float], *, train: bool) -> TupleTransform:
    """The standard pipeline: :class:`TupleAugment` when ``train``, then :class:`TupleNormalize`."""
    return TupleCompose([TupleAugment() if train else None, TupleNormalize(mean, std)])


def rgb_to_tensor(rgb: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 array -> ``(3, H, W)`` float tensor in [0, 1]."""
    arr = np.ascontiguousarray(rgb)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def read_png(path: Path) -> Tensor:
    """Decode an image file to a ``(3, H, W)`` float tensor in [0, 1]."""
    return rgb_to_tensor(read_rgb(path))


def read_rgb(path: Path) -> np.ndarray:
    """Decode a tuple image (any format of data/encoders.py) to ``(H, W, 3)`` uint8 RGB (DatasetError naming
    the file when it cannot)."""
    from histomag.data.encoders import decode_rgb

    try:
        return decode_rgb(path)
    except OSError as exc:  # PIL's UnidentifiedImageError is one
        raise DatasetError(f"{path}: cannot decode image ({str(exc).splitlines()[0]}); "
                           f"{RETILE_HINT} to restore it") from None


def class_names_of(labels: Sequence[str]) -> list[str]:
    """Sorted distinct non-empty labels (the class order every model and metric uses)."""
    return sorted({str(lab) for lab in labels if lab})


# ----- the dataset folder -------------------------------------------------------------------------
class TupleDataset(Dataset[Item]):
    """Tuples of a tiled dataset folder.

    Args:
        root: folder made by ``histomag tile`` (``dataset.json`` + ``manifest.csv`` + images).
        magnifications: magnifications to return, in this order; default the folder's, highest
            first. They must equal the folder's (any order), or be a subset when ``subset``.
        rows: manifest rows (dicts) to use instead of every labelled row of the manifest.
        transform: callable on the list of member tensors (e.g. :func:`tuple_transform`).
        classes: class names in index order; default the sorted labels of the rows.
        labelled_only: drop rows without a label; otherwise they get label index ``-1``
            (as do labels not in ``classes``).
        subset: accept ``magnifications`` that are a subset of the folder's (``single`` mode).
        cache_mb: keep up to this many MB of decoded images in memory (per process; a
            DataLoader's persistent workers each keep their own), so that later epochs skip the
            PNG decoding. 0: no cache.

    Raises:
        DatasetError: folder without ``dataset.json``/``manifest.csv``, missing images, or
            magnifications that differ from the folder's.
    """

    def __init__(self, root: str | Path, magnifications: Sequence[float] | None = None,
                 rows: Sequence[dict] | None = None, transform: TupleTransform | None = None,
                 classes: Sequence[str] | None = None, *, labelled_only: bool = True,
                 subset: bool = False, cache_mb: float = 0) -> None:
        self.root = Path(root)
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[str, np.ndarray] = {}
        self._cached_bytes = 0
        folder = DatasetFolder(self.root)
        self.settings = folder.read_settings()
        self.folder_magnifications = [float(m) for m in self.settings.get("magnifications", [])]
        self.tuple_mode: str = str(self.settings.get("mode", "same-fov"))
        mags = self.folder_magnifications if magnifications is None else [float(m) for m in magnifications]
        check_magnifications(self.root, self.folder_magnifications, mags, subset=subset)
        self.magnifications = mags
        self.columns = [image_column(m) for m in mags]
        all_rows = list(rows) if rows is not None else folder.read_manifest()
        lacking = [c for c in ["tuple_id", *self.columns] if all_rows and c not in all_rows[0]]
        if lacking:
            raise DatasetError(f"{self.root / 'manifest.csv'} has no {', '.join(lacking)} column, which dataset.json's "
                               f"magnifications imply; re-tile the folder (the two files disagree)")
        if labelled_only:
            all_rows = [r for r in all_rows if r.get("label")]
        self.rows: list[dict] = all_rows
        self.classes = list(classes) if classes is not None else class_names_of(r["label"] for r in all_rows)
        index = {c: i for i, c in enumerate(self.classes)}
        self.targets = [index.get(r.get("label", ""), -1) for r in self.rows]
        if labelled_only and -1 in self.targets:
            unknown = sorted({r["label"] for r, t in zip(self.rows, self.targets) if t < 0})
            raise DatasetError(f"{self.root}: labels {', '.join(unknown[:5])} are not among the classes "
                               f"{', '.join(self.classes)}; use a dataset tiled with the same label masks")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def patients(self) -> list[str]:
        """Patient id of every row (the slide id where the manifest has none)."""
        return [patient_of(r) for r in self.rows]

    def load(self, index: int) -> list[Tensor]:
        """The untransformed members of tuple ``index`` (float, [0, 1])."""
        row = self.rows[index]
        if not self.cache_bytes:
            return [read_png(self.root / row[c]) for c in self.columns]
        return [rgb_to_tensor(self._cached_rgb(row[c])) for c in self.columns]

    def _cached_rgb(self, name: str) -> np.ndarray:
        rgb = self._cache.get(name)
        if rgb is None:
            rgb = read_rgb(self.root / name)
            if self._cached_bytes + rgb.nbytes <= self.cache_bytes:
                self._cache[name] = rgb
                self._cached_bytes += rgb.nbytes
        return rgb

    def __getitem__(self, index: int) -> Item:
        images = self.load(index)
        if self.transform is not None:
            images = self.transform(images)
        return images, self.targets[index], index


def check_magnifications(where: str | Path, have: Sequence[float], want: Sequence[float], *,
                         subset: bool = False) -> None:
    """Refuse requested magnifications that the tuples in ``where`` do not hold (DatasetError)."""
    have_set = {round(float(m), 6) for m in have}
    want_set = {round(float(m), 6) for m in want}
    ok = want_set <= have_set if subset else want_set == have_set
    if not ok or not want:
        have_sorted = sorted(have, reverse=True)
        raise DatasetError(f"tuples in {where} are {_mags_text(have_sorted)} but magnifications= asks {_mags_text(want)}: "
                           "re-tile or change magnifications=")


# ----- straight from slides -----------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedTuple:
    """One tuple of a :class:`SlideTupleDataset`: where it is and what it is."""

    slide_index: int
    tuple_id: str
    slide_id: str
    patient_id: str
    x: float
    y: float
    width: float
    label: str
    grid_col: int
    grid_row: int


class SlideTupleDataset(Dataset[Item]):
    """Tuples read lazily from slides with a tile plan (no images written).

    The plan is made in ``__init__`` (each slide is opened once for its tissue mask and labels);
    ``__getitem__`` reads one tuple with :func:`histomag.tiling.fields.read_tuple`. Slide handles are
    opened lazily, one per slide per process, cached, and never pickled, so each DataLoader
    worker opens its own.

    Args:
        slides: :class:`~histomag.tiling.jobs.SlideJob` objects or slide paths.
        settings: tile settings (magnifications, size, mode, placement, overlap, tissue, labels).
        magnifications: members to return, in this order; default ``settings.magnifications``
            (highest first); a subset of them is allowed.
        transform: callable on the list of member tensors.
        classes: class names in index order; default the sorted labels found.
        labelled_only: keep only fields with a label (needs label files); otherwise every field
            over tissue is kept and unlabelled ones get label index ``-1``.
    """

    def __init__(self, slides: Sequence[Any], settings: TileSettings, *,
                 magnifications: Sequence[float] | None = None, transform: TupleTransform | None = None,
                 classes: Sequence[str] | None = None, labelled_only: bool = True) -> None:
        from histomag.tiling.jobs import SlideJob

        self.jobs = [s if isinstance(s, SlideJob) else SlideJob(str(s)) for s in slides]
        self.settings = settings
        self.tuple_mode = settings.mode
        self.folder_magnifications = sorted((float(m) for m in settings.magnifications), reverse=True)
        mags = self.folder_magnifications if magnifications is None else [float(m) for m in magnifications]
        check_magnifications(", ".join(Path(j.path).name for j in self.jobs), self.folder_magnifications, mags,
                             subset=True)
        self.magnifications = mags
        self.transform = transform
        self.grid_shapes: list[tuple[int, int]] = []
        self.slide_mpps: list[float] = []  # the (square-pixel) µm/px each slide was read at
        self.pixel_scales: list[tuple[float, float]] = []  # square pixels per file pixel (x, y) of each slide
        self.records: list[PlannedTuple] = []
        for i, job in enumerate(self.jobs):
            self.records.extend(self._plan(i, job, labelled_only))
        self.classes = list(classes) if classes is not None else class_names_of(r.label for r in self.records)
        index = {c: k for k, c in enumerate(self.classes)}
        self.targets = [index.get(r.label, -1) for r in self.records]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def _spec(self, power_mpp: float):  # noqa: ANN202 - TupleSpec
        from histomag.tiling.fields import make_tuple_spec

        s = self.settings
        return make_tuple_spec(s.magnifications, s.size, s.mode, power_mpp=power_mpp)  # type: ignore[arg-type]

    def _plan(self, slide_index: int, job: Any, labelled_only: bool) -> list[PlannedTuple]:
        from histomag.tiling.jobs import patient_id_for, plan_slide
        from histomag.slide import open_slide

        s = self.settings
        with open_slide(job.path, mpp=job.mpp, backend=job.backend) as slide:  # type: ignore[arg-type]
            plan = plan_slide(slide, job, s, keep_unlabelled=not labelled_only, require_labels=labelled_only)
            W, H = slide.dimensions
            width = plan.field_width
            stride = width * (1.0 - s.overlap) if width else 1.0
            n_cols = int(math.floor((W - width) / stride + 1e-9)) + 1 if width else 0
            n_rows = int(math.floor((H - width) / stride + 1e-9)) + 1 if width else 0
            self.grid_shapes.append((n_rows, n_cols))
            self.slide_mpps.append(float(slide.mpp))
            self.pixel_scales.append(slide.pixel_scale)
            patient = job.patient_id or patient_id_for(slide.slide_id)
            out = [PlannedTuple(slide_index, f"{slide.slide_id}_{p.field.key}", slide.slide_id, patient,
                                p.field.x, p.field.y, p.field.width, p.label, int(round(p.field.left / stride)),
                                int(round(p.field.top / stride)))
                   for p in plan.fields]
        log.info("%s: %d tuples planned", Path(job.path).name, len(out))
        return out

    def __len__(self) -> int:
        return len(self.records)

    @property
    def rows(self) -> list[dict]:
        """Manifest-like rows (tuple_id, slide_id, patient_id, x, y, field_width, label)."""
        return [{"tuple_id": r.tuple_id, "slide_id": r.slide_id, "patient_id": r.patient_id, "x": r.x,
                 "y": r.y, "field_width": r.width, "label": r.label} for r in self.records]

    @property
    def patients(self) -> list[str]:
        return [r.patient_id for r in self.records]

    def subset(self, rows: Sequence[dict], *, classes: Sequence[str] | None = None,
               transform: TupleTransform | None = None) -> SlideTupleDataset:
        """The tuples of ``rows`` (by ``tuple_id``, in that order) on this plan: no slide is planned again.

        Raises:
            DatasetError: a row whose tuple this plan does not hold.
        """
        position = {r.tuple_id: i for i, r in enumerate(self.records)}
        lost = [str(r["tuple_id"]) for r in rows if r["tuple_id"] not in position]
        if lost:
            raise DatasetError(f"the slides no longer give {len(lost)} planned tuples (e.g. {lost[0]}); were the "
                               "slides or their label files changed since the run was made?")
        new = copy.copy(self)
        new.records = [self.records[position[r["tuple_id"]]] for r in rows]
        new.classes = list(classes) if classes is not None else list(self.classes)
        index = {c: k for k, c in enumerate(new.classes)}
        new.targets = [index.get(r.label, -1) for r in new.records]
        new.transform = transform
        new._handles, new._pid = {}, os.getpid()
        return new

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # slide handles stay in the process that opened them
        return state

    def _slide(self, slide_index: int) -> Any:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file handles
            self._handles, self._pid = {}, os.getpid()
        slide = self._handles.get(slide_index)
        if slide is None:
            from histomag.slide import open_slide

            job = self.jobs[slide_index]
            slide = open_slide(job.path, mpp=job.mpp, backend=job.backend, probe=False)  # type: ignore[arg-type]
            self._handles[slide_index] = slide
        return slide

    def close(self) -> None:
        """Close the slide handles this process opened."""
        for slide in self._handles.values():
            slide.close()
        self._handles = {}

    def load(self, index: int) -> list[Tensor]:
        """The untransformed members of tuple ``index`` (float, [0, 1])."""
        from histomag.tiling.fields import Field, read_tuple

        rec = self.records[index]
        slide = self._slide(rec.slide_index)
        spec = self._spec(slide.power_mpp)
        images = read_tuple(slide, spec, Field(rec.x, rec.y, rec.width), allow_upsample=self.settings.allow_upsample)
        by_mag = {round(m, 6): img for m, img in zip(spec.magnifications, images)}
        return [rgb_to_tensor(by_mag[round(m, 6)]) for m in self.magnifications]

    def __getitem__(self, index: int) -> Item:
        images = self.load(index)
        if self.transform is not None:
            images = self.transform(images)
        return images, self.targets[index], index


# ----- a run's tuples: a dataset folder, or slides planned on the fly ----------------------------
#: the file in a run folder that names the slides it was trained on, and how they were tiled
SLIDE_SOURCE_FILE = "source.json"


@dataclass(frozen=True)
class SlideSource:
    """Slides (or images) and the tile settings that plan their tuples, for training without extraction."""

    jobs: tuple[Any, ...]  # SlideJob
    settings: TileSettings

    def to_json(self) -> dict:
        from dataclasses import asdict

        return {"kind": "slides", "jobs": [asdict(j) for j in self.jobs], "tile_settings": self.settings.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> SlideSource:
        from histomag.tiling.jobs import SlideJob

        jobs = []
        for j in data["jobs"]:
            mpp = j.get("mpp")
            jobs.append(SlideJob(**{**j, "mpp": tuple(mpp) if isinstance(mpp, list) else mpp}))
        return cls(tuple(jobs), TileSettings.from_json(data["tile_settings"]))

    @classmethod
    def read(cls, path: str | Path) -> SlideSource:
        import json

        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: not a readable slide source ({exc}); re-run "
                               "histomag.dmsl.cv.cross_validate(...) on the slides") from None


def open_tuples(data: str | Path, magnifications: Sequence[float], *, subset: bool = False
                ) -> TupleDataset | SlideTupleDataset:
    """Every labelled tuple of a run's data: a dataset folder, or a run's ``source.json`` (slides, planned now)."""
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".json":
        src = SlideSource.read(data)
        return SlideTupleDataset(list(src.jobs), src.settings, magnifications=magnifications, labelled_only=True)
    return TupleDataset(data, magnifications, subset=subset)
