"""Patient-grouped k-fold cross-validation of DMSL, written to a run folder (:class:`~histomag.dmsl.runfolder.RunFolder`
owns its layout).

No patient is in two of train / val / test of a fold. Validation patients (for early stopping and
the best checkpoint) are carved out of the fold's training patients.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histomag.data.atomic import atomic_write_csv, atomic_write_json, atomic_write_text
from histomag.data.folder import patient_of
from histomag.data.tuples import (
    SLIDE_SOURCE_FILE,
    SlideSource,
    SlideTupleDataset,
    TupleDataset,
    class_names_of,
    open_tuples,
    tuple_transform,
)
from histomag.errors import CheckpointError, ConfigError, DatasetError
from histomag.dmsl.runfolder import DMSL_RESUME_HINT, DMSL_TRAIN_HINT, RunFolder, SeedRuns
from histomag.dmsl.metrics import (
    METRICS,
    evaluate_predictions,
    markdown_table,
    metrics_csv_rows,
    summarise,
    table_rows,
)
from histomag.dmsl.config import RUNTIME_FIELDS, DMSLConfig
from histomag.fitloop import launched_rank_zero
from histomag.dmsl.fit import (
    check_backbone,
    fit_fold,
    load_task,
    predict_probs,
)

log = logging.getLogger(__name__)

TUPLE_LAYOUTS = {"context": "same centre and pixel size, growing field of view",
                 "same-fov": "the same tissue at every magnification"}
#: decoded training images kept in memory per process (a DataLoader worker keeps its own)
TRAIN_CACHE_MB = 1024


# ----- splits -----------------------------------------------------------------------------------
def patient_folds(labels: Sequence[Any], patients: Sequence[str], n_folds: int, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_index, test_index)`` per fold, grouped by patient and stratified by label.

    Raises:
        ConfigError: fewer patients than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray([str(p) for p in patients])
    n_patients = len(set(groups.tolist()))
    if n_patients < n_folds:
        raise ConfigError(f"only {n_patients} patient(s) for {n_folds} folds: use folds={max(2, n_patients)} "
                          "or fewer, or tile more patients")
    y = np.asarray([str(v) for v in labels])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" notes; we warn per fold
        return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


def warn_thin_classes(labels: Sequence[Any], patients: Sequence[str]) -> list[str]:
    """Warn about (and return) classes found in fewer than two patients/groups: no fold can both train and test them."""
    seen: dict[str, set[str]] = {}
    for lab, pat in zip(labels, patients):
        seen.setdefault(str(lab), set()).add(str(pat))
    thin = sorted(c for c, pats in seen.items() if len(pats) < 2)
    if thin:
        warnings.warn(f"class(es) {', '.join(thin)} appear in fewer than 2 patients/groups: the folds that test them "
                      "cannot train on them (each fold names what it lacks); tile more patients of those classes",
                      UserWarning, stacklevel=3)
    return thin


def run_splits(labels: Sequence[Any], patients: Sequence[str], n_folds: int, seed: int = 0
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds of a run: :func:`patient_folds`, or for ``n_folds == 1`` everything in training (no test).

    Raises:
        ConfigError: fewer patients than folds; for one fold, fewer than two patients (some must
            be held out for validation).
    """
    if n_folds > 1:
        return patient_folds(labels, patients, n_folds, seed)
    if len(set(map(str, patients))) < 2:
        raise ConfigError("one final model needs at least two patients/groups, to hold some out for validation and "
                          "early stopping; tile more patients or give a group column")
    return [(np.arange(len(labels)), np.zeros(0, dtype=int))]


def carve_validation(labels: Sequence[Any], patients: Sequence[str], fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split training tuples into ``(train_index, val_index)`` by patient (~``fraction`` of them).

    With fewer than two patients there is nothing to hold out: every tuple trains and
    ``val_index`` is empty (a warning says so).
    """
    n_patients = len(set(str(p) for p in patients))
    if n_patients < 2:
        warnings.warn(f"only {n_patients} training patient(s): no validation patients, early stopping "
                      "follows the training loss", UserWarning, stacklevel=2)
        return np.arange(len(labels)), np.zeros(0, dtype=int)
    n_splits = min(n_patients, max(2, int(round(1.0 / fraction))))
    train, val = patient_folds(labels, patients, n_splits, seed)[0]
    return train, val


def subsample(labels: Sequence[Any], fraction: float, seed: int = 0) -> np.ndarray:
    """Seeded, class-stratified choice of ``round(fraction * n)`` indices (at least one per class)."""
    labels = np.asarray([str(v) for v in labels])
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.extend(rng.choice(idx, size=k, replace=False).tolist())
    return np.array(sorted(keep), dtype=int)


def cap_per_slide(rows: Sequence[dict], max_tuples: int | None, seed: int = 0) -> list[dict]:
    """At most ``max_tuples`` rows per slide (seeded choice, manifest order kept)."""
    if max_tuples is None:
        return list(rows)
    rng = np.random.default_rng(seed)
    by_slide: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_slide.setdefault(r.get("slide_id", ""), []).append(i)
    keep: set[int] = set()
    for idx in by_slide.values():
        keep.update(idx if len(idx) <= max_tuples else rng.choice(idx, size=max_tuples, replace=False).tolist())
    return [r for i, r in enumerate(rows) if i in keep]


# ----- run folder -------------------------------------------------------------------------------
def read_run(run_dir: str | Path) -> RunFolder:
    """A run folder with its config read, checked and typed (:attr:`RunFolder.config` is a :class:`DMSLConfig`).

    Raises:
        CheckpointError: no readable ``config.json``, a run of another model type or of a newer
            schema version.
    """
    run = RunFolder(run_dir).load()
    run.config  # noqa: B018 - typed (and validated) now, as before
    return run


def _check_resume(run_dir: Path, config: DMSLConfig, data_dir: Path) -> None:
    old = read_run(run_dir)
    new, before = config.to_dict(), old.config.to_dict()
    diffs = [f"{k}={before[k]!r} (now {new[k]!r})" for k in new if k not in RUNTIME_FIELDS and before.get(k) != new[k]]
    if old.data_dir.resolve() != data_dir.resolve():
        diffs.insert(0, f"data={str(old.data_dir)!r} (now {str(data_dir)!r})")
    if diffs:
        raise ConfigError(f"run folder {run_dir} was made with {', '.join(diffs[:3])}; keep those settings to "
                          "resume, or give another output folder")


def write_summary(run: RunFolder, per_fold: Sequence[dict[str, dict[str, Any]]]) -> str:
    """Write ``metrics.json``, ``metrics.csv``, ``table.md`` and ``table.csv``; return the Markdown table."""
    summary = summarise(per_fold)
    c = run.config
    paths = run.summary_paths()
    names = [n for n in (per_fold[0].get("branches") or {})] if per_fold else []
    heads = {n: summarise([f["branches"][n] for f in per_fold if n in (f.get("branches") or {})]) for n in names}
    atomic_write_json(paths["metrics.json"], {
        "mode": c.mode, "backbone": c.backbone, "magnifications": list(c.magnifications),
        "classes": run.class_names, "folds": list(per_fold), "summary": summary, "branches": heads})
    atomic_write_csv(paths["metrics.csv"], ["fold", "level", "n", *METRICS], metrics_csv_rows(per_fold, summary))
    rows = table_rows(summary, mode=c.mode, magnifications=c.magnifications, backbone=c.backbone)
    table = markdown_table(rows)
    if heads:
        table += "\nEach head on its own inside this model (patch level): " + "; ".join(
            f"{n} accuracy {h['patch']['accuracy']['mean']:.3f}, AUC {h['patch']['auc']['mean']:.3f}"
            for n, h in heads.items()) + ".\n"
    if c.folds == 1:
        table += ("\nOne final model on all the data: these figures are on its validation patients, which also "
                  "chose its checkpoint, so they are optimistic; cross-validate (--folds 5) for honest ones.\n")
    atomic_write_text(paths["table.md"], table)
    atomic_write_csv(paths["table.csv"], list(rows[0]), rows)
    return table


# ----- cross-validation -------------------------------------------------------------------------
@dataclass(frozen=True)
class CVResult:
    """Outcome of :func:`cross_validate`."""

    run_dir: Path
    per_fold: list[dict[str, dict[str, Any]]]
    summary: dict[str, dict[str, dict[str, float]]]
    table: str


def _datasets(base: TupleDataset | SlideTupleDataset, config: DMSLConfig, rows: Sequence[dict],
              classes: Sequence[str], mean: Any, std: Any, *, train: bool) -> TupleDataset | SlideTupleDataset:
    """The tuples of ``rows`` from ``base`` (every labelled tuple of a dataset folder, or of planned slides)."""
    transform = tuple_transform(mean, std, train=train and config.augment)
    if isinstance(base, SlideTupleDataset):
        return base.subset(rows, classes=classes, transform=transform)
    return TupleDataset(base.root, config.magnifications, rows=rows, classes=classes, transform=transform,
                        subset=config.spec.single, cache_mb=TRAIN_CACHE_MB if train else 0)


def _adopt_source(source: SlideSource, run_dir: Path, resume: bool) -> Path:
    """Write the slides a run trains on into ``RUN/source.json`` (a resumed run must name the same)."""
    path = run_dir / SLIDE_SOURCE_FILE
    new = source.to_json()
    if resume and path.is_file():
        old = SlideSource.read(path).to_json()
        if old != new:
            raise ConfigError(f"run folder {run_dir} was trained on other slides or tile settings ({path}); keep "
                              "them to resume, or give another output folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, new)
    return path


def cross_validate(data_dir: str | Path | SlideSource, out_dir: str | Path, config: DMSLConfig, *,
                   resume: bool = False, progress: bool = True) -> CVResult:
    """Train and test ``config.folds`` models on patient-grouped folds of a tiled dataset folder, or of slides.

    Args:
        data_dir: folder made by ``histomag tile`` (labelled tuples, several patients), or a
            :class:`SlideSource`: slides whose tuples are planned now and read while training
            (no extraction; the run records them in ``RUN/source.json``).
        out_dir: the run folder (see the module docstring).
        config: run settings.
        resume: skip finished folds and continue unfinished ones from their ``last.ckpt``.
        progress: progress bars and Lightning's info messages.

    Distributed training (``config.devices``/``num_nodes``/``strategy``, e.g. ``strategy="ddp"``):
    every process runs this function with the same arguments and the same splits; global rank 0
    writes the run folder (config, splits, checkpoints, logs, predictions, metrics) and predicts
    each fold's whole test set; the other processes train with it, write nothing and return an
    empty :class:`CVResult`. Several nodes need ``out_dir`` on a file system they share.

    Raises:
        DatasetError: unusable dataset folder (missing, magnifications differ, < 2 classes).
        ConfigError: unknown backbone, fewer patients than folds, an existing run without
            ``resume``, or resuming with other settings.
    """
    run_dir = Path(out_dir)
    writer = launched_rank_zero()  # the other ranks of a distributed launch leave the run folder to rank 0
    check_backbone(config.backbone)
    if writer and RunFolder(run_dir).exists() and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass resume=True to continue it or choose another output folder")
    if isinstance(data_dir, SlideSource) and not writer:  # the slides as rank 0 stores them, read back, in memory
        stored = SlideSource.from_json(json.loads(json.dumps(data_dir.to_json(), default=str)))
        data_dir = run_dir / SLIDE_SOURCE_FILE
        probe: TupleDataset | SlideTupleDataset = SlideTupleDataset(
            list(stored.jobs), stored.settings, magnifications=config.magnifications, labelled_only=True)
    else:
        if isinstance(data_dir, SlideSource):
            data_dir = _adopt_source(data_dir, run_dir, resume)
        data_dir = Path(data_dir)
        probe = open_tuples(data_dir, config.magnifications, subset=config.spec.single)
    if not config.spec.single and config.spec.tuple_mode != probe.tuple_mode:
        warnings.warn(f"mode {config.mode} expects {config.spec.tuple_mode} tuples ({TUPLE_LAYOUTS[config.spec.tuple_mode]}) "
                      f"but {data_dir} holds {probe.tuple_mode} tuples; tile with layout={config.spec.tuple_mode}",
                      UserWarning, stacklevel=2)
    rows = cap_per_slide(probe.rows, config.max_tuples, config.seed)
    classes = class_names_of(r["label"] for r in rows)
    if len(classes) < 2:
        raise DatasetError(f"{data_dir} has labelled tuples of {len(classes)} class(es) ({', '.join(classes) or 'none'}); "
                           "a classifier needs at least two: tile with label masks of two or more classes, or from an index CSV "
                           "with a label column")
    if writer and RunFolder(run_dir).exists():
        _check_resume(run_dir, config, data_dir)
    settings = probe.settings if isinstance(probe.settings, dict) else probe.settings.to_json()
    record = dict(config=config.to_dict(), data=data_dir, classes=classes, tuple_mode=probe.tuple_mode,
                  tile_settings=settings)
    if writer:
        RunFolder(run_dir).write_meta(**record)
        run = read_run(run_dir)
    else:
        run = RunFolder(run_dir).held(**record)
    labels = [r["label"] for r in rows]
    patients = [patient_of(r) for r in rows]
    warn_thin_classes(labels, patients)
    from histomag.backbones import create_backbone

    bb = create_backbone(config.backbone)
    mean, std = bb.input_mean, bb.input_std
    store = _feature_store(config, data_dir, run_dir, probe, settings, mean, std)
    per_fold: list[dict[str, dict[str, Any]]] = []
    for k, (train_idx, test_idx) in enumerate(run_splits(labels, patients, config.folds, config.seed), start=1):
        per_fold.append(_run_fold(run, k, probe, rows, train_idx, test_idx, classes, mean, std, resume=resume,
                                  progress=progress, features=store))
    if not writer or not all(per_fold):  # a non-zero rank of a distributed run: rank 0 writes the results
        return CVResult(run_dir, [], {}, "")
    table = write_summary(run, per_fold)
    return CVResult(run_dir, per_fold, summarise(per_fold), table)


def cross_validate_seeds(data_dir: str | Path | SlideSource, out_dir: str | Path, config: DMSLConfig, *,
                         seeds: int, resume: bool = False, progress: bool = True) -> CVResult:
    """:func:`cross_validate` repeated with ``seeds`` seeds (``config.seed``, ``config.seed + 1``, ...).

    Each seed has its own folds, initialisation and augmentation, and its own run folder
    ``OUT/seed-S`` (:class:`~histomag.dmsl.runfolder.SeedRuns`); ``OUT/metrics.json`` and
    ``OUT/table.md`` pool every (seed, fold): mean ± std over seeds x folds. Two multi-seed runs
    with the same seeds on the same data have the same folds, so
    :func:`histomag.dmsl.compare.compare_runs` pairs them fold by fold. ``seeds=1`` is a plain run.

    Raises:
        ConfigError: ``seeds < 1``, or as :func:`cross_validate`.
    """
    if seeds < 1:
        raise ConfigError(f"seeds={seeds} must be >= 1")
    if seeds == 1:
        return cross_validate(data_dir, out_dir, config, resume=resume, progress=progress)
    root = SeedRuns(out_dir)
    chosen = [config.seed + i for i in range(seeds)]
    if launched_rank_zero():  # a distributed run's other ranks train each seed and write nothing
        if (root.exists() or RunFolder(out_dir).exists()) and not resume:
            raise ConfigError(f"{out_dir} already holds a run; pass resume=True to continue it or choose another "
                              "output folder")
        if root.exists() and root.seeds() != chosen:
            raise ConfigError(f"{out_dir} was trained with seeds {root.seeds()}; keep seed and seeds to resume, or "
                              "give another output folder")
        root.write(chosen)
    per_fold: list[dict[str, dict[str, Any]]] = []
    for s in chosen:
        sub = root.seed_dir(s)
        result = cross_validate(data_dir, sub, config.replace(seed=s), resume=resume and RunFolder(sub).exists(),
                                progress=progress)
        per_fold += result.per_fold
    if not per_fold:
        return CVResult(Path(out_dir), [], {}, "")
    summary = summarise(per_fold)
    rows = table_rows(summary, mode=config.mode, magnifications=config.magnifications, backbone=config.backbone)
    table = markdown_table(rows) + f"\n{len(per_fold)} (seed, fold) pairs: seeds {', '.join(map(str, chosen))} x {config.folds} folds.\n"
    root.write_summary({"mode": config.mode, "seeds": chosen, "folds": per_fold, "summary": summary}, table)
    return CVResult(Path(out_dir), per_fold, summary, table)


def _feature_store(config: DMSLConfig, data_dir: Path, run_dir: Path, probe: Any, settings: Any, mean: Any,
                   std: Any) -> Any:
    """The run's feature cache (``config.cache_features``): ``feature_dir``, else ``DATA/features`` (slides: ``RUN/features``)."""
    if not config.cache_features:
        return None
    from histomag.dmsl.features import FEATURES_DIR, FeatureStore

    root = Path(config.feature_dir) if config.feature_dir else (data_dir if data_dir.is_dir() else run_dir) / FEATURES_DIR
    return FeatureStore(root, data_dir, [r["tuple_id"] for r in probe.rows], magnifications=config.magnifications,
                        settings=settings, mean=mean, std=std, batch_size=config.batch_size,
                        num_workers=config.num_workers)


def _run_fold(run: RunFolder, k: int, base: TupleDataset | SlideTupleDataset, rows: Sequence[dict],
              train_idx: np.ndarray, test_idx: np.ndarray,
              classes: list[str], mean: Any, std: Any, *, resume: bool, progress: bool,
              features: Any = None) -> dict[str, dict[str, Any]]:
    config, fold_dir = run.config, run.fold_dir(k)
    if resume and run.fold_finished(k):
        log.info("fold %d is finished; kept", k)
        return run.read_fold_metrics(k)
    labels = [rows[i]["label"] for i in train_idx]
    pats = [patient_of(rows[i]) for i in train_idx]
    tr, va = carve_validation(labels, pats, config.val_fraction, config.seed + k)
    tr = tr[subsample([labels[i] for i in tr], config.train_fraction, config.seed + k)]
    train_rows = [rows[train_idx[i]] for i in tr]
    val_rows = [rows[train_idx[i]] for i in va]
    final = len(test_idx) == 0  # one final model: its figures are on the validation patients (optimistic)
    test_rows = val_rows if final else [rows[i] for i in test_idx]
    missing = sorted(set(classes) - {r["label"] for r in train_rows})
    if missing:
        warnings.warn(f"fold {k}: no {', '.join(missing)} tuples among the training patients", UserWarning,
                      stacklevel=3)
    split = {
        "fold": k, "train_patients": sorted({patient_of(r) for r in train_rows}),
        "val_patients": sorted({patient_of(r) for r in val_rows}),
        "test_patients": sorted({patient_of(r) for r in test_rows}),
        "n_train": len(train_rows), "n_val": len(val_rows), "n_test": 0 if final else len(test_rows),
        "final_model": final,
        "train_fraction": config.train_fraction, "test_tuples": [r["tuple_id"] for r in test_rows]}
    if launched_rank_zero():
        fold_dir.mkdir(parents=True, exist_ok=True)
        run.write_split(k, split)
    result = fit_fold(config, _datasets(base, config, train_rows, classes, mean, std, train=True),
                      _datasets(base, config, val_rows, classes, mean, std, train=False) if val_rows else None,
                      fold_dir, class_names=classes, resume=resume, progress=progress, seed=config.seed + k,
                      features=features)
    if not result.is_global_zero:
        return {}
    test_set = _datasets(base, config, test_rows, classes, mean, std, train=False)
    best = load_task(result.best_checkpoint)
    if features is not None:  # the test tuples' maps by the same frozen encoders (cached for the other folds)
        test_set = features.dataset(best.model, test_set)
    probs, heads = predict_probs([best], test_set, batch_size=config.batch_size,
                                 num_workers=config.num_workers, branches=True)
    branches = branch_probs(config, heads)
    run.write_predictions(run.predictions_path(k), test_rows, probs, classes, branches)
    metrics = fold_metrics([patient_of(r) for r in test_rows], test_set.targets, probs, classes, branches, k)
    atomic_write_json(run.fold_metrics_path(k), metrics)
    return metrics


def branch_probs(config: DMSLConfig, heads: np.ndarray) -> dict[str, np.ndarray]:
    """Each head's own probabilities named by magnification (``{"40x": ...}``), for modes that fuse branches."""
    if not config.spec.fuses_branches or len(heads) != len(config.magnifications):
        return {}
    return {f"{m:g}x": h for m, h in zip(config.magnifications, heads)}


def fold_metrics(patients: Sequence[str], y: Sequence[int], probs: np.ndarray, classes: Sequence[str],
                 branches: dict[str, np.ndarray] | None, k: int) -> dict[str, Any]:
    """A fold's metrics: patch and patient level, and ``"branches"`` (each head on its own) where recorded."""
    metrics: dict[str, Any] = evaluate_predictions(patients, y, probs, classes, where=f"fold {k}")
    if branches:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fused figures warned about missing classes already
            metrics["branches"] = {name: evaluate_predictions(patients, y, p, classes) for name, p in branches.items()}
    return metrics


# ----- evaluate ---------------------------------------------------------------------------------
def evaluate_cv_run(run_dir: str | Path, *, progress: bool = False) -> CVResult:
    """Recompute every fold's metrics and the summary tables of a run folder.

    A fold's ``predictions.csv`` is used when present; otherwise its test tuples
    (``split.json``) are predicted again with its best checkpoint.

    Raises:
        CheckpointError: no ``config.json``, or a fold with neither predictions nor a
            checkpoint and split (the message names the missing file and the command).
    """
    run = read_run(run_dir)
    per_fold = []
    for k in range(1, run.config.folds + 1):
        if not run.predictions_path(k).is_file():
            _repredict(run, k, progress=progress)
        fold = run.read_predictions(k, run.class_names)
        metrics = fold_metrics(fold.patients, fold.y, fold.probs, run.class_names, fold.branches, k)  # type: ignore[union-attr]
        atomic_write_json(run.fold_metrics_path(k), metrics)
        per_fold.append(metrics)
    table = write_summary(run, per_fold)
    return CVResult(run.root, per_fold, summarise(per_fold), table)


def fold_checkpoint(run: RunFolder, k: int) -> Path:
    """A fold's ``best.ckpt`` (or ``last.ckpt``); CheckpointError naming the file and the command."""
    return run.checkpoint(k)


def fold_test_set(run: RunFolder, k: int, data_dir: str | Path | None = None) -> tuple[Any, TupleDataset]:
    """Fold ``k``'s best model and its test tuples (from ``data_dir``, default the run's dataset folder).

    Raises:
        CheckpointError: the fold's split.json or checkpoint is missing (the message names the file
            and the command that makes it).
        DatasetError: the dataset folder lacks test tuples of the fold.
    """
    split = run.read_split(k)
    if split is None:
        raise CheckpointError(f"{run.split_path(k)} is missing (fold {k} never started); make it with: "
                              f"{DMSL_RESUME_HINT}")
    ckpt = fold_checkpoint(run, k)
    wanted = [str(t) for t in split.get("test_tuples", [])]
    data_dir = Path(data_dir) if data_dir is not None else run.data_dir
    base = open_tuples(data_dir, run.config.magnifications, subset=run.config.spec.single)
    by_id = {r["tuple_id"]: r for r in base.rows}
    lost = [t for t in wanted if t not in by_id]
    if lost:
        raise DatasetError(f"{data_dir} lacks {len(lost)} test tuples of fold {k} (e.g. {lost[0]}); "
                           "use the dataset folder (or slides) the run was trained on")
    task = load_task(ckpt)
    return task, _datasets(base, run.config, [by_id[t] for t in wanted], run.class_names, task.input_mean,
                           task.input_std, train=False)


def _repredict(run: RunFolder, k: int, *, progress: bool) -> None:
    if not run.split_path(k).is_file():
        raise CheckpointError(f"{run.predictions_path(k)} and split.json are missing; "
                              f"make them with: {DMSL_RESUME_HINT}")
    task, test_set = fold_test_set(run, k)
    probs = predict_probs([task], test_set, batch_size=run.config.batch_size, progress=progress)
    run.write_predictions(run.predictions_path(k), test_set.rows, probs, run.class_names)


# ----- predict ----------------------------------------------------------------------------------
def load_fold_models(run: RunFolder, fold: int | None = None) -> list[Any]:
    """The best model of one fold, or of every fold (their probabilities are averaged)."""
    if fold is not None and not 1 <= fold <= run.config.folds:
        raise ConfigError(f"fold={fold} is out of range: the run has folds 1..{run.config.folds}")
    folds = [fold] if fold is not None else list(range(1, run.config.folds + 1))
    return [load_task(fold_checkpoint(run, k)) for k in folds]


def predict_folder(run_dir: str | Path, data_dir: str | Path, out_dir: str | Path, *, fold: int | None = None,
                   batch_size: int | None = None, num_workers: int = 0, progress: bool = False) -> Path:
    """Predict every tuple of a dataset folder; writes and returns ``OUT/predictions.csv``."""
    run = read_run(run_dir)
    models = load_fold_models(run, fold)
    data = TupleDataset(data_dir, run.config.magnifications, classes=run.class_names, labelled_only=False,
                        transform=tuple_transform(models[0].input_mean, models[0].input_std, train=False),
                        subset=run.config.spec.single)
    probs = predict_probs(models, data, batch_size=batch_size or run.config.batch_size, num_workers=num_workers,
                          progress=progress)
    out = Path(out_dir) / "predictions.csv"
    run.write_predictions(out, data.rows, probs, run.class_names)
    return out


def grid_tile_settings(run: RunFolder) -> Any:
    """The run's tile settings (magnifications, field size, mode, tissue rule) with a full grid of fields.

    Raises:
        CheckpointError: a run folder that does not record its tile settings.
    """
    from histomag.data.folder import TileSettings

    if "magnifications" not in run.tile_settings or "size" not in run.tile_settings:
        raise CheckpointError(f"{run.config_path} lacks the tile settings; re-run: {DMSL_TRAIN_HINT}")
    return TileSettings.from_json(run.tile_settings, placement="grid", max_tuples=None, extra={})


# slide prediction lives in histomag.dmsl.slides (overlays, the prediction record); kept importable here
from histomag.dmsl.slides import predict_slide  # noqa: E402,F401
