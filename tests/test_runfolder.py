"""The DMSL run folder: one owner of its layout; old folders load, newer schemas are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histomag.errors import CheckpointError
from histomag.dmsl.runfolder import RUN_VERSION, RunFolder


def _meta(**changes) -> dict:
    meta = {"model_type": "dmsl", "version": RUN_VERSION, "config": {"mode": "sim"}, "data": "/d",
            "classes": ["a", "b"], "tuple_mode": "same-fov", "tile_settings": {}}
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def test_versions_old_load_newer_refused(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.config_path.write_text(json.dumps(_meta(version=None)))  # written before "version" existed
    assert folder.read_meta()["classes"] == ["a", "b"]
    folder.config_path.write_text(json.dumps(_meta(version=RUN_VERSION + 1)))
    with pytest.raises(CheckpointError, match=f"version {RUN_VERSION + 1}.*reads \\(version {RUN_VERSION}\\)"):
        folder.read_meta()
    folder.config_path.write_text(json.dumps(_meta(model_type="magnification-regressor")))
    with pytest.raises(CheckpointError, match="holds a magnification-regressor run, not a DMSL one"):
        folder.read_meta()
    folder.config_path.write_text("{broken")
    with pytest.raises(CheckpointError, match="no readable config.json"):
        folder.read_meta()


def test_predictions_round_trip_and_bad_files_are_named(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_meta(config={"mode": "mm"}, data=tmp_path, classes=["a", "b"], tuple_mode="same-fov", tile_settings={})
    rows = [{"tuple_id": "t1", "slide_id": "s1", "patient_id": "P1", "label": "b"},
            {"tuple_id": "t2", "slide_id": "s2", "label": "a"}]
    probs = np.array([[0.25, 0.75], [0.9, 0.1]])
    folder.write_split(1, {"train_fraction": 0.5})
    folder.write_predictions(folder.predictions_path(1), rows, probs, ["a", "b"])
    fold = folder.read_predictions(1, ["a", "b"])
    assert fold.patients == ["P1", "s2"] and fold.y.tolist() == [1, 0] and np.allclose(fold.probs, probs)
    assert fold.train_fraction == 0.5 and folder.read_predictions(2, ["a", "b"]) is None
    with pytest.raises(CheckpointError, match="lacks columns prob_c"):
        folder.read_predictions(1, ["a", "b", "c"])
    with pytest.raises(CheckpointError, match="best.ckpt is missing \\(fold 1 never trained\\)"):
        folder.checkpoint(1)
    folder.checkpoint_dir(1).mkdir(parents=True)
    (folder.checkpoint_dir(1) / "last.ckpt").write_bytes(b"x")
    assert folder.checkpoint(1).name == "last.ckpt"


def test_the_typed_config_comes_from_the_same_folder(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_meta(config={"mode": "mm", "backbone": "tiny", "magnifications": [40, 20]}, data=tmp_path,
                      classes=["a", "b"], tuple_mode="same-fov", tile_settings={"size": 64})
    run = RunFolder(tmp_path).load()
    assert run.config.mode == "mm" and run.config.magnifications == (40.0, 20.0)
    assert run.class_names == ["a", "b"] and run.data_dir == tmp_path.resolve() and run.tile_settings == {"size": 64}
    assert run.saved_probs(1, ["t1"], ["a", "b"]) is None  # no predictions yet
    assert not run.fold_finished(1) and run.metrics_path == tmp_path / "metrics.json"


def _mag_meta(**changes) -> dict:
    meta = {"model_type": "magnification-regressor", "version": 1, "backbone": "tiny", "crop": 64, "data_dir": "/d",
            "versions": {"torch": "2"}}
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def test_magnification_runs_old_load_newer_refused(tmp_path: Path) -> None:
    from histomag.magnification.runfolder import RUN_VERSION as MAG_VERSION
    from histomag.magnification.runfolder import MagnificationRun

    run = MagnificationRun(tmp_path)
    run.config_path.write_text(json.dumps(_mag_meta(version=None)))  # written before "version" existed
    assert run.read_meta()["crop"] == 64 and run.data_dir() == Path("/d")
    run.write_config({"model_type": "magnification-classifier", "crop": 32}, data_dir=tmp_path, versions={"torch": "x"})
    meta = run.read_meta()
    assert meta["version"] == MAG_VERSION and meta["data_dir"] == str(tmp_path.resolve()) and meta["crop"] == 32
    run.config_path.write_text(json.dumps(_mag_meta(version=MAG_VERSION + 1)))
    with pytest.raises(CheckpointError, match=f"version {MAG_VERSION + 1}.*reads \\(version {MAG_VERSION}\\)"):
        run.read_meta()
    run.config_path.write_text(json.dumps(_mag_meta(model_type="dmsl")))
    with pytest.raises(CheckpointError, match="holds a dmsl run, not a magnification one"):
        run.read_meta()
    with pytest.raises(CheckpointError, match="has no checkpoints/best.ckpt"):
        run.checkpoint("best")
    with pytest.raises(CheckpointError, match="has no eval/metrics.json"):
        run.read_eval_metrics()
    assert run.read_eval_predictions() is None


def test_the_report_loads_folders_without_a_version(tmp_path: Path) -> None:
    from histomag.report.runs import load_run

    mag = tmp_path / "mag"
    (mag / "eval").mkdir(parents=True)
    (mag / "config.json").write_text(json.dumps(_mag_meta(version=None)))
    (mag / "eval" / "metrics.json").write_text(json.dumps({"overall": {"n": 1}}))
    (mag / "eval" / "predictions.csv").write_text("magnification,predicted\n20,19.5\n")
    loaded = load_run(mag)
    assert loaded.kind == "regressor" and loaded.pred.tolist() == [19.5] and "version" not in loaded.config
    dmsl = tmp_path / "dmsl"
    dmsl.mkdir()
    (dmsl / "config.json").write_text(json.dumps(_meta(version=None, config={"mode": "sim", "folds": 1})))
    (dmsl / "metrics.json").write_text(json.dumps({"summary": {"patch": {}, "patient": {}}, "folds": []}))
    assert load_run(dmsl).missing_predictions == [1]
    (dmsl / "config.json").write_text(json.dumps(_meta(version=RUN_VERSION + 1)))
    with pytest.raises(CheckpointError, match="newer than this histomag reads"):
        load_run(dmsl)
