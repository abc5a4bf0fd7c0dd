"""Data for the magnification models: the magnification-set manifest, crops that never resize, a DataModule.

A magnification set (``histomag magnification build``) is ``DIR/manifest.csv`` with the columns
``image`` (PNG path relative to DIR), ``source_id``, ``organ``, ``magnification``, ``mpp`` and
``split`` (``train``/``val``/``test``). Rescaling an image changes its apparent magnification,
so no transform here resamples pixels: crops are cut, rotated by multiples of 90°, flipped and
colour-jittered; an image smaller than the crop is padded by reflection (or, where it is too
small to reflect, with white, the colour of empty glass), never upscaled.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from histomag.data.tuples import hue_matrix
from histomag.errors import ConfigError, DatasetError

REQUIRED_COLUMNS = ("image", "source_id", "organ", "magnification", "mpp", "split")
SPLITS = ("train", "val", "test")
#: constant used where an image is too small to pad by reflection (white: empty glass)
PAD_FILL = 255
BUILD_HINT = "build one with histomag.magnification.magset.build_magnification_set(sources, DIR, settings)"


@dataclass(frozen=True)
class MagRecord:
    """One manifest row.

    Attributes:
        image: absolute path of the PNG.
        source_id: slide/image the crop came from (splits never share a source).
        organ: organ or cancer type ("" when unknown).
        magnification: objective power of the crop.
        mpp: µm per pixel of the crop.
        split: ``train``, ``val`` or ``test``.
    """

    image: Path
    source_id: str
    organ: str
    magnification: float
    mpp: float
    split: str


def read_manifest(root: str | Path, split: str | None = None) -> list[MagRecord]:
    """Read ``root/manifest.csv``, optionally only one split.

    Raises:
        DatasetError: no manifest, missing columns, bad numbers or split names (one line each).
    """
    root = Path(root)
    path = root / "manifest.csv"
    if not path.is_file():
        raise DatasetError(f"{root} is not a magnification set (no manifest.csv); {BUILD_HINT}")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    records = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path} lacks column(s) {', '.join(missing)}; {BUILD_HINT}")
        for line, row in enumerate(reader, start=2):
            try:
                mag = float(row["magnification"])
                mpp = float(row["mpp"]) if row["mpp"].strip() else math.nan
            except ValueError:
                raise DatasetError(f"{path} line {line}: magnification/mpp are not numbers") from None
            if not mag > 0:
                raise DatasetError(f"{path} line {line}: magnification must be > 0, got {mag}")
            if row["split"] not in SPLITS:
                raise DatasetError(f"{path} line {line}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            if split is None or row["split"] == split:
                records.append(MagRecord(root / row["image"], row["source_id"], (row["organ"] or "").strip(),
                                         mag, mpp, row["split"]))
    return records


def filter_levels(records: Sequence[MagRecord], levels: Sequence[float], tolerance: float | None) -> list[MagRecord]:
    """Keep the records within ``tolerance`` (relative) of a level; ``None`` keeps every record."""
    if tolerance is None:
        return list(records)
    return [r for r in records if min(abs(r.magnification / v - 1.0) for v in levels) <= tolerance + 1e-9]


def load_rgb(path: Path) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 array.

    Raises:
        DatasetError: the file is missing or unreadable.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {type(exc).__name__}; rebuild the magnification set") from None


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check/convert an array to ``(H, W, 3)`` uint8 (grey is stacked, alpha dropped).

    Raises:
        ConfigError: not uint8, or not 2-D / 3-D with 1, 3 or 4 channels.
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ConfigError(f"images must be uint8 arrays, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ConfigError(f"images must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def pad_to_size(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad an ``(H, W, C)`` image to at least ``size`` x ``size``, centred, never scaling it.

    Each axis is padded by reflection (without repeating the edge pixel) when the image is long
    enough along it (padding < length), else with :data:`PAD_FILL`.

    Returns:
        The padded image and ``(top, left)``: where the original's first pixel is in it.
    """
    h, w = image.shape[:2]
    top, left = max(0, size - h) // 2, max(0, size - w) // 2
    pads = ((top, max(0, size - h) - top), (left, max(0, size - w) - left))
    out = image
    for axis, (before, after) in enumerate(pads):
        if before == 0 and after == 0:
            continue
        width = [(0, 0)] * out.ndim
        width[axis] = (before, after)
        if max(before, after) < out.shape[axis]:
            out = np.pad(out, width, mode="reflect")
        else:
            out = np.pad(out, width, mode="constant", constant_values=PAD_FILL)
    return out, (top, left)


def crop_boxes(height: int, width: int, crop: int, n_crops: int) -> list[tuple[int, int]]:
    """Top-left corners of up to ``n_crops`` crops spread over an image (centre first).

    A ``g x g`` grid (``g = ceil(sqrt(n_crops))``) of crops centred on the centres of equal
    bins along each axis, duplicates removed, sorted by distance to the image centre. Axes not
    longer than ``crop`` get one position (0; pad the image first).
    """
    if n_crops < 1:
        raise ConfigError(f"n_crops must be >= 1, got {n_crops}")
    g = math.ceil(math.sqrt(n_crops))

    def positions(length: int) -> list[int]:
        span = max(0, length - crop)
        return sorted({int(round(span * (i + 0.5) / g)) for i in range(g)})

    boxes = [(y, x) for y in positions(height) for x in positions(width)]
    cy, cx = max(0, height - crop) / 2, max(0, width - crop) / 2
    boxes.sort(key=lambda b: ((b[0] - cy) ** 2 + (b[1] - cx) ** 2, b))
    return boxes[:n_crops]


def to_normalized_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(H, W, 3)`` uint8 (or float in [0, 1]) -> ``(3, H, W)`` float32 normalised with ``mean``/``std``."""
    x = image.astype(np.float32) * np.float32(1 / 255) if image.dtype == np.uint8 else image.astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def _uniform_factor(amount: float) -> float:
    return max(0.0, 1.0 + (2.0 * float(torch.rand(())) - 1.0) * amount)


def jitter_colors(image: np.ndarray, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                  hue: float = 0.0) -> np.ndarray:
    """Random brightness, contrast, saturation and hue, like torchvision's ``ColorJitter`` but cheap.

    Factors are drawn from ``[1 - a, 1 + a]`` with torch's RNG (seeded per DataLoader worker)
    and applied in that order, clipping to [0, 1] after each: brightness scales, contrast and
    saturation blend with the mean grey level / the grey image, hue rotates the chroma plane of
    YIQ by ``±hue`` of a full turn (a 3x3 matrix; torchvision's HSV round trip is ~20x slower
    on a CPU worker).

    Args:
        image: ``(H, W, 3)`` float32 RGB in [0, 1].
        brightness, contrast, saturation: jitter amounts (0 = off).
        hue: hue jitter in turns, in [0, 0.5] (0 = off).

    Returns:
        The jittered float32 image.
    """
    x = image
    if brightness > 0:
        x = np.clip(x * np.float32(_uniform_factor(brightness)), 0.0, 1.0)
    if contrast > 0:
        f = np.float32(_uniform_factor(contrast))
        m = np.float32((x @ _GRAY).mean())
        x = np.clip((x - m) * f + m, 0.0, 1.0)
    if saturation > 0:
        f = np.float32(_uniform_factor(saturation))
        g = (x @ _GRAY)[..., None]
        x = np.clip((x - g) * f + g, 0.0, 1.0)
    if hue > 0:
        m3 = hue_matrix(-(2.0 * float(torch.rand(())) - 1.0) * hue).astype(np.float32)  # the one hue rotation
        x = np.clip(x @ m3.T, 0.0, 1.0)
    return x.astype(np.float32, copy=False)


class MagnificationDataset(Dataset):
    """Crops of a magnification set's split with their magnifications.

    Training items: a random ``crop`` x ``crop`` window, a random multiple of 90° rotation,
    random horizontal/vertical flips and a mild colour jitter; evaluation items: the centre
    crop. Images smaller than ``crop`` are padded (:func:`pad_to_size`). No resampling.

    Args:
        root: the magnification-set folder.
        split: ``train``, ``val`` or ``test``.
        crop: side of the square crop in pixels.
        train: random augmentation (True) or the deterministic centre crop (False).
        mean: normalisation mean (the backbone's ``input_mean``).
        std: normalisation std (the backbone's ``input_std``).
        rotate: random 90° rotations (training only).
        flip: random flips (training only).
        color_jitter: ``(brightness, contrast, saturation, hue)`` for :func:`jitter_colors`
            (training only); all zero or None disables it.
        records: use these records instead of reading the manifest's split.

    Items are ``(image (3, crop, crop) float32, magnification float32 scalar)``.

    Raises:
        DatasetError: bad manifest, or the split has no rows.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        crop: int = 224,
        train: bool = False,
        *,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        rotate: bool = True,
        flip: bool = True,
        color_jitter: Sequence[float] | None = (0.1, 0.1, 0.1, 0.02),
        records: Sequence[MagRecord] | None = None,
    ) -> None:
        if crop < 8:
            raise ConfigError(f"crop must be >= 8 px, got {crop}")
        self.root = Path(root)
        self.split = split
        self.records = list(records) if records is not None else read_manifest(root, split)
        if not self.records:
            raise DatasetError(f"magnification set {self.root} has no usable {split!r} rows; {BUILD_HINT}")
        self.crop = int(crop)
        self.train = bool(train)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.rotate = rotate
        self.flip = flip
        self.jitter: tuple[float, float, float, float] | None = None
        if color_jitter is not None and any(float(v) > 0 for v in color_jitter):
            b, c, s, h = (float(v) for v in color_jitter)
            if min(b, c, s, h) < 0 or h > 0.5:
                raise ConfigError(f"color_jitter must be non-negative with hue <= 0.5, got {tuple(color_jitter)}")
            self.jitter = (b, c, s, h)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def magnifications(self) -> list[float]:
        """Magnification of every item, in order."""
        return [r.magnification for r in self.records]

    def augment(self, image: np.ndarray) -> np.ndarray:
        """Pad, crop, rotate and flip one ``(H, W, 3)`` uint8 image (torch RNG; no jitter)."""
        image, _ = pad_to_size(image, self.crop)
        h, w = image.shape[:2]
        if self.train:
            y = int(torch.randint(0, h - self.crop + 1, ()).item())
            x = int(torch.randint(0, w - self.crop + 1, ()).item())
        else:
            y, x = (h - self.crop) // 2, (w - self.crop) // 2
        out = image[y : y + self.crop, x : x + self.crop]
        if self.train and self.rotate:
            out = np.rot90(out, k=int(torch.randint(0, 4, ()).item()))
        if self.train and self.flip:
            if torch.rand(()) < 0.5:
                out = out[:, ::-1]
            if torch.rand(()) < 0.5:
                out = out[::-1]
        return np.ascontiguousarray(out)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rec = self.records[index]
        image = self.augment(load_rgb(rec.image))
        if self.train and self.jitter is not None:
            image = jitter_colors(image.astype(np.float32) * np.float32(1 / 255), *self.jitter)
        return to_normalized_tensor(image, self.mean, self.std), torch.tensor(rec.magnification, dtype=torch.float32)
