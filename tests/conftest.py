"""Shared fixtures: in-memory pyramids, synthetic slides on disk, and the optional real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import MemorySlide, textured

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
