"""A synthetic cohort on disk: slides, label masks, overviews, ``cohort.csv`` and ``classes.json``.

Per slide ``synth-000``, ``synth-001``, ...:

* ``<id>.svs``: tiled pyramidal Aperio-style TIFF (JPEG q90, 256 px tiles, levels 1, 2, 4, ...)
  with ``MPP`` and ``AppMag`` in its description;
* ``<id>.labels.png``: 8-bit PNG of class ids (0 = background) at ``label_downsample``;
* ``<id>.overview.png``: ~1024 px wide thumbnail; ``<id>.overview-labels.png``: the same with
  class regions outlined.

In ``out_dir``: ``cohort.csv`` (``slide_id, patient_id, path, label_mask, mpp, objective_power,
width, height``; paths relative to ``out_dir``), ``classes.json`` (class id -> name) and
``index.csv`` (``image, group, mpp``, every slide in the group ``synthetic``): an index CSV, so the
cohort can join real sources of known resolution as one more group, e.g.
``histomag magnification cv real/index.csv synth/index.csv ...``.
Every file is written to a temporary name in the same folder and moved into place.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from histomag.errors import ConfigError
from histomag.synth.layout import normalize_classes
from histomag.synth.noise import sub_seed
from histomag.synth.render import SynthTissue, render_tissue
from histomag.synth.tiff import write_pyramidal_tiff

#: outline colours of class ids 1, 2, 3 in the overview-labels PNG.
OUTLINE_COLOURS = ((0, 170, 0), (230, 30, 30), (20, 60, 230), (230, 160, 0))
COHORT_CSV = "cohort.csv"
INDEX_CSV = "index.csv"
#: the group of every synthetic slide in ``index.csv`` (one group, however many slides)
SYNTHETIC_GROUP = "synthetic"
CLASSES_JSON = "classes.json"


@dataclass(frozen=True)
class SlideRecord:
    """One row of ``cohort.csv``; paths are relative to the cohort folder."""

    slide_id: str
    patient_id: str
    path: str
    label_mask: str
    mpp: float
    objective_power: float
    width: int
    height: int


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def png_bytes(arr: np.ndarray) -> bytes:
    """An 8-bit grey or RGB array encoded as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def overview(rgb: np.ndarray, width: int = 1024) -> np.ndarray:
    """Area-averaged thumbnail about ``width`` px wide (never upsampled)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if w <= width:
        return rgb
    out = (width, max(1, round(h * width / w)))
    return np.asarray(Image.fromarray(rgb).resize(out, Image.Resampling.BOX))


def outline_labels(thumb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The thumbnail with the border of every class region drawn in that class's colour."""
    from PIL import Image

    th, tw = thumb.shape[:2]
    lab = np.asarray(Image.fromarray(labels).resize((tw, th), Image.Resampling.NEAREST))
    edge = np.zeros(lab.shape, dtype=bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, 1:] != lab[:, :-1]
    out = thumb.copy()
    for cid in np.unique(lab):
        if cid == 0:
            continue
        m = edge & (lab == cid)
        out[m] = OUTLINE_COLOURS[(int(cid) - 1) % len(OUTLINE_COLOURS)]
    return out


def write_slide(out_dir: Path, slide_id: str, tissue: SynthTissue, *, compression: str = "jpeg",
                quality: int = 90, patient_id: str | None = None) -> SlideRecord:
    """Write one rendered slide's files and return its record."""
    out_dir = Path(out_dir)
    objective_power = tissue.objective_power
    name = f"{slide_id}.svs"
    write_pyramidal_tiff(out_dir / name, tissue.rgb, mpp=tissue.mpp, objective_power=objective_power,
                         compression=compression, quality=quality,
                         extra_description={"Synthetic": "histomag", "Seed": str(tissue.seed)})
    label_name = f"{slide_id}.labels.png"
    atomic_write_bytes(out_dir / label_name, png_bytes(tissue.labels))
    thumb = overview(tissue.rgb)
    atomic_write_bytes(out_dir / f"{slide_id}.overview.png", png_bytes(thumb))
    atomic_write_bytes(out_dir / f"{slide_id}.overview-labels.png", png_bytes(outline_labels(thumb, tissue.labels)))
    h, w = tissue.rgb.shape[:2]
    return SlideRecord(slide_id=slide_id, patient_id=patient_id or slide_id.replace("synth", "patient", 1),
                       path=name, label_mask=label_name, mpp=float(tissue.mpp),
                       objective_power=float(objective_power), width=int(w), height=int(h))


def write_cohort_csv(out_dir: Path, records: Sequence[SlideRecord]) -> Path:
    """``cohort.csv`` (atomic)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(SlideRecord)], lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = asdict(r)
        row["mpp"] = f"{r.mpp:.6g}"
        row["objective_power"] = f"{r.objective_power:.6g}"
        writer.writerow(row)
    path = Path(out_dir) / COHORT_CSV
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def write_index_csv(out_dir: Path, records: Sequence[SlideRecord]) -> Path:
    """``index.csv`` (atomic): the slides as an index CSV of sources at known resolution, one group."""
    from histomag.data.atomic import atomic_write_csv

    path = Path(out_dir) / INDEX_CSV
    atomic_write_csv(path, ["image", "group", "mpp"], ([r.path, SYNTHETIC_GROUP, f"{r.mpp:.6g}"] for r in records))
    return path


def read_cohort_csv(path: str | os.PathLike) -> list[SlideRecord]:
    """Records of a ``cohort.csv`` (numbers parsed)."""
    with open(path, newline="") as fh:
        return [SlideRecord(slide_id=r["slide_id"], patient_id=r["patient_id"], path=r["path"],
                            label_mask=r["label_mask"], mpp=float(r["mpp"]),
                            objective_power=float(r["objective_power"]), width=int(r["width"]),
                            height=int(r["height"])) for r in csv.DictReader(fh)]


def make_cohort(out_dir: str | os.PathLike, *, n_slides: int, seed: int, size_px: int | tuple[int, int] = 4096,
                mpp: float = 0.25, classes: Sequence[str] = ("normal", "tumor"),
                progress: Callable[[int], None] | None = None, slides_per_patient: int = 1,
                compression: str = "jpeg", quality: int = 90) -> list[SlideRecord]:
    """Render and write ``n_slides`` synthetic slides plus ``cohort.csv``, ``index.csv`` and ``classes.json``.

    Args:
        out_dir: folder to write into (created if missing).
        n_slides: number of slides (``synth-000`` ...).
        seed: cohort seed; slide ``i`` is rendered from a seed derived from (seed, i).
        size_px: slide size in pixels at ``mpp``, an int for square or (width, height).
        mpp: µm per pixel of level 0 (0.25 = 40x).
        classes: class names; ids 1, 2, ... in this order (see :func:`render_tissue`).
        progress: called with the number of slides finished after each slide.
        slides_per_patient: consecutive slides that share a patient id.
        compression: TIFF tile compression (``"jpeg"`` or ``"deflate"``).
        quality: JPEG quality.

    Returns:
        The records, in slide order (also written to ``cohort.csv``).
    """
    if int(n_slides) < 1:
        raise ConfigError(f"n_slides {n_slides!r} must be at least 1")
    if int(slides_per_patient) < 1:
        raise ConfigError(f"slides_per_patient {slides_per_patient!r} must be at least 1")
    width, height = (size_px, size_px) if isinstance(size_px, int) else (int(size_px[0]), int(size_px[1]))
    names = normalize_classes(tuple(classes))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_map = {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}}
    atomic_write_bytes(out / CLASSES_JSON, (json.dumps(class_map, indent=2) + "\n").encode())
    records: list[SlideRecord] = []
    for i in range(int(n_slides)):
        slide_seed = sub_seed(seed, "cohort-slide", i)
        tissue = render_tissue(width, height, mpp=mpp, seed=slide_seed, classes=names)
        records.append(write_slide(out, f"synth-{i:03d}", tissue, compression=compression, quality=quality,
                                   patient_id=f"patient-{i // int(slides_per_patient):03d}"))
        del tissue
        write_cohort_csv(out, records)  # kept current, so an interrupted run leaves valid tables
        write_index_csv(out, records)
        if progress is not None:
            progress(i + 1)
    return records
