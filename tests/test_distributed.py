"""Training across processes on CPU (gloo): ``dmsl train`` and ``magnification train`` with ``--devices 2 --strategy ddp``.

Lightning's ``ddp`` launcher re-runs the command line for each extra process (under pytest that would be
pytest itself), so each distributed run goes through the CLI in a subprocess; its one-process reference
runs here, through the library, with the same settings.

The distributed runs use half the one-process ``batch_size`` per process: the same effective batch
and the same number of optimiser steps per epoch (which also shows that the two processes shared the
data: one process with the half batch would take twice the steps). Why the figures are close but
not equal: each process takes its half of every epoch's samples in the ``DistributedSampler``'s
order, not the one-process shuffle's, and the averaged gradient of two half batches equals the
gradient of their union only without BatchNorm, which here normalises over each process's own
half batch; augmentation draws differ too. Hence a tolerance, on figures that do not hinge on one
decision threshold (AUC; the magnifier's mean relative error).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_magset, make_tuple_folder

pytestmark = pytest.mark.usefixtures("one_thread")

#: launcher variables of an enclosing distributed job must not reach the children
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "SLURM_PROCID", "SLURM_NTASKS")


def _histomag(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    done = subprocess.run([sys.executable, "-m", "histomag", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _global_step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def test_dmsl_train_on_two_processes_matches_one_process(tmp_path: Path) -> None:
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.cv import cross_validate

    data = make_tuple_folder(tmp_path / "data", patients=8, per_class=6, size=64)
    settings = dict(backbone="tiny", folds=2, epochs=4, batch_size=4, num_workers=0, seed=0)
    one = cross_validate(data, tmp_path / "one", DMSLConfig(**settings), progress=False).run_dir
    _histomag("dmsl", "train", str(data), "--out", "two", "--backbone", "tiny", "--folds", "2", "--epochs", "4",
              "--batch-size", "2", "-j", "0", "--seed", "0", "--devices", "2", "--strategy", "ddp", "-q", cwd=tmp_path)
    two = tmp_path / "two"

    # one run folder, written once (by rank 0): the same files as the one-process run, no second log version
    assert _files(two) == _files(one)
    assert not list(two.rglob("version_1")) and not list(two.rglob("*.tmp"))
    stored = json.loads((two / "config.json").read_text())["config"]
    assert (stored["devices"], stored["strategy"], stored["batch_size"]) == (2, "ddp", 2)

    auc = {}
    for name, run in (("one", one), ("two", two)):
        metrics = json.loads((run / "metrics.json").read_text())
        auc[name] = [f["patch"]["auc"] for f in metrics["folds"]]
    for k in (1, 2):
        fold_one, fold_two = one / "folds" / str(k), two / "folds" / str(k)
        split = json.loads((fold_two / "split.json").read_text())
        assert split == json.loads((fold_one / "split.json").read_text())  # the same patients and tuples
        with open(fold_two / "predictions.csv", newline="") as fh:
            predicted = [r["tuple_id"] for r in csv.DictReader(fh)]
        assert predicted == split["test_tuples"]  # rank 0 predicted the whole test set
        # two processes of 2 tuples a step took as many steps as one process of 4
        assert _global_step(fold_two / "checkpoints" / "last.ckpt") == _global_step(fold_one / "checkpoints" / "last.ckpt")
    # the same learning, within what the different batches allow (module docstring)
    assert abs(sum(auc["two"]) / 2 - sum(auc["one"]) / 2) <= 0.05, auc
    assert min(auc["two"]) >= 0.85, auc


def test_magnification_train_on_two_processes_matches_one_process(tmp_path: Path) -> None:
    from histomag.magnification.config import preset
    from histomag.magnification.fit import train_magnifier
    from histomag.magnification.metrics import evaluate_run

    magset = make_magset(tmp_path / "magset")
    one = train_magnifier(magset, tmp_path / "one", preset("tiny", epochs=6, batch_size=8), progress=False)
    _histomag("magnification", "train", str(magset), "--out", "two", "--preset", "tiny", "--epochs", "6",
              "--batch-size", "4", "-j", "0", "--devices", "2", "--strategy", "ddp", "-q", cwd=tmp_path)
    two = tmp_path / "two"

    assert _files(two) == _files(one)
    assert not list(two.rglob("version_1")) and not list(two.rglob("*.tmp"))
    stored = json.loads((two / "config.json").read_text())
    assert (stored["devices"], stored["strategy"]) == (2, "ddp")
    assert _global_step(two / "checkpoints" / "last.ckpt") == _global_step(one / "checkpoints" / "last.ckpt")
    assert json.loads((two / "train_summary.json").read_text())["epochs_completed"] >= 1

    mre = {name: evaluate_run(run, split="test", n_crops=4)["overall"]["mre"] for name, run in (("one", one), ("two", two))}
    # mean relative error of the test images' magnifications (10x and 40x): both learned, and by as much
    assert max(mre.values()) <= 0.2 and abs(mre["two"] - mre["one"]) <= 0.1, mre
