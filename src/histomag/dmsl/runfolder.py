"""The DMSL run folder: one class owns its layout and schema (no torch: training, evaluation, explain, report and
the demo all read runs through it).

Layout (schema version :data:`RUN_VERSION`)::

    RUN/config.json                      {"model_type": "dmsl", "version", "config", "data", "classes",
                                          "tuple_mode", "tile_settings"}
    RUN/folds/K/split.json               train/val/test patients and the test tuple ids of fold K
    RUN/folds/K/predictions.csv          tuple_id, slide_id, patient_id, label, predicted, prob_<class>...
                                         [, <mag>x:prob_<class>... each head's own probabilities]
    RUN/folds/K/metrics.json             fold K's tuple- and patient-level metrics
    RUN/folds/K/checkpoints/{best,last}.ckpt
    RUN/folds/K/logs/                    Lightning's CSV (and TensorBoard) logs
    RUN/metrics.json, metrics.csv        every fold and the mean ± std summary
    RUN/table.md, table.csv              the summary laid out like the paper's Table III

A folder written before ``version`` existed reads as version 1 (the same layout); a newer version
is refused in one line naming both versions.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histomag.data.atomic import atomic_write_csv, atomic_write_json, atomic_write_text
from histomag.data.folder import patient_of
from histomag.errors import CheckpointError, ConfigError

MODEL_TYPE = "dmsl"
RUN_VERSION = 1
#: how a DMSL run folder is made, resumed and evaluated, in API terms (the CLI names its commands instead)
DMSL_TRAIN_API = "histomag.dmsl.cv.cross_validate(DATA, {run}, config)"
DMSL_RESUME_API = "histomag.dmsl.cv.cross_validate(DATA, {run}, config, resume=True)"
DMSL_EVALUATE_API = "histomag.dmsl.cv.evaluate_cv_run({run})"
DMSL_TRAIN_HINT = DMSL_TRAIN_API.format(run="RUN")
DMSL_RESUME_HINT = DMSL_RESUME_API.format(run="RUN")
PREDICTION_COLUMNS = ["tuple_id", "slide_id", "patient_id", "label", "predicted"]


@dataclass(frozen=True)
class FoldPredictions:
    """One fold's test predictions.

    Attributes:
        fold: fold number (1-based).
        patients: patient per tuple.
        y: class index per tuple.
        probs: ``(n, n_classes)`` probabilities.
        train_fraction: the fold's share of training tuples (from ``split.json``), where recorded.
        tuple_ids, slides: tuple id and slide (image) id per tuple.
        branches: each head's own probabilities, ``{"40x": (n, n_classes)}`` (fused modes of runs
            that recorded them; empty otherwise).
    """

    fold: int
    patients: list[str]
    y: np.ndarray
    probs: np.ndarray
    train_fraction: float | None = None
    tuple_ids: tuple[str, ...] = ()
    slides: tuple[str, ...] = ()
    branches: dict[str, np.ndarray] | None = None


class RunFolder:
    """Reads and writes a DMSL run folder (see the module docstring for the layout).

    Its ``config.json`` is read (and checked) once, on first use of :attr:`meta`, :attr:`config`,
    :attr:`data_dir`, :attr:`class_names` or :attr:`tile_settings`; :meth:`load` reads it at once.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._meta: dict[str, Any] | None = None
        self._config: Any = None

    def load(self) -> RunFolder:
        """Read and check ``config.json`` now (CheckpointError as :meth:`read_meta`); returns self."""
        self._meta = self.read_meta()
        self._config = None
        return self

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self.load()
        return self._meta  # type: ignore[return-value]

    @property
    def config(self) -> Any:
        """The run's :class:`~histomag.dmsl.config.DMSLConfig`."""
        if self._config is None:
            from histomag.dmsl.config import DMSLConfig

            try:
                self._config = DMSLConfig.from_dict(self.meta["config"])
            except ConfigError as exc:
                raise CheckpointError(f"{self.config_path}: {exc}") from None
        return self._config

    @property
    def data_dir(self) -> Path:
        """The dataset folder (or slide source) the run was trained on."""
        return Path(self.meta["data"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def tile_settings(self) -> dict[str, Any]:
        return dict(self.meta.get("tile_settings", {}))

    # ----- paths ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def fold_dir(self, k: int) -> Path:
        return self.root / "folds" / str(k)

    def split_path(self, k: int) -> Path:
        return self.fold_dir(k) / "split.json"

    def predictions_path(self, k: int) -> Path:
        return self.fold_dir(k) / "predictions.csv"

    def fold_metrics_path(self, k: int) -> Path:
        return self.fold_dir(k) / "metrics.json"

    def checkpoint_dir(self, k: int) -> Path:
        return self.fold_dir(k) / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        """``metrics.json``: every fold and the summary."""
        return self.root / "metrics.json"

    def summary_paths(self) -> dict[str, Path]:
        """The run's summary files by name (``metrics.json``, ``metrics.csv``, ``table.md``, ``table.csv``)."""
        return {name: self.root / name for name in ("metrics.json", "metrics.csv", "table.md", "table.csv")}

    def fold_finished(self, k: int) -> bool:
        """Fold ``k`` wrote its predictions and metrics."""
        return self.predictions_path(k).is_file() and self.fold_metrics_path(k).is_file()

    def read_fold_metrics(self, k: int) -> dict[str, Any]:
        return json.loads(self.fold_metrics_path(k).read_text())

    # ----- config -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.is_file()

    def read_meta(self) -> dict[str, Any]:
        """``config.json`` of a DMSL run, checked for its model type and schema version.

        Raises:
            CheckpointError: no readable ``config.json``, a run of another model type, a run
                written by a newer schema, or one without its config or classes.
        """
        try:
            meta = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            raise CheckpointError(f"run folder {self.root} has no readable config.json; make it with: "
                                  f"{DMSL_TRAIN_HINT}") from None
        if not isinstance(meta, dict) or meta.get("model_type") != MODEL_TYPE:
            kind = meta.get("model_type", "unknown") if isinstance(meta, dict) else "unknown"
            raise CheckpointError(f"{self.root} holds a {kind} run, not a DMSL one; make a DMSL run with: {DMSL_TRAIN_HINT}")
        version = meta.get("version", 1)
        if not isinstance(version, int) or version > RUN_VERSION:
            raise CheckpointError(f"{self.root} is a run folder of version {version!r}, newer than this histomag "
                                  f"reads (version {RUN_VERSION}); upgrade histomag or re-run: {DMSL_TRAIN_HINT}")
        if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("classes"), list):
            raise CheckpointError(f"{self.config_path} lacks the run's config or classes; re-run: {DMSL_TRAIN_HINT}")
        if (not all(isinstance(c, str) for c in meta["classes"]) or not isinstance(meta.get("data"), str)
                or "\x00" in meta["data"] or not isinstance(meta.get("tile_settings", {}), dict)):
            raise CheckpointError(f"{self.config_path} has a damaged classes, data or tile_settings entry; "
                                  f"re-run: {DMSL_TRAIN_HINT}")
        return meta

    @staticmethod
    def meta_record(*, config: dict[str, Any], data: Path, classes: Sequence[str], tuple_mode: str,
                    tile_settings: dict[str, Any]) -> dict[str, Any]:
        """What :meth:`write_meta` writes into ``config.json``."""
        return {"model_type": MODEL_TYPE, "version": RUN_VERSION, "config": config, "data": str(Path(data).resolve()),
                "classes": list(classes), "tuple_mode": tuple_mode, "tile_settings": tile_settings}

    def write_meta(self, **record: Any) -> None:
        """Write ``config.json`` (keyword arguments as :meth:`meta_record`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, self.meta_record(**record))

    def held(self, **record: Any) -> RunFolder:
        """This folder with the ``config.json`` of :meth:`meta_record` held in memory, not written: the view of a
        distributed run's other processes, which train but leave the folder to global rank 0."""
        self._meta, self._config = self.meta_record(**record), None
        return self

    # ----- folds ------------------------------------------------------------------------------
    def read_split(self, k: int) -> dict[str, Any] | None:
        """Fold ``k``'s ``split.json``, or None when the fold never started (or the file is unreadable)."""
        try:
            split = json.loads(self.split_path(k).read_text())
        except (OSError, ValueError):
            return None
        return split if isinstance(split, dict) else None

    def write_split(self, k: int, split: dict[str, Any]) -> None:
        self.fold_dir(k).mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.split_path(k), split)

    def checkpoint(self, k: int) -> Path:
        """Fold ``k``'s ``best.ckpt`` (or ``last.ckpt``); CheckpointError naming the file and the command."""
        for name in ("best.ckpt", "last.ckpt"):
            if (self.checkpoint_dir(k) / name).is_file():
                return self.checkpoint_dir(k) / name
        raise CheckpointError(f"{self.checkpoint_dir(k) / 'best.ckpt'} is missing (fold {k} never trained); "
                              f"make it with: {DMSL_RESUME_HINT}")

    def write_predictions(self, path: Path, rows: Sequence[dict], probs: np.ndarray,
                          class_names: Sequence[str], branches: dict[str, np.ndarray] | None = None) -> None:
        """A ``predictions.csv`` (a fold's, or any prediction output) with one row per tuple.

        ``branches`` (``{"40x": (n, n_classes)}``) adds each head's own probabilities as
        ``40x:prob_<class>`` columns.
        """
        branches = branches or {}
        out = []
        for i, (row, p) in enumerate(zip(rows, probs)):
            out.append([row.get("tuple_id", ""), row.get("slide_id", ""), patient_of(row), row.get("label", ""),
                        class_names[int(np.argmax(p))] if len(p) else ""] + [f"{v:.6g}" for v in p]
                       + [f"{v:.6g}" for b in branches.values() for v in b[i]])
        header = PREDICTION_COLUMNS + [f"prob_{c}" for c in class_names]
        header += [f"{name}:prob_{c}" for name in branches for c in class_names]
        atomic_write_csv(path, header, out)

    def saved_probs(self, k: int, tuple_ids: Sequence[str], class_names: Sequence[str]) -> np.ndarray | None:
        """Probabilities of ``tuple_ids`` from fold ``k``'s ``predictions.csv``, or None if it lacks any."""
        path = self.predictions_path(k)
        if not path.is_file():
            return None
        with open(path, newline="") as fh:
            rows = {r.get("tuple_id", ""): r for r in csv.DictReader(fh)}
        cols = [f"prob_{c}" for c in class_names]
        try:
            return np.array([[float(rows[t][c]) for c in cols] for t in tuple_ids], dtype=float)
        except (KeyError, ValueError, TypeError):
            return None

    def read_predictions(self, k: int, class_names: Sequence[str]) -> FoldPredictions | None:
        """Fold ``k``'s test predictions, or None when its ``predictions.csv`` is absent.

        Raises:
            CheckpointError: the CSV lacks a class's probability column, has labels that are not
                classes of the run, or non-numeric probabilities.
        """
        path = self.predictions_path(k)
        if not path.is_file():
            return None
        hint = f"re-run `{DMSL_EVALUATE_API.format(run=self.root)}`"
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = [f"prob_{c}" for c in class_names]
        if rows and not set(cols) <= set(rows[0]):
            raise CheckpointError(f"{path} lacks columns {', '.join(c for c in cols if c not in rows[0])}: {hint}")
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted({r.get("label", "") for r in rows} - set(index))
        if unknown:
            raise CheckpointError(f"{path} has labels {', '.join(map(repr, unknown[:3]))} that are not classes of "
                                  f"the run ({', '.join(class_names)}): {hint}")
        try:
            probs = np.array([[float(r[c]) for c in cols] for r in rows], dtype=float).reshape(len(rows), len(cols))
        except ValueError:
            raise CheckpointError(f"{path} has non-numeric probabilities: {hint}") from None
        split = self.read_split(k) or {}
        fraction = split.get("train_fraction")
        names = list(dict.fromkeys(c.split(":prob_")[0] for c in (rows[0] if rows else {}) if ":prob_" in c))
        try:
            branches = {b: np.array([[float(r[f"{b}:prob_{c}"]) for c in class_names] for r in rows], dtype=float)
                        for b in names}
        except (KeyError, ValueError):
            raise CheckpointError(f"{path} has incomplete or non-numeric per-branch probabilities: {hint}") from None
        return FoldPredictions(k, [patient_of(r) for r in rows], np.array([index[r["label"]] for r in rows], dtype=int),
                               probs, None if fraction is None else float(fraction),
                               tuple(r.get("tuple_id", "") for r in rows), tuple(r.get("slide_id", "") for r in rows),
                               branches)


SEEDS_FILE = "seeds.json"


class SeedRuns:
    """A multi-seed run: the same cross-validation repeated with K seeds, one :class:`RunFolder` each.

    Layout::

        RUN/seeds.json        {"model_type": "dmsl-seeds", "version", "seeds": [0, 1, 2], "runs": ["seed-0", ...]}
        RUN/seed-S/           a complete run folder (config.json with seed S, folds/, metrics.json, ...)
        RUN/metrics.json, table.md   every (seed, fold) pooled: mean ± std over seeds x folds
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def path(self) -> Path:
        return self.root / SEEDS_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed-{int(seed)}"

    def write(self, seeds: Sequence[int]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"model_type": "dmsl-seeds", "version": RUN_VERSION, "seeds": [int(s) for s in seeds],
                                      "runs": [self.seed_dir(s).name for s in seeds]})

    def seeds(self) -> list[int]:
        """The seeds, as recorded (CheckpointError for a missing or unreadable ``seeds.json``)."""
        try:
            data = json.loads(self.path.read_text())
            return [int(s) for s in data["seeds"]]
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is missing: {self.root} is not a multi-seed run") from None
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{self.path} is unreadable; train the run again") from None

    def write_summary(self, metrics: dict[str, Any], table: str) -> None:
        """``RUN/metrics.json`` and ``RUN/table.md``: every (seed, fold) pooled."""
        atomic_write_json(self.root / "metrics.json", metrics)
        atomic_write_text(self.root / "table.md", table)

    def runs(self) -> list[RunFolder]:
        """Each seed's run folder, loaded (CheckpointError naming one that is missing)."""
        return [RunFolder(self.seed_dir(s)).load() for s in self.seeds()]
