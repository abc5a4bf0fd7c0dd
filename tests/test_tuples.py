"""Tuple datasets (dataset folder and straight from slides) and tuple-consistent augmentation."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from histomag.data.tuples import (
    SlideTupleDataset,
    TupleAugment,
    TupleDataset,
    TupleNormalize,
    rgb_to_tensor,
    tuple_transform,
)
from histomag.errors import DatasetError
from helpers import downsample, make_tuple_folder, render

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_tuple_folder(tmp_path / "data", patients=3, per_class=2, unlabelled=1)


def test_dataset_reads_labelled_tuples_in_requested_order(folder: Path) -> None:
    ds = TupleDataset(folder, magnifications=[20, 40])
    assert len(ds) == 3 * 4  # unlabelled rows are dropped
    assert ds.classes == ["dots", "rings"]
    images, label, index = ds[5]
    assert [tuple(x.shape) for x in images] == [(3, 32, 32), (3, 64, 64)]
    assert images[0].dtype == torch.float32 and 0.0 <= float(images[0].min()) and float(images[0].max()) <= 1.0
    assert label == ds.classes.index(ds.rows[5]["label"]) and index == 5
    # the 20x member is the 40x member area-downsampled: same field of view
    assert torch.allclose(F.avg_pool2d(images[1][None], 2)[0], images[0], atol=2 / 255)
    everything = TupleDataset(folder, labelled_only=False, classes=ds.classes)
    assert len(everything) == 15 and everything.targets.count(-1) == 3


def test_default_collate_gives_one_batch_tensor_per_magnification(folder: Path) -> None:
    loader = torch.utils.data.DataLoader(TupleDataset(folder), batch_size=4)
    xs, y, idx = next(iter(loader))
    assert [tuple(x.shape) for x in xs] == [(4, 3, 64, 64), (4, 3, 32, 32)]
    assert y.tolist() == [0, 0, 1, 1] and idx.tolist() == [0, 1, 2, 3]


def test_other_magnifications_are_refused_with_the_fix(folder: Path) -> None:
    with pytest.raises(DatasetError, match=r"tuples in .* are 40x,20x but magnifications= asks 40x,10x: re-tile or change"):
        TupleDataset(folder, magnifications=[40, 10])
    with pytest.raises(DatasetError, match="40x,20x but magnifications= asks 40x"):
        TupleDataset(folder, magnifications=[40])
    assert len(TupleDataset(folder, magnifications=[40], subset=True)[0][0]) == 1


def test_missing_images_are_one_error_listing_them(folder: Path) -> None:
    for p in sorted((folder / "images").rglob("*_20x.png"))[:4]:
        p.unlink()
    with pytest.raises(DatasetError, match=r"4 referenced images are missing \(images/.*and 1 more\)") as exc:
        TupleDataset(folder)
    assert "\n" not in str(exc.value)


def test_folder_without_dataset_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset.json"):
        TupleDataset(tmp_path)


def _rescaled_pair(seed: int = 0) -> list[torch.Tensor]:
    big = render("rings", 64, np.random.default_rng(seed))
    return [rgb_to_tensor(big), rgb_to_tensor(downsample(big, 2))]


def _mismatch(big: torch.Tensor, small: torch.Tensor) -> float:
    """Mean absolute difference between the small member and the big one downsampled."""
    return float((F.avg_pool2d(big[None], 2)[0] - small).abs().mean())


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_is_identical_for_every_member(seed: int) -> None:
    aug = TupleAugment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.5,
                       generator=torch.Generator().manual_seed(seed))
    params = aug.sample()
    aug.generator = torch.Generator().manual_seed(seed)
    big, small = aug(_rescaled_pair(seed))
    # the small member is still the big one downsampled: same flip, rotation and colours (the
    # colour ops clip at 1, which makes a few edge pixels differ slightly)
    assert _mismatch(big, small) < 0.01, params
    assert float((big - _rescaled_pair(seed)[0]).abs().mean()) > 0.01  # and something did change


@pytest.mark.parametrize("seed", range(4))
def test_geometric_augmentation_keeps_members_exactly_aligned(seed: int) -> None:
    aug = TupleAugment(brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0,
                       generator=torch.Generator().manual_seed(seed))
    big, small = aug(_rescaled_pair(seed))
    assert torch.allclose(F.avg_pool2d(big[None], 2)[0], small, atol=1 / 255)


def test_hue_rotation_keeps_luma_and_a_full_turn_is_the_identity() -> None:
    from histomag.data.tuples import hue_rotate

    x = _rescaled_pair()[0] * 0.6 + 0.2  # away from the clip limits
    luma = lambda im: (torch.tensor([0.299, 0.587, 0.114])[:, None, None] * im).sum(0)  # noqa: E731
    shifted = hue_rotate(x, 0.2)
    assert float((shifted - x).abs().mean()) > 0.02
    assert torch.allclose(luma(shifted), luma(x), atol=1e-5)
    assert torch.allclose(hue_rotate(x, 1.0), x, atol=1e-5) and torch.allclose(hue_rotate(x, 0.0), x)


def test_augmentation_varies_between_tuples() -> None:
    aug = TupleAugment(generator=torch.Generator().manual_seed(0))
    draws = [aug.sample() for _ in range(20)]
    assert len({(d["hflip"], d["vflip"], d["k90"]) for d in draws}) > 3
    assert len({round(d["brightness"], 6) for d in draws}) == 20


def test_independent_augmentation_would_break_the_pair() -> None:
    """The consistency check above can fail: members augmented separately do not match."""
    aug = TupleAugment(generator=torch.Generator().manual_seed(3))
    big, small = _rescaled_pair()
    separately = [aug([big])[0], aug([small])[0]]
    assert _mismatch(*separately) > 0.03


def test_normalisation_uses_the_given_statistics(folder: Path) -> None:
    ds = TupleDataset(folder, transform=TupleNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    raw = TupleDataset(folder)
    assert torch.allclose(ds[0][0][0], (raw[0][0][0] - 0.5) / 0.25)
    train = TupleDataset(folder, transform=tuple_transform((0.5,) * 3, (0.5,) * 3, train=True))
    assert [tuple(x.shape) for x in train[0][0]] == [(3, 64, 64), (3, 32, 32)]


# ----- straight from slides -----------------------------------------------------------------------
@pytest.fixture
def slide_with_labels(tmp_path: Path) -> tuple[Path, Path]:
    """A 1024 px 40x image slide: dots on the left half (class 1), rings on the right (class 2)."""
    rng = np.random.default_rng(1)
    img = np.full((512, 1024, 3), 255, np.uint8)
    for y in range(0, 512, 64):
        for x in range(0, 1024, 64):
            img[y:y + 64, x:x + 64] = render("dots" if x < 512 else "rings", 64, rng)
    path = tmp_path / "slide.png"
    Image.fromarray(img).save(path)
    labels = np.ones((512, 1024), np.uint8)
    labels[:, 512:] = 2
    lab = tmp_path / "slide.labels.png"
    Image.fromarray(labels).save(lab)
    (tmp_path / "classes.json").write_text(json.dumps({"1": "dots", "2": "rings"}))
    return path, lab


def test_slide_dataset_plans_labelled_tuples_and_reads_them_lazily(slide_with_labels) -> None:
    from histomag.data.folder import TileSettings
    from histomag.tiling.jobs import SlideJob

    path, lab = slide_with_labels
    settings = TileSettings((40.0, 20.0), 128, overlap=0.5, min_tissue=0.5, tissue_mpp=2.0)
    ds = SlideTupleDataset([SlideJob(str(path), mpp=0.25, labels=str(lab), patient_id="P1")], settings)
    assert ds.classes == ["dots", "rings"]
    assert ds.grid_shapes == [(7, 15)]
    assert len(ds) == 7 * 15 - 7  # the column of fields straddling the label border is dropped
    assert {r.grid_col for r in ds.records} == set(range(15)) - {7}
    assert ds._handles == {}  # nothing opened yet
    images, label, _ = ds[0]
    assert [tuple(x.shape) for x in images] == [(3, 128, 128), (3, 64, 64)]
    assert torch.allclose(F.avg_pool2d(images[0][None], 2)[0], images[1], atol=1 / 255)
    assert label == 0 and ds.rows[0]["patient_id"] == "P1" and len(ds._handles) == 1
    clone = pickle.loads(pickle.dumps(ds))  # handles are not pickled: each worker opens its own
    assert clone._handles == {} and torch.equal(clone[0][0][0], images[0])
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2)
    labels = torch.cat([y for _, y, _ in loader])
    assert labels.tolist() == ds.targets
    ds.close()


def test_training_streams_tuples_straight_from_slides(slide_with_labels, tmp_path: Path) -> None:
    """No pre-extraction: a model trains on tuples read lazily from the slide in 2 loader workers."""
    from histomag.data.folder import TileSettings
    from histomag.tiling.jobs import SlideJob
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.fit import fit_fold, load_task, predict_probs

    path, lab = slide_with_labels
    settings = TileSettings((40.0, 20.0), 64, overlap=0.0, min_tissue=0.5, tissue_mpp=2.0)
    job = SlideJob(str(path), mpp=0.25, labels=str(lab), patient_id="P1")
    train = SlideTupleDataset([job], settings, transform=tuple_transform((0.5,) * 3, (0.5,) * 3, train=True))
    plain = SlideTupleDataset([job], settings, transform=tuple_transform((0.5,) * 3, (0.5,) * 3, train=False))
    before = sorted(tmp_path.rglob("*.png"))  # the slide and its label mask
    config = DMSLConfig(backbone="tiny", batch_size=16, epochs=6, patience=20, num_workers=2, lr=3e-3)
    result = fit_fold(config, train, None, tmp_path / "run", class_names=train.classes, progress=False)
    probs = predict_probs([load_task(result.last_checkpoint)], plain, batch_size=32)
    accuracy = float((probs.argmax(1) == np.asarray(plain.targets)).mean())
    assert accuracy >= 0.8, accuracy
    assert sorted(tmp_path.rglob("*.png")) == before  # nothing was extracted to disk

