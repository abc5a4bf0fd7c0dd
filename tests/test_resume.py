"""Crash and resume with real processes: a killed main process, its workers, torn journals, a second run."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import histomag
from helpers import TILE, assert_same_dataset, manifest_by_id, textured
from histomag.cli.main import run
from histomag.data.folder import DatasetFolder, image_column, manifest_columns
from histomag.data.runlock import FolderLock
from histomag.errors import FolderInUseError

SRC = Path(histomag.__file__).resolve().parents[1]
MAGS = (40.0, 20.0)


def _cli(*args: str, stderr: Path) -> subprocess.Popen:
    """``histomag ARGS`` in a new process running this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-c", "from histomag.cli.main import main; main()", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(stderr, "wb"))


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir():  # Linux: an unreaped zombie counts as gone
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _journal_rows(out: Path) -> int:
    return sum(max(0, p.read_bytes().count(b"\n") - 1) for p in (out / "parts").glob("*.csv")) \
        if (out / "parts").is_dir() else 0


@pytest.mark.parametrize("workers", [2, 1])
def test_killing_only_the_main_process_then_resuming_equals_an_uninterrupted_run(
        cohort: Path, reference: Path, tmp_path: Path, workers: int) -> None:
    out = tmp_path / "ds"
    proc = _cli("tile", str(cohort), "--out", str(out), "--workers", str(workers), *TILE,
                stderr=tmp_path / "stderr")
    n = len(manifest_by_id(reference))
    end = time.monotonic() + 60
    while _journal_rows(out) < n // 4 and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    kids = _children(proc.pid)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, as an OOM killer or a scheduler does
    proc.wait()
    try:
        if workers > 1 and Path("/proc").is_dir():
            assert len(kids) >= workers
        assert _wait_gone(kids, timeout=5.0) == [], "worker processes outlived the run"
    finally:
        for pid in kids:  # do not leave them behind when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    written = _journal_rows(out)
    assert 0 < written < n
    time.sleep(0.3)
    assert _journal_rows(out) == written, "a journal grew after the run was killed"
    assert not (out / "manifest.csv").exists()
    # resume, twice: the second run finds everything done and changes nothing
    assert run(["tile", str(cohort), "--out", str(out), "--workers", str(workers), *TILE]) == 0
    assert_same_dataset(out, reference)
    assert run(["tile", str(cohort), "--out", str(out), "--workers", str(workers), *TILE]) == 0
    assert_same_dataset(out, reference)
    slides = list(csv.DictReader(open(out / "slides.csv")))
    assert sum(int(s["tuples_written"]) for s in slides) == 0 and sum(int(s["tuples_resumed"]) for s in slides) == n


def _row(folder: DatasetFolder, i: int, *, label: str = "tumor", slide: str = "s") -> dict:
    """A journal row whose two images exist."""
    row = {c: "" for c in manifest_columns(MAGS)}
    row.update(tuple_id=f"{slide}_{i}", slide_id=slide, patient_id=slide, x=i, y=0, label=label,
               class_fractions=json.dumps({"normal": 0.1, "tumor": 0.9}, sort_keys=True))
    for m in MAGS:
        path = folder.image_path(slide, row["tuple_id"], m)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(textured(16, 16, i)).save(path)
        row[image_column(m)] = path.relative_to(folder.root).as_posix()
    return row


def _line(columns: list[str], row: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in columns])
    return buf.getvalue()


def test_a_journal_with_repeated_and_torn_lines_is_repaired_into_one_row_per_tuple(tmp_path: Path) -> None:
    folder = DatasetFolder(tmp_path / "ds")
    columns = manifest_columns(MAGS)
    r = [_row(folder, i) for i in range(7)]
    relabelled = {**r[1], "label": "normal"}
    torn_in_quotes = _line(columns, r[3])[: _line(columns, r[3]).index("tumor")]  # cut inside the quoted JSON
    (tmp_path / "ds" / r[5][image_column(20.0)]).unlink()  # journalled, but an image is gone
    png = tmp_path / "ds" / r[6][image_column(40.0)]
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # journalled, but an image is truncated
    header = _line(columns, dict(zip(columns, columns)))
    text = "".join([
        header, _line(columns, r[0]), _line(columns, r[1]), _line(columns, r[2]),
        _line(columns, relabelled),  # the same tuple again: the last complete row wins
        torn_in_quotes + _line(columns, r[3]),  # a torn line with the next append glued onto it...
        _line(columns, r[3]),  # ...does not swallow the line after it
        _line(columns, r[4]), _line(columns, r[4]),
        _line(columns, r[5]), _line(columns, r[6]),
        _line(columns, r[0])[:40],  # torn at the end
    ])
    part = folder.part_path("s")
    part.parent.mkdir(parents=True)
    part.write_text(text)
    # leftovers of a crash: a temporary file, an image never journalled, a slide without a journal
    tmp_png = png.parent / f".{png.name}.x1y2.tmp"
    tmp_png.write_bytes(b"\x89PNG")
    unjournalled = folder.image_path("s", "s_99", 40.0)
    Image.fromarray(textured(16, 16, 99)).save(unjournalled)
    lost_slide = folder.image_path("t", "t_0", 40.0)
    lost_slide.parent.mkdir(parents=True)
    Image.fromarray(textured(16, 16, 0)).save(lost_slide)
    notes = tmp_path / "ds" / "images" / "s" / "notes.txt"  # not ours: kept
    notes.write_text("mine")

    assert folder.write_manifest(["s"], columns) == 5
    rows = list(csv.DictReader(open(folder.manifest_path, newline="")))
    assert [x["tuple_id"] for x in rows] == ["s_0", "s_1", "s_2", "s_3", "s_4"]
    assert rows[1]["label"] == "normal" and rows[0] == {c: str(r[0][c]) for c in columns}
    # the journal is rewritten clean: reading it again changes nothing, and appends follow a valid line
    clean = part.read_bytes()
    assert clean == (header + "".join(_line(columns, x) for x in rows)).encode()
    assert [x["tuple_id"] for x in folder.read_part("s", columns)] == [x["tuple_id"] for x in rows]
    assert part.read_bytes() == clean
    # every image a row names is intact; nothing else of ours is left
    left = sorted(p.relative_to(folder.root).as_posix() for p in (folder.root / "images").rglob("*") if p.is_file())
    assert left == sorted([x[image_column(m)] for x in rows for m in MAGS] + ["images/s/notes.txt"])
    assert not (folder.root / "images" / "t").exists()
    folder.append_part("s", columns, _row(folder, 7))
    assert [x["tuple_id"] for x in folder.read_part("s", columns)][-1] == "s_7"


def test_one_run_per_folder_and_a_newer_run_fences_off_the_older_ones_writers(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    columns = manifest_columns(MAGS)
    with FolderLock(root) as old:
        with pytest.raises(FolderInUseError) as e:
            FolderLock(root).acquire()
        assert f"another histomag run (pid {os.getpid()})" in str(e.value) and "\n" not in str(e.value)
        DatasetFolder(root, run_token=old).append_part("s", columns, _row(DatasetFolder(root), 0))
    # the old run's owner is gone (lock released); a new run takes the folder over
    with FolderLock(root) as new:
        assert new != old
        before = DatasetFolder(root).part_path("s").read_bytes()
        late = DatasetFolder(root, run_token=old)
        with pytest.raises(FolderInUseError, match="taken over by a newer run"):
            late.append_part("s", columns, _row(DatasetFolder(root), 1))
        with pytest.raises(FolderInUseError):
            late.read_part("s", columns)
        assert DatasetFolder(root).part_path("s").read_bytes() == before
        DatasetFolder(root, run_token=new).append_part("s", columns, _row(DatasetFolder(root), 2))
        assert [x["tuple_id"] for x in DatasetFolder(root).read_part("s", columns)] == ["s_0", "s_2"]


def test_cli_refuses_a_second_run_on_the_same_folder(cohort: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    with FolderLock(out):
        code = run(["tile", str(cohort), "--out", str(out), *TILE])
    err = capsys.readouterr().err
    assert code == 2 and "is being written by another histomag run" in err and err.count("\n") == 1
    assert not (out / "dataset.json").exists()


def test_a_worker_exits_when_its_parent_dies_even_without_the_kernel_signal(tmp_path: Path) -> None:
    """The portable path: the watch thread alone (no PR_SET_PDEATHSIG) ends an idle, orphaned worker."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, os, time\n"
        "def child(ppid):\n"
        "    import histomag.workers as w\n"
        "    w._kill_me_with_parent = lambda: None\n"
        "    w.watch_parent(ppid, poll_s=0.1)\n"
        "    print('watching', flush=True)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=child, args=(os.getpid(),))\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    parent = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "watching"
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_gone([child], timeout=5.0) == []
    finally:
        parent.kill()
        parent.wait()


def _pink(size: int, seed: int) -> np.ndarray:
    t = textured(size, size, seed).astype(np.float32) / 255
    rgb = np.stack([230 - 40 * t[..., 0], 120 + 60 * t[..., 1], 190 - 30 * t[..., 2]], axis=2)
    return rgb.clip(0, 255).astype(np.uint8)


def test_a_killed_magnification_build_leaves_no_manifest_and_a_rerun_gives_the_same_set(tmp_path: Path) -> None:
    for i in range(4):
        Image.fromarray(_pink(640, i)).save(tmp_path / f"im{i}.png")
    (tmp_path / "index.csv").write_text("image,organ,magnification,mpp\n"
                                        + "".join(f"im{i}.png,colon,,0.25\n" for i in range(4)))
    build = ["magnification", "build", str(tmp_path / "index.csv"), "--regions-um", "120,150",
             "--val-fraction", "0.25", "--test-fraction", "0.25", "-q"]
    mags = ["--mags", "5,10,20,40"]
    assert run([*build, *mags, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "set"
    assert run([*build, "--mags", "5,30", "--out", str(out)]) == 0  # an earlier set, other settings
    proc = _cli(*build, *mags, "--out", str(out), stderr=tmp_path / "stderr")
    end = time.monotonic() + 60
    while not list((out / "images").rglob("*_40x.png")) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.csv").exists()  # neither half a set nor the earlier set's list
    assert run([*build, *mags, "--out", str(out)]) == 0
    ref = tmp_path / "ref"
    assert (out / "manifest.csv").read_text() == (ref / "manifest.csv").read_text()
    assert (out / "sources.csv").read_text() == (ref / "sources.csv").read_text()
    files = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    listed = {r["image"] for r in csv.DictReader(open(ref / "manifest.csv"))}
    assert files == listed  # the earlier set's 30x crops and any half-written file are gone
    for rel in listed:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes()
