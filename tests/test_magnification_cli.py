"""`histomag magnification train/evaluate/predict`, `info --estimate`, `tile --mpp estimate`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from histomag.cli.main import run
from helpers import make_magset, synth_tissue


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny regressor trained on 10x vs 40x synthetic crops through the CLI."""
    root = tmp_path_factory.mktemp("magcli")
    data = make_magset(root / "set", mags=(10, 40), size=96)
    code = run(["magnification", "train", str(data), "--out", str(root / "run"), "--preset", "tiny",
                "--epochs", "3", "-q"])
    assert code == 0
    return root


def test_evaluate_writes_metrics(trained, capsys):
    assert run(["magnification", "evaluate", str(trained / "run"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "acc_5=" in out
    metrics = json.loads((trained / "run" / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 16 and set(metrics["per_magnification"]) == {"10", "40"}
    assert (trained / "run" / "eval" / "scatter.png").is_file()


def test_predict_folder_with_bad_files_continues(trained, tmp_path, capsys):
    rng = np.random.default_rng(5)
    folder = tmp_path / "snaps"
    folder.mkdir()
    Image.fromarray(synth_tissue(128, 40, rng)).save(folder / "a_40x.png")
    Image.fromarray(synth_tissue(128, 10, rng)).save(folder / "b_10x.png")
    (folder / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    Image.fromarray(np.full((128, 128, 3), 246, np.uint8)).save(folder / "d_glass.png")
    Image.fromarray(synth_tissue(128, 40, rng)).convert("RGBA").save(folder / "e_rgba.png")
    gray16 = (synth_tissue(128, 40, rng)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(folder / "f_16bit.png")
    code = run(["magnification", "predict", "--checkpoint", str(trained / "run"), str(folder), "--n-crops", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # some failed, the others were predicted
    by = {rec["path"].rsplit("/", 1)[-1]: rec for rec in lines}
    assert set(by) == {"a_40x.png", "b_10x.png", "c_corrupt.png", "d_glass.png", "e_rgba.png", "f_16bit.png"}
    assert by["a_40x.png"]["magnification"] > by["b_10x.png"]["magnification"]
    assert by["a_40x.png"]["mpp"] == pytest.approx(10 / by["a_40x.png"]["magnification"], rel=1e-3)
    assert by["c_corrupt.png"]["magnification"] is None and "error" in by["c_corrupt.png"]
    assert by["d_glass.png"]["magnification"] is None and "no tissue" in by["d_glass.png"]["error"]
    assert "note" in by["e_rgba.png"] and by["e_rgba.png"]["magnification"] is not None
    assert "note" in by["f_16bit.png"]


def test_checkpoint_of_another_model_type(trained, tmp_path, capsys):
    bogus = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "histomag": {"model_type": "dmsl", "config": {}}}, bogus)
    img = tmp_path / "x.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img)
    assert run(["magnification", "predict", "--checkpoint", str(bogus), str(img)]) == 2
    err = capsys.readouterr().err
    assert "not a magnification-model checkpoint" in err and err.count("\n") == 1
    assert run(["magnification", "predict", "--checkpoint", str(tmp_path), str(img)]) == 2
    assert "histomag magnification train" in capsys.readouterr().err


def test_info_estimate_reports_and_flags_mislabel(trained, tmp_path, capsys):
    rng = np.random.default_rng(7)
    img = tmp_path / "snap.png"
    Image.fromarray(synth_tissue(256, 10, rng)).save(img)
    assert run(["info", str(img), "--json", "--estimate", "--checkpoint", str(trained / "run"),
                "--n-crops", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mpp"] is None and d["estimate"]["magnification"] > 0 and d["estimate"]["warning"] is None
    est = d["estimate"]["magnification"]
    # claim a resolution 3x finer than what the pixels show: a likely mislabel is reported
    claimed = 10 / min(40.0, est * 3)
    assert run(["info", str(img), "--json", "--estimate", "--checkpoint", str(trained / "run"),
                "--mpp", str(claimed), "--n-crops", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["estimate"]["warning"] and "mislabelled" in d["estimate"]["warning"]
    # without --checkpoint the model shipped with histomag answers, with its calibrated interval
    assert run(["info", str(img), "--json", "--estimate", "--n-crops", "4"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["estimate"]["model"] == "shipped rulers" and d["estimate"]["method"] == "rulers"
    assert len(d["estimate"]["mpp_interval"]) == 2 and d["estimate"]["objective"] in (2.5, 4, 5, 10, 20, 40, 60)


def test_tile_with_estimated_mpp(trained, tmp_path, capsys):
    rng = np.random.default_rng(8)
    img = tmp_path / "snap.png"
    Image.fromarray(synth_tissue(512, 40, rng)).save(img)
    code = run(["tile", str(img), "--mpp", "estimate", "--checkpoint", str(trained / "run"), "--mags", "10",
                "--size", "64", "--out", str(tmp_path / "ds"), "-q", "--allow-upsample"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ESTIMATED resolutions" in captured.err and captured.err.count("ESTIMATED") == 1  # once per batch
    manifest = (tmp_path / "ds" / "manifest.csv").read_text()
    assert "estimated " in manifest and "(cnn)" in manifest  # the value and its source are recorded
    # an estimate less certain than --max-uncertainty allows is refused, naming both as factors
    assert run(["tile", str(img), "--mpp", "estimate", "--max-uncertainty", "1.001", "--mags", "10", "--size", "64",
                "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err
    # (refused as too wide, or first as unable to tell two objectives apart: one line either way)
    assert ("allowed ×1.001" in err or "cannot tell" in err) and "snap.png" in err and err.count("\n") == 1
    # a share is not a factor: one line naming the fix
    assert run(["tile", str(img), "--mpp", "estimate", "--max-uncertainty", "0.25", "--mags", "10", "--size", "64",
                "--out", str(tmp_path / "y"), "-q"]) == 2
    assert "give a factor above 1" in capsys.readouterr().err
