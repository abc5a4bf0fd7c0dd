"""Test helpers shared by several test modules (import them from here, never from another test module)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from histomag.data.atomic import atomic_write_csv
from histomag.data.folder import image_column, manifest_columns
from histomag.slide.base import Slide, SlideMetadata

#: `tile` options of the small same-fov datasets the resume and cohort tests compare (40x@128 + 20x@64)
TILE = ["--mags", "40,20", "--size", "128", "--overlap", "0", "-q"]
#: diameter of the synthetic nuclei in µm (real nuclei are ~5-10 µm across)
NUCLEUS_UM = 7.0


def nuclei_image(height: int, width: int, mpp: float, rng: np.random.Generator, density: float = 0.004) -> np.ndarray:
    """Pink 'stroma' with purple discs of :data:`NUCLEUS_UM` µm at ``mpp`` µm/px: scale is the only cue.

    ``density`` is nuclei per µm²; the disc edges are anti-aliased so downsampling behaves like tissue.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = (235, 170, 200)
    area_um2 = height * width * mpp * mpp
    r = NUCLEUS_UM / 2 / mpp
    for _ in range(max(1, int(area_um2 * density))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = int(max(0, cy - r - 2)), int(min(height, cy + r + 3))
        x0, x1 = int(max(0, cx - r - 2)), int(min(width, cx + r + 3))
        d = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx)
        a = np.clip(r + 0.5 - d, 0, 1)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + np.array([90, 50, 140], np.float32) * a
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----- in-memory slides -------------------------------------------------------------------------
def area_halve(arr: np.ndarray) -> np.ndarray:
    """Exact 2x2 area mean (rounded), the way a pyramid level is made."""
    h, w = arr.shape[0] // 2 * 2, arr.shape[1] // 2 * 2
    a = arr[:h, :w].astype(np.float64)
    return np.floor((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4 + 0.5).astype(np.uint8)


class MemorySlide(Slide):
    """A pyramid held in memory (level i = 2**i downsample), for tests of the read logic."""

    backend = "memory"

    def __init__(self, level0: np.ndarray, *, mpp: float | None = 0.25, objective_power: float | None = 40.0,
                 n_levels: int = 3, mpp_override: float | None = None, name: str = "mem.svs") -> None:
        self.levels = [level0]
        for _ in range(n_levels - 1):
            self.levels.append(area_halve(self.levels[-1]))
        dims = tuple((a.shape[1], a.shape[0]) for a in self.levels)
        downs = tuple(level0.shape[1] / a.shape[1] for a in self.levels)
        meta = SlideMetadata(dims, downs, mpp=mpp, objective_power=objective_power, vendor="memory")
        super().__init__(Path(name), meta, mpp_override)

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        return self.levels[level][ly:ly + height, lx:lx + width].copy()


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (so resampling errors are small but misalignment is visible)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = rng.random((h, w, 3))
    smooth = np.stack([gaussian_filter(noise[..., c], 3) for c in range(3)], axis=2)
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)
    return (smooth * 200 + 30).astype(np.uint8)


# ----- tuple folders (as `histomag tile` writes them) -------------------------------------------
BACKGROUND = np.array([236, 200, 220], dtype=np.float64)  # pink eosin


STAIN = np.array([80, 40, 120], dtype=np.float64)  # purple haematoxylin


def render(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB field: ``dots`` (many small dense dots) or ``rings`` (a few large sparse rings).

    Both use the same two colours and cover a similar share of the field, so only the
    morphology tells them apart. Drawn at ``size`` px (the highest magnification).
    """
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    ink = np.zeros((size, size))
    s = size / 64.0
    if kind == "dots":
        for _ in range(24):
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(1.6, 2.4) * s
            ink = np.maximum(ink, ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(float))
    else:
        for _ in range(3):
            cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
            r = rng.uniform(8, 12) * s
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            ink = np.maximum(ink, (np.abs(d - r) <= 1.2 * s).astype(float))
    tint = rng.uniform(0.85, 1.1)
    img = BACKGROUND[None, None] * (1 - ink[..., None]) + STAIN[None, None] * tint * ink[..., None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).reduce(factor))


def make_tuple_folder(root: Path, *, patients: int = 8, per_class: int = 6, size: int = 64,
                      mags: tuple[float, ...] = (40.0, 20.0), classes: tuple[str, ...] = ("dots", "rings"),
                      mode: str = "same-fov", seed: int = 0, unlabelled: int = 0) -> Path:
    """A dataset folder as ``histomag tile`` writes it: dataset.json, manifest.csv, PNGs per magnification."""
    rng = np.random.default_rng(seed)
    mags = tuple(sorted(mags, reverse=True))
    rows = []
    for p in range(patients):
        slide = f"slide-{p:02d}"
        kinds = [c for c in classes for _ in range(per_class)] + [""] * unlabelled
        for t, label in enumerate(kinds):
            big = render(label or "dots", size, rng)
            tid = f"{slide}_t{t:03d}"
            row = {"tuple_id": tid, "slide_id": slide, "patient_id": f"P{p:02d}", "x": t * size, "y": 0,
                   "field_width": size, "mode": mode, "magnifications": ";".join(f"{m:g}" for m in mags),
                   "mpps": "", "label": label, "class_fractions": "{}", "tissue_fraction": 1.0,
                   "slide_mpp": 0.25, "mpp_source": "metadata-mpp"}
            for m in mags:
                img = big if m == mags[0] else downsample(big, int(round(mags[0] / m)))
                rel = f"images/{slide}/{tid}_{m:g}x.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel, compress_level=1)
                row[image_column(m)] = rel
            rows.append(row)
    (root / "dataset.json").write_text(json.dumps({"version": 1, "magnifications": list(mags), "size": size,
                                                    "mode": mode, "placement": "grid", "overlap": 0.0,
                                                    "min_tissue": 0.5, "tissue_mpp": 2.0}))
    atomic_write_csv(root / "manifest.csv", manifest_columns(mags), rows)
    return root


# ----- magnification sets -----------------------------------------------------------------------
def synth_tissue(size: int, magnification: float, rng: np.random.Generator, px_per_mag: float = 0.75) -> np.ndarray:
    """Pink background with dark "nuclei" of one physical size: diameter = px_per_mag * magnification px."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = (232, 196, 214)
    img += rng.normal(0, 6, (size, size, 1))
    d = px_per_mag * magnification
    n = max(1, int(round(0.3 * size * size / (np.pi * (d / 2) ** 2))))
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(n):
        cy, cx = rng.uniform(-d / 2, size + d / 2, 2)
        r = d / 2 * rng.uniform(0.8, 1.2)
        y0, y1 = max(0, int(cy - r - 1)), min(size, int(cy + r + 2))
        x0, x1 = max(0, int(cx - r - 1)), min(size, int(cx + r + 2))
        if y0 < y1 and x0 < x1:
            disk = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
            img[y0:y1, x0:x1][disk] = np.array((88, 48, 128), np.float32) + rng.normal(0, 8, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_set(root: Path, items: list[tuple[np.ndarray, float, str]], organs: tuple[str, ...] = ("lung", "")) -> Path:
    """A magnification set folder from (image, magnification, split) triples."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, mag, split) in enumerate(items):
        name = f"images/{split}_{mag:g}x_{i}.png"
        Image.fromarray(image).save(root / name)
        rows.append({"image": name, "source_id": f"{split}{i % 3}", "organ": organs[i % len(organs)],
                     "magnification": f"{mag:g}", "mpp": f"{10 / mag:g}", "split": split})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_magset(root: Path, mags: tuple[float, ...] = (10, 40), counts: dict[str, int] | None = None,
                size: int = 96, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    counts = counts or {"train": 24, "val": 8, "test": 8}
    return write_set(root, [(synth_tissue(size, m, rng), m, split)
                            for split, n in counts.items() for m in mags for _ in range(n)])


def manifest_by_id(root: Path) -> dict[str, dict]:
    """A dataset folder's manifest rows by tuple id (asserting that no tuple is listed twice)."""
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_id = {r["tuple_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a tuple is listed twice"
    return by_id


def assert_same_dataset(out: Path, ref: Path) -> None:
    """``out`` holds exactly ``ref``'s tuples: same rows, decodable identical images, no other image files."""
    rows, expected = manifest_by_id(out), manifest_by_id(ref)
    assert rows == expected
    referenced = {v for r in rows.values() for k, v in r.items() if k.startswith("image_") and v}
    for rel in referenced:
        with Image.open(out / rel) as img:
            img.load()  # decodes
        assert (out / rel).read_bytes() == (ref / rel).read_bytes()
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert on_disk == referenced, "orphan image files"
    assert not list(out.rglob("*.tmp"))
    for part in (out / "parts").glob("*.csv"):
        with open(part, newline="") as fh:
            ids = [r["tuple_id"] for r in csv.DictReader(fh)]
        assert len(ids) == len(set(ids)), f"{part.name} repeats a tuple"


# ----- slide predictions (as `histomag dmsl predict RUN SLIDE` writes them) --------------------------
def two_class_slide(path: Path, seed: int = 5) -> Path:
    """A 1024 x 512 px PNG (read at 0.25 µm/px): ``dots`` fields on the top-left, ``rings`` on the bottom-left,
    glass on the right half; 64 px fields at 40x tile it in an 8 x 16 grid."""
    rng = np.random.default_rng(seed)
    img = np.full((512, 1024, 3), 255, np.uint8)
    for y in range(0, 512, 64):
        for x in range(0, 512, 64):
            img[y:y + 64, x:x + 64] = render("dots" if y < 256 else "rings", 64, rng)
    Image.fromarray(img).save(path)
    return path


def make_slide_prediction(out_dir: Path, slide: Path, *, overlap: float = 0.0, overlay_width: int = 400,
                          classes: tuple[str, ...] = ("dots", "rings"), mpp: float = 0.25) -> dict[str, Path]:
    """A prediction folder written by the library's own writer, with made-up probabilities (no model):
    fields above the slide's middle get P(dots) = 0.9, the others P(rings) = 0.8."""
    from histomag.data.folder import TileSettings
    from histomag.data.tuples import SlideTupleDataset
    from histomag.dmsl.slides import write_slide_prediction
    from histomag.tiling.jobs import SlideJob

    settings = TileSettings(magnifications=(40.0, 20.0), size=64, mode="same-fov", placement="grid", overlap=overlap)
    data = SlideTupleDataset([SlideJob(str(slide), mpp=mpp)], settings, classes=list(classes), labelled_only=False)
    probs = np.array([[0.9, 0.1] if r.y < 256 else [0.2, 0.8] for r in data.records])
    data.close()
    return write_slide_prediction(data, probs, out_dir, class_names=classes, run_dir=out_dir.parent / "run",
                                  overlay_width=overlay_width)
