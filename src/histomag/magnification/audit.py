"""Cohort resolution audit: for every slide or image, the resolution its metadata states, the one its pixels show, and a verdict.

Verdicts: ``ok`` (metadata inside the estimate's calibrated interval), ``likely wrong`` (outside it),
``missing`` (no usable resolution in the metadata), ``error`` (the file could not be read or shows
no tissue; the others go on). Results go to ``DIR/audit.csv`` and a self-contained ``DIR/audit.html``
with a thumbnail per file (rendered by :mod:`histomag.report.audit`, one floor up).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histomag.data.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_text
from histomag.errors import HistomagError
from histomag.magnification.estimate import verdict, verdict_text
from histomag.progress import progress_bar

AUDIT_COLUMNS = ["path", "verdict", "message", "evidence", "overlay", "metadata_mpp", "metadata_magnification", "mpp_source", "estimated_mpp",
                 "mpp_low", "mpp_high", "estimated_magnification", "objective", "objective_p", "interval_level",
                 "n_crops", "caveat", "error"]
THUMB_SIDE = 160
#: what makes audit shards, in API terms: one audit_files call per shard, into the folder start_shard returns
AUDIT_SHARDS_API = "histomag.data.shards.start_shard + histomag.magnification.audit.audit_files"
THUMBS_DIR = "thumbs"
#: per-file pictures an audit may write, by ``audit.csv`` column: the folder they go in (named in the column)
PICTURE_DIRS = {"evidence": "evidence", "overlay": "overlays"}
#: width (px) of a file's overlay: its thumbnail with the tissue mask and the fields measured
OVERLAY_WIDTH = 800
TISSUE_COLOUR, FIELD_COLOUR = (44, 160, 44), (214, 39, 40)
#: renders the audit page: (rows, thumbnails, model name) -> HTML
Render = Callable[[Sequence[dict[str, Any]], Sequence[bytes | None], str], str]


def _thumbnail(slide: Any) -> bytes | None:
    from PIL import Image

    try:
        rgb, _ = slide.read_overview(max_side=THUMB_SIDE * 2)
        im = Image.fromarray(np.asarray(rgb)[..., :3])
        im.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - a thumbnail is decoration; never fail the audit row for it
        return None


def tissue_overlay(slide: Any, mask: Any, boxes: Sequence[tuple[float, float, float, float]], mpp: float, *,
                   resolution_source: str, width: int = OVERLAY_WIDTH) -> bytes:
    """A file's overview (at most ``width`` px) with its tissue mask tinted, the fields an estimate measured outlined, a key and a
    scale bar (at ``mpp``, named by ``resolution_source``), as PNG bytes.

    Args:
        slide: an open slide or image.
        mask: its :class:`~histomag.tissue.TissueMask`.
        boxes: level-0 ``(left, top, width, height)`` of the fields measured (may be empty).
        mpp: the resolution the scale bar is drawn at (level 0, µm/px).
        resolution_source: where ``mpp`` comes from, for the key (e.g. ``"estimated"``).
    """
    from PIL import Image

    from histomag.resolution import Resolution
    from histomag.tiling.overlay import add_key, outline_boxes, png_bytes, scale_bar, tint_boxes

    overview, (dx, dy) = slide.read_overview(max_side=width)  # needs no resolution (the audit's files may lack one)
    rgb = np.ascontiguousarray(np.asarray(overview)[..., :3])
    h, w = rgb.shape[:2]
    tissue = np.asarray(Image.fromarray(np.asarray(mask.mask, dtype=np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    rgb = tint_boxes(rgb, [(0.0, 0.0, float(w), float(h))], [TISSUE_COLOUR], [0.35], mask=tissue)
    rgb = outline_boxes(rgb, [(x / dx, y / dy, bw / dx, bh / dy) for x, y, bw, bh in boxes], FIELD_COLOUR,
                        line=max(1, w // 400))
    entries = [("tissue", TISSUE_COLOUR), (f"fields measured ({len(boxes)})", FIELD_COLOUR)]
    scale = scale_bar(Resolution.from_mpp(mpp).coarser(dx), w / 4)
    out, _ = add_key(rgb, entries, scale, title=Path(str(getattr(slide, "path", "image"))).name,
                     note=f"scale bar at the {resolution_source} resolution, {mpp:.4g} µm/px")
    return png_bytes(out)


def _overlay(slide: Any, estimator: Any, max_fields: int, est: Any, meta_mpp: float | None) -> bytes | None:
    """:func:`tissue_overlay` of the fields ``estimator`` measures (rulers), or of the tissue alone."""
    from histomag.magnification.estimate import slide_tissue_mask

    mask = slide_tissue_mask(slide)
    boxes = estimator.field_boxes_slide(slide, mask, max_fields) if hasattr(estimator, "field_boxes_slide") else []
    mpp, source = (est.mpp, "estimated") if est is not None else (meta_mpp, "stated")
    if not mpp:
        return None
    return tissue_overlay(slide, mask, boxes, mpp, resolution_source=source)


def audit_one(path: Path, estimator: Any, n_crops: int = 32,
              evidence: Callable[[Any], bytes] | None = None,
              overlay: bool = False) -> tuple[dict[str, Any], bytes | None]:
    """Audit one file; a bad file gives a row with ``verdict`` ``error`` and the one-line reason.

    ``evidence``: renders the rulers' evidence (what they measured) as PNG bytes, kept in the row
    under ``_evidence`` for :func:`audit_files` to write (estimators without evidence: ignored).

    ``overlay``: also draw the file's :func:`tissue_overlay` (tissue mask, the fields the estimate
    measured), kept in the row under ``_overlay``; files without an estimate or a stated resolution
    get none.
    """
    from histomag.magnification.rulers.estimator import MAX_FIELDS_SLIDE
    from histomag.slide import open_slide

    row: dict[str, Any] = {"path": str(path), "verdict": "error"}
    thumb = None
    try:
        with open_slide(path) as slide:
            thumb = _thumbnail(slide)
            meta_mpp = slide.mpp if slide.mpp_source not in ("missing",) and slide.mpp else None
            row.update(metadata_mpp=round(meta_mpp, 5) if meta_mpp else "", mpp_source=slide.mpp_source,
                       metadata_magnification=round(10.0 / meta_mpp, 3) if meta_mpp else "")
            est = None
            try:
                if evidence is not None and hasattr(estimator, "evidence"):
                    ev = estimator.evidence(slide)
                    est = ev.estimate
                    row["_evidence"] = evidence(ev)
                    fields = MAX_FIELDS_SLIDE  # as the evidence measures
                else:
                    est = estimator.estimate_slide(slide, n_crops)
                    fields = n_crops or MAX_FIELDS_SLIDE
            finally:
                if overlay:
                    try:
                        row["_overlay"] = _overlay(slide, estimator, fields if est is not None else n_crops, est,
                                                   meta_mpp)
                    except (HistomagError, OSError, ValueError):  # nothing to outline: the row says why already
                        pass
        lo, hi = est.mpp_interval if est.mpp_interval else ("", "")
        best = est.most_likely_objective
        row.update(verdict=verdict(meta_mpp, est), message=verdict_text(meta_mpp, est), estimated_mpp=round(est.mpp, 5),
                   objective=best if best is not None else "",
                   objective_p=round(est.objectives[best], 4) if best is not None and est.objectives else "",
                   mpp_low=round(lo, 5) if lo != "" else "", mpp_high=round(hi, 5) if hi != "" else "",
                   estimated_magnification=round(est.magnification, 3),
                   interval_level=est.level if est.interval else "", n_crops=est.n_crops, caveat=est.caveat or "")
    except HistomagError as exc:
        row["error"] = str(exc)
    return row, thumb


def audit_files(paths: Sequence[Path], estimator: Any, out_dir: str | Path, *, n_crops: int = 32,
                progress: bool = True, client: Any = None, checkpoint: Path | None = None,
                keep_thumbs: bool = False, render: Render | None = None,
                evidence: Callable[[Any], bytes] | None = None, overlays: bool = False) -> list[dict[str, Any]]:
    """Audit every file and write ``audit.csv`` (and ``audit.html`` with ``render``) into ``out_dir``; returns the rows.

    ``render``: ``(rows, thumbnails, model name) -> HTML``, e.g. :func:`histomag.report.audit.render_audit`.

    ``keep_thumbs``: also keep each row's thumbnail as ``thumbs/NNNNNN.png`` (for a shard's merge).

    ``evidence``: also write what the rulers measured per file as ``evidence/NNNNNN.png`` (named in
    the row's ``evidence`` column), e.g. :func:`histomag.report.evidence.evidence_png`; files run
    here only (not with ``client``).

    ``overlays``: also write each file's :func:`tissue_overlay` (its tissue mask and the fields the
    estimate measured) as ``overlays/NNNNNN.png``, named in the row's ``overlay`` column.

    With ``client`` (a ``distributed.Client``) each file is one task on that Dask cluster, whose
    workers load the magnification model from ``checkpoint`` (default: the shipped one) once each.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[tuple[dict[str, Any], bytes | None] | None] = [None] * len(paths)
    with progress_bar(progress) as bar:
        task = bar.add_task("auditing resolutions", total=len(paths)) if bar else None

        def done(i: int, outcome: tuple[dict[str, Any], bytes | None]) -> None:
            outcome[0]["path"] = str(paths[i])
            outcomes[i] = outcome
            if bar:
                bar.advance(task, 1)

        if client is None:
            for i, p in enumerate(paths):
                done(i, audit_one(Path(p), estimator, n_crops, evidence, overlays))
        else:
            from histomag.cluster import check_shared, map_tasks

            remote = [str(Path(p).resolve()) for p in paths]
            check_shared(client, *map(Path, remote), *([checkpoint] if checkpoint else []))
            ckpt = str(Path(checkpoint).resolve()) if checkpoint else None
            map_tasks(client, _audit_remote, [(p, ckpt, n_crops, overlays) for p in remote], on_done=done,
                      on_lost=lambda i, reason: done(i, ({"path": str(paths[i]), "verdict": "error", "error":
                                                          f"{Path(paths[i]).name}: lost on the Dask cluster after "
                                                          f"retries ({reason}); re-run to audit it"}, None)))
    rows = [o[0] for o in outcomes if o is not None]
    thumbs = [o[1] for o in outcomes if o is not None]
    for i, row in enumerate(rows):
        for column, folder in PICTURE_DIRS.items():
            png = row.pop(f"_{column}", None)
            if png is not None:
                row[column] = f"{folder}/{i:06d}.png"
                atomic_write_bytes(out_dir / row[column], png)
    if keep_thumbs:  # a shard: its thumbnails go into the merged page later
        for i, thumb in enumerate(thumbs):
            if thumb:
                atomic_write_bytes(out_dir / THUMBS_DIR / f"{i:06d}.png", thumb)
    atomic_write_csv(out_dir / "audit.csv", AUDIT_COLUMNS, rows)
    if render is not None:
        atomic_write_text(out_dir / "audit.html", render(rows, thumbs, estimator.source))
    return rows


def merge_audit_shards(root: str | Path, *, partial: bool = False, render: Render | None = None) -> list[dict[str, Any]]:
    """Join an audit's shards into ``root/audit.csv`` (and ``root/audit.html`` with ``render``), in batch order.

    Raises:
        DatasetError: as :func:`histomag.data.shards.finished_shards`.
    """
    from histomag.data.shards import finished_shards, remove_shards

    root = Path(root)
    finished, infos, batch = finished_shards(root, done="audit.csv", partial=partial, make=AUDIT_SHARDS_API)
    entries: list[tuple[dict[str, Any], bytes | None, Path]] = []
    for folder in finished:
        with open(folder / "audit.csv", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                thumb = folder / THUMBS_DIR / f"{i:06d}.png"
                entries.append((_typed(row), thumb.read_bytes() if thumb.is_file() else None, folder))
    position = {p: i for i, p in enumerate(batch)}
    entries.sort(key=lambda e: position.get(e[0]["path"], len(position)))
    rows, thumbs = [e[0] for e in entries], [e[1] for e in entries]
    for i, (row, _, folder) in enumerate(entries):  # a shard's pictures move in, renumbered in batch order
        for column, pictures in PICTURE_DIRS.items():
            source = folder / str(row.get(column) or "")
            if row.get(column) and source.is_file():
                row[column] = f"{pictures}/{i:06d}.png"
                (root / pictures).mkdir(parents=True, exist_ok=True)
                os.replace(source, root / row[column])
            elif row.get(column):
                row[column] = ""  # named but gone: no dead link
    atomic_write_csv(root / "audit.csv", AUDIT_COLUMNS, rows)
    if render is not None:
        atomic_write_text(root / "audit.html", render(rows, thumbs, str(infos[0].get("model", "magnification model"))))
    remove_shards(root, finished)
    return rows


def _typed(row: dict[str, str]) -> dict[str, Any]:
    """An ``audit.csv`` row read back, its numbers as numbers (as the HTML renderer takes them)."""
    out: dict[str, Any] = dict(row)
    for key in ("metadata_mpp", "metadata_magnification", "estimated_mpp", "mpp_low", "mpp_high",
                "estimated_magnification", "objective", "objective_p"):
        if out.get(key) not in ("", None):
            out[key] = float(out[key])
    return out


def _audit_remote(path: str, checkpoint: str | None, n_crops: int,
                  overlay: bool = False) -> tuple[dict[str, Any], bytes | None]:
    """A Dask task: one file, with the model loaded once per worker process."""
    from histomag.cluster import held_by_worker
    from histomag.magnification.infer import load_estimator

    estimator = held_by_worker("magnification model", checkpoint,
                               lambda: load_estimator(Path(checkpoint) if checkpoint else None))
    return audit_one(Path(path), estimator, n_crops, overlay=overlay)
