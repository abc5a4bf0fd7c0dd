"""Magnification-model data, Lightning training, loading, prediction and metrics (tiny backbone, CPU, seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_magset, write_set

from histomag.errors import CheckpointError, ConfigError, DatasetError
from histomag.magnification.data import (
    PAD_FILL,
    MagnificationDataset,
    crop_boxes,
    jitter_colors,
    pad_to_size,
    read_manifest,
)
from histomag.magnification.metrics import (
    level_metrics,
    magnification_metrics,
    scatter_plot,
    write_metrics,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def magset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_magset(tmp_path_factory.mktemp("magset"))


def _denormalize(t: torch.Tensor) -> np.ndarray:
    m = torch.tensor(MEAN).view(3, 1, 1)
    s = torch.tensor(STD).view(3, 1, 1)
    return (t * s + m).mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def _dataset(root: Path, crop: int, *, train: bool, augment: bool = True) -> MagnificationDataset:
    return MagnificationDataset(root, "train", crop=crop, train=train, mean=MEAN, std=STD, rotate=augment,
                                flip=augment, color_jitter=(0.1, 0.1, 0.1, 0.02) if augment else None)


# ---------------------------------------------------------------- data: crops never resize


def test_augmented_crops_are_exact_windows_of_the_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (72, 84, 3), dtype=np.uint8)
    root = write_set(tmp_path, [(image, 20.0, "train")])
    ds = MagnificationDataset(root, "train", crop=64, train=True, mean=MEAN, std=STD, color_jitter=None)
    views = [np.rot90(v, k) for v in (image, image[:, ::-1]) for k in range(4)]  # the 8 dihedral views
    torch.manual_seed(0)
    for _ in range(5):
        x, mag = ds[0]
        assert x.shape == (3, 64, 64) and mag.item() == 20.0
        out = _denormalize(x)
        windows = (np.lib.stride_tricks.sliding_window_view(v, (64, 64, 3))[..., 0, :, :, :] for v in views)
        found = any((w == out).all(axis=(-3, -2, -1)).any() for w in windows)
        assert found, "an augmented crop is not a pixel-exact window of a rotated/flipped image"
    jittered = _dataset(root, 64, train=True)
    assert jittered[0][0].shape == (3, 64, 64)
    centre = _dataset(root, 64, train=False)
    assert torch.equal(centre[0][0], centre[0][0])
    assert (_denormalize(centre[0][0]) == image[4:68, 10:74]).all()


def test_small_images_are_padded_not_scaled(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    tiny = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    root = write_set(tmp_path, [(small, 4.0, "train"), (tiny, 1.0, "train")])
    for train in (True, False):
        ds = _dataset(root, 64, train=train, augment=False)
        out = _denormalize(ds[0][0])
        assert out.shape == (64, 64, 3)
        top, left = (64 - 30) // 2, (64 - 50) // 2
        assert (out[top : top + 30, left : left + 50] == small).all()  # original pixels unchanged
        assert (out[top - 1, left : left + 50] == small[1]).all()  # reflected, without repeating the edge
        assert (out[top + 30, left : left + 50] == small[-2]).all()
        out_tiny = _denormalize(ds[1][0])
        t0 = (64 - 10) // 2
        assert (out_tiny[t0 : t0 + 10, t0 : t0 + 10] == tiny).all()
        assert (out_tiny[:t0] == PAD_FILL).all() and (out_tiny[:, :t0] == PAD_FILL).all()  # too small to reflect
    padded, (top, left) = pad_to_size(small, 40)
    assert padded.shape == (40, 50, 3) and (top, left) == (5, 0)
    assert crop_boxes(100, 100, 64, 1) == [(18, 18)]
    boxes = crop_boxes(300, 200, 64, 4)
    assert len(boxes) == 4 and len(set(boxes)) == 4
    assert all(0 <= y <= 236 and 0 <= x <= 136 for y, x in boxes)


def test_color_jitter_is_mild_and_keeps_grey() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((16, 16, 3)).astype(np.float32)
    assert np.array_equal(jitter_colors(image), image)  # all amounts zero: identity
    torch.manual_seed(0)
    out = jitter_colors(image, 0.1, 0.1, 0.1, 0.02)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0 < np.abs(out - image).max() < 0.35 and out.min() >= 0 and out.max() <= 1
    grey = np.full((4, 4, 3), 0.5, np.float32)
    assert np.allclose(jitter_colors(grey, hue=0.5), grey, atol=1e-4)  # a hue turn leaves grey alone
    red = np.zeros((1, 1, 3), np.float32)
    red[..., 0] = 0.6
    torch.manual_seed(1)
    assert not np.allclose(jitter_colors(red, hue=0.5), red, atol=1e-2)  # the hue moved


def test_manifest_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no manifest.csv") as info:
        read_manifest(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "manifest.csv").write_text("image,magnification\na.png,10\n")
    with pytest.raises(DatasetError, match="lacks column"):
        read_manifest(tmp_path)
    root = write_set(tmp_path / "s", [(np.zeros((8, 8, 3), np.uint8), 10.0, "train")])
    with pytest.raises(DatasetError, match="'val'"):
        MagnificationDataset(root, "val")


# ---------------------------------------------------------------- metrics


def test_metrics_on_hand_made_values() -> None:
    true = [10, 10, 40, 40]
    pred = [10.4, 11, 35, 46]  # errors 0.4, 1, 5, 6; relative 0.04, 0.1, 0.125, 0.15
    m = magnification_metrics(true, pred, organs=["lung", "", "lung", "skin"])
    o = m["overall"]
    assert o["n"] == 4
    assert (o["acc_0.5"], o["acc_1"], o["acc_5"]) == (0.25, 0.5, 0.75)
    assert o["mae"] == pytest.approx(3.1)
    assert o["mre"] == pytest.approx((0.04 + 0.1 + 0.125 + 0.15) / 4)
    assert o["within_10pct"] == 0.5
    assert m["per_magnification"]["10"] == pytest.approx(
        {"n": 2, "acc_0.5": 0.5, "acc_1": 1.0, "acc_5": 1.0, "mae": 0.7, "mre": 0.07, "within_10pct": 1.0})
    assert m["per_magnification"]["40"]["mae"] == pytest.approx(5.5)
    assert m["per_magnification"]["40"]["acc_5"] == 0.5
    assert set(m["per_organ"]) == {"lung", "skin", "unknown"}
    assert m["per_organ"]["lung"]["mae"] == pytest.approx(2.7)
    conf = m["confusion"]
    assert conf["labels"] == [10, 11, 35, 40, 46]
    assert conf["matrix"][0] == [1, 1, 0, 0, 0]  # true 10 -> 10 and 11
    assert conf["matrix"][3] == [0, 0, 1, 0, 1]  # true 40 -> 35 and 46
    assert m["levels"]["accuracy"] == 1.0  # 10.4, 11 -> 10x; 35, 46 -> 40x


def test_level_metrics_for_the_classification_baseline() -> None:
    lv = level_metrics([4, 10, 20, 40, 40, 7], [4, 16, 20, 20, 40, 10], levels=(4, 10, 20, 40), tolerance=0.1)
    assert lv["n"] == 5  # 7x is not within 10% of a level
    assert lv["accuracy"] == pytest.approx(3 / 5)  # 16 -> 20x (log-nearest), 20 for 40 wrong
    assert lv["per_level"]["40"] == {"n": 2, "accuracy": 0.5}
    assert lv["confusion"]["labels"] == ["4", "10", "20", "40"]
    assert lv["confusion"]["matrix"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    everything = level_metrics([7], [10], tolerance=None)
    assert everything["n"] == 1 and everything["accuracy"] == 1.0
    assert level_metrics([7], [10])["accuracy"] is None


def test_metric_files_and_scatter(tmp_path: Path) -> None:
    m = magnification_metrics([1, 10, 40], [1.2, 9, 41], organs=["a", "b", "a"])
    paths = write_metrics(m, tmp_path / "eval")
    assert [p.name for p in paths] == ["metrics.json", "metrics_per_magnification.csv", "metrics_per_organ.csv"]
    assert json.loads(paths[0].read_text())["overall"]["n"] == 3
    rows = list(csv.DictReader(open(paths[1])))
    assert [r["magnification"] for r in rows] == ["1", "10", "40"]
    assert float(rows[1]["mae"]) == pytest.approx(1.0)
    png = scatter_plot([1, 10, 40], [1.2, 9, 41], tmp_path / "eval" / "scatter.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
    with pytest.raises(ConfigError):
        magnification_metrics([1, 2], [1])


# ---------------------------------------------------------------- config


def test_presets_and_overrides() -> None:
    from histomag.magnification.fit import PRESETS, MagnifierConfig, preset

    assert set(PRESETS) >= {"paper", "cpu-small", "tiny"}
    paper = PRESETS["paper"]
    assert (paper.backbone, paper.crop, paper.batch_size) == ("resnet50", 224, 64)
    cfg = preset("tiny", epochs=7, target="log")
    assert (cfg.backbone, cfg.crop, cfg.epochs, cfg.target) == ("tiny", 64, 7, "log")
    assert MagnifierConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown magnifier config field"):
        cfg.replace(epoch=3)
    with pytest.raises(ConfigError, match="unknown magnifier preset"):
        preset("huge")
    with pytest.raises(ConfigError):
        preset("tiny", crop=4)
    with pytest.raises(ConfigError):
        preset("tiny", model_type="dmsl")


# ---------------------------------------------------------------- training (Lightning)


def test_tiny_regressor_separates_10x_from_40x_and_evaluates(magset: Path, tmp_path: Path) -> None:
    from histomag.magnification.metrics import evaluate_run
    from histomag.magnification.fit import load_magnifier, predict_magnifications, preset, train_magnifier

    cfg = preset("tiny", epochs=8)
    run = train_magnifier(magset, tmp_path / "run", cfg, progress=False)
    for name in ("config.json", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_type"] == "magnification-regressor" and saved["backbone"] == "tiny"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "val_loss" in header and "train_loss_epoch" in header

    model, loaded = load_magnifier(run)
    assert loaded == cfg and not model.training
    test = read_manifest(magset, "test")
    images = [np.asarray(Image.open(r.image).convert("RGB")) for r in test]
    pred = np.array(predict_magnifications(model, images, cfg.crop, n_crops=4))
    true = np.array([r.magnification for r in test])
    assert pred[true == 40].mean() - pred[true == 10].mean() > 10
    assert pred[true == 40].min() > pred[true == 10].max()  # fully separated
    # predictions are per image: a different grouping of images gives the same values
    assert predict_magnifications(model, images[:3], cfg.crop, n_crops=4) == pytest.approx(pred[:3].tolist(), abs=1e-4)

    metrics = evaluate_run(run, split="test", n_crops=4)
    assert metrics["overall"]["n"] == len(test)
    assert metrics["overall"]["acc_5"] >= 0.75
    for name in ("metrics.json", "metrics_per_magnification.csv", "predictions.csv", "scatter.png"):
        assert (run / "eval" / name).is_file(), name


def test_resume_continues_from_last_checkpoint(magset: Path, tmp_path: Path) -> None:
    from histomag.magnification.fit import preset, train_magnifier

    cfg = preset("tiny", epochs=1, calibration_batches=1)
    run = train_magnifier(magset, tmp_path / "run", cfg, progress=False)
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    steps = first["global_step"]
    assert steps == 48 // cfg.batch_size

    train_magnifier(magset, run, cfg.replace(epochs=2), progress=False)
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 2 * steps  # one more epoch, not two
    logged = list(csv.DictReader(open(run / "logs" / "version_1" / "metrics.csv")))
    assert {r["epoch"] for r in logged if r["epoch"]} == {"1"}  # the second session trained epoch 1 only
    merged = list(csv.DictReader(open(run / "metrics.csv")))
    assert {r["epoch"] for r in merged if r["epoch"]} == {"0", "1"}

    with pytest.raises(ConfigError, match="backbone"):
        train_magnifier(magset, run, cfg.replace(backbone="resnet18", epochs=3), progress=False)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train_magnifier(magset, run, cfg, progress=False, resume=False)


def test_classifier_baseline_trains_and_compares_with_the_regressor(tmp_path: Path) -> None:
    from histomag.magnification.metrics import compare_runs
    from histomag.magnification.fit import load_magnifier, preset, train_classifier, train_magnifier

    data = make_magset(tmp_path / "set", mags=(4, 10, 20, 40), counts={"train": 4, "val": 2, "test": 2}, size=72)
    cfg = preset("tiny", epochs=1)
    cls_run = train_classifier(data, tmp_path / "cls", cfg, progress=False)
    reg_run = train_magnifier(data, tmp_path / "reg", cfg, progress=False)
    model, loaded = load_magnifier(cls_run)
    assert loaded.is_classifier and model.levels == (4.0, 10.0, 20.0, 40.0)
    assert json.loads((cls_run / "config.json").read_text())["model_type"] == "magnification-classifier"
    rows = compare_runs({"regressor": reg_run, "classifier": cls_run}, split="test", n_crops=1,
                        out_path=tmp_path / "comparison.csv")
    assert [r["model_type"] for r in rows] == ["magnification-regressor", "magnification-classifier"]
    assert [r["level_n"] for r in rows] == [8, 8]  # the same rows for both
    assert all(0.0 <= r["level_accuracy"] <= 1.0 for r in rows)
    metrics = json.loads((cls_run / "eval" / "metrics.json").read_text())
    assert len(metrics["levels"]["confusion"]["matrix"]) == 4
    preds = [float(r["predicted"]) for r in csv.DictReader(open(cls_run / "eval" / "predictions.csv"))]
    assert set(preds) <= {4.0, 10.0, 20.0, 40.0}
    assert (tmp_path / "comparison.csv").read_text().startswith("name,model_type")


def test_load_magnifier_errors_are_one_line(tmp_path: Path) -> None:
    from histomag.magnification.fit import load_magnifier

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError) as info:
        load_magnifier(run)
    message = str(info.value)
    assert "\n" not in message and "checkpoints/best.ckpt" in message
    assert "histomag.magnification.fit.train_magnifier(DATA, RUN, config)" in message  # the API; the CLI says the command

    random_sd = tmp_path / "random.ckpt"
    torch.save({"weight": torch.randn(3, 3)}, random_sd)
    dmsl = tmp_path / "dmsl.ckpt"
    torch.save({"state_dict": {"model.heads.0.weight": torch.zeros(2, 2)}, "histomag": {"model_type": "dmsl"}}, dmsl)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint\nat all")
    for path, pattern in ((random_sd, "not a magnification-model checkpoint"), (dmsl, "model type dmsl"),
                          (garbage, "cannot read checkpoint")):
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_magnifier(path)
        assert "\n" not in str(info.value)
