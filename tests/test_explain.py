"""Grad-CAM per magnification branch, similarity statistics (Eq. 4) and the ``dmsl cam``/``similarity`` CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from helpers import make_tuple_folder

from histomag.errors import CheckpointError, ConfigError
from histomag.dmsl.explain import fold_test_data
from histomag.dmsl.explain.gradcam import (
    HEADER_H,
    LABEL_W,
    LINE_H,
    MARGIN,
    BranchCAMModel,
    cam_panel,
    choose_tuples,
    display_sizes,
    tuple_cams,
    tuple_probs,
)
from histomag.dmsl.explain.similarity_stats import (
    BIN_LABELS,
    bin_counts,
    pair_similarity,
    pie_chart,
    similarity,
    similarity_bins,
    similarity_scores,
    similarity_table,
)
from histomag.dmsl.network import MultiMagNet


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 2-fold runs of the tiny backbone (with and without SIM) on dots-vs-rings tuples (~6 s)."""
    from histomag.dmsl.cv import cross_validate
    from histomag.dmsl.config import DMSLConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("explain")
    data = make_tuple_folder(root / "data", patients=6, per_class=8)
    out = {"data": data}
    for mode in ("sim", "mm"):
        config = DMSLConfig(mode=mode, backbone="tiny", batch_size=16, epochs=10, patience=20, folds=2, lr=3e-3,
                            beta=0.2, num_workers=0)
        result = cross_validate(data, root / mode, config, progress=False)
        assert result.summary["patch"]["accuracy"]["mean"] > 0.7, (mode, result.summary)  # better than chance
        out[mode] = root / mode
    return out


@pytest.fixture(scope="module")
def fold1(runs: dict[str, Path]):
    return fold_test_data(runs["sim"], runs["data"], 1)


# ----- Grad-CAM ---------------------------------------------------------------------------------
def test_maps_have_the_input_size_are_in_unit_range_and_vary_for_both_layers_of_both_branches(fold1) -> None:
    members, _, _ = fold1.dataset[0]
    cams = tuple_cams(fold1.task, members)
    assert sorted(cams) == [(0, "high"), (0, "low"), (1, "high"), (1, "low")]
    for (i, which), cam in cams.items():
        assert cam.shape == tuple(members[i].shape[-2:]), (i, which)  # 64x64 at 40x, 32x32 at 20x
        assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0
        assert cam.max() > 0.9 and cam.min() < 0.1 and cam.std() > 0.02, (i, which)  # min-max scaled, not flat


def test_the_target_class_changes_the_map_and_none_means_the_prediction(fold1) -> None:
    members, _, _ = fold1.dataset[1]
    pred = int(np.argmax(tuple_probs(fold1.task, members)))
    own, other = tuple_cams(fold1.task, members, pred), tuple_cams(fold1.task, members, 1 - pred)
    default = tuple_cams(fold1.task, members, None)
    for key in own:
        assert np.array_equal(own[key], default[key])
    assert max(float(np.abs(own[k] - other[k]).max()) for k in own) > 0.2
    assert all(not np.allclose(own[(i, "high")], other[(i, "high")], atol=1e-3) for i in (0, 1))
    with pytest.raises(ConfigError, match="target class 5 out of range"):
        tuple_cams(fold1.task, members, 5)


def test_branch_wrapper_reproduces_the_fused_log_probabilities(fold1) -> None:
    members, _, _ = fold1.dataset[2]
    xs = [m[None] for m in members]
    net = fold1.task.model.eval()
    with torch.no_grad():
        full = net(xs)["log_probs"]
        for i in range(2):
            assert torch.allclose(BranchCAMModel(net, xs, i)(xs[i]), full, atol=1e-5)


def test_shared_and_frozen_backbones_still_give_one_map_per_branch_and_layer() -> None:
    torch.manual_seed(0)
    net = MultiMagNet("tiny", 3, (40, 20), mode="mm", shared_backbone=True)
    for p in net.parameters():
        p.requires_grad_(False)
    members = [torch.randn(3, 48, 48), torch.randn(3, 24, 24)]
    cams = tuple_cams(net, members, target=2)
    assert {k: v.shape for k, v in cams.items()} == {(0, "low"): (48, 48), (0, "high"): (48, 48),
                                                      (1, "low"): (24, 24), (1, "high"): (24, 24)}
    assert all(np.isfinite(c).all() and 0 <= c.min() and c.max() <= 1 and c.max() > 0.5 for c in cams.values())


def test_display_sizes_show_one_physical_scale() -> None:
    assert display_sizes([(64, 64), (32, 32)], [40, 20], cell=128) == [(128, 128), (128, 128)]  # same fov
    assert display_sizes([(64, 64), (64, 64)], [40, 20], cell=128) == [(64, 64), (128, 128)]  # context
    assert display_sizes([(600, 600), (300, 300), (150, 150)], [40, 20, 10], cell=300) == [(300, 300)] * 3


def test_panel_is_rgb_with_the_layout_size_and_members_at_one_display_size() -> None:
    rng = np.random.default_rng(0)
    big = rng.uniform(0.0, 1.0, (64, 64, 3))
    small = np.zeros((3, 32, 32), np.float32)  # CHW, black
    cams = {(0, "low"): np.zeros((64, 64)), (0, "high"): np.ones((64, 64)),
            (1, "low"): np.linspace(0, 1, 32 * 32).reshape(32, 32), (1, "high"): np.zeros((32, 32))}
    title = "t1\ntrue a | predicted b"
    panel = cam_panel([big, small], cams, [40, 20], title, cell=128)
    top = 2 * LINE_H + MARGIN + HEADER_H + MARGIN  # first row of cells
    assert panel.dtype == np.uint8 and panel.shape == (top + 3 * 128 + 3 * MARGIN, LABEL_W + 2 * 128 + 3 * MARGIN, 3)
    x20 = LABEL_W + MARGIN + 128 + MARGIN
    assert (panel[top:top + 128, x20:x20 + 128] == 0).all()  # the 20x input, upscaled to the 40x size
    assert (panel[top + 128:top + 128 + MARGIN, x20:x20 + 128] == 255).all()  # gap between rows
    high40 = panel[top + 2 * (128 + MARGIN):top + 3 * 128 + 2 * MARGIN, LABEL_W + MARGIN:LABEL_W + MARGIN + 128]
    low40 = panel[top + 128 + MARGIN:top + 2 * 128 + MARGIN, LABEL_W + MARGIN:LABEL_W + MARGIN + 128]
    assert high40[..., 0].mean() > low40[..., 0].mean() + 40  # map 1 is red in jet, map 0 blue
    with pytest.raises(ConfigError, match="differ in size"):
        cam_panel([big, small], {**cams, (1, "low"): np.zeros((64, 64))}, [40, 20], title)


def test_choose_tuples_mixes_correct_and_wrong() -> None:
    correct = np.array([True] * 10 + [False] * 3)
    picked = choose_tuples(correct, 8)
    assert len(picked) == 8 and len(set(picked)) == 8 and sum(not correct[i] for i in picked) == 3
    assert sum(not correct[i] for i in choose_tuples(correct, 4)) == 2
    assert len(choose_tuples(correct, 50)) == 13 and choose_tuples(np.ones(3, bool), 2) == [0, 2]


# ----- similarity -------------------------------------------------------------------------------
def test_similarity_is_one_for_identical_and_zero_for_anticorrelated_vectors() -> None:
    x = np.array([[1.0, 2.0, 3.0, 7.0], [0.5, -1.0, 2.0, 0.0]])
    assert similarity(x, x) == pytest.approx([1.0, 1.0])
    assert similarity(x, 3 * x + 2) == pytest.approx([1.0, 1.0])  # correlation ignores offset and scale
    assert similarity(x, -x) == pytest.approx([0.0, 0.0], abs=1e-12)
    assert similarity([1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]) == pytest.approx(0.5)  # uncorrelated
    assert similarity([2.0, 2.0, 2.0], [1.0, 5.0, 3.0]) == pytest.approx(0.5)  # constant: undefined -> 0.5
    three = [torch.tensor(x), torch.tensor(x), torch.tensor(-x)]  # pairs: 1, 0, 0
    assert pair_similarity(three) == pytest.approx([1 / 3, 1 / 3])


def test_unequal_widths_are_refused_for_pooled_and_compared_as_channel_max_maps() -> None:
    a, b = torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)
    with pytest.raises(ConfigError, match="widths differ \\(8, 16\\); use feature 'channel-max'"):
        pair_similarity([a.mean((2, 3)), b.mean((2, 3))])
    s = pair_similarity([a, b], feature="channel-max")
    assert s.shape == (2,) and ((0 <= s) & (s <= 1)).all()
    assert pair_similarity([a, a.repeat(1, 2, 1, 1)], feature="channel-max") == pytest.approx([1.0, 1.0])


def test_bins_have_inclusive_upper_edges_and_counts_sum_to_the_tuples() -> None:
    scores = np.array([0.0, 0.25, 0.26, 0.5, 0.51, 0.75, 0.76, 1.0, 0.1 + 0.15])
    assert similarity_bins(scores).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0]
    correct = np.array([True, False, True, True, False, True, True, False, True])
    counts = bin_counts(scores, correct)
    assert counts["correct"] == [2, 2, 1, 1] and counts["wrong"] == [1, 0, 1, 1]
    assert sum(counts["correct"]) + sum(counts["wrong"]) == counts["n"] == 9
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        similarity_bins(np.array([1.2]))


def test_pies_write_a_decodable_png(tmp_path: Path) -> None:
    rows = []
    for run, mode, counts in (("DMSL", "sim", {"n": 10, "correct": [0, 1, 2, 5], "wrong": [1, 1, 0, 0]}),
                              ("MM", "mm", {"n": 10, "correct": [1, 3, 3, 1], "wrong": [0, 2, 0, 0]})):
        from histomag.dmsl.explain.similarity_stats import table_rows

        rows += table_rows(run, mode, counts)
    assert [r["count"] for r in rows[:5]] == [8, 0, 1, 2, 5] and rows[4]["share"] == pytest.approx(0.5)
    assert rows[4]["share_in_group"] == pytest.approx(5 / 8)
    path = pie_chart(rows, tmp_path / "pies.png")
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.size[0] > img.size[1] > 200


def test_run_similarity_counts_every_test_tuple_once(runs: dict[str, Path], fold1) -> None:
    scores, correct = similarity_scores(fold1.task, fold1.dataset)
    assert scores.shape == (len(fold1.dataset),) and ((0 <= scores) & (scores <= 1)).all() and scores.std() > 0
    with open(runs["sim"] / "folds" / "1" / "predictions.csv", newline="") as fh:
        saved = [r["predicted"] == r["label"] for r in csv.DictReader(fh)]
    assert correct.tolist() == saved
    rows = similarity_table({"DMSL": runs["sim"], "MM": runs["mm"]}, runs["data"])
    n_test = sum(json.loads((runs["sim"] / "folds" / k / "split.json").read_text())["n_test"] for k in "12")
    for run in ("DMSL", "MM"):
        mine = [r for r in rows if r["run"] == run and r["bin"] in BIN_LABELS]
        assert len(mine) == 8 and sum(r["count"] for r in mine) == n_test == 6 * 16
        assert sum(r["share"] for r in mine) == pytest.approx(1.0, abs=1e-5)
    assert {r["mode"] for r in rows} == {"sim", "mm"}


# ----- CLI --------------------------------------------------------------------------------------
def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    import histomag.cli.dmsl  # noqa: F401  (registers the sub-app)
    from histomag.cli.main import run

    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_cam_writes_panels_and_refuses_unknown_classes(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cams"
    code, stdout, err = _cli(["dmsl", "cam", str(runs["sim"]), str(runs["data"]), "--out", str(out), "--n", "3",
                              "--class", "rings", "--fold", "2", "--cell", "96", "-q"], capsys)
    assert code == 0, err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and "3 Grad-CAM panels" in stdout
    for png in pngs:
        arr = np.asarray(Image.open(png))
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[1] == LABEL_W + 2 * 96 + 3 * MARGIN
    index = list(csv.DictReader(open(out / "cams.csv")))
    assert len(index) == 3 and {r["explained_class"] for r in index} == {"rings"}
    code, _, err = _cli(["dmsl", "cam", str(runs["sim"]), str(runs["data"]), "--out", str(out), "--class", "tumour"],
                        capsys)
    assert code == 2 and err.count("\n") == 1
    assert "class 'tumour' is not one of the model's classes: dots, rings" in err


def test_cam_on_a_run_folder_missing_files_names_the_file_and_the_command(runs: dict[str, Path], tmp_path: Path,
                                                                          capsys) -> None:
    code, _, err = _cli(["dmsl", "cam", str(tmp_path), str(runs["data"]), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "has no readable config.json; make it with: histomag dmsl train" in err
    broken = tmp_path / "run"
    broken.mkdir()
    shutil.copy(runs["sim"] / "config.json", broken / "config.json")
    with pytest.raises(CheckpointError, match=r"folds/1/split.json is missing .*histomag\.dmsl\.cv\.cross_validate\(DATA, RUN, config, resume=True\)"):
        fold_test_data(broken, runs["data"], 1)
    (broken / "folds" / "1").mkdir(parents=True)
    shutil.copy(runs["sim"] / "folds" / "1" / "split.json", broken / "folds" / "1" / "split.json")
    code, _, err = _cli(["dmsl", "cam", str(broken), str(runs["data"]), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "folds/1/checkpoints/best.ckpt is missing" in err and "histomag dmsl train" in err
    code, _, err = _cli(["dmsl", "similarity", str(broken), str(runs["data"]), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1 and "best.ckpt is missing" in err


def test_cli_similarity_writes_the_table_scores_and_pies(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "sim"
    code, stdout, err = _cli(["dmsl", "similarity", str(runs["sim"]), str(runs["mm"]), str(runs["data"]),
                              "--out", str(out), "--fold", "1"], capsys)
    assert code == 0, err
    table = list(csv.DictReader(open(out / "similarity.csv")))
    assert list(table[0]) == ["run", "mode", "correctness", "bin", "count", "share", "share_in_group"]
    assert {(r["run"], r["mode"]) for r in table} == {("sim", "sim"), ("mm", "mm")}
    assert "run,mode,correctness,bin,count" in stdout
    n_test = json.loads((runs["sim"] / "folds" / "1" / "split.json").read_text())["n_test"]
    assert len((out / "scores.csv").read_text().splitlines()) == 1 + 2 * n_test
    with Image.open(out / "similarity_pies.png") as img:
        img.load()
    code, _, err = _cli(["dmsl", "similarity", str(runs["data"]), "--out", str(out)], capsys)
    assert code == 2 and "RUN [RUN...] DATA" in err and err.count("\n") == 1


def test_similarity_refuses_a_single_magnification_model(fold1) -> None:
    net = MultiMagNet("tiny", 2, (40,), mode="single")
    with pytest.raises(ConfigError, match="two or more magnifications; this single model has one"):
        similarity_scores(net, fold1.dataset)
