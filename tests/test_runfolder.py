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
