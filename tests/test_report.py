"""The self-contained HTML report (``histomag report``) and its Chromium screenshot.

Run folders are written here with the library's own metric and plot functions (clsmetrics,
magmetrics, similarity_stats), so their files have the shapes the training commands write,
without training anything (the whole module takes seconds).
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histomag.data.atomic import atomic_write_csv, atomic_write_json, atomic_write_text
from histomag.errors import CheckpointError, InputPathError
from histomag.report.html import SECTION_IDS, render_report, write_report

CLASSES = ("dots", "rings")
DMSL_CONFIG = {"mode": "sim", "backbone": "tiny", "weights": "none", "magnifications": [40.0, 20.0], "batch_size": 16,
               "lr": 0.003, "alpha": 0.5, "beta": 0.2, "sim_form": "l1", "epochs": 10, "patience": 20, "folds": 3,
               "val_fraction": 0.2, "train_fraction": 1.0, "seed": 0, "num_workers": 0, "devices": "auto",
               "num_nodes": 1, "strategy": "auto", "accelerator": "auto", "precision": None,
               "shared_backbone": False, "fusion": "equal", "dropout": 0.0, "augment": True, "max_time": None,
               "max_tuples": None}


# ----- run folders ------------------------------------------------------------------------------
def make_dmsl_run(run: Path, *, classes: tuple[str, ...] = CLASSES, folds: int = 3, skill: float = 1.5,
                  predictions: bool = True, seed: int = 0, **config) -> Path:
    """A DMSL run folder as ``histomag dmsl train`` leaves it (no checkpoints)."""
    from histomag.dmsl.metrics import evaluate_predictions, markdown_table, metrics_csv_rows, summarise, table_rows

    cfg = {**DMSL_CONFIG, "folds": folds, **config}
    rng = np.random.default_rng(seed)
    atomic_write_json(run / "config.json", {
        "model_type": "dmsl", "version": 1, "config": cfg, "data": str(run.parent / "data"), "classes": list(classes),
        "tuple_mode": "same-fov", "tile_settings": {"magnifications": [40.0, 20.0], "size": 64, "mode": "same-fov"}})
    per_fold = []
    for k in range(1, folds + 1):
        patients = [f"P{k}{i}" for i in range(2 * len(classes))]
        pats = [p for p in patients for _ in range(6)]
        y = np.array([patients.index(p) % len(classes) for p in pats])
        logits = rng.normal(size=(len(y), len(classes)))
        logits[np.arange(len(y)), y] += skill
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        fold_dir = run / "folds" / str(k)
        if predictions:
            header = ["tuple_id", "slide_id", "patient_id", "label", "predicted", *(f"prob_{c}" for c in classes)]
            atomic_write_csv(fold_dir / "predictions.csv", header, [
                [f"{p}_t{i}", p, p, classes[t], classes[int(np.argmax(q))], *(f"{v:.6g}" for v in q)]
                for i, (p, t, q) in enumerate(zip(pats, y, probs))])
            probs = np.round(probs, 6)  # what the CSV holds
        atomic_write_json(fold_dir / "split.json", {"fold": k, "train_fraction": cfg["train_fraction"],
                                                    "test_patients": patients})
        metrics = evaluate_predictions(pats, y, probs, list(classes), where=f"fold {k}")
        atomic_write_json(fold_dir / "metrics.json", metrics)
        per_fold.append(metrics)
    summary = summarise(per_fold)
    atomic_write_json(run / "metrics.json", {"mode": cfg["mode"], "backbone": cfg["backbone"],
                                             "magnifications": cfg["magnifications"], "classes": list(classes),
                                             "folds": per_fold, "summary": summary})
    atomic_write_csv(run / "metrics.csv", ["fold", "level", "n", "precision", "recall", "accuracy", "f1", "auc"],
                     metrics_csv_rows(per_fold, summary))
    rows = table_rows(summary, mode=cfg["mode"], magnifications=cfg["magnifications"], backbone=cfg["backbone"])
    atomic_write_text(run / "table.md", markdown_table(rows))
    return run


def make_mag_run(run: Path, kind: str = "regressor", seed: int = 0) -> Path:
    """A magnification run folder after ``histomag magnification train`` and ``evaluate``."""
    from histomag.magnification.metrics import magnification_metrics, scatter_plot, write_metrics

    rng = np.random.default_rng(seed)
    levels = [4.0, 10.0, 20.0, 40.0]
    true = np.repeat(levels, 8)
    if kind == "regressor":
        pred = true * rng.lognormal(0, 0.15, true.size)
    else:
        pred = np.array([levels[min(3, max(0, levels.index(t) + int(rng.integers(-1, 2) * (rng.random() < 0.3))))]
                         for t in true])
    atomic_write_json(run / "config.json", {"model_type": f"magnification-{kind}", "backbone": "tiny", "crop": 64,
                                            "levels": levels, "lr": 0.003, "epochs": 2,
                                            "data_dir": str(run.parent / "magset"), "versions": {"torch": "x"}})
    metrics = magnification_metrics(true, pred, ["lung"] * true.size, levels=levels)
    metrics["run"] = {"run_dir": str(run), "data_dir": str(run.parent / "magset"), "split": "test", "n_crops": 1,
                      "model_type": f"magnification-{kind}", "backbone": "tiny", "crop": 64}
    write_metrics(metrics, run / "eval")
    atomic_write_csv(run / "eval" / "predictions.csv", ["image", "source_id", "organ", "magnification", "predicted"],
                     [[f"images/{i}.png", "s", "lung", f"{t:g}", f"{p:.4f}"]
                      for i, (t, p) in enumerate(zip(true, pred))])
    scatter_plot(true, pred, run / "eval" / "scatter.png", title=f"{kind} on test")
    return run


def _panel(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 255 // width), (yy * 255 // height), rng.integers(0, 256, (height, width))], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def make_cams(folder: Path, n: int = 3, wide: bool = False) -> Path:
    """A ``histomag dmsl cam`` folder: PNG panels and cams.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for j in range(n):
        ok = j % 2 == 1
        name = f"{j:02d}_{'correct' if ok else 'wrong'}_slide-00_t{j:03d}.png"
        _panel(2400 if wide and j == 0 else 640, 480, j).save(folder / name)
        rows.append([f"slide-00_t{j:03d}", "dots", "dots" if ok else "rings", "0.61", "rings", "0.61", int(ok), name])
    atomic_write_csv(folder / "cams.csv", ["tuple_id", "label", "predicted", "prob_predicted", "explained_class",
                                           "prob_explained", "correct", "png"], rows)
    return folder


def make_similarity(folder: Path) -> Path:
    """A ``histomag dmsl similarity`` folder: similarity.csv and similarity_pies.png."""
    from histomag.dmsl.explain.similarity_stats import TABLE_COLUMNS, bin_counts, pie_chart, table_rows

    rng = np.random.default_rng(3)
    rows = []
    for name, mode in (("DMSL", "sim"), ("MM", "mm")):
        scores, correct = rng.uniform(0.2, 1.0, 60), rng.random(60) < 0.8
        rows += table_rows(name, mode, bin_counts(scores, correct))
    atomic_write_csv(folder / "similarity.csv", TABLE_COLUMNS, rows)
    pie_chart(rows, folder / "similarity_pies.png")
    return folder


@pytest.fixture(scope="module")
def complete(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input of the report: DMSL runs (two fractions, two modes), explain folders, both magnification models."""
    root = tmp_path_factory.mktemp("report")
    runs = {"sim_100": make_dmsl_run(root / "sim_100"),
            "mm_100": make_dmsl_run(root / "mm_100", mode="mm", skill=1.0, seed=1),
            "sim_25": make_dmsl_run(root / "sim_25", train_fraction=0.25, skill=0.5, seed=2, epochs=30),
            "reg": make_mag_run(root / "reg"), "cls": make_mag_run(root / "cls", "classifier")}
    make_cams(root / "sim_100" / "cams")
    runs["similarity"] = make_similarity(root / "similarity")
    from helpers import make_slide_prediction, two_class_slide

    make_slide_prediction(root / "predict", two_class_slide(root / "slide.png"))
    runs["predict"] = root / "predict"
    out = root / "report.html"
    write_report([runs[k] for k in ("sim_100", "mm_100", "sim_25", "reg", "cls")], out,
                 similarity=[runs["similarity"]], predictions=[runs["predict"]])
    runs["report"] = out
    return runs


# ----- parsing the page -------------------------------------------------------------------------
class Page(HTMLParser):
    """Sections (id -> classes), TOC links, images and the metric cells of a report."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.links: list[str] = []
        self.images: list[dict[str, str]] = []
        self.metrics: list[dict[str, str]] = []
        self.headings: list[str] = []
        self._cell: dict[str, str] | None = None
        self._h2 = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section":
            self.sections[a["id"]] = a.get("class", "")
        elif tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        elif tag == "img":
            self.images.append(a)
        elif tag == "span" and "data-metric" in a:
            self._cell = {**a, "text": ""}
        elif tag == "h2":
            self._h2 = True
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._cell["text"] = " ".join(self._cell["text"].split()).rstrip("†")
            self.metrics.append(self._cell)
            self._cell = None
        elif tag == "h2":
            self._h2 = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._h2:
            self.headings[-1] += data


def decode(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    im = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    assert im.format == "PNG"
    im.load()
    return im


# ----- complete report --------------------------------------------------------------------------
def test_a_complete_set_of_inputs_fills_every_section_and_the_table_of_contents(complete) -> None:
    text = complete["report"].read_text()
    page = Page(text)
    assert list(page.sections) == list(SECTION_IDS)
    assert all("unavailable" not in cls for cls in page.sections.values()), page.sections
    assert "Not available" not in text
    assert set(SECTION_IDS) <= set(page.links)
    assert {"mag-comparison", "settings-dmsl", "settings-magnification"} <= set(page.links)
    assert [h.split(". ", 1)[1] for h in page.headings if ". " in h][:2] == ["Settings", "Metrics"]
    # self-contained: no scripts, stylesheets, fonts or images from elsewhere
    lowered = text.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert "http://" not in lowered and "https://" not in lowered and "url(" not in lowered
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    # the data-fraction curve groups sim_25 with sim_100 (epochs differ, which does not count), not mm_100
    fraction = text[text.index('id="data-fraction"'):text.index('id="gradcam"')]
    assert "sim_25" in fraction and "sim_100" in fraction and "mm_100" not in fraction
    # both magnification models, and their level comparison
    mag = text[text.index('id="magnification"'):]
    assert "regressor" in mag and "classifier" in mag and "ACC_0.5" in mag and "within 10%" in mag
    assert stat.S_IMODE(os.stat(complete["report"]).st_mode) & 0o044  # readable by others (not the temp file's 0600)


def test_every_embedded_image_decodes_to_a_nonblank_picture_at_most_1200_px_wide(complete) -> None:
    page = Page(complete["report"].read_text())
    alts = [img["alt"] for img in page.images]
    # pooled ROC + 3 per-run ROC + 3 confusion + fraction + 3 CAM panels + pies + 2 scatters + level bars
    # + the slide's overlay, its two field strips and two class overlays
    assert len(page.images) == 20, alts
    assert any(a.startswith("Grad-CAM panel") for a in alts) and "pooled ROC curves of the runs" in alts
    for img in page.images:
        im = decode(img["src"])
        assert im.size == (int(img["width"]), int(img["height"])), img["alt"]
        assert 200 <= im.width <= 1200 and im.height >= 150, (img["alt"], im.size)
        grey = np.asarray(im.convert("L"), dtype=float)
        assert grey.std() > 5 and (grey < 200).mean() > 0.005, img["alt"]  # drawn, not blank


def test_metric_cells_equal_the_summary_in_metrics_json(complete) -> None:
    page = Page(complete["report"].read_text())
    assert len(page.metrics) == 3 * 2 * 5  # runs x levels x metrics
    order = ["sim_100", "mm_100", "sim_25"]
    for i, c in enumerate(page.metrics):
        run = order[i // 5 % 3]
        summary = json.loads((complete[run] / "metrics.json").read_text())["summary"]
        stat_ = summary[c["data-level"]][c["data-metric"]]
        assert float(c["data-mean"]) == stat_["mean"] and float(c["data-std"]) == stat_["std"]
        assert c["text"] == f"{stat_['mean']:.3f} ± {stat_['std']:.3f}", (run, c)
    table_md = (complete["sim_100"] / "table.md").read_text()
    assert page.metrics[2]["text"] in table_md  # the same text as the run's own Table III (patch ACC)


def test_wide_pngs_are_downscaled_to_1200_px(tmp_path: Path) -> None:
    run = make_dmsl_run(tmp_path / "run", folds=2)
    make_cams(tmp_path / "cams", n=1, wide=True)
    page = Page(render_report([run], cams=[tmp_path / "cams"]))
    panel = next(img for img in page.images if img["alt"].startswith("Grad-CAM"))
    assert decode(panel["src"]).size == (1200, 240)


# ----- missing inputs ---------------------------------------------------------------------------
def test_missing_inputs_give_not_available_notes_naming_the_command(tmp_path: Path) -> None:
    run = make_dmsl_run(tmp_path / "run", folds=2, predictions=False)
    text = render_report([run])
    page = Page(text)
    assert list(page.sections) == list(SECTION_IDS)
    unavailable = {s for s, cls in page.sections.items() if "unavailable" in cls}
    assert unavailable == {"comparison", "roc", "data-fraction", "gradcam", "similarity", "slides", "magnification"}
    for command in ("histomag dmsl evaluate", "--train-fraction", "histomag dmsl cam", "histomag dmsl similarity",
                    "histomag dmsl predict", "histomag magnification evaluate"):
        assert command in text, command
    assert text.count("Not available") >= 6
    confusion = text[text.index('id="confusion"'):text.index('id="data-fraction"')]
    assert "<img" in confusion  # pooled from metrics.json without predictions


def test_a_report_of_magnification_runs_only_notes_the_dmsl_sections(tmp_path: Path) -> None:
    page = Page(render_report([make_mag_run(tmp_path / "reg")]))
    unavailable = {s for s, cls in page.sections.items() if "unavailable" in cls}
    assert unavailable == {"metrics", "comparison", "roc", "confusion", "data-fraction", "gradcam", "similarity",
                           "slides"}
    assert len(page.images) == 1  # the scatter; no comparison without a classifier


def test_three_classes_get_one_vs_rest_curves_and_a_3x3_confusion(tmp_path: Path) -> None:
    run = make_dmsl_run(tmp_path / "run", classes=("a", "b", "c"), folds=2)
    page = Page(render_report([run]))
    assert {"ROC curves of run", "confusion matrices of run"} <= {img["alt"] for img in page.images}
    assert "unavailable" not in page.sections["roc"]


def test_data_fraction_groups_ignore_runtime_fields_but_not_settings(tmp_path: Path) -> None:
    from histomag.report.runs import load_run
    from histomag.report.sections import fraction_groups

    runs = [load_run(make_dmsl_run(tmp_path / n, folds=2, **kw)) for n, kw in (
        ("a", {}), ("b", {"train_fraction": 0.5, "epochs": 3, "num_workers": 4}),
        ("c", {"train_fraction": 0.5, "lr": 0.1}))]
    groups = fraction_groups(runs)
    assert [[r.name for r in g] for g in groups] == [["b", "a"]]


# ----- errors -----------------------------------------------------------------------------------
def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    import histomag.cli.report  # noqa: F401  (registers the command until cli.main does)
    from histomag.cli.main import run

    capsys.readouterr()
    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_report_and_says_where(complete, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "r.html"
    code, stdout, err = _cli(["report", str(complete["sim_100"]), str(complete["reg"]), "--out", str(out),
                              "--title", "My <runs>"], capsys)
    assert code == 0, err
    assert f"report -> {out}" in stdout
    text = out.read_text()
    assert "<title>My &lt;runs&gt;</title>" in text
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary file left behind


@pytest.mark.parametrize("case, expected", [
    ("nonexistent", "is not a run folder: make one with `histomag dmsl train DATA --out"),
    ("empty", "has no config.json: run `histomag dmsl train DATA --out"),
    ("foreign", "holds a resnet-classifier run, which the report does not know"),
    ("no-metrics", "has no metrics.json: run `histomag dmsl train DATA --out"),
    ("bad-json", "metrics.json is not valid JSON"),
    ("mag-no-eval", "has no eval/metrics.json: run `histomag magnification evaluate"),
    ("bad-predictions", "predictions.csv lacks columns prob_rings: re-run `histomag dmsl evaluate"),
    ("no-cams", "--cams"),
    ("no-predictions", "--predictions"),
    ("nothing", "nothing to report on"),
])
def test_bad_inputs_are_one_line_errors_with_exit_code_2(case: str, expected: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    extra: list[str] = []
    if case == "empty":
        run.mkdir()
    elif case == "foreign":
        atomic_write_json(run / "config.json", {"model_type": "resnet-classifier"})
    elif case in ("no-metrics", "bad-json", "bad-predictions", "no-cams", "no-predictions"):
        make_dmsl_run(run, folds=2)
        if case == "no-metrics":
            (run / "metrics.json").unlink()
        elif case == "bad-json":
            (run / "metrics.json").write_text('{"summary": \n')
        elif case == "bad-predictions":
            path = run / "folds" / "2" / "predictions.csv"
            path.write_text(path.read_text().replace("prob_rings", "prob_other"))
        elif case == "no-cams":
            extra = ["--cams", str(tmp_path / "nope")]
        else:
            extra = ["--predictions", str(tmp_path / "nope")]
    elif case == "mag-no-eval":
        make_mag_run(run)
        (run / "eval" / "metrics.json").unlink()
    out = tmp_path / "report.html"
    code, _, err = _cli(["report", *([] if case == "nothing" else [str(run)]), "--out", str(out), *extra], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not out.exists()


def test_library_errors_are_checkpoint_and_input_path_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="has no config.json"):
        render_report([tmp_path])
    with pytest.raises(InputPathError, match=r"cams=.*missing: no such folder; .*gradcam\.run_cams\("):
        render_report([make_dmsl_run(tmp_path / "run", folds=2)], cams=[tmp_path / "missing"])


# ----- screenshot -------------------------------------------------------------------------------
def test_without_chromium_the_screenshot_is_refused_with_false(monkeypatch, tmp_path: Path) -> None:
    from histomag.report import screenshot

    monkeypatch.setattr(screenshot, "find_chromium", lambda: None)
    page = tmp_path / "p.html"
    page.write_text("<p>hi</p>")
    assert screenshot.render_html_to_png(page, tmp_path / "p.png") is False
    assert not (tmp_path / "p.png").exists()


def test_chromium_renders_the_report_to_a_nonblank_png(complete, tmp_path: Path) -> None:
    from histomag.report.screenshot import find_chromium, render_html_to_png

    if find_chromium() is None:
        pytest.skip("no Chromium (chromium, chromium-browser or google-chrome) installed")
    png = tmp_path / "shot.png"
    assert render_html_to_png(complete["report"], png, width=1280, height=1600)
    with Image.open(png) as im:
        assert im.size == (1280, 1600)
        grey = np.asarray(im.convert("L"), dtype=float)
    assert grey.std() > 20  # text, tables and figures, not an empty page
    dark = grey < 100
    assert dark.mean() > 0.01
    # the content column (max-width ~1100 px, centred) carries the ink; the margins stay plain
    cols = np.flatnonzero(dark.any(axis=0))
    assert 60 < cols.min() and cols.max() < 1220, (cols.min(), cols.max())


# ----- the real writers -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_report_of_really_trained_runs(tmp_path: Path) -> None:
    """The files of ``cross_validate``, ``run_cams``, ``write_similarity`` and ``evaluate_run`` as they are."""
    import torch
    from helpers import make_magset
    from helpers import make_tuple_folder

    from histomag.dmsl.explain.gradcam import run_cams
    from histomag.dmsl.explain.similarity_stats import write_similarity
    from histomag.dmsl.cv import cross_validate
    from histomag.dmsl.config import DMSLConfig
    from histomag.magnification.metrics import evaluate_run
    from histomag.magnification.fit import preset, train_magnifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = make_tuple_folder(tmp_path / "data", patients=4, per_class=3)
        config = DMSLConfig(mode="sim", backbone="tiny", batch_size=8, epochs=1, patience=5, folds=2, num_workers=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = cross_validate(data, tmp_path / "sim", config, progress=False).run_dir
            run_cams(run, data, run / "cams", n=2)
            write_similarity({"DMSL": run}, data, run / "similarity")
            magset = make_magset(tmp_path / "magset", mags=(10, 40), counts={"train": 4, "val": 2, "test": 2}, size=72)
            mag = train_magnifier(magset, tmp_path / "mag", preset("tiny", epochs=1), progress=False)
            evaluate_run(mag, split="test", n_crops=1)
    finally:
        torch.set_num_threads(threads)
    page = Page(render_report([run, mag]))
    unavailable = {s for s, cls in page.sections.items() if "unavailable" in cls}
    assert unavailable == {"comparison", "data-fraction", "slides"}  # one run, one training fraction; no slide
    alts = [img["alt"] for img in page.images]
    assert sum(a.startswith("Grad-CAM panel") for a in alts) == 2
    assert {"ROC curves of sim", "confusion matrices of sim", "similarity pies of sim/similarity",
            "true vs predicted magnification of mag"} <= set(alts)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    acc = next(c for c in page.metrics if c["data-level"] == "patch" and c["data-metric"] == "accuracy")
    assert float(acc["data-mean"]) == summary["patch"]["accuracy"]["mean"]
    for img in page.images:
        assert decode(img["src"]).width >= 200


def test_comparison_section_pairs_runs_fold_by_fold(tmp_path: Path) -> None:
    ref = make_dmsl_run(tmp_path / "weak", skill=0.0, seed=1)
    strong = make_dmsl_run(tmp_path / "strong", skill=3.0, seed=2)
    page = Page(render_report([ref, strong]))
    assert "unavailable" not in page.sections["comparison"]
    text = render_report([ref, strong])
    section = text[text.index('id="comparison"'):text.index('id="roc"')]
    def cells(metric):
        row = section[section.index(f"<td>{metric}</td>"):].split("</tr>")[0]
        return [c.split(">")[-1] for c in row.split("</td>")[:-1]]

    for metric in ("auc", "accuracy"):
        row = cells(metric)
        low, high = (float(v) for v in row[4].strip("[]").split(", "))
        assert float(row[3]) > 0 and low <= float(row[3]) <= high and row[5] == "3/3"  # strong − weak
    low = float(cells("accuracy")[4].strip("[]").split(", ")[0])
    assert low > 0  # 4 test slides per fold: still clear for accuracy (AUC's interval is wider)
    alone = Page(render_report([ref]))
    assert "unavailable" in alone.sections["comparison"]
