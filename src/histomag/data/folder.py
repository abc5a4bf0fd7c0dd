"""The tiled dataset folder: ``dataset.json`` + ``manifest.csv`` + ``images/<slide>/<tuple>_<mag>.png``.

Layout::

    DIR/dataset.json          settings that made it (mags, size, mode, ...), for resume checks
    DIR/manifest.csv          one row per finished tuple (only rows whose images all exist)
    DIR/slides.csv            one row per slide: status, tuples written, error
    DIR/parts/<slide>.csv     per-slide journal appended after each tuple's images are in place
    DIR/images/<slide>/...    one PNG per magnification per tuple, written atomically
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from histomag.data.atomic import atomic_write_csv, atomic_write_json
from histomag.errors import DatasetError
from histomag.resolution import format_magnification

DATASET_VERSION = 1
BASE_COLUMNS = ["tuple_id", "slide_id", "patient_id", "x", "y", "field_width", "mode", "magnifications",
                "mpps", "label", "class_fractions", "tissue_fraction", "slide_mpp", "mpp_source"]
#: settings that must match for a re-run to resume into the same folder
RESUME_KEYS = ("magnifications", "size", "mode", "placement", "overlap", "seed", "n_random", "min_tissue",
               "label_fraction", "negative_class")


def image_column(magnification: float) -> str:
    """Manifest column of a magnification's image path, e.g. ``image_40x``."""
    return f"image_{format_magnification(magnification)}"


def manifest_columns(magnifications: Sequence[float]) -> list[str]:
    return BASE_COLUMNS + [image_column(m) for m in sorted(magnifications, reverse=True)]


@dataclass(frozen=True)
class TileSettings:
    """Everything that decides which tuples a slide yields (stored in ``dataset.json``)."""

    magnifications: tuple[float, ...]
    size: int
    mode: str = "same-fov"
    placement: str = "grid"
    overlap: float = 0.25
    n_random: int = 100
    seed: int = 0
    min_tissue: float = 0.5
    tissue_threshold: float | None = None
    tissue_mpp: float = 8.0
    label_fraction: float = 0.8
    negative_class: str | None = None
    allow_upsample: bool = False
    max_tuples: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["magnifications"] = list(self.magnifications)
        return d


class DatasetFolder:
    """Reads and writes a tiled dataset folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def settings_path(self) -> Path:
        return self.root / "dataset.json"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.csv"

    def part_path(self, slide_id: str) -> Path:
        return self.root / "parts" / f"{slide_id}.csv"

    def image_path(self, slide_id: str, tuple_id: str, magnification: float) -> Path:
        return self.root / "images" / slide_id / f"{tuple_id}_{format_magnification(magnification)}.png"

    # ----- settings -------------------------------------------------------------------------
    def prepare(self, settings: TileSettings) -> None:
        """Create the folder, or check that an existing one was made with the same settings."""
        self.root.mkdir(parents=True, exist_ok=True)
        new = settings.to_json()
        if self.settings_path.exists():
            old = self.read_settings()
            diff = [k for k in RESUME_KEYS if _norm(old.get(k)) != _norm(new.get(k))]
            if diff:
                k = diff[0]
                raise DatasetError(
                    f"{self.root} already holds a dataset made with {k}={old.get(k)!r} (now {new.get(k)!r}); "
                    "use another --out folder or delete it"
                )
        atomic_write_json(self.settings_path, {"version": DATASET_VERSION, **new})

    def read_settings(self) -> dict:
        if not self.settings_path.exists():
            raise DatasetError(f"{self.root}: no dataset.json; make the dataset with `histomag tile ... --out {self.root}`")
        try:
            return json.loads(self.settings_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{self.settings_path}: not valid JSON ({exc.msg}); re-run `histomag tile`") from None

    # ----- per-slide journal (resume) -------------------------------------------------------
    def read_part(self, slide_id: str, columns: Sequence[str]) -> list[dict]:
        """Rows already journalled for a slide whose images all exist; drops a torn last line."""
        path = self.part_path(slide_id)
        if not path.exists():
            return []
        rows: list[dict] = []
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header != list(columns):
                return []
            for values in reader:
                if len(values) != len(columns):
                    continue  # a line torn by a crash
                row = dict(zip(columns, values))
                if self._images_exist(row):
                    rows.append(row)
        # rewrite the journal clean so appends continue after a valid line
        atomic_write_csv(path, columns, rows)
        return rows

    def append_part(self, slide_id: str, columns: Sequence[str], row: dict) -> None:
        """Append one finished tuple to the slide's journal (after its images are written)."""
        path = self.part_path(slide_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            if new:
                writer.writerow(columns)
            writer.writerow([row.get(c, "") for c in columns])
            fh.flush()
            os.fsync(fh.fileno())

    def _images_exist(self, row: dict) -> bool:
        return all((self.root / v).is_file() for k, v in row.items() if k.startswith("image_") and v)

    # ----- manifest -------------------------------------------------------------------------
    def write_manifest(self, slide_ids: Sequence[str], columns: Sequence[str]) -> int:
        """Merge the slide journals (in the given order) into ``manifest.csv``; returns the row count."""
        rows: list[dict] = []
        for sid in slide_ids:
            rows.extend(self.read_part(sid, columns))
        # keep rows of slides from earlier runs into the same folder too
        known = set(slide_ids)
        parts = self.root / "parts"
        if parts.is_dir():
            for p in sorted(parts.glob("*.csv")):
                if p.stem not in known:
                    rows.extend(self.read_part(p.stem, columns))
        atomic_write_csv(self.manifest_path, columns, rows)
        return len(rows)

    def read_manifest(self) -> list[dict]:
        """Rows of ``manifest.csv``; raises :class:`DatasetError` listing missing images."""
        if not self.manifest_path.exists():
            raise DatasetError(f"{self.root}: no manifest.csv; make it with `histomag tile SLIDE... --out {self.root}`")
        with open(self.manifest_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        missing = [v for row in rows for k, v in row.items() if k.startswith("image_") and v
                   and not (self.root / v).is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(
                f"{self.manifest_path}: {len(missing)} referenced images are missing ({', '.join(missing[:3])}{more}); "
                "re-run the same `histomag tile` command to restore them"
            )
        return rows


def _norm(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return value
