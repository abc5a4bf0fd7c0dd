"""A cohort across processes and machines: Dask tasks per slide, shards of one batch and their merge."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import TILE, assert_same_dataset
from histomag.cli.main import run
from histomag.cluster import ClusterError, Shard, check_shared, map_tasks, parse_shard
from histomag.errors import ConfigError

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")


def test_shard_parsing_and_assignment() -> None:
    assert parse_shard("2/3") == Shard(2, 3)
    assert [Shard(k, 3).take(list("abcdefg")) for k in (1, 2, 3)] == [list("adg"), list("be"), list("cf")]
    for bad in ("3", "0/2", "3/2", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="shard="):
            parse_shard(bad)


def test_shards_merged_equal_a_one_process_run(cohort: Path, reference: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert run(["tile", str(cohort), "--out", str(out), *TILE, "--shard", "2/2"]) == 0
    assert run(["merge", str(out)]) == 2  # shard 1 has not run: refused, nothing merged
    assert "shard(s) 1 of 2 have not finished" in capsys.readouterr().err
    assert not (out / "manifest.csv").exists()
    assert run(["tile", str(cohort), "--out", str(out), *TILE, "--shard", "1/2"]) == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["1-of-2", "2-of-2"]
    assert run(["merge", str(out)]) == 0
    assert_same_dataset(out, reference)
    assert (out / "slides.csv").read_text() == (reference / "slides.csv").read_text()  # same rows, same order
    assert (out / "dataset.json").read_text() == (reference / "dataset.json").read_text()
    assert not (out / "shards").exists()
    assert run(["merge", str(out)]) == 2  # nothing left to merge: one line
    assert "no shards to merge" in capsys.readouterr().err


def test_shards_of_different_settings_are_not_merged(cohort: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert run(["tile", str(cohort), "--out", str(out), *TILE, "--shard", "1/2"]) == 0
    assert run(["tile", str(cohort), "--out", str(out), *TILE, "--shard", "2/2", "--format", "jpeg"]) == 0
    assert run(["merge", str(out)]) == 2
    assert "image_format" in capsys.readouterr().err
    assert run(["tile", str(cohort), "--out", str(out), *TILE, "--shard", "1/3"]) == 0
    assert run(["merge", str(out)]) == 2
    assert "shards of different batches" in capsys.readouterr().err
    assert not (out / "manifest.csv").exists()


def test_an_unreachable_scheduler_is_one_line_before_any_work(cohort: Path, tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    import histomag.cluster

    monkeypatch.setattr(histomag.cluster, "CONNECT_TIMEOUT_S", 1.0)
    out = tmp_path / "ds"
    assert run(["tile", str(cohort), "--out", str(out), *TILE, "--cluster", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err[0]
    assert not out.exists()


def test_cluster_tiling_equals_a_one_process_run(cohort: Path, reference: Path, dask_cluster, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert run(["tile", str(cohort), "--out", str(out), *TILE, "--cluster", dask_cluster.scheduler_address]) == 0
    assert_same_dataset(out, reference)
    assert (out / "slides.csv").read_text() == (reference / "slides.csv").read_text()


def test_workers_that_cannot_see_the_files_are_refused(dask_cluster, tmp_path: Path) -> None:
    with distributed.Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        check_shared(client, tmp_path)
        with pytest.raises(ClusterError, match="cannot see .*nowhere"):
            check_shared(client, tmp_path / "nowhere")


def _die_or_square(x: int, marker: str) -> int:
    if x == 3 or (x == 2 and not os.path.exists(marker)):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies, as under the OOM killer
    return x * x


def test_a_task_whose_worker_dies_is_resubmitted_once_then_reported(dask_cluster, tmp_path: Path) -> None:
    done, lost = {}, {}
    with distributed.Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        map_tasks(client, _die_or_square, [(x, str(tmp_path / "died")) for x in range(5)],
                  on_done=done.__setitem__, on_lost=lost.__setitem__)
    assert done == {0: 0, 1: 1, 2: 4, 4: 16}  # 2 died once and was redone
    assert list(lost) == [3] and "KilledWorker" in lost[3]


def test_a_worker_killed_mid_slide_leaves_no_partial_tuple_and_the_slide_finishes(
        cohort: Path, reference: Path, dask_cluster, tmp_path: Path) -> None:
    """Kill every worker once tuples are being journalled; the scheduler's retry (here resubmission) finishes."""
    out = tmp_path / "ds"
    codes = []
    thread = threading.Thread(target=lambda: codes.append(
        run(["tile", str(cohort), "--out", str(out), *TILE, "--cluster", dask_cluster.scheduler_address])))
    thread.start()
    end = time.monotonic() + 60
    parts = out / "parts"
    while time.monotonic() < end and not (parts.is_dir() and any(p.stat().st_size > 200 for p in parts.glob("*.csv"))):
        time.sleep(0.01)
    with distributed.Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        pids = client.run(os.getpid)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    with distributed.Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)  # the nannies restart them (for the tests that follow)
    with open(out / "slides.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:  # lost twice (both kills hit it): reported, and the same command finishes it
        assert codes == [1 if len(failed) < len(rows) else 2]
        assert all("lost on the Dask cluster" in r["error"] for r in failed)
        assert run(["tile", str(cohort), "--out", str(out), *TILE, "--cluster", dask_cluster.scheduler_address]) == 0
    else:
        assert codes == [0]
    assert_same_dataset(out, reference)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    from helpers import nuclei_image

    folder = tmp_path_factory.mktemp("imgs")
    for i, mpp in enumerate((0.25, 0.5, 1.0)):
        Image.fromarray(nuclei_image(384, 384, mpp, np.random.default_rng(i), density=0.01)).save(folder / f"i{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    return folder


def test_audit_shards_merged_equal_a_one_process_audit(images: Path, tmp_path: Path, capsys) -> None:
    assert run(["audit", str(images), "--out", str(tmp_path / "local"), "-q"]) == 1
    for k in (1, 2, 3):
        assert run(["audit", str(images), "--out", str(tmp_path / "sharded"), "-q", "--shard", f"{k}/3"]) in (0, 1)
    assert run(["merge", str(tmp_path / "sharded")]) == 1  # one unreadable file, as in the batch
    for name in ("audit.csv", "audit.html"):
        assert (tmp_path / "sharded" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    assert not (tmp_path / "sharded" / "shards").exists()


def test_cluster_audit_equals_a_local_audit(dask_cluster, images: Path, tmp_path: Path, capsys) -> None:
    folder = images
    assert run(["audit", str(folder), "--out", str(tmp_path / "local"), "-q"]) == 1
    assert run(["audit", str(folder), "--out", str(tmp_path / "remote"), "-q", "--cluster",
                dask_cluster.scheduler_address]) == 1
    local = (tmp_path / "local" / "audit.csv").read_text()
    assert (tmp_path / "remote" / "audit.csv").read_text() == local
    assert local.count("\n") == 5 and "broken.png" in local
