"""Cohort resolution audit: for every slide or image, the resolution its metadata states, the one its pixels show, and a verdict.

Verdicts: ``ok`` (metadata inside the estimate's calibrated interval), ``likely wrong`` (outside it),
``missing`` (no usable resolution in the metadata), ``error`` (the file could not be read or shows
no tissue; the others go on). Results go to ``DIR/audit.csv`` and a self-contained ``DIR/audit.html``
with a thumbnail per file (rendered by :mod:`histomag.report.audit`, one floor up).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histomag.data.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_text
from histomag.errors import HistomagError
from histomag.magnification.estimate import verdict, verdict_text
from histomag.progress import progress_bar

AUDIT_COLUMNS = ["path", "verdict", "message", "evidence", "metadata_mpp", "metadata_magnification", "mpp_source", "estimated_mpp",
                 "mpp_low", "mpp_high", "estimated_magnification", "objective", "objective_p", "interval_level",
                 "n_crops", "caveat", "error"]
THUMB_SIDE = 160
#: what makes audit shards, in API terms: one audit_files call per shard, into the folder start_shard returns
AUDIT_SHARDS_API = "histomag.data.shards.start_shard + histomag.magnification.audit.audit_files"
THUMBS_DIR = "thumbs"
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


def audit_one(path: Path, estimator: Any, n_crops: int = 32,
              evidence: Callable[[Any], bytes] | None = None) -> tuple[dict[str, Any], bytes | None]:
    """Audit one file; a bad file gives a row with ``verdict`` ``error`` and the one-line reason.

    ``evidence``: renders the rulers' evidence (what they measured) as PNG bytes, kept in the row
    under ``_evidence`` for :func:`audit_files` to write (estimators without evidence: ignored).
    """
    from histomag.slide import open_slide

    row: dict[str, Any] = {"path": str(path), "verdict": "error"}
    thumb = None
    try:
        with open_slide(path) as slide:
            thumb = _thumbnail(slide)
            meta_mpp = slide.mpp if slide.mpp_source not in ("missing",) and slide.mpp else None
            row.update(metadata_mpp=round(meta_mpp, 5) if meta_mpp else "", mpp_source=slide.mpp_source,
                       metadata_magnification=round(10.0 / meta_mpp, 3) if meta_mpp else "")
            if evidence is not None and hasattr(estimator, "evidence"):
                ev = estimator.evidence(slide)
                est = ev.estimate
                row["_evidence"] = evidence(ev)
            else:
                est = estimator.estimate_slide(slide, n_crops)
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
                evidence: Callable[[Any], bytes] | None = None) -> list[dict[str, Any]]:
    """Audit every file and write ``audit.csv`` (and ``audit.html`` with ``render``) into ``out_dir``; returns the rows.

    ``render``: ``(rows, thumbnails, model name) -> HTML``, e.g. :func:`histomag.report.audit.render_audit`.

    ``keep_thumbs``: also keep each row's thumbnail as ``thumbs/NNNNNN.png`` (for a shard's merge).

    ``evidence``: also write what the rulers measured per file as ``evidence/NNNNNN.png`` (named in
    the row's ``evidence`` column), e.g. :func:`histomag.report.evidence.evidence_png`; files run
    here only (not with ``client``).

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
                done(i, audit_one(Path(p), estimator, n_crops, evidence))
        else:
            from histomag.cluster import check_shared, map_tasks

            remote = [str(Path(p).resolve()) for p in paths]
            check_shared(client, *map(Path, remote), *([checkpoint] if checkpoint else []))
            ckpt = str(Path(checkpoint).resolve()) if checkpoint else None
            map_tasks(client, _audit_remote, [(p, ckpt, n_crops) for p in remote], on_done=done,
                      on_lost=lambda i, reason: done(i, ({"path": str(paths[i]), "verdict": "error", "error":
                                                          f"{Path(paths[i]).name}: lost on the Dask cluster after "
                                                          f"retries ({reason}); re-run to audit it"}, None)))
    rows = [o[0] for o in outcomes if o is not None]
    thumbs = [o[1] for o in outcomes if o is not None]
    for i, row in enumerate(rows):
        png = row.pop("_evidence", None)
        if png is not None:
            row["evidence"] = f"evidence/{i:06d}.png"
            atomic_write_bytes(out_dir / row["evidence"], png)
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
    entries: list[tuple[dict[str, Any], bytes | None]] = []
    for folder in finished:
        with open(folder / "audit.csv", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                thumb = folder / THUMBS_DIR / f"{i:06d}.png"
                entries.append((_typed(row), thumb.read_bytes() if thumb.is_file() else None))
    position = {p: i for i, p in enumerate(batch)}
    entries.sort(key=lambda e: position.get(e[0]["path"], len(position)))
    rows, thumbs = [e[0] for e in entries], [e[1] for e in entries]
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


def _audit_remote(path: str, checkpoint: str | None, n_crops: int) -> tuple[dict[str, Any], bytes | None]:
    """A Dask task: one file, with the model loaded once per worker process."""
    from histomag.cluster import held_by_worker
    from histomag.magnification.infer import load_estimator

    estimator = held_by_worker("magnification model", checkpoint,
                               lambda: load_estimator(Path(checkpoint) if checkpoint else None))
    return audit_one(Path(path), estimator, n_crops)
