"""Shared fixtures: in-memory pyramids, synthetic slides on disk, and the optional real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histomag.slide.base import Slide, SlideMetadata

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def area_halve(arr: np.ndarray) -> np.ndarray:
    """Exact 2x2 area mean (rounded), the way a pyramid level is made."""
    h, w = arr.shape[0] // 2 * 2, arr.shape[1] // 2 * 2
    a = arr[:h, :w].astype(np.float64)
    return np.floor((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4 + 0.5).astype(np.uint8)


class MemorySlide(Slide):
    """A pyramid held in memory (level i = 2**i downsample), for tests of the read logic."""

    backend = "memory"

    def __init__(self, level0: np.ndarray, *, mpp: float | None = 0.25, objective_power: float | None = 40.0,
                 n_levels: int = 3, mpp_override: float | None = None, name: str = "mem.svs") -> None:
        self.levels = [level0]
        for _ in range(n_levels - 1):
            self.levels.append(area_halve(self.levels[-1]))
        dims = tuple((a.shape[1], a.shape[0]) for a in self.levels)
        downs = tuple(level0.shape[1] / a.shape[1] for a in self.levels)
        meta = SlideMetadata(dims, downs, mpp=mpp, objective_power=objective_power, vendor="memory")
        super().__init__(Path(name), meta, mpp_override)

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        return self.levels[level][ly:ly + height, lx:lx + width].copy()


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (so resampling errors are small but misalignment is visible)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = rng.random((h, w, 3))
    smooth = np.stack([gaussian_filter(noise[..., c], 3) for c in range(3)], axis=2)
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)
    return (smooth * 200 + 30).astype(np.uint8)


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
