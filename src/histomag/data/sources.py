"""Where slides and images come from: files, folders of them, index CSVs, and the sidecars beside them.

One place for the rules every command and the demo share: which files in a folder are slides, where
a slide's label mask is, which patient a slide belongs to, and the tile jobs of an index CSV.
"""

from __future__ import annotations

import csv
from pathlib import Path

from histomag.tiling.jobs import SlideJob
from histomag.errors import ConfigError, InputPathError
from histomag.slide import SLIDE_AND_IMAGE_SUFFIXES
from histomag.slide.base import slide_id_from_path

#: files a folder of slides is expanded to (plain images included: they are slides of one level)
SLIDE_SUFFIXES = SLIDE_AND_IMAGE_SUFFIXES
LABEL_SIDECARS = (".labels.png", ".geojson", ".labels.geojson")


def index_jobs(indexes: list[Path], group_block: int) -> tuple[list[SlideJob], list[str]]:
    """One tile job per row of each index CSV (its image, resolution if given, class and group).

    Rows without a group or patient get one by :func:`histomag.data.index.block_groups`.
    Returns the jobs and notes for the user (which CSVs were grouped that way).
    """
    from histomag.data.index import block_groups, read_index

    jobs: list[SlideJob] = []
    notes: list[str] = []
    for index in indexes:
        rows, blocked = block_groups(read_index(index, require_resolution=False), group_block)
        if blocked:
            notes.append(f"{index} has no group or patient column: images are grouped in blocks of {group_block} "
                         "consecutive image numbers per label for patient-grouped cross-validation (give a group "
                         "column when patients are known)")
        jobs.extend(SlideJob(r.path, mpp=r.mpp, patient_id=r.group or r.image_id, label=r.label or None)
                    for r in rows)
    return jobs, notes


def expand_slides(paths: list[Path]) -> list[Path]:
    """Files as given (missing ones are kept so they are reported per slide); folders expanded."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir() and p.suffix.lower() != ".mrxs":
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SLIDE_SUFFIXES
                           and not _is_sidecar(q.name))
            if not found:
                raise InputPathError(f"{p}: folder holds no slide files ({', '.join(sorted(SLIDE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def _is_sidecar(name: str) -> bool:
    """Label masks and overview pictures that sit beside slides are not slides."""
    low = name.lower()
    return low.endswith(".labels.png") or ".overview" in low


def find_labels(slide: Path, labels_dir: Path | None) -> Path | None:
    """``<slide>.labels.png`` / ``<slide>.geojson`` in ``labels_dir`` or beside the slide."""
    stem = slide_id_from_path(slide)
    for folder in ([labels_dir] if labels_dir else []) + [slide.parent]:
        for suffix in LABEL_SIDECARS:
            cand = folder / f"{stem}{suffix}"
            if cand.is_file():
                return cand
    return None


def read_patients(path: Path) -> dict[str, str]:
    """slide_id -> patient_id from a CSV with those two columns."""
    if not path.is_file():
        raise InputPathError(f"{path}: no such patients CSV; check the path")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"slide_id", "patient_id"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}: needs columns slide_id and patient_id (has {reader.fieldnames})")
        return {row["slide_id"]: row["patient_id"] for row in reader}


def read_patients_beside(folder: Path) -> dict[str, str]:
    """Patient ids from a ``cohort.csv`` (as ``histomag synth`` writes) in a slide folder, if any."""
    cohort = folder / "cohort.csv"
    if not cohort.is_file():
        return {}
    try:
        return read_patients(cohort)
    except ConfigError:
        return {}


def slide_jobs(inputs: list[Path], *, labels: Path | None = None, labels_dir: Path | None = None,
               patients: Path | None = None, group_block: int = 10) -> tuple[list[SlideJob], list[str]]:
    """The jobs of a batch given as slides, folders of them and index CSVs, in the order given.

    Each slide gets its label file (``labels`` for a single slide, else its sidecar in ``labels_dir``
    or beside it) and its patient (``patients`` CSV, else a ``patients.csv`` beside the slides);
    index rows keep their class, group and resolution. Returns the jobs and notes for the user.

    Raises:
        ConfigError: ``labels`` with more than one slide.
        InputPathError: a ``labels`` file that does not exist.
    """
    indexed, notes = index_jobs([p for p in inputs if p.suffix.lower() == ".csv"], group_block)
    paths = expand_slides([p for p in inputs if p.suffix.lower() != ".csv"]) + [Path(j.path) for j in indexed]
    if labels is not None and len(paths) > 1:
        raise ConfigError("labels= takes one slide; for several use labels_dir= with <slide>.labels.png files")
    if labels is not None and not labels.exists():
        raise InputPathError(f"{labels}: no such label file; check the labels= path")
    patient_map = read_patients(patients) if patients else {}
    if not patients:
        for folder in sorted({p.parent for p in paths}):
            patient_map.update(read_patients_beside(folder))
    from_index = {j.path: j for j in indexed}
    jobs = []
    for p in paths:
        row = from_index.get(str(p))
        if row is not None:  # an index row: its class, group and (if given) resolution
            jobs.append(row)
            continue
        lab = labels or find_labels(p, labels_dir)
        jobs.append(SlideJob(str(p), labels=str(lab) if lab else None, patient_id=patient_map.get(slide_id_from_path(p))))
    return jobs, notes
