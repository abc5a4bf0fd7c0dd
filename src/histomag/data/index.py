"""Index CSVs: one reader for every command that takes a list of images with what is known about them.

An index CSV has an ``image`` column (paths relative to the CSV) and any of:

- ``mpp``, or ``mpp_x`` and ``mpp_y`` (µm per pixel across and down, for pixels that are not
  square), or ``magnification`` (objective power, 10x ≙ 1 µm/px);
- ``label`` (the class of the whole image), ``group`` or ``patient`` (what leaves together in
  cross-validation), ``organ``.

Every value is checked where it is read: a row names its line and column when something is wrong.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from histomag.errors import DatasetError, InputPathError
from histomag.resolution import (
    DEFAULT_POWER_MPP,
    PLAUSIBLE_MPP,
    PLAUSIBLE_OBJECTIVE_POWER,
    is_plausible_mpp,
    is_plausible_objective_power,
)
from histomag.slide.base import slide_id_from_path

RESOLUTION_COLUMNS = ("mpp", "mpp_x", "mpp_y", "magnification")


@dataclass(frozen=True)
class IndexRow:
    """One image of an index CSV.

    Attributes:
        path: absolute path of the image.
        image_id: the file name without its extension (:func:`~histomag.slide.base.slide_id_from_path`).
        where: ``"<csv> row <n>"`` for messages.
        mpp_x, mpp_y: µm per pixel across and down (None when the row gives no resolution).
        label: class of the whole image ("" when none).
        group: ``group`` or ``patient`` column ("" when none).
        organ: organ or tissue ("" when none).
        magnification_given: the resolution came from a ``magnification`` column (a nominal value).
    """

    path: str
    image_id: str
    where: str
    mpp_x: float | None = None
    mpp_y: float | None = None
    label: str = ""
    group: str = ""
    organ: str = ""
    magnification_given: bool = False

    @property
    def mpp(self) -> float | tuple[float, float] | None:
        """One value for square pixels, ``(mpp_x, mpp_y)`` otherwise, None when unknown."""
        if self.mpp_x is None or self.mpp_y is None:
            return None
        return self.mpp_x if self.mpp_x == self.mpp_y else (self.mpp_x, self.mpp_y)


def _number(row: dict, key: str, where: str) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: column {key!r} is {text!r}, not a number; give µm per pixel such as 0.25"
                           if key != "magnification" else
                           f"{where}: column {key!r} is {text!r}, not a number; give an objective power such as 40"
                           ) from None
    if not (math.isfinite(value) and value > 0):
        raise DatasetError(f"{where}: column {key!r} is {text!r}; give a positive number such as "
                           f"{'40' if key == 'magnification' else '0.25'}")
    return value


def _resolution(row: dict, where: str) -> tuple[float | None, float | None, bool]:
    mx, my = _number(row, "mpp_x", where), _number(row, "mpp_y", where)
    if (mx is None) != (my is None):
        has, missing = ("mpp_x", "mpp_y") if my is None else ("mpp_y", "mpp_x")
        raise DatasetError(f"{where}: has {has} but no {missing}; give both (µm per pixel across and down) "
                           "or a single mpp")
    from_mag = False
    if mx is None:
        mpp = _number(row, "mpp", where)
        if mpp is None:
            mag = _number(row, "magnification", where)
            if mag is None:
                return None, None, False
            if not is_plausible_objective_power(mag):
                lo, hi = PLAUSIBLE_OBJECTIVE_POWER
                raise DatasetError(f"{where}: magnification {mag:g} is outside the objectives that exist "
                                   f"({lo:g}-{hi:g}x); give e.g. 40")
            mpp, from_mag = DEFAULT_POWER_MPP / mag, True
        mx = my = mpp
    for key, value in (("mpp_x", mx), ("mpp_y", my)):
        if not is_plausible_mpp(value):
            raise DatasetError(f"{where}: {key if mx != my else 'mpp'} {value:g} is outside what microscopes produce "
                               f"({PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} µm/px); give µm per pixel, e.g. 0.25")
    return mx, my, from_mag


def read_index(path: str | Path, *, require_resolution: bool = True, require_label: bool = False) -> list[IndexRow]:
    """The rows of an index CSV.

    Args:
        path: the CSV.
        require_resolution: every row must give ``mpp``, ``mpp_x``/``mpp_y`` or ``magnification``.
        require_label: the CSV must have a ``label`` column and every row a label.

    Raises:
        InputPathError: no such file.
        DatasetError: no ``image`` column, a missing required column, an ``mpp_x`` without ``mpp_y``
            (or the reverse), a value that is not a plausible positive number, an empty label (each
            names the row and the column).
    """
    path = Path(path)
    cols, rows = _read_csv(path, "index CSV")
    have = ", ".join(sorted(c for c in cols if c)) or "no columns"
    if "image" not in cols:
        raise DatasetError(f"{path}: an index CSV needs an image column (has {have})")
    if require_resolution and not (set(RESOLUTION_COLUMNS) & cols):
        raise DatasetError(f"{path}: needs a resolution column, mpp, mpp_x and mpp_y, or magnification (has {have})")
    if require_label and "label" not in cols:
        raise DatasetError(f"{path}: needs a label column (the class of each image) to train a classifier "
                           f"(has {have})")
    out: list[IndexRow] = []
    for line, row in enumerate(rows, start=2):
        where = f"{path} row {line}"
        name = (row.get("image") or "").strip()
        if not name:
            raise DatasetError(f"{where}: the image column is empty; give the image's path (relative to the CSV)")
        if "\x00" in name:
            raise DatasetError(f"{where}: the image column holds a NUL byte; give the image's path (relative to the CSV)")
        mx, my, from_mag = _resolution(row, where)
        if require_resolution and mx is None:
            raise DatasetError(f"{where}: no mpp, mpp_x/mpp_y or magnification for {name!r}; fill one in")
        label = (row.get("label") or "").strip()
        if require_label and not label:
            raise DatasetError(f"{where}: the label column is empty for {name!r}; give its class")
        group = (row.get("group") or row.get("patient") or "").strip()
        img = (path.parent / name).resolve()
        out.append(IndexRow(str(img), slide_id_from_path(img), where, mx, my, label, group,
                            (row.get("organ") or "").strip(), from_mag))
    return out


def _read_csv(path: Path, what: str) -> tuple[set[str], list[dict]]:
    """The column names and rows of a UTF-8 CSV (InputPathError / DatasetError naming the file)."""
    if not path.is_file():
        raise InputPathError(f"{path}: no such {what}; check the path")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            return set(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc}); save it as UTF-8 CSV") from None


_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def block_groups(rows: list[IndexRow], block: int) -> tuple[list[IndexRow], bool]:
    """Rows without a group get one: blocks of ``block`` consecutive image numbers within a label.

    For collections without patient ids (e.g. BACH), where consecutive numbers more likely share a
    patient. Returns the rows and whether any group was made this way.
    """
    if all(r.group for r in rows) or block <= 0:
        return rows, False
    out = []
    for r in rows:
        if r.group:
            out.append(r)
            continue
        m = _NUMBER.search(r.image_id)
        start = (int(m.group(1)) if m else 0) // block * block
        group = f"{r.label or 'all'}-{start:03d}-{start + block - 1:03d}"
        out.append(replace(r, group=group))
    return out, True


def read_mpp_table(path: str | Path) -> dict[str, float | tuple[float, float]]:
    """Per-slide resolutions from a CSV: a ``slide`` (or ``slide_id``/``image``) column and ``mpp`` or ``mpp_x``/``mpp_y``.

    Keys are the slide column's values as written (a file name, a path or a slide id); match them
    with :func:`match_mpp_table`.

    Raises:
        InputPathError: no such file.
        DatasetError: no slide column, no resolution column, a duplicate slide, or a value that is
            not a plausible positive number (naming the row and the column).
    """
    path = Path(path)
    cols, rows = _read_csv(path, "resolution CSV")
    key = next((c for c in ("slide", "slide_id", "image") if c in cols), None)
    if key is None or not ({"mpp", "mpp_x", "mpp_y"} & cols):
        raise DatasetError(f"{path}: a resolution CSV needs a slide column and mpp (or mpp_x and mpp_y) "
                           f"(has {', '.join(sorted(c for c in cols if c)) or 'no columns'})")
    out: dict[str, float | tuple[float, float]] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{path} row {line}"
        name = (row.get(key) or "").strip()
        if not name:
            raise DatasetError(f"{where}: the {key} column is empty; give the slide's file name")
        mx, my, _ = _resolution({k: v for k, v in row.items() if k != "magnification"}, where)
        if mx is None:
            raise DatasetError(f"{where}: no mpp for {name!r}; fill one in or drop the row")
        if name in out:
            raise DatasetError(f"{where}: {name!r} is listed twice; keep one row per slide")
        out[name] = mx if mx == my else (mx, my)  # type: ignore[assignment]
    return out


def match_mpp_table(table: dict[str, float | tuple[float, float]], paths: list[Path]
                    ) -> tuple[dict[str, float | tuple[float, float]], list[str], list[str]]:
    """Resolutions per path (matched by file name, path or slide id), the table's unmatched names, the paths not in it."""
    found: dict[str, float | tuple[float, float]] = {}
    used: set[str] = set()
    for p in paths:
        for name in (str(p), p.name, slide_id_from_path(p)):
            if name in table:
                found[str(p)] = table[name]
                used.add(name)
                break
    return found, sorted(set(table) - used), [p.name for p in paths if str(p) not in found]
