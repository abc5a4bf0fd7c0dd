"""Paired comparison of DMSL runs (`dmsl compare`), late fusion, per-branch figures and multi-seed runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import make_tuple_folder
from histomag.dmsl.compare import compare_runs, load_operand, metric_value
from histomag.dmsl.config import DMSLConfig
from histomag.dmsl.metrics import classification_metrics
from histomag.dmsl.runfolder import RunFolder, SeedRuns
from histomag.errors import ConfigError

CLASSES = ["a", "b", "c"]


def _fake_run(root: Path, probs_of, *, seeds=(0,), folds=3, patients=12, per_patient=4, mode="single",
              mags=(10.0,)) -> Path:
    """A run folder (or multi-seed run) with predictions made by ``probs_of(y, rng)``; same tuples for every run."""
    runs = [root] if len(seeds) == 1 else [root / f"seed-{s}" for s in seeds]
    if len(seeds) > 1:
        SeedRuns(root).write(list(seeds))
    for seed, rdir in zip(seeds, runs):
        run = RunFolder(rdir)
        cfg = DMSLConfig(mode=mode, magnifications=mags, backbone="tiny", folds=folds, seed=seed).to_dict()
        run.write_meta(config=cfg, data=root, classes=CLASSES, tuple_mode="same-fov", tile_settings={})
        truth = np.random.default_rng(100 + seed)  # the same test sets for every run of a seed
        rng = np.random.default_rng(hash(str(root)) % 2**32 + seed)
        for k in range(1, folds + 1):
            rows, ys = [], []
            for p in range(patients):
                y = int(truth.integers(0, 3))
                for t in range(per_patient):
                    rows.append({"tuple_id": f"s{seed}f{k}p{p}t{t}", "slide_id": f"img{p}_{t // 2}",
                                 "patient_id": f"P{k}_{p}", "label": CLASSES[y]})
                    ys.append(y)
            probs = np.stack([probs_of(y, rng) for y in ys])
            run.fold_dir(k).mkdir(parents=True, exist_ok=True)
            run.write_split(k, {"fold": k, "test_tuples": [r["tuple_id"] for r in rows]})
            run.write_predictions(run.predictions_path(k), rows, probs, CLASSES)
    return root


def _good(y, rng):
    p = rng.dirichlet(np.ones(3)) * 0.4
    p[y] += 0.6
    return p


def _noise(y, rng):
    return rng.dirichlet(np.ones(3))


def test_metric_values_match_the_run_tables() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    p[np.arange(60), y] += rng.random(60)
    p /= p.sum(axis=1, keepdims=True)
    ref = classification_metrics(y, p, CLASSES)
    for name in ("auc", "accuracy", "f1"):
        assert metric_value(name, y, p) == pytest.approx(ref[name], abs=1e-12), name
    y2 = rng.integers(0, 2, 40)
    p2 = rng.dirichlet(np.ones(2), 40)
    ref2 = classification_metrics(y2, p2, ["x", "y"])
    assert metric_value("auc", y2, p2) == pytest.approx(ref2["auc"]) and metric_value("f1", y2, p2) == pytest.approx(ref2["f1"])


def test_a_run_against_itself_differs_by_exactly_zero(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "r", _good)
    result = compare_runs(run, run, n_boot=200)
    for m in result.metrics:
        assert m.delta == 0 and m.low == 0 and m.high == 0 and m.a_better == 0 and m.pairs == 3


def test_a_clearly_better_run_has_an_interval_above_zero(tmp_path: Path) -> None:
    good = _fake_run(tmp_path / "good", _good, seeds=(0, 1))
    noise = _fake_run(tmp_path / "noise", _noise, seeds=(0, 1))
    result = compare_runs(good, noise, level="slide", n_boot=300)
    auc = next(m for m in result.metrics if m.metric == "auc")
    assert result.pairs == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)] and auc.pairs == 6
    assert auc.low > 0.1 and auc.delta > auc.low and auc.high > auc.delta and auc.a_better == 6
    back = compare_runs(noise, good, level="slide", n_boot=300)
    b_auc = next(m for m in back.metrics if m.metric == "auc")
    assert b_auc.delta == pytest.approx(-auc.delta)  # antisymmetric point estimate
    assert "| auc |" in result.table() and "Δ" in result.table()
    assert auc.line("good", "noise").startswith("good − noise: ΔAUC +")
    # the bootstrap resamples patients: the patient level (one item per patient) has a wider interval than tuples
    tup = next(m for m in compare_runs(good, noise, level="tuple", n_boot=300).metrics if m.metric == "auc")
    assert tup.high - tup.low > 0


def test_late_fusion_averages_probabilities_tuple_by_tuple(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "a", _good)
    b = _fake_run(tmp_path / "b", _noise)
    fused = load_operand(f"{a}+{b}")
    pa, pb = RunFolder(a).read_predictions(2, CLASSES), RunFolder(b).read_predictions(2, CLASSES)
    assert np.allclose(fused.folds[(0, 2)].probs, (pa.probs + pb.probs) / 2)
    # late fusion of a good and a noisy model sits between them
    auc = {m.metric: m for m in compare_runs(f"{a}+{b}", b, n_boot=200).metrics}["auc"]
    assert auc.delta > 0


def test_runs_of_other_folds_or_classes_are_refused(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "a", _good)
    other = _fake_run(tmp_path / "o", _good, per_patient=3)  # other test tuples in every fold
    with pytest.raises(ConfigError, match="tested different tuples"):
        compare_runs(a, other, n_boot=200)
    seeded = _fake_run(tmp_path / "s", _good, seeds=(5, 6))
    with pytest.raises(ConfigError, match="share no \\(seed, fold\\)"):
        compare_runs(a, seeded, n_boot=200)
    with pytest.raises(ConfigError, match="unknown level 'image'"):
        compare_runs(a, a, level="image")
    with pytest.raises(ConfigError, match="n_boot=10 is too few"):
        compare_runs(a, a, n_boot=10)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tuple_folder(tmp_path_factory.mktemp("cmp") / "data", patients=6, per_class=4)


def test_seeds_train_paired_runs_with_per_branch_figures_and_compare_them_on_the_cli(data: Path, tmp_path: Path,
                                                                                      capsys) -> None:
    from histomag.cli.main import run

    common = ["--backbone", "tiny", "--folds", "2", "--epochs", "1", "--batch-size", "16", "-j", "0", "-q",
              "--seeds", "2"]
    assert run(["dmsl", "train", str(data), "--out", str(tmp_path / "mm"), "--mode", "mm", "--mags", "40,20",
                *common]) == 0
    assert run(["dmsl", "train", str(data), "--out", str(tmp_path / "s40"), "--mode", "single", "--mags", "40",
                *common]) == 0
    capsys.readouterr()
    seeds = SeedRuns(tmp_path / "mm")
    assert seeds.seeds() == [0, 1] and [r.config.seed for r in seeds.runs()] == [0, 1]
    pooled = json.loads((tmp_path / "mm" / "metrics.json").read_text())
    assert len(pooled["folds"]) == 4 and "4 (seed, fold) pairs" in (tmp_path / "mm" / "table.md").read_text()
    # the same seed gives the same folds whatever the mode
    for s in (0, 1):
        for k in (1, 2):
            a = RunFolder(tmp_path / "mm" / f"seed-{s}").read_split(k)["test_patients"]
            b = RunFolder(tmp_path / "s40" / f"seed-{s}").read_split(k)["test_patients"]
            assert a == b
    # each head of the fused model is evaluated on its own too
    fold = json.loads((tmp_path / "mm" / "seed-0" / "folds" / "1" / "metrics.json").read_text())
    assert set(fold["branches"]) == {"40x", "20x"} and 0 <= fold["branches"]["20x"]["patch"]["accuracy"] <= 1
    preds = RunFolder(tmp_path / "mm" / "seed-0").read_predictions(1, ["dots", "rings"])
    assert set(preds.branches) == {"40x", "20x"} and preds.branches["40x"].shape == preds.probs.shape
    assert np.allclose(preds.branches["40x"].sum(axis=1), 1, atol=1e-4)

    code = run(["dmsl", "compare", str(tmp_path / "mm"), f"{tmp_path / 's40'}+{tmp_path / 's40'}", "--boot", "200",
                "--json", str(tmp_path / "cmp.json")])
    out = capsys.readouterr().out
    assert code == 0 and "| auc |" in out and " − " in out
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["pairs"] == [[0, 1], [0, 2], [1, 1], [1, 2]] and {m["metric"] for m in saved["metrics"]} == {
        "auc", "accuracy", "f1"}
    code = run(["dmsl", "compare", str(tmp_path / "mm"), str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "nope" in err


def test_a_head_of_a_fused_run_is_an_operand(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "mm", _good, mode="mm", mags=(10.0, 5.0))
    for k in (1, 2, 3):  # rewrite each fold with per-head probabilities: 10x good, 5x noise
        rf = RunFolder(run)
        fold = rf.read_predictions(k, CLASSES)
        rng = np.random.default_rng(k)
        heads = {"10x": np.stack([_good(y, rng) for y in fold.y]), "5x": np.stack([_noise(y, rng) for y in fold.y])}
        rows = [{"tuple_id": t, "slide_id": s, "patient_id": p, "label": CLASSES[y]}
                for t, s, p, y in zip(fold.tuple_ids, fold.slides, fold.patients, fold.y)]
        rf.write_predictions(rf.predictions_path(k), rows, fold.probs, CLASSES, heads)
    head = load_operand(f"{run}@10x")
    assert np.allclose(head.folds[(0, 1)].probs, RunFolder(run).read_predictions(1, CLASSES).branches["10x"], atol=1e-5)
    auc = {m.metric: m for m in compare_runs(f"{run}@10x", f"{run}@5x", n_boot=200).metrics}["auc"]
    assert auc.delta > 0.1
    with pytest.raises(ConfigError, match="no head '20x'.*heads: 10x, 5x"):
        load_operand(f"{run}@20x")
