"""Leave-groups-out cross-validation of the rulers, the choice of cues, and the calibration it ships.

Every source of known resolution is measured once per cue, at its own scale and box-downsampled
2x and 4x (a ruler must follow the scale, not recognise the source); then, for each hold-out
unit (a dataset: an index CSV's folder, or one slide), the priors and spreads are fitted on the
others and its images are estimated. The cue set chosen is the one with the lowest **mean over
hold-out units of the median relative mpp error** (stated before the runs; a smaller cue set
wins ties within 0.005), and the shipped calibration is fitted on every source with the interval's
multiplier from the held-out estimates.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histomag.errors import HistomagError
from histomag.magnification.rulers.calibration import FieldReading, HeldOut, RulerCalibration, cross_validate
from histomag.magnification.rulers.evidence import STANDARD_OBJECTIVES, Z90, ambiguous_objectives, objective_probabilities
from histomag.progress import progress_bar
from histomag.resolution import DEFAULT_POWER_MPP

#: the downsampling factors each source is also measured at (while its short side stays >= 256 px)
VIEW_FACTORS = (1, 2, 4)
#: the share of ties in the selection: a smaller cue set wins when within this of the best
TIE = 0.005


@dataclass(frozen=True)
class LabelledSource:
    """A source entry with the dataset it leaves the CV with."""

    entry: Any
    dataset: str


def collect_labelled(paths: Sequence[str | Path]) -> list[LabelledSource]:
    """Index CSVs (dataset: the CSV's folder name) and slides (dataset: the file's stem).

    Groups are the dataset, with the scan's magnification appended when a dataset holds several
    (``cpm15-20x``), whatever patient column the CSV has.
    """
    from histomag.magnification.sources import collect_entries, nominal_magnification

    out = []
    for p in map(Path, paths):
        entries = collect_entries([p])
        dataset = p.parent.name if p.suffix.lower() == ".csv" else p.name.split(".")[0]
        mags = {nominal_magnification(DEFAULT_POWER_MPP / max(e.mpp_x, e.mpp_y)) for e in entries
                if e.mpp_x and e.mpp_y}
        for e in entries:
            group = dataset
            if len(mags) > 1 and e.mpp_x and e.mpp_y:
                group = f"{dataset}-{nominal_magnification(DEFAULT_POWER_MPP / max(e.mpp_x, e.mpp_y)):g}x"
            out.append(LabelledSource(dataclasses.replace(e, group=group), dataset))
    return out


def measure_sources(sources: Sequence[LabelledSource], cues: Sequence[str], *, progress: bool = True,
                    factors: Sequence[float] = VIEW_FACTORS, field: int = 768
                    ) -> tuple[list[FieldReading], dict[str, str], list[str]]:
    """Every cue's field readings of every source and view.

    Returns:
        ``(readings, hold-out unit per group, one message per source that could not be read)``.
    """
    from histomag.magnification.rulers.estimator import field_boxes, read_fields
    from histomag.magnification.estimate import rgb_tissue_mask
    from histomag.magnification.sources import eval_views, load_source

    readings: list[FieldReading] = []
    holdout: dict[str, str] = {}
    errors: list[str] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("measuring sources", total=len(sources)) if bar else None
        for ls in sources:
            try:
                src = load_source(ls.entry)
                for view in eval_views(src, 256, factors):
                    name = f"{src.group}/{src.source_id}@{src.magnification / view.magnification:.3g}"
                    rgb = view.rgb
                    try:
                        boxes = field_boxes(rgb_tissue_mask(rgb), rgb.shape[1], rgb.shape[0], 16, name, field)
                    except HistomagError:
                        continue
                    fields = (rgb[y:y + h, x:x + w] for x, y, w, h in boxes)
                    for r in read_fields(fields, cues, name):
                        readings.append(FieldReading(r.image, r.cue, r.size_px, r.n, r.spread, src.group,
                                                     float(view.magnification), r.at_floor))
                holdout[src.group] = ls.dataset
            except HistomagError as exc:
                errors.append(str(exc))
            if bar:
                bar.advance(task, 1)
    return readings, holdout, errors


def group_figures(held: Sequence[HeldOut], q: float) -> dict[str, float]:
    """The issue's figures for a set of held-out estimates (a NaN where nothing was answered)."""
    ok = [h for h in held if h.magnification]
    n = len(held)
    floor = [h for h in held if h.floor_magnification]
    at_floor = {"at_floor": len(floor) / n if n else 0.0,
                "floor_right": float(np.mean([h.true_magnification <= 1.1 * h.floor_magnification for h in floor]))
                if floor else float("nan")}
    if not ok:
        return {"n": n, "answered": 0, **at_floor}
    lr = np.array([math.log(h.true_magnification / h.magnification) for h in ok])  # log(pred mpp / true mpp)
    rel = np.abs(np.exp(lr) - 1)
    covered = [abs(math.log(h.magnification / h.true_magnification)) <= q * h.se for h in ok]
    served = [ambiguous_objectives((h.magnification * math.exp(-q * h.se), h.magnification * math.exp(q * h.se)))
              is None for h in ok]
    out = {"n": n, "answered": len(ok), "median_rel_error": float(np.median(rel)),
           "within_10": float(np.mean(rel <= 0.10)), "bias": float(np.median(lr)),
           "p90_factor": float(np.exp(np.quantile(np.abs(lr), 0.9))), "coverage": float(np.mean(covered)),
           "served": float(np.mean(served)), "interval_factor": float(np.median([math.exp(q * h.se) for h in ok])),
           **at_floor}
    standard = [h for h in ok if _standard(h.true_magnification)]
    if standard:
        right = [_most_likely(h, q) == _standard(h.true_magnification) for h in standard]
        out["objective_right"] = float(np.mean(right))
    return out


def _standard(mag: float) -> float | None:
    best = min(STANDARD_OBJECTIVES, key=lambda o: abs(math.log(mag / o)))
    return best if abs(math.log(mag / best)) < 0.05 else None


def _most_likely(h: HeldOut, q: float) -> float:
    odds = objective_probabilities(math.log(h.magnification), q * h.se / Z90)
    return max(odds, key=odds.get)


def pooled_group_error(readings: Sequence[FieldReading], held_cal: dict[str, RulerCalibration],
                       holdout: dict[str, str], min_images: int = 20) -> dict[str, float]:
    """Per group of at least ``min_images`` native images: the relative error of one estimate pooled
    over all of them (a batch declared as one acquisition), with the calibration that held it out."""
    out = {}
    natives = [r for r in readings if r.image.endswith("@1")]
    for g in sorted({r.group for r in natives}):
        rs = [r for r in natives if r.group == g]
        if len({r.image for r in rs}) < min_images:
            continue
        cal = held_cal[holdout[g]]
        p = cal.pool(rs)
        if p is None:
            continue
        out[g] = float(abs(math.exp(p.centre) / rs[0].true_magnification - 1))
    return out


def select_cues(readings: Sequence[FieldReading], holdout: dict[str, str], candidates: Sequence[str],
                min_objects: int = 20) -> tuple[list[str], list[dict[str, Any]], dict[str, list[HeldOut]]]:
    """Cross-validate every non-empty subset of ``candidates``; the chosen subset by the rule in the
    module docstring. Returns ``(chosen, one row per subset, held-out estimates per subset)``."""
    rows = []
    held_by: dict[str, list[HeldOut]] = {}
    for k in range(1, len(candidates) + 1):
        for subset in itertools.combinations(candidates, k):
            held, cal, _ = cross_validate(readings, holdout, list(subset), min_objects)
            natives = [h for h in held if h.image.endswith("@1")]
            per_unit = [group_figures([h for h in natives if holdout[h.group] == u], cal.q)
                        for u in sorted(set(holdout.values()))]
            errs = [f["median_rel_error"] for f in per_unit if "median_rel_error" in f]
            key = "+".join(subset)
            held_by[key] = held
            rows.append({"cues": key, "score": float(np.mean(errs)) if errs else float("inf"),
                         "answered": float(np.mean([h.magnification is not None for h in natives])) if natives else 0.0,
                         "q": cal.q})
    best = min(r["score"] for r in rows)
    eligible = [r for r in rows if r["score"] <= best + TIE]
    chosen = min(eligible, key=lambda r: (len(r["cues"].split("+")), r["score"]))
    return chosen["cues"].split("+"), rows, held_by


def calibrate(paths: Sequence[str | Path], out: str | Path, candidates: Sequence[str] = ("nuclei", "lymphocytes"),
              *, progress: bool = True, readings_csv: str | Path | None = None, field: int = 768) -> dict[str, Any]:
    """Measure the sources, cross-validate every cue set, choose one, and write its calibration.

    Args:
        paths: index CSVs, slides or images of known resolution (see :mod:`~histomag.magnification.sources`).
        out: the calibration file to write (JSON; the CV's figures go in it too).
        candidates: the rulers to consider (registered names).
        progress: show a progress bar.
        field: the side (px) of the fields measured (stated in the calibration).
        readings_csv: where to keep the field readings: read from it when it exists (the sources are
            then not measured again, and the field side it records is the calibration's), written to
            it otherwise.

    Returns:
        The report written under ``cv`` in the file: the cue sets' scores, the chosen set, and per
        group the figures of each cue alone and of the chosen set (native images, and native plus
        2x/4x views), the pooled estimate of each group of 20+ images, and unreadable sources.

    Raises:
        HistomagError: no source could be measured.
    """
    from histomag.errors import ConfigError
    from histomag.magnification.rulers.base import RULERS

    for c in candidates:
        RULERS.get(c)  # an unknown name: one line listing the valid ones
    if readings_csv is not None and Path(readings_csv).is_file():
        readings, holdout, field = read_readings(readings_csv)
        readings = [r for r in readings if r.cue in candidates]
        errors: list[str] = []
    else:
        readings, holdout, errors = measure_sources(collect_labelled(paths), candidates, progress=progress,
                                                    field=field)
        if readings_csv is not None:
            write_readings(readings_csv, readings, holdout, field)
    if not readings:
        raise ConfigError("no source could be measured: " + ("; ".join(errors[:3]) or "no sources"))
    chosen, rows, held_by = select_cues(readings, holdout, candidates)
    held, cal, per_unit = cross_validate(readings, holdout, chosen)
    cal = dataclasses.replace(cal, field=field)
    groups = sorted({r.group for r in readings})
    figures: dict[str, Any] = {}
    for key in [*candidates, "+".join(chosen)]:
        if key not in held_by:
            continue
        q = next(r["q"] for r in rows if r["cues"] == key)
        hs = held_by[key]
        figures[key] = {
            view: {g: group_figures([h for h in hs if h.group == g and (view == "all" or h.image.endswith("@1"))], q)
                   for g in groups}
            for view in ("native", "all")}
    report = {"candidates": list(candidates), "chosen": chosen, "criterion": "mean over hold-out units of the median "
              "relative mpp error on native images; the smaller cue set within 0.005 of the best",
              "scores": rows, "figures": figures, "holdout": holdout,
              "pooled_group_error": pooled_group_error(readings, per_unit, holdout), "unreadable": errors}
    cal.save(out, {"cv": report})
    return report


READING_COLUMNS = ["image", "group", "holdout", "true_magnification", "cue", "size_px", "n", "spread", "at_floor",
                   "field"]


def write_readings(path: str | Path, readings: Sequence[FieldReading], holdout: dict[str, str], field: int) -> None:
    """The field readings as CSV (atomically): one row per cue per field, with the field side."""
    from histomag.data.atomic import atomic_write_csv

    atomic_write_csv(Path(path), READING_COLUMNS, [
        {"image": r.image, "group": r.group, "holdout": holdout[r.group], "true_magnification": r.true_magnification,
         "cue": r.cue, "size_px": "" if r.size_px is None else r.size_px, "n": r.n, "spread": r.spread,
         "at_floor": int(r.at_floor), "field": field}
        for r in readings])


def read_readings(path: str | Path) -> tuple[list[FieldReading], dict[str, str], int]:
    """Field readings written by :func:`write_readings`: the readings, the hold-out unit of each
    group, and the field side they were measured at (768 when the file does not say)."""
    import csv

    readings, holdout, field = [], {}, 768
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            holdout[row["group"]] = row["holdout"]
            field = int(row.get("field") or 768)
            readings.append(FieldReading(row["image"], row["cue"], float(row["size_px"]) if row["size_px"] else None,
                                         int(row["n"]), float(row["spread"]), row["group"],
                                         float(row["true_magnification"]), row.get("at_floor") == "1"))
    return readings, holdout, field
