"""Shared fixtures: in-memory pyramids, synthetic slides on disk, and the optional real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import TILE, MemorySlide, manifest_by_id, textured

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def memory_slide() -> MemorySlide:
    return MemorySlide(textured(1024, 1536))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny CPU models are fastest single-threaded (and do not fight parallel jobs for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def dask_cluster():
    """A local Dask cluster of 2 worker processes, one task at a time each; a worker that dies fails its
    task at once (no silent retries by the scheduler). Skipped without Dask."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=50) as lc:
            yield lc


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """Three small synthetic slides with label masks (read only by the tests that use them)."""
    from histomag.synth.cohort import make_cohort

    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, n_slides=3, seed=5, size_px=1536)
    return root


@pytest.fixture(scope="session")
def reference(cohort: Path, tmp_path_factory) -> Path:
    """``cohort`` tiled with ``TILE`` by one process, never interrupted: what every other way must equal."""
    from histomag.cli.main import run

    out = tmp_path_factory.mktemp("reference") / "ds"
    assert run(["tile", str(cohort), "--out", str(out), *TILE]) == 0
    assert len(manifest_by_id(out)) > 100
    return out
