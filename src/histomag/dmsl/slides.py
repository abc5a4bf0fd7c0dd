"""Whole-slide DMSL prediction: the slide tiled on the fly with the run's tile settings (a full grid),
every field's class probabilities, and the pictures and record a person needs to look at them.

A prediction folder holds, per slide ``S`` (its slide id)::

    S.predictions.csv      tuple_id, x, y (level-0 px, field centre), grid_row, grid_col, predicted, prob_<class>...
    S.heatmap.npy          float32 (n_classes, grid_rows, grid_cols), NaN where no field was taken
    S.heatmap.png          one small panel per class
    S.geojson              one QuPath tile object per field (the file's level-0 pixels)
    S.overlay.png          the thumbnail with each field tinted by its predicted class (opacity: probability),
                           a legend with each class's area and a scale bar from the slide's true resolution
    S.overlay.<class>.png  the same with each field tinted by P(class)
    S.prediction.json      what the folder is: slide, run, fold, resolution and its source, tile settings,
                           field geometry, counts and areas per class (owned by :class:`SlidePrediction`)

**Areas.** Each field counts once, for its predicted class, with the area of its grid cell: a square
of ``stride = field width x (1 - overlap)`` level-0 px around its centre. Cells of a grid abut, so
fields that overlap (``overlap > 0``) are not counted twice; with ``overlap = 0`` a cell is the field.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histomag.data.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_json
from histomag.errors import CheckpointError, InputPathError
from histomag.resolution import Resolution

SIDECAR_SUFFIX = ".prediction.json"
SIDECAR_VERSION = 1
#: default width of the overlays in px
OVERLAY_WIDTH = 1600
#: how a slide prediction is made, in API terms
PREDICT_SLIDE_API = "histomag.dmsl.cv.predict_slide(RUN, SLIDE, OUT)"


def safe_name(name: str) -> str:
    """A class name as a file-name part (anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"


@dataclass
class SlidePrediction:
    """The record of one slide's prediction (``S.prediction.json``): every reader goes through this class.

    Attributes:
        slide: the slide's path (absolute).
        slide_id: the slide's id (the stem of every file of it).
        run: the DMSL run folder (absolute) and ``fold`` (None: the mean of every fold's model).
        classes: class names in index order.
        mpp: the level-0 resolution the slide was read at (square pixels, µm/px).
        mpp_source: where it came from (``metadata-mpp``, ``override``, an estimate's description...).
        mpp_override: the resolution given to open the slide (one value, or ``[mpp_x, mpp_y]``), if any.
        power_mpp: the slide's magnification x mpp.
        tile_settings: the run's tile settings used (magnifications, size, mode, overlap, ...).
        field_width: a field's width in level-0 (square) px; ``stride``: its grid cell's side.
        counts: fields predicted per class.
        files: file kind -> file name in the folder.
        overlay: the overlay's width, downsample and scale bar as drawn.
    """

    slide: str
    slide_id: str
    run: str
    fold: int | None
    classes: list[str]
    mpp: float
    mpp_source: str
    mpp_override: float | list[float] | None
    power_mpp: float
    tile_settings: dict[str, Any]
    field_width: float
    stride: float
    counts: dict[str, int]
    files: dict[str, str]
    overlay: dict[str, Any] = field(default_factory=dict)
    version: int = SIDECAR_VERSION
    folder: Path | None = field(default=None, compare=False, repr=False)

    # ----- geometry and areas ----------------------------------------------------------------------
    @property
    def resolution(self) -> Resolution:
        return Resolution(self.mpp, self.power_mpp)

    @property
    def field_um(self) -> float:
        """A field's side in µm."""
        return self.resolution.length_um(self.field_width)

    @property
    def cell_area_mm2(self) -> float:
        """The area one field counts for: its grid cell (``stride`` px square) at the true resolution."""
        return self.resolution.area_mm2(self.stride)

    @property
    def areas_mm2(self) -> dict[str, float]:
        """Area per predicted class: its field count x :attr:`cell_area_mm2`."""
        return {c: self.counts.get(c, 0) * self.cell_area_mm2 for c in self.classes}

    @property
    def n_fields(self) -> int:
        return int(sum(self.counts.values()))

    # ----- files -----------------------------------------------------------------------------------
    def file(self, kind: str) -> Path | None:
        """The path of one of its files (``predictions``, ``overlay``, ``overlay.<class>``, ...), if it exists."""
        name = self.files.get(kind)
        if name is None or self.folder is None:
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def read_fields(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """``(centres (n, 2) level-0 px, predicted class per field, probabilities (n, n_classes))`` from the CSV.

        Raises:
            CheckpointError: the predictions CSV is missing or lacks a class column.
        """
        import csv

        path = self.file("predictions")
        if path is None:
            raise CheckpointError(f"{self.folder}: {self.files.get('predictions')} is missing; re-run "
                                  f"{PREDICT_SLIDE_API}")
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = [f"prob_{c}" for c in self.classes]
        if rows and not set(cols) <= set(rows[0]):
            raise CheckpointError(f"{path} lacks columns {', '.join(sorted(set(cols) - set(rows[0])))}; re-run "
                                  f"{PREDICT_SLIDE_API}")
        xy = np.array([[float(r["x"]), float(r["y"])] for r in rows], dtype=np.float64).reshape(-1, 2)
        probs = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float64).reshape(-1, len(cols))
        return xy, [r["predicted"] for r in rows], probs

    def open_slide(self) -> Any:
        """The slide, opened at the resolution it was predicted at."""
        from histomag.slide import open_slide

        override = self.mpp_override
        mpp = tuple(override) if isinstance(override, list) else override
        return open_slide(self.slide, mpp=mpp)  # type: ignore[arg-type]

    # ----- JSON ------------------------------------------------------------------------------------
    @staticmethod
    def path_for(folder: str | Path, slide_id: str) -> Path:
        return Path(folder) / f"{slide_id}{SIDECAR_SUFFIX}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("folder")
        d["cell_area_mm2"] = self.cell_area_mm2
        d["areas_mm2"] = self.areas_mm2
        return d

    def write(self, folder: str | Path) -> Path:
        path = self.path_for(folder, self.slide_id)
        atomic_write_json(path, self.to_json())
        self.folder = Path(folder)
        return path

    @classmethod
    def read(cls, path: str | Path) -> SlidePrediction:
        """Read one record.

        Raises:
            CheckpointError: unreadable, of a newer version, or missing fields.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable slide prediction ({exc}); re-run {PREDICT_SLIDE_API}") from None
        version = data.get("version", 1) if isinstance(data, dict) else None
        if not isinstance(version, int) or version > SIDECAR_VERSION:
            raise CheckpointError(f"{path} is a slide prediction of version {version}; this histomag reads up to "
                                  f"{SIDECAR_VERSION}: upgrade histomag")
        names = set(cls.__dataclass_fields__) - {"folder"}
        try:
            record = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise CheckpointError(f"{path}: incomplete slide prediction ({exc}); re-run {PREDICT_SLIDE_API}") from None
        record.folder = path.parent
        return record

    @classmethod
    def find(cls, folder: str | Path) -> list[SlidePrediction]:
        """Every slide prediction in a folder (sorted by slide id).

        Raises:
            InputPathError: no such folder.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise InputPathError(f"{folder}: no such prediction folder; make one with {PREDICT_SLIDE_API}")
        return [cls.read(p) for p in sorted(folder.glob(f"*{SIDECAR_SUFFIX}"))]


# ----- writing ------------------------------------------------------------------------------------
def write_slide_prediction(data: Any, probs: np.ndarray, out_dir: str | Path, *, class_names: Sequence[str],
                           run_dir: str | Path, fold: int | None = None,
                           overlay_width: int = OVERLAY_WIDTH) -> dict[str, Path]:
    """Write every file of one slide's prediction (see the module docstring) from its planned fields.

    Args:
        data: a :class:`~histomag.data.tuples.SlideTupleDataset` of one slide (grid placement).
        probs: ``(len(data), n_classes)`` class probabilities of its fields.
        out_dir: the prediction folder.
        class_names: class names in index order.
        run_dir, fold: the run (and fold) that predicted, recorded in ``S.prediction.json``.
        overlay_width: width of the overlays in px.

    Returns:
        file kind -> path (``predictions``, ``npy``, ``png``, ``geojson``, ``overlay``,
        ``overlay.<class>``, ``prediction``).
    """
    from histomag.annotations import tiles_geojson
    from histomag.slide import open_slide

    names = [str(c) for c in class_names]
    probs = np.asarray(probs, dtype=np.float64).reshape(len(data.records), len(names))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = data.jobs[0]
    with open_slide(job.path, mpp=job.mpp, backend=job.backend) as slide:
        stem = slide.slide_id
        files = {"predictions": f"{stem}.predictions.csv", "npy": f"{stem}.heatmap.npy", "png": f"{stem}.heatmap.png",
                 "geojson": f"{stem}.geojson", "overlay": f"{stem}.overlay.png"}
        files.update({f"overlay.{c}": f"{stem}.overlay.{safe_name(c)}.png" for c in names})
        paths = {k: out_dir / v for k, v in files.items()}
        # grid
        n_rows, n_cols = data.grid_shapes[0]
        heat = np.full((len(names), n_rows, n_cols), np.nan, dtype=np.float32)
        for rec, p in zip(data.records, probs):
            if 0 <= rec.grid_row < n_rows and 0 <= rec.grid_col < n_cols:
                heat[:, rec.grid_row, rec.grid_col] = p
        sx, sy = data.pixel_scales[0]  # fields are in square pixels; QuPath wants the file's
        boxes = [((r.x - r.width / 2) / sx, (r.y - r.width / 2) / sy, r.width / sx, r.width / sy) for r in data.records]
        atomic_write_json(paths["geojson"], tiles_geojson(boxes, probs, names))
        predicted = [names[int(np.argmax(p))] for p in probs]
        header = ["tuple_id", "x", "y", "grid_row", "grid_col", "predicted"] + [f"prob_{c}" for c in names]
        atomic_write_csv(paths["predictions"], header, [
            [r.tuple_id, round(r.x), round(r.y), r.grid_row, r.grid_col, c] + [f"{v:.6g}" for v in p]
            for r, c, p in zip(data.records, predicted, probs)])
        buf = io.BytesIO()
        np.save(buf, heat)
        atomic_write_bytes(paths["npy"], buf.getvalue())  # a killed predict leaves the old file or none, never half
        _heatmap_png(paths["png"], heat, names, title=stem)
        width = float(data.records[0].width) if data.records else 0.0
        overlap = float(data.settings.overlap)
        record = SlidePrediction(
            slide=str(Path(job.path).resolve()), slide_id=stem, run=str(Path(run_dir).resolve()), fold=fold,
            classes=names, mpp=float(slide.mpp), mpp_source=job.source_of(slide),
            mpp_override=list(job.mpp) if isinstance(job.mpp, tuple) else job.mpp, power_mpp=float(slide.power_mpp),
            tile_settings=data.settings.to_json(), field_width=width, stride=width * (1.0 - overlap),
            counts={c: predicted.count(c) for c in names}, files=files)
        centres = np.array([[r.x, r.y] for r in data.records], dtype=np.float64).reshape(-1, 2)
        record.overlay = draw_overlays(slide, record, centres, probs, paths, overlay_width)
    paths["prediction"] = record.write(out_dir)
    return paths


def draw_overlays(slide: Any, record: SlidePrediction, centres: np.ndarray, probs: np.ndarray,
                  paths: dict[str, Path], width: int) -> dict[str, Any]:
    """Write ``paths["overlay"]`` (predicted class) and ``paths["overlay.<class>"]`` (P(class)); return what was drawn."""
    from histomag.tiling.overlay import (
        MAX_ALPHA,
        add_key,
        class_colours,
        png_bytes,
        scale_bar,
        slide_thumbnail,
        tint_boxes,
    )

    thumb, (dx, dy) = slide_thumbnail(slide, width)
    colours = class_colours(record.classes)
    side = record.stride
    boxes = [((x - side / 2) / dx, (y - side / 2) / dy, side / dx, side / dy) for x, y in centres]
    thumb_res = record.resolution.coarser(dx)
    bar = scale_bar(thumb_res, thumb.shape[1] / 4)
    where = f"{record.mpp:.4g} µm/px ({record.mpp_source})"
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    tinted = tint_boxes(thumb, boxes, [colours[record.classes[k]] for k in best],
                        [MAX_ALPHA * float(p[k]) for p, k in zip(probs, best)])
    areas = record.areas_mm2
    entries = [(f"{c}: {record.counts[c]} fields, {areas[c]:.3g} mm²", colours[c]) for c in record.classes]
    image, key = add_key(tinted, entries, bar, title=f"{record.slide_id}: predicted class per field, opacity = "
                         f"probability; {where}", note=_area_note(record))
    atomic_write_bytes(paths["overlay"], png_bytes(image))
    for k, c in enumerate(record.classes):
        tinted = tint_boxes(thumb, boxes, [colours[c]] * len(boxes), [MAX_ALPHA * float(p[k]) for p in probs])
        ramp = [(f"P = {q:g}", _blend((255, 255, 255), colours[c], MAX_ALPHA * q)) for q in (0.25, 0.5, 0.75, 1.0)]
        image_c, _ = add_key(tinted, ramp, bar, title=f"{record.slide_id}: P({c}) per field; {where}")
        atomic_write_bytes(paths[f"overlay.{c}"], png_bytes(image_c))
    return {"width": int(image.shape[1]), "height": int(image.shape[0]), "thumbnail_height": int(thumb.shape[0]),
            "downsample": [dx, dy], "colours": {c: list(v) for c, v in colours.items()},
            "max_alpha": MAX_ALPHA, "scale_bar": key.scale.to_json()}


def _area_note(record: SlidePrediction) -> str:
    cell_um = record.resolution.length_um(record.stride)
    return (f"each field counts once, for its predicted class, as its {cell_um:.4g} µm grid cell "
            f"({record.cell_area_mm2:.3g} mm²)" + (": overlapping fields are not counted twice"
                                                  if record.stride < record.field_width else ""))


def _blend(under: tuple[int, int, int], over: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    return tuple(int(round((1 - alpha) * u + alpha * o)) for u, o in zip(under, over))  # type: ignore[return-value]


def _heatmap_png(path: Path, heat: np.ndarray, class_names: Sequence[str], *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.8, 3.4), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    for ax, name, channel in zip(axes[0], class_names, heat):
        im = ax.imshow(np.ma.masked_invalid(channel), vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
        ax.set_title(f"P({name})")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    atomic_write_bytes(path, buf.getvalue())
    plt.close(fig)


# ----- prediction ---------------------------------------------------------------------------------
def predict_slide(run_dir: str | Path, slide: str | Path, out_dir: str | Path, *, fold: int | None = None,
                  mpp: float | tuple[float, float] | None = None, mpp_source: str | None = None,
                  batch_size: int | None = None, num_workers: int = 0, progress: bool = False,
                  overlay_width: int = OVERLAY_WIDTH) -> dict[str, Path]:
    """Tile a slide on the fly with the run's tile settings (grid), predict every field, and write the prediction folder.

    Args:
        run_dir: a DMSL run folder; ``fold``: use only that fold's model (default: the mean of all).
        slide: the slide or image.
        out_dir: the prediction folder (see the module docstring for its files).
        mpp: resolution override in µm/px (or ``(mpp_x, mpp_y)``); ``mpp_source``: where it came from,
            recorded with it (default ``override``), e.g. an estimate's description.
        batch_size, num_workers, progress: inference settings.
        overlay_width: width of ``S.overlay.png`` and ``S.overlay.<class>.png`` in px.

    Returns:
        file kind -> path: ``predictions``, ``npy``, ``png``, ``geojson``, ``overlay``,
        ``overlay.<class>`` and ``prediction`` (``S.prediction.json``).

    Raises:
        CheckpointError: not a DMSL run, or a run without its tile settings.
        ConfigError: ``overlay_width`` below 64 px.
    """
    from histomag.data.tuples import SlideTupleDataset, tuple_transform
    from histomag.dmsl.cv import grid_tile_settings, load_fold_models, read_run
    from histomag.dmsl.fit import predict_probs
    from histomag.errors import ConfigError
    from histomag.tiling.jobs import SlideJob

    if not (isinstance(overlay_width, int) and overlay_width >= 64):
        raise ConfigError(f"overlay_width={overlay_width!r}: give a width of at least 64 px (e.g. overlay_width=1600)")
    run = read_run(run_dir)
    models = load_fold_models(run, fold)
    settings = grid_tile_settings(run)
    job = SlideJob(str(slide), mpp=mpp, mpp_source=mpp_source if mpp is not None else None)
    data = SlideTupleDataset([job], settings, magnifications=run.config.magnifications,
                             classes=run.class_names, labelled_only=False,
                             transform=tuple_transform(models[0].input_mean, models[0].input_std, train=False))
    try:
        probs = predict_probs(models, data, batch_size=batch_size or run.config.batch_size, num_workers=num_workers,
                              progress=progress)
    finally:
        data.close()
    return write_slide_prediction(data, probs, out_dir, class_names=run.class_names, run_dir=run.root, fold=fold,
                                  overlay_width=overlay_width)
