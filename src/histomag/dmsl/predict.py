"""Image-level DMSL prediction: every image is tiled on the fly and its tuples' probabilities averaged.

For plain images (snapshots, tiles, an index CSV of them) rather than whole slides: one row per
image in ``images.csv`` (``image``, ``predicted``, one ``prob_<class>`` column per class, the mean
over the image's tuples, ``n_tuples``, and ``label``/``mpp``/``error`` columns) and one row per
tuple in ``tuples.csv``. An image that cannot be read, has no usable resolution or gives no tuple
is reported in its row; the others go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from histomag.data.atomic import atomic_write_csv
from histomag.errors import HistomagError, UpsampleError
from histomag.progress import progress_bar


@dataclass
class ImageResult:
    """What one image gave."""

    image: str
    label: str = ""
    mpp: float | None = None
    probs: np.ndarray | None = None  # mean over tuples
    n_tuples: int = 0
    error: str = ""


@dataclass
class ImagePredictions:
    """Outcome of :func:`predict_images`."""

    class_names: list[str]
    images: list[ImageResult] = field(default_factory=list)
    images_csv: Path | None = None
    tuples_csv: Path | None = None

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.error]

    def accuracy(self) -> tuple[float, int] | None:
        """Share of predicted images whose ``label`` (when given) is the predicted class, and how many counted."""
        scored = [r for r in self.images if r.probs is not None and r.label in self.class_names]
        if not scored:
            return None
        hits = sum(self.class_names[int(np.argmax(r.probs))] == r.label for r in scored)  # type: ignore[arg-type]
        return hits / len(scored), len(scored)


def predict_images(run_dir: str | Path, jobs: Sequence, out_dir: str | Path, *, fold: int | None = None,
                   batch_size: int | None = None, num_workers: int = 0, progress: bool = False,
                   failed: dict[str, str] | None = None, client: object | None = None) -> ImagePredictions:
    """Predict the class of every image with a DMSL run (the mean of its folds' models, or one fold).

    Args:
        run_dir: a run folder made by ``histomag dmsl train`` (any number of folds).
        jobs: :class:`~histomag.tiling.jobs.SlideJob` per image (path, optional mpp override and label).
        out_dir: where ``images.csv`` and ``tuples.csv`` are written (atomically).
        fold: use only this fold's model.
        batch_size, num_workers: DataLoader settings (default: the run's batch size).
        progress: one progress bar over the images.
        failed: image path -> the one-line error that already stopped it (e.g. an estimate too
            uncertain to use); such images are reported in their row and not read.
        client: a ``distributed.Client``: one task per image on that Dask cluster (its workers
            must see the run folder and the images).

    Raises:
        CheckpointError: not a DMSL run folder, or a fold without a checkpoint.
        UpsampleError: no image is scanned finely enough for the model's magnifications (one line,
            naming both), so nothing could be predicted.
    """
    loaded = _load_run(run_dir, fold)
    names = loaded.names
    result = ImagePredictions(list(names))
    outcomes: list[tuple[ImageResult, list[list], bool] | None] = [None] * len(jobs)
    with progress_bar(progress) as bar:
        task = bar.add_task("predicting images", total=len(jobs)) if bar else None

        def done(i: int, outcome: tuple[ImageResult, list[list], bool]) -> None:
            outcomes[i] = outcome
            if bar:
                bar.advance(task, 1)  # type: ignore[arg-type]

        todo = []
        for i, job in enumerate(jobs):
            if failed and str(job.path) in failed:  # stopped already: reported in its row, not read
                done(i, (ImageResult(str(job.path), label=job.label or "", error=failed[str(job.path)]), [], False))
            else:
                todo.append(i)
        if client is None:
            for i in todo:
                done(i, _predict_job(loaded, jobs[i], batch_size, num_workers))
        else:
            from histomag.cluster import check_shared, map_tasks

            run_abs = str(Path(run_dir).resolve())
            remote = [replace(jobs[i], path=str(Path(jobs[i].path).resolve())) for i in todo]
            check_shared(client, Path(run_abs), *(Path(j.path) for j in remote))

            def back(k: int, outcome: tuple[ImageResult, list[list], bool]) -> None:
                i = todo[k]
                res, rows, up = outcome
                res.image = str(jobs[i].path)
                done(i, (res, [[res.image, *r[1:]] for r in rows], up))

            def lost(k: int, reason: str) -> None:
                i = todo[k]
                done(i, (ImageResult(str(jobs[i].path), label=jobs[i].label or "",
                                     error=f"{Path(jobs[i].path).name}: lost on the Dask cluster after retries "
                                           f"({reason}); re-run to predict it"), [], False))

            map_tasks(client, _predict_job_remote, [(run_abs, fold, job, batch_size) for job in remote],
                      on_done=back, on_lost=lost)
    tuple_rows: list[list] = []
    upsample = []
    for res, rows, up in (o for o in outcomes if o is not None):
        result.images.append(res)
        tuple_rows.extend(rows)
        if up:
            upsample.append(res.error)
    if upsample and len(upsample) == len(jobs):
        raise UpsampleError(upsample[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prob_cols = [f"prob_{c}" for c in names]
    result.images_csv, result.tuples_csv = out / "images.csv", out / "tuples.csv"
    atomic_write_csv(result.tuples_csv, ["image", "tuple_id", "x", "y", "predicted", *prob_cols], tuple_rows)
    atomic_write_csv(result.images_csv, ["image", "predicted", *prob_cols, "n_tuples", "label", "mpp", "error"], [
        [r.image, names[int(np.argmax(r.probs))] if r.probs is not None else "",
         *((f"{v:.6g}" for v in r.probs) if r.probs is not None else [""] * len(names)),
         r.n_tuples, r.label, f"{r.mpp:.5g}" if r.mpp else "", r.error] for r in result.images])
    return result


@dataclass
class _LoadedRun:
    """A DMSL run ready to predict: its models, tile settings, transform and class names."""

    config: object
    models: list
    settings: object
    transform: object
    names: list[str]


def _load_run(run_dir: str | Path, fold: int | None) -> _LoadedRun:
    from histomag.data.tuples import tuple_transform
    from histomag.dmsl.cv import grid_tile_settings, load_fold_models, read_run

    run = read_run(run_dir)
    models = load_fold_models(run, fold)
    return _LoadedRun(run.config, models, grid_tile_settings(run),
                      tuple_transform(models[0].input_mean, models[0].input_std, train=False), list(run.class_names))


def _predict_job(loaded: _LoadedRun, job, batch_size: int | None,
                 num_workers: int) -> tuple[ImageResult, list[list], bool]:
    """One image: its result, its ``tuples.csv`` rows, and whether it failed for want of resolution."""
    from histomag.data.tuples import SlideTupleDataset

    res = ImageResult(str(job.path), label=job.label or "")
    try:
        data = SlideTupleDataset([job], loaded.settings, magnifications=loaded.config.magnifications,  # type: ignore[attr-defined]
                                 classes=loaded.names, labelled_only=False, transform=loaded.transform)
        rows = _predict_image(data, res, loaded.models, loaded.names,
                              batch_size or loaded.config.batch_size, num_workers)  # type: ignore[attr-defined]
    except UpsampleError as exc:
        res.error = str(exc)
        return res, [], True
    except HistomagError as exc:
        res.error = str(exc)
        return res, [], False
    return res, rows, False


def _predict_job_remote(run_dir: str, fold: int | None, job, batch_size: int | None
                        ) -> tuple[ImageResult, list[list], bool]:
    """A Dask task: one image, with the run loaded once per worker process."""
    from histomag.cluster import held_by_worker

    loaded = held_by_worker("dmsl run", (run_dir, fold), lambda: _load_run(run_dir, fold))
    return _predict_job(loaded, job, batch_size, 0)


def _predict_image(data, res: ImageResult, models: list, names: list[str], batch_size: int,
                   num_workers: int) -> list[list]:
    """Predict one image's tuples into ``res``; return its ``tuples.csv`` rows (closes the dataset)."""
    from histomag.dmsl.fit import predict_probs

    with contextlib.closing(data):
        res.mpp = data.slide_mpps[0]
        if len(data) == 0:
            res.error = (f"{Path(res.image).name}: no tuple (smaller than one field of the model's tile settings, "
                         "or too little tissue per field)")
            return []
        probs = predict_probs(models, data, batch_size=batch_size, num_workers=num_workers)
    res.probs, res.n_tuples = probs.mean(axis=0), len(probs)
    return [[res.image, r.tuple_id, round(r.x), round(r.y), names[int(np.argmax(p))], *(f"{v:.6g}" for v in p)]
            for r, p in zip(data.records, probs)]
