"""``histomag tile``: cut same-field-of-view (or context) tuples at several magnifications."""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from histomag.cli.main import app, error
from histomag.errors import ConfigError, InputPathError

if TYPE_CHECKING:
    from histomag.data.tiler import SlideJob

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".png", ".jpg", ".jpeg"}
LABEL_SIDECARS = (".labels.png", ".geojson", ".labels.geojson")


@app.command()
def tile(
    slides: list[Path] = typer.Argument(..., help="Slides or images (folders are expanded), or index CSVs of images "
                                        "(image, optional label, group/patient, mpp or mpp_x,mpp_y or magnification)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder (created; re-running resumes)."),
    mags: str = typer.Option("40,20", "--mags", help="Magnifications of each tuple, e.g. 40,20."),
    size: int = typer.Option(600, "--size", help="Pixel size at the highest magnification."),
    mode: str = typer.Option("same-fov", "--mode", help="same-fov (identical tissue) or context (same centre and px size)."),
    placement: str = typer.Option("grid", "--placement", help="grid or random."),
    overlap: float = typer.Option(0.25, "--overlap", help="Grid overlap as a share of the field."),
    n_random: int = typer.Option(100, "--n-random", help="Fields per slide with --placement random."),
    seed: int = typer.Option(0, "--seed"),
    min_tissue: float = typer.Option(0.5, "--min-tissue", help="Minimum tissue share of a field."),
    tissue_threshold: Optional[float] = typer.Option(None, "--tissue-threshold", help="Override the Otsu tissue threshold."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label mask PNG or QuPath GeoJSON (one slide only)."),
    labels_dir: Optional[Path] = typer.Option(None, "--labels-dir", help="Folder with <slide>.labels.png or <slide>.geojson."),
    label_fraction: float = typer.Option(0.8, "--label-fraction", help="Share a class must cover to label a field."),
    negative_class: Optional[str] = typer.Option(None, "--negative-class", help="Label for fields with 0% of every other class."),
    patients: Optional[Path] = typer.Option(None, "--patients", help="CSV with slide_id,patient_id columns."),
    group_block: int = typer.Option(10, "--group-block", help="Index CSVs without a group/patient column: group "
                                    "images in blocks of this many consecutive image numbers per label (0: one "
                                    "group per image)."),
    mpp: Optional[str] = typer.Option(None, "--mpp", help="Resolution override in µm/px for every slide (mpp-x,mpp-y "
                                      "for pixels that are not square), or 'estimate' to recover it from the pixels."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Magnification model for --mpp estimate "
                                              "(default: the model shipped with histomag)."),
    max_uncertainty: float = typer.Option(0.25, "--max-uncertainty", help="--mpp estimate: refuse a slide whose "
                                          "estimate's interval is wider than ± this share (0.25 = ±25%)."),
    allow_upsample: bool = typer.Option(False, "--allow-upsample", help="Permit magnifications above the scan."),
    max_tuples: Optional[int] = typer.Option(None, "--max-tuples", help="At most this many tuples per slide."),
    workers: int = typer.Option(1, "--workers", "-j", help="Slides tiled in parallel processes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> int:
    """Tile slides into a dataset folder: one PNG per magnification per tuple plus manifest.csv."""
    from histomag.data.folder import TileSettings
    from histomag.data.tiler import SlideJob, tile_slides
    from histomag.resolution import parse_magnifications
    from histomag.tiling import make_tuple_spec

    magnifications = parse_magnifications(mags)  # raises on an empty or malformed list
    make_tuple_spec(magnifications, size, mode)  # validate early  # type: ignore[arg-type]
    indexed = index_jobs([p for p in slides if p.suffix.lower() == ".csv"], group_block)
    paths = expand_slides([p for p in slides if p.suffix.lower() != ".csv"]) + [Path(j.path) for j in indexed]
    if labels is not None and len(paths) > 1:
        raise ConfigError("--labels takes one slide; for several use --labels-dir with <slide>.labels.png files")
    if labels is not None and not labels.exists():
        raise InputPathError(f"{labels}: no such label file; check the --labels path")
    patient_map = read_patients(patients) if patients else {}
    if not patients:
        for folder in sorted({p.parent for p in paths}):
            patient_map.update(read_patients_beside(folder))
    from_index = {j.path: j for j in indexed}
    mpps, failed_early = resolve_mpp(paths, mpp, checkpoint, max_uncertainty)  # --mpp overrides index values
    jobs = []
    for p in paths:
        if str(p) in failed_early:
            continue
        row = from_index.get(str(p))
        if row is not None:  # an index row: its resolution, class and group, unless --mpp overrides
            jobs.append(replace(row, mpp=mpps.get(row.path, row.mpp)))
            continue
        lab = labels or find_labels(p, labels_dir)
        jobs.append(SlideJob(str(p), mpp=mpps.get(str(p)), labels=str(lab) if lab else None,
                             patient_id=patient_map.get(_stem(p))))
    settings = TileSettings(tuple(magnifications), size, mode=mode, placement=placement, overlap=overlap,
                            n_random=n_random, seed=seed, min_tissue=min_tissue,
                            tissue_threshold=tissue_threshold, label_fraction=label_fraction,
                            negative_class=negative_class, allow_upsample=allow_upsample, max_tuples=max_tuples)
    results = tile_slides(jobs, settings, out, workers=workers, progress=not quiet) if jobs else []
    ok = [r for r in results if r.status == "ok"]
    failed = [r.error for r in results if r.status != "ok"] + list(failed_early.values())
    for message in failed:
        error(message)
    n_all = len(results) + len(failed_early)
    written = sum(r.tuples_written for r in ok)
    resumed = sum(r.tuples_resumed for r in ok)
    dropped = sum(r.fields_dropped for r in ok)
    empty = [r.slide_id for r in ok if r.tuples_written + r.tuples_resumed == 0]
    if empty:
        shown = ", ".join(empty[:8]) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        print(f"note: {len(empty)} slide(s)/image(s) gave no tuple (smaller than one field, or too little tissue "
              f"per field): {shown}", file=sys.stderr)
    print(f"tiled {len(ok)} of {n_all} slides ({len(failed)} failed): {written} tuples written, "
          f"{resumed} already present, {dropped} fields dropped by the label rule -> {out / 'manifest.csv'}")
    if failed:
        return 2 if not ok else 1
    return 0


def index_jobs(indexes: list[Path], group_block: int) -> list[SlideJob]:
    """One job per row of each index CSV: its image, resolution (if given), class and group."""
    from histomag.data.index import block_groups, read_index
    from histomag.data.tiler import SlideJob

    jobs = []
    for index in indexes:
        rows, blocked = block_groups(read_index(index, require_resolution=False), group_block)
        if blocked:
            print(f"note: {index} has no group or patient column: images are grouped in blocks of {group_block} "
                  "consecutive image numbers per label for patient-grouped cross-validation (give a group column "
                  "when patients are known)", file=sys.stderr)
        jobs.extend(SlideJob(r.path, mpp=r.mpp, patient_id=r.group or r.image_id, label=r.label or None)
                    for r in rows)
    return jobs


def resolve_mpp(paths: list[Path], mpp: str | None, checkpoint: Path | None, max_uncertainty: float = 0.25
                ) -> tuple[dict[str, float | tuple[float, float] | None], dict[str, str]]:
    """Per-slide mpp from ``--mpp`` (a number, ``mpp_x,mpp_y``, or ``estimate`` with a magnification model).

    Returns the mpp per path and, for ``estimate``, the one-line errors of slides it failed on.
    """
    if mpp is None:
        return {}, {}
    if mpp.strip().lower() != "estimate":
        from histomag.resolution import parse_mpp

        try:
            value = parse_mpp(mpp)
        except ConfigError:
            raise ConfigError(f"--mpp {mpp!r}: give µm per pixel (e.g. --mpp 0.25), mpp-x,mpp-y for pixels that "
                              "are not square (e.g. --mpp 0.56,0.42) or --mpp estimate") from None
        return {str(p): value for p in paths}, {}
    from histomag.errors import HistomagError
    from histomag.slide import open_slide
    from histomag.train.maginfer import load_estimator

    estimator = load_estimator(checkpoint)
    values: dict[str, float | tuple[float, float] | None] = {}
    failed: dict[str, str] = {}
    for p in paths:
        try:
            with open_slide(p) as slide:
                est = estimator.estimate_slide(slide)
                meta = f"metadata: {slide.magnification:.3g}x" if slide.mpp else "no resolution in metadata"
        except HistomagError as exc:
            failed[str(p)] = str(exc)
            continue
        unc = est.relative_uncertainty
        if unc is not None and unc > max_uncertainty:
            failed[str(p)] = (f"{p.name}: the estimated resolution {est.describe()} is uncertain by ±{unc:.0%}, more "
                              f"than the allowed ±{max_uncertainty:.0%}; give the true resolution with --mpp, or "
                              "raise --max-uncertainty")
            continue
        values[str(p)] = est.mpp
        note = "" if unc is not None else "; this model has no calibrated interval, its uncertainty is unknown"
        print(f"warning: {p.name}: using the ESTIMATED resolution {est.describe()} ({meta}){note}", file=sys.stderr)
    return values, failed


def _stem(p: Path) -> str:
    from histomag.slide.base import slide_id_from_path

    return slide_id_from_path(p)


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
    stem = _stem(slide)
    for folder in ([labels_dir] if labels_dir else []) + [slide.parent]:
        for suffix in LABEL_SIDECARS:
            cand = folder / f"{stem}{suffix}"
            if cand.is_file():
                return cand
    return None


def read_patients(path: Path) -> dict[str, str]:
    """slide_id -> patient_id from a CSV with those two columns."""
    if not path.is_file():
        raise InputPathError(f"{path}: no such patients CSV; check the --patients path")
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
