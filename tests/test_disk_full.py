"""A full or failing disk mid-run: one line naming the path and the fix, exit code 2, nothing half-written that a
manifest, journal, checkpoint or model path references, and a rerun once there is space equals an uninterrupted run.

Faults are injected in the atomic writer (``HISTOMAG_WRITE_FAULT``: the N-th write and every later one fail half-way,
as a disk that fills up does) for ``tile``, ``audit``, ``merge``, ``dmsl train`` and ``magnification export``; ``tile``
also runs into a real, tiny tmpfs when the tests run as root and may mount one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import histomag
from helpers import assert_same_dataset, make_tuple_folder, manifest_by_id, nuclei_image
from histomag.cli.main import run
from histomag.data import atomic
from histomag.data.atomic import WRITE_FAULT_ENV
from histomag.data.runlock import LOCK_NAME, TOKEN_NAME

SRC = Path(histomag.__file__).resolve().parents[1]
TILE = ["--mags", "40,20", "--size", "128", "--overlap", "0", "-q"]
SHIPPED_MODEL = SRC / "histomag" / "magnification" / "weights" / "magnifier-small.pt"
RUN_FILES = (LOCK_NAME, TOKEN_NAME)  # a run's own lock and token: they name the process, not the result


def _cli(args: list[str], capsys, monkeypatch, fault: str | None = None) -> tuple[int, str]:
    """``histomag ARGS`` in this process, with ``fault`` injected into the atomic writer; (exit code, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(atomic, "_writes", 0)
    if fault:
        monkeypatch.setenv(WRITE_FAULT_ENV, fault)
    else:
        monkeypatch.delenv(WRITE_FAULT_ENV, raising=False)
    try:
        code = run(args)
    finally:
        monkeypatch.delenv(WRITE_FAULT_ENV, raising=False)
    return code, capsys.readouterr().err


def _one_line(err: str, *, problem: str, where: Path, fix: str) -> str:
    """The single error line (anything else on stderr fails), naming the problem, a path under ``where`` and the fix."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    line = lines[0]
    assert problem in line and str(where) in line and fix in line, line
    assert "Traceback" not in err
    return line


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), without run lock/token files and ``skip`` names."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in RUN_FILES + skip}


def _no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob("*.tmp")], "a temporary file was left behind"


def _journalled_images_complete(out: Path) -> int:
    """Every image a journal's complete line names decodes in full; returns how many lines there were."""
    n = 0
    for part in (out / "parts").glob("*.csv") if (out / "parts").is_dir() else []:
        lines = part.read_text().split("\n")[:-1]  # a torn last line (no newline) is not a row
        for row in csv.DictReader(lines):
            if not row.get("tuple_id") or None in row.values():
                continue  # torn
            for k, v in row.items():
                if k.startswith("image_") and v:
                    with Image.open(out / v) as img:
                        img.load()
            n += 1
    return n


def _slides(out: Path) -> list[dict]:
    """``slides.csv`` without the counts that say what this particular run did (written vs resumed)."""
    with open(out / "slides.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k not in ("tuples_written", "tuples_resumed")} for r in csv.DictReader(fh)]


# ----- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    """Two small synthetic slides (about 50 tuples of 40x+20x at 128 px)."""
    from histomag.synth.cohort import make_cohort

    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, n_slides=2, seed=5, size_px=1024)
    return root


@pytest.fixture(scope="module")
def tiled(small_cohort: Path, tmp_path_factory) -> Path:
    """``small_cohort`` tiled without a fault: what every interrupted and resumed run must equal."""
    out = tmp_path_factory.mktemp("tiled") / "ds"
    assert run(["tile", str(small_cohort), "--out", str(out), *TILE]) == 0
    assert len(manifest_by_id(out)) > 20
    return out


# ----- tile -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, problem", [
    ("ENOSPC@7", "disk full"),                # among the first images
    ("EIO@{half}:.png", "I/O error"),         # mid-run
    ("ENOSPC@2:.csv", "disk full"),           # a journal append (the first one creates the journal)
    ("ENOSPC@1:manifest.csv", "disk full"),   # every tuple is on disk, the manifest is not
    ("ENOSPC@1:slides.csv", "disk full"),     # the last write of all
])
def test_tile_stops_at_a_full_disk_and_a_rerun_equals_an_uninterrupted_run(
        small_cohort: Path, tiled: Path, tmp_path: Path, capsys, monkeypatch, fault: str, problem: str) -> None:
    ref = tiled
    out = tmp_path / "ds"
    fault = fault.format(half=len(manifest_by_id(ref)))  # two images per tuple: half of them
    code, err = _cli(["tile", str(small_cohort), "--out", str(out), *TILE], capsys, monkeypatch, fault)
    assert code == 2
    _one_line(err, problem=problem, where=out, fix="then run the same command again to resume")
    _no_temporaries(out)
    journalled = _journalled_images_complete(out)
    if fault.endswith(("manifest.csv", "slides.csv")):
        assert journalled == len(manifest_by_id(ref))  # every tuple was on disk before the manifest
    else:
        assert journalled < len(manifest_by_id(ref))
    if (out / "manifest.csv").exists():  # only when slides.csv was the write that failed
        assert manifest_by_id(out) == manifest_by_id(ref)
    code, err = _cli(["tile", str(small_cohort), "--out", str(out), *TILE], capsys, monkeypatch)
    assert code == 0, err
    assert_same_dataset(out, ref)
    assert _slides(out) == _slides(ref)
    assert _tree(out, skip=("slides.csv",)).keys() == _tree(ref, skip=("slides.csv",)).keys()


def test_tile_in_worker_processes_prints_one_line_without_a_traceback(small_cohort: Path, tiled: Path,
                                                                      tmp_path: Path) -> None:
    """A real process with two slide workers (the fault reaches them through the environment)."""
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(SRC), WRITE_FAULT_ENV: "ENOSPC@5"}
    proc = subprocess.run([sys.executable, "-c", "from histomag.cli.main import main; main()", "tile",
                           str(small_cohort), "--out", str(out), "--workers", "2", *TILE],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _one_line(proc.stderr, problem="disk full", where=out, fix="free space or choose another output folder")
    _no_temporaries(out)
    _journalled_images_complete(out)
    assert not (out / "manifest.csv").exists()
    env.pop(WRITE_FAULT_ENV)
    proc = subprocess.run([sys.executable, "-c", "from histomag.cli.main import main; main()", "tile",
                           str(small_cohort), "--out", str(out), "--workers", "2", *TILE],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_same_dataset(out, tiled)


# ----- merge ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(small_cohort: Path, tmp_path_factory) -> Path:
    """``small_cohort`` tiled as two shards, not merged yet (copied by each test)."""
    out = tmp_path_factory.mktemp("shards") / "ds"
    for k in (1, 2):
        assert run(["tile", str(small_cohort), "--out", str(out), "--shard", f"{k}/2", *TILE]) == 0
    return out


@pytest.mark.parametrize("at", [1, 2, 3])  # dataset.json, manifest.csv, slides.csv
def test_merge_stops_at_a_full_disk_and_a_rerun_equals_an_uninterrupted_merge(
        shards: Path, tiled: Path, tmp_path: Path, capsys, monkeypatch, at: int) -> None:
    ref, out = tmp_path / "ref", tmp_path / "ds"
    shutil.copytree(shards, ref)
    shutil.copytree(shards, out)
    assert _cli(["merge", str(ref)], capsys, monkeypatch)[0] == 0
    code, err = _cli(["merge", str(out)], capsys, monkeypatch, f"ENOSPC@{at}")
    assert code == 2
    _one_line(err, problem="disk full", where=out, fix="then run the same command again to resume")
    _no_temporaries(out)
    if (out / "manifest.csv").exists():
        assert manifest_by_id(out) == manifest_by_id(ref)
    assert (out / "shards").is_dir()  # nothing is deleted before the merge is written
    code, err = _cli(["merge", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert _tree(out) == _tree(ref)
    assert_same_dataset(out, tiled)


# ----- audit ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    for i, mpp in enumerate((0.25, 0.5)):
        Image.fromarray(nuclei_image(256, 256, mpp, np.random.default_rng(i), density=0.01)).save(folder / f"i{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")  # a bad file still fails only its row
    return folder


@pytest.mark.parametrize("fault", ["ENOSPC@1:.png", "ENOSPC@1:audit.csv", "EIO@1:audit.html"])
def test_audit_stops_at_a_full_disk_and_a_rerun_equals_an_uninterrupted_audit(
        images: Path, tmp_path: Path, capsys, monkeypatch, fault: str) -> None:
    args = [str(images), "--evidence", "-q"]
    ref, out = tmp_path / "ref", tmp_path / "audit"
    assert _cli(["audit", *args, "--out", str(ref)], capsys, monkeypatch)[0] == 1  # the broken file's row
    assert list((ref / "evidence").glob("*.png"))
    code, err = _cli(["audit", *args, "--out", str(out)], capsys, monkeypatch, fault)
    assert code == 2
    _one_line(err, problem="disk full" if "ENOSPC" in fault else "I/O error", where=out,
              fix="then run the same command again to resume")
    _no_temporaries(out)
    assert not (out / "audit.html").exists()
    if (out / "audit.csv").exists():  # audit.html failed: the rows and evidence they name are whole
        assert (out / "audit.csv").read_bytes() == (ref / "audit.csv").read_bytes()
    code, err = _cli(["audit", *args, "--out", str(out)], capsys, monkeypatch)
    assert code == 1
    assert _tree(out) == _tree(ref)


# ----- magnification export -------------------------------------------------------------------------
def test_export_on_a_full_disk_keeps_the_old_model_file_and_a_rerun_writes_the_same_bytes(
        tmp_path: Path, capsys, monkeypatch) -> None:
    ref, out = tmp_path / "ref.pt", tmp_path / "models" / "model.pt"
    assert _cli(["magnification", "export", str(SHIPPED_MODEL), "--out", str(ref)], capsys, monkeypatch)[0] == 0
    for fault in ("ENOSPC@1", "EIO@1"):
        code, err = _cli(["magnification", "export", str(SHIPPED_MODEL), "--out", str(out)], capsys, monkeypatch, fault)
        assert code == 2
        _one_line(err, problem="disk full" if fault.startswith("ENOSPC") else "I/O error", where=out,
                  fix="then run the same command again to resume")
        assert not out.exists()
        _no_temporaries(out.parent)
    out.write_bytes(b"an older model")  # a failed export leaves the file it was to replace as it was
    assert _cli(["magnification", "export", str(SHIPPED_MODEL), "--out", str(out)], capsys, monkeypatch,
                "ENOSPC@1")[0] == 2
    assert out.read_bytes() == b"an older model"
    assert _cli(["magnification", "export", str(SHIPPED_MODEL), "--out", str(out)], capsys, monkeypatch)[0] == 0
    assert out.read_bytes() == ref.read_bytes()


# ----- dmsl train -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuples(tmp_path_factory) -> Path:
    return make_tuple_folder(tmp_path_factory.mktemp("dmsl") / "data", patients=6, per_class=4)


@pytest.fixture(scope="module")
def dmsl_reference(tuples: Path, tmp_path_factory) -> Path:
    """A DMSL run on ``tuples`` that nothing interrupted."""
    import torch

    ref = tmp_path_factory.mktemp("dmsl-ref") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run(_train(tuples, ref)) == 0
    finally:
        torch.set_num_threads(before)
    return ref


def _train(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["dmsl", "train", str(data), "--out", str(run_dir), "--backbone", "tiny", "--mags", "40,20", "--folds", "2",
            "--epochs", "1", "--batch-size", "16", "--workers", "0", "--quiet", *extra]


def _results(run_dir: Path) -> dict[str, bytes]:
    """What a DMSL run concluded: its config, splits, predictions and metrics (not logs, not checkpoint bytes)."""
    tree = _tree(run_dir)
    return {k: v for k, v in tree.items() if not k.endswith(".ckpt") and "/logs/" not in k and "/tb/" not in k}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("fault", ["ENOSPC@2:.ckpt", "EIO@3:.ckpt", "ENOSPC@2:.json"])
def test_dmsl_train_stops_at_a_full_disk_and_resuming_equals_an_uninterrupted_run(
        tuples: Path, dmsl_reference: Path, tmp_path: Path, capsys, monkeypatch, fault: str) -> None:
    import torch

    ref, run_dir = dmsl_reference, tmp_path / "run"
    code, err = _cli(_train(tuples, run_dir), capsys, monkeypatch, fault)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert ("disk full" if "ENOSPC" in fault else "I/O error") in errors[0] and str(run_dir) in errors[0]
    assert "then run the same command with --resume" in errors[0], errors[0]
    _no_temporaries(run_dir)
    for ckpt in run_dir.rglob("*.ckpt"):  # every checkpoint on disk is whole
        torch.load(ckpt, map_location="cpu", weights_only=False)
    code, err = _cli(_train(tuples, run_dir, "--resume"), capsys, monkeypatch)
    assert code == 0, err
    assert _results(run_dir) == _results(ref)
    names = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*.ckpt"))  # noqa: E731
    assert names(run_dir) == names(ref)


# ----- a real full file system ----------------------------------------------------------------------
@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A tmpfs of 1 MiB at ``tmp_path/mnt`` (root only; skipped where it cannot be mounted).

    The first slide of ``small_cohort`` (23 tuples, about 0.73 MiB) fits and is journalled when it ends;
    the second fills the disk. A smaller disk could fill before the first batch of journal rows
    (``JOURNAL_BATCH`` tuples) is appended, leaving nothing finished to keep.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def test_tile_into_a_real_full_file_system_then_resume_once_there_is_space(
        small_cohort: Path, tiled: Path, tiny_tmpfs: Path, capsys, monkeypatch) -> None:
    ref = tiled
    assert sum(p.stat().st_size for p in ref.rglob("*") if p.is_file()) > 1.4 * 1024 * 1024  # it cannot fit
    out = tiny_tmpfs / "ds"
    code, err = _cli(["tile", str(small_cohort), "--out", str(out), *TILE], capsys, monkeypatch)
    assert code == 2
    _one_line(err, problem="disk full", where=out, fix="free space or choose another output folder")
    _no_temporaries(out)
    assert 0 < _journalled_images_complete(out) < len(manifest_by_id(ref))
    assert not (out / "manifest.csv").exists()
    # free space: the same file system, grown
    subprocess.run(["mount", "-o", "remount,size=32m", str(tiny_tmpfs)], check=True)
    code, err = _cli(["tile", str(small_cohort), "--out", str(out), *TILE], capsys, monkeypatch)
    assert code == 0, err
    assert_same_dataset(out, ref)
    assert _slides(out) == _slides(ref)
