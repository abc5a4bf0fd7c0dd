"""DMSL straight from slides: the same tuples, folds and models as from the tiled dataset folder, with no extraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histomag.cli.main import run

pytestmark = pytest.mark.usefixtures("one_thread")
TILE = ["--mags", "40,20", "--size", "128", "--overlap", "0"]
TRAIN = ["--backbone", "tiny", "--folds", "2", "--epochs", "1", "--batch-size", "16", "--workers", "0", "-q"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from histomag.synth.cohort import make_cohort

    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, n_slides=4, seed=11, size_px=1280)
    return root


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    import histomag.cli.dmsl  # noqa: F401  (registers the sub-app)

    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_training_from_slides_equals_training_from_their_dataset_folder(cohort: Path, tmp_path: Path,
                                                                        capsys) -> None:
    assert _cli(["tile", str(cohort), "--out", str(tmp_path / "ds"), *TILE, "-q"], capsys)[0] == 0
    code, _, err = _cli(["dmsl", "train", str(tmp_path / "ds"), "--out", str(tmp_path / "from-folder"), *TRAIN],
                        capsys)
    assert code == 0, err
    code, out, err = _cli(["dmsl", "train", str(cohort), "--out", str(tmp_path / "from-slides"), "--size", "128",
                           "--overlap", "0", *TRAIN], capsys)
    assert code == 0, err
    assert not list((tmp_path / "from-slides").rglob("*.png"))  # nothing extracted
    source = json.loads((tmp_path / "from-slides" / "source.json").read_text())
    assert source["kind"] == "slides" and len(source["jobs"]) == 4
    assert json.loads((tmp_path / "from-slides" / "config.json").read_text())["data"].endswith("source.json")
    for k in (1, 2):
        a, b = (json.loads((tmp_path / r / "folds" / str(k) / "split.json").read_text())
                for r in ("from-folder", "from-slides"))
        assert a == b and a["test_tuples"]  # the same tuples in the same folds
        pa, pb = ((tmp_path / r / "folds" / str(k) / "predictions.csv").read_text().splitlines()
                  for r in ("from-folder", "from-slides"))
        assert [row.split(",")[:4] for row in pa] == [row.split(",")[:4] for row in pb]
        # the same pixels in the same order: the same model, up to float noise
        prob_a, prob_b = (np.array([[float(v) for v in row.split(",")[5:]] for row in p[1:]]) for p in (pa, pb))
        assert prob_a.shape == prob_b.shape and np.abs(prob_a - prob_b).max() < 1e-4
    # evaluate and Grad-CAM work on a run made from slides as on any other (its data: RUN/source.json)
    assert _cli(["dmsl", "evaluate", str(tmp_path / "from-slides"), "-q"], capsys)[0] == 0
    code, _, err = _cli(["dmsl", "cam", str(tmp_path / "from-slides"), str(tmp_path / "from-slides" / "source.json"),
                         "--out", str(tmp_path / "cam"), "--n", "2", "-q"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "cam").glob("*.png"))) == 2
    code, _, err = _cli(["dmsl", "train", str(cohort), "--out", str(tmp_path / "from-slides"), "--size", "256",
                         "--overlap", "0", *TRAIN, "--resume"], capsys)
    assert code == 2 and "other slides or tile settings" in err


def test_training_from_slides_bad_input_is_one_line(cohort: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _cli(["dmsl", "train", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"), *TRAIN], capsys)
    assert code == 2 and "no such dataset folder, slide" in err and err.count("\n") == 1
    code, _, err = _cli(["dmsl", "train", str(cohort), "--out", str(tmp_path / "r"), "--mpp-csv",
                         str(tmp_path / "none.csv"), *TRAIN], capsys)
    assert code == 2 and err.count("\n") == 1
