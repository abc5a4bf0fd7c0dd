"""Cached features of frozen encoders: the same results as without the cache, computed once, keyed by what made them."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tuple_folder

from histomag.backbones import TimmBackbone, create_backbone
from histomag.data.tuples import TupleDataset, tuple_transform
from histomag.dmsl.config import DMSLConfig
from histomag.dmsl.cv import cross_validate
from histomag.dmsl.features import FeatureStore, FeatureTupleDataset
from histomag.dmsl.network import MultiMagNet

pytest.importorskip("timm")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

VIT = "timm:vit_tiny_patch16_224,depth=2,embed_dim=32,num_heads=2"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """6 patients x 4 tuples of each class (40x at 64 px, 20x at 32 px) and a ViT weights file."""
    root = tmp_path_factory.mktemp("features")
    torch.manual_seed(3)
    weights = root / "vit.pt"
    torch.save(create_backbone(VIT).state_dict(), weights)
    return make_tuple_folder(root / "data", patients=6, per_class=4), weights


def _config(weights: Path, **kw) -> DMSLConfig:
    base = dict(backbone=VIT, weights=str(weights), batch_size=8, epochs=2, patience=20, folds=2, num_workers=0,
                freeze_backbone=True, augment=False, mode="sim", lr=3e-3)
    return DMSLConfig(**{**base, **kw})


def _predictions(run: Path, folds: int = 2) -> np.ndarray:
    import csv

    rows = []
    for k in range(1, folds + 1):
        with (run / "folds" / str(k) / "predictions.csv").open() as f:
            rows += [[float(v) for c, v in r.items() if "prob_" in c] for r in csv.DictReader(f)]
    return np.asarray(rows)


class _Count:
    """Counts the timm encoder passes (a cache hit makes none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        original = TimmBackbone.forward_features

        def counted(backbone, x):  # noqa: ANN001, ANN202
            self.n += 1
            return original(backbone, x)

        monkeypatch.setattr(TimmBackbone, "forward_features", counted)


def test_cached_features_give_the_same_metrics_and_predictions_and_are_reused(
        data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, weights = data
    plain = cross_validate(folder, tmp_path / "plain", _config(weights), progress=False)
    count = _Count(monkeypatch)
    cached = cross_validate(folder, tmp_path / "cached", _config(weights, cache_features=True), progress=False)
    filled = count.n
    assert filled > 0
    for level in ("patch", "patient"):
        for metric, value in plain.summary[level].items():
            assert cached.summary[level][metric]["mean"] == pytest.approx(value["mean"], abs=1e-4), (level, metric)
    np.testing.assert_allclose(_predictions(tmp_path / "cached"), _predictions(tmp_path / "plain"), atol=1e-4)
    store = next((folder / "features").iterdir())
    meta = json.loads((store / "meta.json").read_text())
    assert meta["n_tuples"] == 48 and meta["transform"]["augment"] is False
    assert sorted(p.name.split("-")[0] for p in store.glob("*x-*.npy") if ".done" not in p.name) == ["20x", "40x"]
    # later runs, in other modes, read the cache: no encoder pass at all
    cross_validate(folder, tmp_path / "mm", _config(weights, cache_features=True, mode="mm"), progress=False)
    cross_validate(folder, tmp_path / "single", _config(weights, cache_features=True, mode="single",
                                                          magnifications=(40,)), progress=False)
    assert count.n == filled


def test_other_weights_or_other_data_never_read_a_stale_cache(data: tuple[Path, Path], tmp_path: Path) -> None:
    folder, weights = data
    config = _config(weights, cache_features=True)
    images = TupleDataset(folder, config.magnifications, transform=tuple_transform((0.5,) * 3, (0.5,) * 3, train=False))
    ids = [r["tuple_id"] for r in images.rows]

    def store(data_dir: Path = folder, **kw) -> FeatureStore:
        return FeatureStore(tmp_path / "cache", data_dir, ids, magnifications=(40, 20), settings={"size": 64},
                            mean=kw.get("mean", (0.5,) * 3), std=(0.5,) * 3, batch_size=8)

    net = MultiMagNet(VIT, 2, (40, 20), freeze_backbone=True, weights=str(weights)).eval()
    first = store().dataset(net, images)
    assert isinstance(first, FeatureTupleDataset) and len(first) == len(images)
    maps, y, i = first[5]
    with torch.no_grad():
        direct = net.forward_features([x[None] for x in images[5][0]])
    assert all(torch.allclose(m, d[0], atol=1e-6) for m, d in zip(maps, direct)) and (y, i) == (images.targets[5], 5)
    assert store().dir == first.files[0].parent  # same data, settings and transform: the same folder
    assert store(mean=(0.4,) * 3).dir != store().dir  # another normalisation
    other = MultiMagNet(VIT, 2, (40, 20), freeze_backbone=True).eval()  # other (random) encoder weights
    assert store().dataset(other, images).files[0] != first.files[0]
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(folder, copy)
    with (copy / "manifest.csv").open("a") as f:
        f.write("\n")
    assert store(copy).dir != store().dir  # a changed manifest is other data
    again = pickle.loads(pickle.dumps(first))  # what a DataLoader worker gets: paths, no arrays
    assert again._arrays is None and torch.equal(again[5][0][1], maps[1])
