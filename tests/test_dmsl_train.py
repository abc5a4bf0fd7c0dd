"""DMSL training: grouped folds, metrics, Lightning fit/resume, run folders and the ``dmsl`` CLI."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tuple_folder

from histomag.data.atomic import atomic_write_json
from histomag.data.tuples import TupleDataset, tuple_transform
from histomag.errors import CheckpointError, ConfigError
from histomag.dmsl.metrics import (
    MissingClassWarning,
    classification_metrics,
    evaluate_predictions,
    patient_level,
    summarise,
)
from histomag.dmsl.cv import (
    carve_validation,
    evaluate_cv_run,
    patient_folds,
    subsample,
)
from histomag.dmsl.config import DMSLConfig
from histomag.dmsl.fit import fit_fold, load_task, predict_probs

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 patients x 6 tuples of each class (dots vs rings), 40x at 64 px + 20x at 32 px."""
    return make_tuple_folder(tmp_path_factory.mktemp("dmsl") / "data", patients=8, per_class=6)


def _config(**kw) -> DMSLConfig:
    base = dict(backbone="tiny", batch_size=16, epochs=1, patience=20, folds=2, num_workers=0)
    return DMSLConfig(**{**base, **kw})


# ----- splits -----------------------------------------------------------------------------------
def test_folds_never_share_a_patient_and_cover_everyone() -> None:
    rng = np.random.default_rng(0)
    patients = [f"P{p}" for p in rng.integers(0, 23, 400)]
    labels = [("a", "b", "c")[hash(p) % 3] for p in patients]
    seen: list[str] = []
    for train, test in patient_folds(labels, patients, 5, seed=1):
        tr, te = {patients[i] for i in train}, {patients[i] for i in test}
        assert not tr & te and len(train) + len(test) == 400
        seen.extend(te)
        sub_tr, sub_va = carve_validation([labels[i] for i in train], [patients[i] for i in train], 0.2, seed=2)
        t_p = {patients[train[i]] for i in sub_tr}
        v_p = {patients[train[i]] for i in sub_va}
        assert v_p and t_p and not t_p & v_p and not v_p & te
    assert sorted(seen) == sorted(set(patients))  # every patient is tested exactly once


def test_fewer_patients_than_folds_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="only 3 patient.* folds=3"):
        patient_folds(["a", "b", "a"], ["x", "y", "z"], 5)


def test_train_fraction_subsamples_each_class_reproducibly() -> None:
    labels = ["a"] * 80 + ["b"] * 20
    half = subsample(labels, 0.5, seed=0)
    tenth = subsample(labels, 0.1, seed=0)
    assert len(half) == 50 and len(tenth) == 10
    assert sum(labels[i] == "b" for i in tenth) == 2
    assert np.array_equal(tenth, subsample(labels, 0.1, seed=0))
    assert not np.array_equal(tenth, subsample(labels, 0.1, seed=1))
    assert len(subsample(labels, 0.01, seed=0)) == 2  # at least one of each class
    assert len(subsample(labels, 1.0)) == 100


# ----- metrics ----------------------------------------------------------------------------------
Y = [0, 0, 0, 1, 1, 1, 1, 0]
P_TUMOR = [0.1, 0.4, 0.7, 0.8, 0.6, 0.55, 0.9, 0.35]
PATIENTS = ["A", "A", "B", "C", "C", "D", "D", "B"]


def _probs(p1: list[float]) -> np.ndarray:
    p = np.asarray(p1)
    return np.stack([1 - p, p], axis=1)


def test_binary_metrics_at_patch_and_patient_level_are_exact() -> None:
    m = evaluate_predictions(PATIENTS, Y, _probs(P_TUMOR), ["normal", "tumor"])
    patch, patient = m["patch"], m["patient"]
    # TP 4 (3,4,5,6), FP 1 (2), TN 3, FN 0; AUC: 14 of 16 positive-negative pairs ordered
    assert patch["precision"] == pytest.approx(0.8) and patch["recall"] == pytest.approx(1.0)
    assert patch["accuracy"] == pytest.approx(0.875) and patch["f1"] == pytest.approx(2 * 0.8 / 1.8)
    assert patch["auc"] == pytest.approx(14 / 16) and patch["confusion_matrix"] == [[3, 1], [0, 4]]
    # patients: A 0.25 (normal), B 0.525 (normal, predicted tumour), C 0.7, D 0.725 (tumour)
    assert patient["n"] == 4 and patient["precision"] == pytest.approx(2 / 3)
    assert patient["recall"] == pytest.approx(1.0) and patient["accuracy"] == pytest.approx(0.75)
    assert patient["f1"] == pytest.approx(0.8) and patient["auc"] == pytest.approx(1.0)
    assert patient["confusion_matrix"] == [[1, 1], [0, 2]]


def test_patient_level_averages_per_patient_and_label() -> None:
    names, y, p = patient_level(["A", "A", "E", "E", "E"], [0, 0, 0, 1, 1], _probs([0.2, 0.4, 0.1, 0.6, 0.8]))
    assert names == ["A", "E:0", "E:1"] and y.tolist() == [0, 0, 1]
    assert p[:, 1].tolist() == pytest.approx([0.3, 0.1, 0.7])


def test_three_class_metrics_are_macro_averages() -> None:
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["average"] == "macro" and m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["auc"] == pytest.approx((0.625 + 0.875 + 0.75) / 3)  # one-vs-rest, ties count half


def test_a_missing_class_warns_and_metrics_cover_the_classes_present() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    with pytest.warns(MissingClassWarning, match="no c tuples in fold 3"):
        m = classification_metrics([0, 0, 1, 1], probs, ["a", "b", "c"], where="fold 3")
    assert m["classes_present"] == ["a", "b"]
    assert m["precision"] == pytest.approx((1 + 2 / 3) / 2) and m["recall"] == pytest.approx(0.75)
    assert m["auc"] == pytest.approx(1.0)
    with pytest.warns(MissingClassWarning):
        one = classification_metrics([1, 1], probs[:2], ["a", "b", "c"])
    assert math.isnan(one["auc"]) and one["accuracy"] == pytest.approx(0.5)


def test_summary_is_mean_and_sample_std_over_folds() -> None:
    def fold(acc: float) -> dict:
        m = {"precision": acc, "recall": acc, "accuracy": acc, "f1": acc, "auc": math.nan, "n": 4}
        return {"patch": m, "patient": m}

    s = summarise([fold(0.8), fold(0.6)])
    assert s["patch"]["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["patch"]["accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(s["patient"]["auc"]["mean"])


# ----- training ---------------------------------------------------------------------------------
def _split(data: Path, train_p: set[str], val_p: set[str], test_p: set[str]):
    full = TupleDataset(data)
    pick = lambda ps, train: TupleDataset(  # noqa: E731
        data, rows=[r for r in full.rows if r["patient_id"] in ps], classes=full.classes,
        transform=tuple_transform(MEAN, STD, train=train))
    return full.classes, pick(train_p, True), pick(val_p, False), pick(test_p, False)


def test_tiny_backbone_learns_the_morphology_of_held_out_patients(data: Path, tmp_path: Path) -> None:
    classes, train, val, test = _split(data, {f"P0{i}" for i in range(5)}, {"P05"}, {"P06", "P07"})
    result = fit_fold(_config(epochs=8), train, val, tmp_path, class_names=classes, progress=False)
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    probs = predict_probs([load_task(result.best_checkpoint)], test)
    accuracy = float((probs.argmax(axis=1) == np.array(test.targets)).mean())
    assert accuracy >= 0.8, accuracy
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()


class _EpochStarts:
    """Records (epoch, global step) at the start of every training epoch."""

    def __init__(self) -> None:
        import lightning.pytorch as L

        self.starts: list[tuple[int, int]] = []
        outer = self

        class Recorder(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module) -> None:
                outer.starts.append((trainer.current_epoch, trainer.global_step))

        self.callback = Recorder()


def test_resume_continues_from_the_checkpoint_epoch_and_global_step(data: Path, tmp_path: Path) -> None:
    classes, train, val, _ = _split(data, {"P00", "P01", "P02"}, {"P03"}, set())
    steps = math.ceil(len(train) / 16)
    first = fit_fold(_config(epochs=1), train, val, tmp_path, class_names=classes, progress=False)
    assert (first.epochs_completed, first.global_step) == (1, steps)
    rec = _EpochStarts()
    again = fit_fold(_config(epochs=3), train, val, tmp_path, class_names=classes, resume=True,
                     progress=False, callbacks=[rec.callback])
    assert rec.starts == [(1, steps), (2, 2 * steps)]  # not restarted at epoch 0 / step 0
    assert (again.epochs_completed, again.global_step) == (3, 3 * steps)
    fresh = _EpochStarts()
    fit_fold(_config(epochs=1), train, val, tmp_path / "other", class_names=classes, progress=False,
             callbacks=[fresh.callback])
    assert fresh.starts == [(0, 0)]


def test_sim_weight_warms_up_linearly_and_old_configs_had_no_warm_up() -> None:
    from histomag.dmsl.fit import sim_weight

    assert [sim_weight(0.5, 2, e) for e in (0, 0.5, 1, 2, 5)] == [0.0, 0.125, 0.25, 0.5, 0.5]
    assert sim_weight(0.5, 0, 0) == 0.5
    assert (DMSLConfig().sim_form, DMSLConfig().sim_warmup, DMSLConfig().beta) == ("dist", 2, 0.1)
    legacy = {k: v for k, v in DMSLConfig().to_dict().items() if k not in ("sim_warmup", "select_on", "branch_ce")}
    assert DMSLConfig.from_dict(legacy).branch_ce == 0.0  # runs from before deep supervision had none
    assert DMSLConfig.from_dict(legacy).sim_warmup == 0
    assert DMSLConfig.from_dict(legacy).select_on == "loss"
    assert DMSLConfig.from_dict(DMSLConfig(sim_warmup=3).to_dict()).sim_warmup == 3
    with pytest.raises(ConfigError, match="unknown select_on 'acc'; valid: loss, ce"):
        DMSLConfig(select_on="acc")
    with pytest.raises(ConfigError, match="sim_warmup=-1 must be >= 0"):
        DMSLConfig(sim_warmup=-1)
    with pytest.raises(ConfigError, match="unknown SIM form 'l2'; valid: paper, l1, corr, dist"):
        DMSLConfig(sim_form="l2")


def test_training_ramps_the_sim_weight_and_validates_with_the_full_weight(data: Path, tmp_path: Path) -> None:
    import csv

    classes, train, val, _ = _split(data, {"P00", "P01", "P02"}, {"P03"}, set())
    result = fit_fold(_config(epochs=3, sim_warmup=2, beta=0.5, select_on="ce", branch_ce=0.0), train, val, tmp_path,
                      class_names=classes, progress=False)
    with open(tmp_path / "logs" / "version_0" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    beta = {int(r["epoch"]): float(r["train/beta"]) for r in rows if r.get("train/beta")}
    assert 0.0 <= beta[0] < 0.25 <= beta[1] < 0.5 and beta[2] == pytest.approx(0.5), beta
    val = [r for r in rows if r.get("val/loss")]
    for r in val:  # validation loss = alpha * CE + the full beta * SIM in every epoch
        assert float(r["val/loss"]) == pytest.approx(0.5 * float(r["val/ce"]) + 0.5 * float(r["val/sim"]), rel=1e-4)
    assert result.best_score == pytest.approx(min(float(r["val/ce"]) for r in val))  # selected on CE


def test_mscn_on_same_fov_tuples_warns(data: Path, tmp_path: Path) -> None:
    from histomag.dmsl.cv import cross_validate

    with pytest.raises(ConfigError, match="unknown backbone 'nope'; valid names: .*tiny"):
        cross_validate(data, tmp_path / "x", _config(backbone="nope"))
    with pytest.warns(UserWarning, match="mscn expects context tuples"), pytest.raises(ConfigError, match="only 8"):
        cross_validate(data, tmp_path / "run", _config(mode="mscn", folds=9))


def test_single_mode_uses_one_magnification_of_the_folder_and_max_tuples_caps_slides(data: Path,
                                                                                     tmp_path: Path) -> None:
    from histomag.dmsl.cv import cross_validate

    result = cross_validate(data, tmp_path / "run", _config(mode="single", magnifications=(20.0,), max_tuples=4),
                            progress=False)
    assert "| Single (tiny) | 20x | single | patch |" in result.table
    splits = [json.loads((tmp_path / "run" / "folds" / k / "split.json").read_text()) for k in ("1", "2")]
    assert sum(s["n_test"] for s in splits) == 8 * 4  # 4 tuples of each of the 8 slides
    assert load_task(tmp_path / "run" / "folds" / "1" / "checkpoints" / "best.ckpt").model.n_inputs == 1


# ----- run folders and the CLI ------------------------------------------------------------------
def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    import histomag.cli.dmsl  # noqa: F401  (registers the sub-app)
    from histomag.cli.main import run

    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_evaluate_predict_end_to_end(data: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    code, out, err = _cli(["dmsl", "train", str(data), "--out", str(run_dir), "--backbone", "tiny",
                           "--mags", "40,20", "--folds", "2", "--epochs", "1", "--batch-size", "16",
                           "--train-fraction", "0.5", "--workers", "0", "--sim-form", "dist", "--sim-warmup", "3",
                           "--quiet"], capsys)
    assert code == 0, err
    assert "| DMSL (tiny) | 40x+20x | sim | patch |" in out
    for name in ("config.json", "metrics.json", "metrics.csv", "table.md", "table.csv"):
        assert (run_dir / name).is_file(), name
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["model_type"] == "dmsl"
    assert (stored["config"]["sim_form"], stored["config"]["sim_warmup"]) == ("dist", 3)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2 and 0.0 <= metrics["summary"]["patch"]["accuracy"]["mean"] <= 1.0
    tested: list[str] = []
    for k in (1, 2):
        split = json.loads((run_dir / "folds" / str(k) / "split.json").read_text())
        tr, va, te = (set(split[f"{s}_patients"]) for s in ("train", "val", "test"))
        assert tr and va and te and not (tr & va or tr & te or va & te)
        assert split["n_train"] == 6 * len(tr)  # half of the 12 tuples of each training patient
        tested += split["test_patients"]
        header = (run_dir / "folds" / str(k) / "predictions.csv").read_text().splitlines()[0]
        assert header == ("tuple_id,slide_id,patient_id,label,predicted,prob_dots,prob_rings,"
                          "40x:prob_dots,40x:prob_rings,20x:prob_dots,20x:prob_rings")  # each head on its own too
        assert (run_dir / "folds" / str(k) / "checkpoints" / "best.ckpt").is_file()
    assert sorted(tested) == [f"P{p:02d}" for p in range(8)]

    code, out, err = _cli(["dmsl", "evaluate", str(run_dir)], capsys)
    assert code == 0 and "| method | combination | mode | level | PRE | REC | ACC | F1 | AUC |" in out
    assert (run_dir / "table.md").read_text() == out

    code, out, err = _cli(["dmsl", "train", str(data), "--out", str(run_dir), "--backbone", "tiny",
                           "--folds", "2", "--quiet"], capsys)
    assert code == 2 and "already holds a run; pass --resume" in err and err.count("\n") == 1

    code, out, err = _cli(["dmsl", "predict", str(run_dir), str(data), "--out", str(tmp_path / "p"), "--quiet"],
                          capsys)
    assert code == 0, err
    lines = (tmp_path / "p" / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + 8 * 12

    slide = _half_tissue_slide(tmp_path / "slide.png")
    code, out, err = _cli(["dmsl", "predict", str(run_dir), str(slide), "--mpp", "0.25", "--fold", "1",
                           "--out", str(tmp_path / "s"), "--quiet"], capsys)
    assert code == 0, err
    heat = np.load(tmp_path / "s" / "slide.heatmap.npy")
    assert heat.shape == (2, 8, 16) and heat.dtype == np.float32  # classes x grid rows x grid cols of 64 px
    assert not np.isnan(heat[:, :, :8]).any() and np.isnan(heat[:, :, 8:]).all()  # right half is glass
    assert np.allclose(heat[:, :, :8].sum(axis=0), 1.0, atol=1e-5)
    assert (tmp_path / "s" / "slide.heatmap.png").stat().st_size > 1000
    assert len((tmp_path / "s" / "slide.predictions.csv").read_text().splitlines()) == 1 + 64
    # the same fields as QuPath tile objects, in level-0 pixels, classified with their probabilities
    geo = json.loads((tmp_path / "s" / "slide.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 64
    with open(tmp_path / "s" / "slide.predictions.csv", newline="") as fh:
        pred_rows = list(csv.DictReader(fh))
    for feature, row in zip(geo["features"], pred_rows):
        ring = np.array(feature["geometry"]["coordinates"][0])
        centre = ring[:4].mean(axis=0)  # the square's centre is the tuple's field centre
        assert np.allclose(centre, [float(row["x"]), float(row["y"])], atol=1.0)
        assert feature["properties"]["classification"]["name"] == row["predicted"]
        assert feature["properties"]["measurements"]["prob_dots"] == pytest.approx(float(row["prob_dots"]), abs=1e-5)

    (run_dir / "folds" / "2" / "predictions.csv").unlink()  # evaluate predicts fold 2 again from its checkpoint
    code, out, err = _cli(["dmsl", "evaluate", str(run_dir), "--quiet"], capsys)
    assert code == 0 and (run_dir / "folds" / "2" / "predictions.csv").is_file()

    for ckpt in (run_dir / "folds" / "2" / "checkpoints").iterdir():
        ckpt.unlink()
    code, out, err = _cli(["dmsl", "predict", str(run_dir), str(data), "--quiet"], capsys)
    assert code == 2 and "folds/2/checkpoints/best.ckpt is missing" in err and "histomag dmsl train" in err
    assert err.count("\n") == 1


def _half_tissue_slide(path: Path) -> Path:
    from PIL import Image
    from helpers import render

    rng = np.random.default_rng(5)
    img = np.full((512, 1024, 3), 255, np.uint8)  # 128 x 256 µm at 40x; tissue on the left half
    for y in range(0, 512, 64):
        for x in range(0, 512, 64):
            img[y:y + 64, x:x + 64] = render("dots" if y < 256 else "rings", 64, rng)
    Image.fromarray(img).save(path)
    return path


def test_cli_refuses_other_magnifications_and_unknown_backbones(data: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _cli(["dmsl", "train", str(data), "--out", str(tmp_path / "r"), "--backbone", "tiny",
                         "--mags", "40,10", "--quiet"], capsys)
    assert code == 2 and "are 40x,20x but --mags asks 40x,10x: re-tile or change --mags" in err
    code, _, err = _cli(["dmsl", "train", str(data), "--out", str(tmp_path / "r"), "--backbone", "resnet5"],
                        capsys)
    assert code == 2 and "unknown backbone 'resnet5'; valid names:" in err and "resnet50" in err
    code, _, err = _cli(["dmsl", "train", str(data), "--out", str(tmp_path / "r"), "--mode", "single",
                         "--mags", "40,20"], capsys)
    assert code == 2 and "--mode single takes one magnification" in err


def _fake_run(run_dir: Path, data: Path, folds: dict[int, list[tuple[str, str, float]]]) -> None:
    atomic_write_json(run_dir / "config.json", {
        "model_type": "dmsl", "version": 1, "config": _config(folds=len(folds)).to_dict(), "data": str(data),
        "classes": ["dots", "rings"], "tile_settings": {}})
    for k, rows in folds.items():
        lines = ["tuple_id,slide_id,patient_id,label,predicted,prob_dots,prob_rings"]
        lines += [f"t{i},s,{pat},{lab},,{1 - p},{p}" for i, (pat, lab, p) in enumerate(rows)]
        (run_dir / "folds" / str(k)).mkdir(parents=True)
        (run_dir / "folds" / str(k) / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_evaluate_recomputes_from_predictions_and_warns_for_a_missing_class(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    _fake_run(run_dir, tmp_path, {
        1: [("A", "dots", 0.2), ("A", "dots", 0.4), ("B", "rings", 0.9), ("B", "rings", 0.3)],
        2: [("C", "dots", 0.1), ("C", "dots", 0.6)],  # fold 2 has no rings
    })
    with pytest.warns(MissingClassWarning, match="no rings tuples in fold 2"):
        result = evaluate_cv_run(run_dir)
    assert result.per_fold[0]["patch"]["accuracy"] == pytest.approx(0.75)
    assert result.per_fold[1]["patch"]["accuracy"] == pytest.approx(0.5)
    assert result.summary["patch"]["accuracy"]["mean"] == pytest.approx(0.625)
    assert result.summary["patch"]["auc"]["folds"] == 1  # fold 2 has no AUC
    table = (run_dir / "table.csv").read_text().splitlines()
    assert table[0] == "method,combination,mode,level,PRE,REC,ACC,F1,AUC"
    assert table[1].startswith("DMSL (tiny),40x+20x,sim,patch,") and "0.625 ± 0.177" in table[1]


def test_run_folder_errors_are_one_line_and_name_the_fix(tmp_path: Path, capsys) -> None:
    with pytest.raises(CheckpointError, match=r"has no readable config.json; make it with: histomag\.dmsl\.cv\.cross_validate\(DATA, RUN, config\)"):
        evaluate_cv_run(tmp_path)
    run_dir = tmp_path / "run"
    _fake_run(run_dir, tmp_path, {1: [("A", "dots", 0.2)], 2: [("C", "dots", 0.1)]})
    (run_dir / "folds" / "2" / "predictions.csv").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingClassWarning)
        code, _, err = _cli(["dmsl", "evaluate", str(run_dir)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "folds/2/predictions.csv and split.json are missing" in err and "histomag dmsl train" in err
    (run_dir / "config.json").write_text(json.dumps({"model_type": "magnifier"}))
    code, _, err = _cli(["dmsl", "evaluate", str(run_dir)], capsys)
    assert code == 2 and "holds a magnifier run, not a DMSL one" in err


def test_cli_defaults_match_the_library_defaults() -> None:
    import inspect

    from histomag.cli.dmsl import train

    params = inspect.signature(train).parameters
    config = DMSLConfig()
    for name in ("sim_form", "sim_warmup", "select_on", "beta", "alpha"):
        assert params[name].default.default == getattr(config, name), name
