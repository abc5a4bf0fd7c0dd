"""Cut multi-magnification tuples from slides into a dataset folder (resumable, parallel).

One slide is one unit of work: a bad slide is reported and skipped while the others finish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import re
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from histomag.annotations import LabelMask, assign_label, load_geojson, load_label_mask
from histomag.data.atomic import atomic_write_csv, atomic_write_image
from histomag.data.folder import DatasetFolder, TileSettings, image_column, manifest_columns
from histomag.errors import DatasetError, HistomagError, StorageError, UnreadableSlideError
from histomag.progress import progress_bar
from histomag.slide import open_slide
from histomag.slide.base import Slide
from histomag.tiling.fields import (
    Field,
    TupleSpec,
    check_plan_size,
    check_spec_resolution,
    field_width_level0,
    make_tuple_spec,
    plan_fields,
    read_tuple,
)
from histomag.tissue import require_tissue, tissue_mask
from histomag.workers import exit_if_orphaned, watch_parent

log = logging.getLogger(__name__)

Reporter = Callable[[str, int], None]
#: threads that encode and write tuple images while the next fields are read
WRITER_THREADS = 2
#: tuples read but not yet on disk (bounds the memory held by the writer queue)
MAX_PENDING_TUPLES = 8
#: finished tuples journalled per append (one fsync each); a crash redoes at most this many more
JOURNAL_BATCH = 16
SLIDE_COLUMNS = ["slide_id", "path", "status", "tuples_written", "tuples_resumed", "fields_planned",
                 "fields_dropped", "fields_failed", "mpp", "mpp_source", "error"]
_TCGA_PATIENT = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", re.IGNORECASE)


@dataclass(frozen=True)
class SlideJob:
    """One slide to tile, with its optional resolution override, labels and patient."""

    path: str
    mpp: float | tuple[float, float] | None = None  # one value, or (mpp_x, mpp_y) for non-square pixels
    labels: str | None = None
    patient_id: str | None = None
    backend: str = "auto"
    label: str | None = None  # the class of the whole image (from an index CSV): every field takes it
    mpp_source: str | None = None  # where ``mpp`` came from ("index-csv", "mpp-csv", "estimated"; default "override")

    def source_of(self, slide: Slide) -> str:
        """The slide's ``mpp_source`` as recorded: this job's label for its override, else the slide's own."""
        return self.mpp_source if self.mpp is not None and self.mpp_source else slide.mpp_source


@dataclass
class SlideResult:
    """What happened to one slide."""

    slide_id: str
    path: str
    status: str  # "ok" or "failed"
    tuples_written: int = 0
    tuples_resumed: int = 0
    fields_planned: int = 0
    fields_dropped: int = 0
    mpp: float | None = None
    mpp_source: str = ""
    error: str = ""
    fields_failed: int = 0  # fields skipped because their image data could not be decoded
    field_errors: list[str] = field(default_factory=list)  # one line per skipped field (slide, coordinates)


def patient_id_for(slide_id: str) -> str:
    """A TCGA barcode's patient part (``TCGA-XX-XXXX``), else the slide id itself."""
    m = _TCGA_PATIENT.match(slide_id)
    return m.group(1).upper() if m else slide_id


def load_labels(path: str | Path, slide: Slide, tissue_mpp: float) -> LabelMask:
    """A label mask PNG (any downsample) or a QuPath GeoJSON rasterised at ``tissue_mpp``.

    Both are in the file's own pixels (as QuPath and image viewers show the file); on a slide whose
    pixels are not square the mask is mapped to the slide's square-pixel coordinates.
    """
    path = Path(path)
    file_dims = slide.level_dimensions[0]
    sx, sy = slide.pixel_scale
    if path.suffix.lower() in (".geojson", ".json"):
        downsample = max(1.0, tissue_mpp / 4 / slide.resolution.mpp)
        mask = load_geojson(path, file_dims, downsample=downsample)
    else:
        mask = load_label_mask(path, file_dims, slide_name=slide.path.name)
    if (sx, sy) == (1.0, 1.0):
        return mask
    return LabelMask(mask.labels, mask.class_names, (mask.downsample[0] * sx, mask.downsample[1] * sy))


def tile_slide(job: SlideJob, settings: TileSettings, out_dir: str | Path,
               report: Reporter | None = None, *, run_token: str | None = None) -> SlideResult:
    """Tile one slide; never raises for bad input (the error goes into the result).

    ``run_token`` (from :meth:`DatasetFolder.lock`) fences the journal off: once a newer run owns
    ``out_dir``, this slide stops before its next append.
    """
    from histomag.slide.base import slide_id_from_path

    sid = slide_id_from_path(Path(job.path))
    result = SlideResult(sid, str(job.path), "failed")
    try:
        with contextlib.ExitStack() as handles:  # the slide, and any handle reopened after a damaged tile
            slide = handles.enter_context(open_slide(job.path, mpp=job.mpp, backend=job.backend))  # type: ignore[arg-type]
            result.mpp, result.mpp_source = slide.mpp, job.source_of(slide)
            _tile_open_slide(slide, job, settings, DatasetFolder(Path(out_dir), run_token=run_token), result, report,
                             handles)
            result.status = "ok"
    except StorageError:
        raise  # a full or failing disk is no problem of this slide: the batch stops (finished tuples are kept)
    except HistomagError as exc:
        result.error = str(exc)
    return result


@dataclass(frozen=True)
class PlannedField:
    """A reference field that passed the tissue and label rules."""

    field: Field
    label: str  # "" when the slide has no labels (or the rule gave none and unlabelled are kept)
    fractions: dict[str, float]
    tissue_fraction: float


@dataclass(frozen=True)
class SlidePlan:
    """The tuples one slide yields under some tile settings."""

    spec: TupleSpec
    fields: list[PlannedField]
    dropped: int  # fields the label rule gave no class (and that were not kept)
    has_labels: bool
    field_width: float  # level-0 width of a reference field (0 when nothing lies on tissue)


def plan_slide(slide: Slide, job: SlideJob, settings: TileSettings, *, keep_unlabelled: bool = False,
               require_labels: bool = False) -> SlidePlan:
    """Tissue mask, labels and field placement of one slide: what both the tiler and the streaming dataset use.

    Every magnification is checked against the scan resolution, and the number of fields is
    bounded by the slide's size, before any tissue mask or field is made.

    Raises:
        MissingResolutionError: the slide has no usable resolution.
        UpsampleError: a magnification above the scan resolution without ``settings.allow_upsample``.
        ConfigError: the plan would hold more fields than the slide's size allows.
        NoTissueError: no tissue found.
        DatasetError: ``require_labels`` and the job has no label file.
    """
    spec: TupleSpec = make_tuple_spec(settings.magnifications, settings.size, settings.mode,  # type: ignore[arg-type]
                                      power_mpp=slide.power_mpp)
    slide.resolution  # raises MissingResolutionError before any work
    check_spec_resolution(slide, spec, allow_upsample=settings.allow_upsample)  # and UpsampleError
    width = field_width_level0(slide, spec.reference)
    check_plan_size(slide, width, placement=settings.placement,  # type: ignore[arg-type]
                    overlap=settings.overlap, n_random=settings.n_random)
    if width > min(slide.dimensions):  # not one field fits: no tuple (the caller names the image)
        return SlidePlan(spec, [], 0, bool(job.labels or job.label), 0.0)
    tissue = require_tissue(tissue_mask(slide, mpp=settings.tissue_mpp, threshold=settings.tissue_threshold),
                            slide.path.name)
    labels = load_labels(job.labels, slide, settings.tissue_mpp) if job.labels else None
    if require_labels and labels is None and not job.label:
        raise DatasetError(f"{slide.path.name}: no label file, so no labelled tuples; give labels "
                           "(<slide>.labels.png or GeoJSON) or predict without labels")
    fields = plan_fields(slide, spec, tissue, placement=settings.placement,  # type: ignore[arg-type]
                         overlap=settings.overlap, min_tissue=settings.min_tissue,
                         n_random=settings.n_random, seed=settings.seed)
    planned: list[PlannedField] = []
    dropped = 0
    for f in fields:
        fractions: dict[str, float] = {}
        label = ""
        if job.label:
            fractions, label = {job.label: 1.0}, job.label
        elif labels is not None:
            fractions = labels.fractions(f.left, f.top, f.width, f.width)
            chosen = assign_label(fractions, min_fraction=settings.label_fraction,
                                  negative_class=settings.negative_class)
            if chosen is None and not keep_unlabelled:
                dropped += 1
                continue
            label = chosen or ""
        planned.append(PlannedField(f, label, fractions, tissue.fraction(f.left, f.top, f.width, f.width)))
    if settings.max_tuples is not None:
        planned = planned[: settings.max_tuples]
    return SlidePlan(spec, planned, dropped, labels is not None or bool(job.label), fields[0].width if fields else 0.0)


def _tile_open_slide(slide: Slide, job: SlideJob, settings: TileSettings, folder: DatasetFolder,
                     result: SlideResult, report: Reporter | None, handles: contextlib.ExitStack) -> None:
    plan = plan_slide(slide, job, settings)
    spec = plan.spec
    sid = slide.slide_id
    columns = manifest_columns(spec.magnifications)
    done = {row["tuple_id"] for row in folder.read_part(sid, columns)}
    patient = job.patient_id or patient_id_for(sid)
    mpps = ";".join(f"{slide.to_resolution(magnification=m).mpp:.5g}" for m in spec.magnifications)
    result.fields_dropped = plan.dropped
    result.fields_planned = len(plan.fields)
    if report:
        report("planned", len(plan.fields))
    # Encoding overlaps reading: images are written by a small thread pool (the encoders release the
    # GIL), and a tuple's journal row is appended, in plan order, only once all its images are on disk;
    # the rows go in appends of JOURNAL_BATCH (one fsync per batch: per tuple it cost more than encoding
    # JPEGs). If anything raises, the rows still pending are never journalled (their images go on resume).
    pending: deque[tuple[dict, list[Future]]] = deque()

    journal: list[dict] = []  # rows of tuples whose images are on disk, not yet appended

    def flush() -> None:
        folder.append_parts(sid, columns, journal)
        result.tuples_written += len(journal)
        if report and journal:
            report("done", len(journal))
        journal.clear()

    def finish(entries: list[tuple[dict, list[Future]]], *, final: bool = False) -> None:
        try:
            for row, futures in entries:
                for fut in futures:
                    fut.result()  # a failed write raises here, before its row is journalled
                journal.append(row)
        except BaseException:
            flush()  # the tuples before a failed one are on disk: journal them all the same
            raise
        if final or len(journal) >= JOURNAL_BATCH:
            flush()

    def ready() -> list[tuple[dict, list[Future]]]:
        """Once the queue is full: its oldest tuple and the finished ones after it (a batch per fsync)."""
        if len(pending) <= MAX_PENDING_TUPLES:
            return []
        entries = [pending.popleft()]
        while pending and all(fut.done() for fut in pending[0][1]):
            entries.append(pending.popleft())
        return entries

    with ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="tile-writer") as writers:
        for planned in plan.fields:
            f, label, fractions = planned.field, planned.label, planned.fractions
            tuple_id = f"{sid}_{f.key}"
            if tuple_id in done:
                result.tuples_resumed += 1
                if report:
                    report("done", 1)
                continue
            try:
                images = read_tuple(slide, spec, f, allow_upsample=settings.allow_upsample)
            except UnreadableSlideError as exc:
                # damaged image data under this field: skip it, say where, and go on with a fresh handle
                # (OpenSlide's errors are sticky); a slide that is mostly unreadable fails as a whole
                result.fields_failed += 1
                result.field_errors.append(f"{slide.path.name}: field at x={int(round(f.x))}, y={int(round(f.y))} "
                                           f"(level-0 centre) skipped: {str(exc).split(': ', 1)[-1]}")
                if result.fields_failed > max(3, result.tuples_written + len(journal) + len(pending)):
                    raise
                slide = handles.enter_context(open_slide(job.path, mpp=job.mpp, backend=job.backend,  # type: ignore[arg-type]
                                                         probe=False))
                if report:
                    report("done", 1)
                continue
            row = {
                "tuple_id": tuple_id, "slide_id": sid, "patient_id": patient,
                "x": int(round(f.x)), "y": int(round(f.y)), "field_width": round(f.width, 3),
                "mode": spec.mode, "magnifications": ";".join(f"{m:g}" for m in spec.magnifications),
                "mpps": mpps, "label": label,
                "class_fractions": json.dumps({k: round(v, 4) for k, v in fractions.items()}, sort_keys=True),
                "tissue_fraction": round(planned.tissue_fraction, 4),
                "slide_mpp": f"{slide.mpp:.5g}", "mpp_source": job.source_of(slide),
            }
            futures = []
            for member, img in zip(spec.members, images):
                path = folder.image_path(sid, tuple_id, member.magnification, settings.image_suffix)
                futures.append(writers.submit(atomic_write_image, path, img, settings.image_format, settings.quality))
                row[image_column(member.magnification)] = path.relative_to(folder.root).as_posix()
            pending.append((row, futures))
            finish(ready())
        finish(list(pending), final=True)
        pending.clear()


def tile_slides(jobs: Sequence[SlideJob], settings: TileSettings, out_dir: str | Path, *,
                workers: int = 1, progress: bool = True, client: object | None = None) -> list[SlideResult]:
    """Tile several slides into one dataset folder, in ``workers`` processes with one progress bar.

    With ``client`` (a ``distributed.Client``, :func:`histomag.cluster.connect`) each slide is one
    task on that Dask cluster instead; its workers must see the slides and ``out_dir``.

    Returns one result per job (in job order); failed slides carry their one-line error. The
    manifest and ``slides.csv`` are rewritten at the end from the per-slide journals.

    Raises:
        FolderInUseError: another run is writing to ``out_dir``.
        ClusterError: some Dask worker cannot see ``out_dir`` or a slide.
        StorageError: the disk is full or failing; the batch stops at once, every journalled tuple is
            complete, no manifest is written, and the same call later resumes.
    """
    with DatasetFolder(Path(out_dir)).lock() as run_token:
        return _tile_slides_owned(jobs, settings, out_dir, workers=workers, progress=progress, run_token=run_token,
                                  client=client)


def _tile_slides_owned(jobs: Sequence[SlideJob], settings: TileSettings, out_dir: str | Path, *,
                       workers: int, progress: bool, run_token: str, client: object | None = None) -> list[SlideResult]:
    folder = DatasetFolder(Path(out_dir), run_token=run_token)
    folder.prepare(settings)
    results: list[SlideResult | None] = [None] * len(jobs)
    if client is not None:
        _tile_on_cluster(client, jobs, settings, folder.root, run_token, results, progress)
        return _finish(folder, settings, results)
    with progress_bar(progress) as bar:
        task = bar.add_task("tiling", total=None) if bar else None

        def on_report(kind: str, n: int) -> None:
            if bar is None:
                return
            if kind == "planned":
                total = bar.tasks[0].total or 0
                bar.update(task, total=total + n)
            else:
                bar.advance(task, n)

        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                results[i] = tile_slide(job, settings, out_dir, on_report, run_token=run_token)
        else:
            ctx = mp.get_context("spawn")
            # a plain queue handed over at start-up, not a Manager: its server process would outlive us
            q = ctx.Queue()
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(os.getpid(), q)) as pool:
                futures = {pool.submit(_tile_slide_queued, job, settings, str(out_dir), run_token): i
                           for i, job in enumerate(jobs)}
                pending = set(futures)
                try:
                    while pending:
                        _drain(q, on_report, timeout=0.2)
                        for fut in [f for f in pending if f.done()]:
                            pending.discard(fut)
                            results[futures[fut]] = fut.result()
                except StorageError:  # the disk is full for every slide: start no other
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                _drain(q, on_report, timeout=0.0)
            q.close()
    return _finish(folder, settings, results)


def _finish(folder: DatasetFolder, settings: TileSettings, results: Sequence[SlideResult | None]) -> list[SlideResult]:
    """The manifest from the journals of the slides that finished, and ``slides.csv`` for all."""
    final = [r for r in results if r is not None]
    slide_ids = [r.slide_id for r in final if r.status == "ok"]
    spec_columns = manifest_columns(settings.magnifications)
    folder.write_manifest(slide_ids, spec_columns)
    atomic_write_csv(folder.root / "slides.csv", SLIDE_COLUMNS, [r.__dict__ for r in final])
    return final


def _tile_on_cluster(client: object, jobs: Sequence[SlideJob], settings: TileSettings, root: Path, run_token: str,
                     results: list[SlideResult | None], progress: bool) -> None:
    """One Dask task per slide; a slide lost with its worker (twice) is a failed row, never a partial one."""
    from dataclasses import replace

    from histomag.cluster import check_shared, map_tasks
    from histomag.slide.base import slide_id_from_path

    # the workers' current folders are not ours: they get absolute paths
    remote = [replace(j, path=str(Path(j.path).resolve()), labels=str(Path(j.labels).resolve()) if j.labels else None)
              for j in jobs]
    check_shared(client, root, *(Path(j.path) for j in remote), *(Path(j.labels) for j in remote if j.labels))
    with progress_bar(progress) as bar:
        task = bar.add_task("tiling slides on the cluster", total=len(jobs)) if bar else None

        def done(i: int, result: SlideResult) -> None:
            result.path = jobs[i].path
            results[i] = result
            if bar:
                bar.advance(task, 1)

        def lost(i: int, reason: str) -> None:
            name = Path(jobs[i].path).name
            results[i] = SlideResult(slide_id_from_path(Path(jobs[i].path)), jobs[i].path, "failed",
                                     error=f"{name}: lost on the Dask cluster after retries ({reason}); its finished "
                                           "tuples are kept: re-run the same command to finish it")
            if bar:
                bar.advance(task, 1)

        map_tasks(client, _tile_slide_remote, [(job, settings, str(root), run_token) for job in remote],
                  on_done=done, on_lost=lost)


def _tile_slide_remote(job: SlideJob, settings: TileSettings, out_dir: str, run_token: str) -> SlideResult:
    """A Dask task: one slide (its journal fenced by the submitting run's token, like a pool worker's)."""
    return tile_slide(job, settings, out_dir, run_token=run_token)


_worker_queue = None  # the progress queue of a pool worker (set by _init_worker)


def _init_worker(parent_pid: int, q) -> None:
    """Pool initializer: the worker dies with the run's main process and reports progress on ``q``."""
    global _worker_queue
    _worker_queue = q
    watch_parent(parent_pid)


def _tile_slide_queued(job: SlideJob, settings: TileSettings, out_dir: str, run_token: str) -> SlideResult:
    def report(kind: str, n: int) -> None:
        exit_if_orphaned()  # between tuples: a worker whose run is gone stops here
        _worker_queue.put((kind, n))  # type: ignore[union-attr]

    return tile_slide(job, settings, out_dir, report, run_token=run_token)


def _drain(q, on_report: Reporter, timeout: float) -> None:
    try:
        kind, n = q.get(timeout=timeout) if timeout else q.get_nowait()
        on_report(kind, n)
        while True:
            kind, n = q.get_nowait()
            on_report(kind, n)
    except (queue.Empty, EOFError):
        pass

