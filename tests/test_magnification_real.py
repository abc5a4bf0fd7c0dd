"""Training on sources, leave-groups-out CV, export with a calibrated interval, predict and audit, through the CLI."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from helpers import nuclei_image
from histomag.cli.main import run


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two groups of synthetic tissue: 'scanA' at 0.25 µm/px (40x) and 'scanB' at 0.5 µm/px (20x)."""
    root = tmp_path_factory.mktemp("realsrc")
    rng = np.random.default_rng(0)
    rows = []
    for group, mpp in (("scanA", 0.25), ("scanB", 0.5)):
        for k in range(2):
            name = f"{group}_{k}.png"
            Image.fromarray(nuclei_image(320, 320, mpp, rng)).save(root / name)
            rows.append(f"{name},{mpp},{group}")
    (root / "index.csv").write_text("image,mpp,group\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def cv_and_model(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("realcv")
    common = ["--preset", "tiny", "--epoch-size", "32", "--epochs", "1", "--patience", "3", "-q"]
    assert run(["magnification", "train", str(sources / "index.csv"), "--out", str(out / "run")] + common) == 0
    assert run(["magnification", "cv", str(sources / "index.csv"), "--out", str(out / "cv"), "--n-crops", "4",
                "--seed", "7"] + common) == 0
    assert run(["magnification", "export", str(out / "run"), "--cv", str(out / "cv"), "--out",
                str(out / "model.pt")]) == 0
    return out


def test_train_on_sources_records_the_data(cv_and_model):
    config = json.loads((cv_and_model / "run" / "config.json").read_text())
    assert config["data"] == "sources" and set(config["sources"]) == {"scanA", "scanB"}
    assert config["patience"] == 3  # --patience overrides the preset's
    assert config["acquisition"]["random_kernel"] is True
    assert (cv_and_model / "run" / "checkpoints" / "best.ckpt").is_file()


def test_cv_leaves_whole_groups_out(cv_and_model):
    with open(cv_and_model / "cv" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    folds = {r["group"]: r["fold"] for r in rows}
    assert set(folds) == {"scanA", "scanB"} and folds["scanA"] != folds["scanB"]
    for k in (0, 1):  # each fold's model never saw the group it predicts
        cfg = json.loads((cv_and_model / "cv" / f"fold-{k}" / "config.json").read_text())
        held = cfg["held_out"]
        assert cfg["seed"] == 7   # --seed reaches every fold
        assert all(r["group"] in held for r in rows if r["fold"] == str(k)) and not set(held) & set(cfg["sources"])
    with open(cv_and_model / "cv" / "metrics_per_group.csv", newline="") as fh:
        metrics_rows = list(csv.DictReader(fh))
    metrics = {r["group"]: r for r in metrics_rows if r["method"] == "cnn"}
    assert set(metrics) == {"scanA", "scanB", "all"}
    for key in ("median_rel_error", "within_10", "acc_1", "bias", "coverage"):
        assert key in metrics["all"]
    summary = json.loads((cv_and_model / "cv" / "summary.json").read_text())
    from histomag.magnification.cv import METHODS

    chosen = METHODS[summary["method"]][0]
    assert summary["interval"]["q"] > 0 and summary["interval"]["n"] == sum(bool(r[chosen]) for r in rows)
    pooled = {r["method"]: float(r["median_rel_error"]) for r in metrics_rows if r["group"] == "all"}
    assert summary["method"] == min(pooled, key=pooled.get)  # the default inference is chosen by held-out error


def test_exported_model_is_small_and_gives_intervals(cv_and_model, sources, tmp_path, capsys):
    from histomag.magnification.infer import load_estimator

    model = cv_and_model / "model.pt"
    assert model.stat().st_size < 20e6
    est = load_estimator(model)
    assert est.calibration is not None and est.calibration.level == 0.9
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code = run(["magnification", "predict", "--checkpoint", str(model), "--n-crops", "4",
                str(sources / "scanA_0.png"), str(bad)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(lines) == 2
    good, broken = lines
    lo, hi = good["mpp_interval"]
    assert lo < good["mpp"] < hi and good["interval_level"] == 0.9
    assert "error" in broken and broken["magnification"] is None
    # an image with too few nuclei for the ruler still gets the CNN's answer, with the CNN's interval
    ruler = load_estimator(model)
    ruler.method, ruler.fallback = "nuclei", ruler.calibration
    few = ruler.estimate_file(sources / "scanA_0.png", n_crops=4)
    assert few["magnification"] > 0 and "mpp_interval" in few


def test_audit_reports_every_file_and_goes_on(cv_and_model, sources, tmp_path, capsys):
    folder = tmp_path / "cohort"
    folder.mkdir()
    Image.open(sources / "scanB_0.png").save(folder / "a_snapshot.png")
    Image.fromarray(np.full((300, 300, 3), 250, np.uint8)).save(folder / "b_glass.png")
    (folder / "c_corrupt.png").write_bytes(b"not an image")
    code = run(["audit", str(folder), "--checkpoint", str(cv_and_model / "model.pt"), "--out", str(tmp_path / "aud"),
                "-q", "--n-crops", "4"])
    captured = capsys.readouterr()
    assert code == 1
    with open(tmp_path / "aud" / "audit.csv", newline="") as fh:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(fh)}
    assert rows["a_snapshot.png"]["verdict"] == "missing"  # a PNG states no resolution
    assert float(rows["a_snapshot.png"]["mpp_low"]) < float(rows["a_snapshot.png"]["mpp_high"])
    assert rows["b_glass.png"]["verdict"] == "error" and "no tissue" in rows["b_glass.png"]["error"]
    assert rows["c_corrupt.png"]["verdict"] == "error"
    html = (tmp_path / "aud" / "audit.html").read_text()
    assert "a_snapshot.png" in html and "data:image/png;base64" in html and "1 missing" in html
    assert captured.err.count("error:") == 2
    assert rows["a_snapshot.png"]["message"].startswith("no resolution in the metadata")


def test_audit_with_the_shipped_rulers_says_what_the_pixels_show(shared_data, tmp_path, capsys):
    folder = tmp_path / "cohort"
    folder.mkdir()
    Image.open(shared_data / "monuseg" / "images" / "TCGA-21-5784-01Z-00-DX1.png").save(folder / "m.png")
    (folder / "broken.png").write_bytes(b"not an image")
    code = run(["audit", str(folder), str(shared_data / "slides" / "cmu-1-small-region.svs"), "--out",
                str(tmp_path / "aud"), "-q", "--evidence"])
    assert code == 1  # one file of three is broken, the others go on
    with open(tmp_path / "aud" / "audit.csv", newline="") as fh:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(fh)}
    cmu = rows["cmu-1-small-region.svs"]
    assert cmu["metadata_magnification"] and cmu["objective"] and 0 < float(cmu["objective_p"]) <= 1
    assert cmu["message"].startswith("metadata 20")  # "metadata 20x agrees ..." or "metadata 20x, pixels say ..."
    assert rows["m.png"]["verdict"] == "missing" and "pixels" in rows["m.png"]["message"]
    html = (tmp_path / "aud" / "audit.html").read_text()
    assert "µm/px =" in html and "objective" in html
    drawn = tmp_path / "aud" / cmu["evidence"]  # what the ruler measured, linked from the page
    assert drawn.read_bytes()[:4] == b"\x89PNG" and cmu["evidence"] in html and not rows["broken.png"]["evidence"]


def test_nuclei_ruler_and_combination_through_the_estimator():
    from histomag.errors import NoTissueError
    from histomag.magnification.estimate import IntervalCalibration
    from histomag.magnification.config import build_magnifier, preset
    from histomag.magnification.infer import Estimator

    config = preset("tiny")
    model = build_magnifier(config, weights=None).eval()
    cal = IntervalCalibration(q=0.2, scaled=False)
    rgb = nuclei_image(800, 800, 0.5, np.random.default_rng(3))  # 7 µm nuclei at 20x
    ruler = Estimator(model, config, cal, "test", method="nuclei").estimate_rgb(rgb)
    assert ruler.magnification == pytest.approx(20.0, rel=0.1)
    lo, hi = ruler.interval
    assert hi / lo == pytest.approx(np.exp(0.4), rel=1e-6)
    cnn = Estimator(model, config, None, "test").estimate_rgb(rgb)
    both = Estimator(model, config, cal, "test", method="combined", fallback=None).estimate_rgb(rgb)
    assert both.magnification == pytest.approx(np.sqrt(cnn.magnification * ruler.magnification), rel=1e-6)
    stroma = np.full((400, 400, 3), (235, 170, 200), np.uint8)  # pink, no nuclei: the CNN answers alone
    alone = Estimator(model, config, cal, "test", method="nuclei", fallback=None).estimate_rgb(stroma)
    assert alone.magnification > 0 and alone.interval is None
    with pytest.raises(NoTissueError):  # empty glass: no answer at all
        Estimator(model, config, cal, "test", method="nuclei").estimate_rgb(np.full((400, 400, 3), 250, np.uint8))


def test_ruler_at_its_floor_opens_the_interval_downwards_and_says_so():
    """Nuclei of about 2 px (2.9x) read as about 2.2 px whatever their size: the interval must reach 1x."""
    from histomag.magnification.estimate import LOWEST_MAGNIFICATION, IntervalCalibration, ruler_floor_magnification
    from histomag.magnification.config import build_magnifier, preset
    from histomag.magnification.infer import Estimator

    config = preset("tiny")
    model = build_magnifier(config, weights=None).eval()
    cal = IntervalCalibration(q=0.2, scaled=False)
    coarse = nuclei_image(800, 800, 3.5, np.random.default_rng(4))  # 7 µm nuclei = 2 px
    for method in ("nuclei", "combined"):
        est = Estimator(model, config, cal, "test", method=method, fallback=None).estimate_rgb(coarse)
        assert est.caveat and "floor" in est.caveat and "floor" in est.describe()
        assert est.interval[0] == LOWEST_MAGNIFICATION < est.magnification < est.interval[1]
        assert json.loads(json.dumps(est.to_dict()))["caveat"] == est.caveat
    ruler = Estimator(model, config, cal, "test", method="nuclei").estimate_rgb(coarse)
    assert ruler.magnification < ruler_floor_magnification()
    fine = Estimator(model, config, cal, "test", method="nuclei").estimate_rgb(
        nuclei_image(800, 800, 0.5, np.random.default_rng(3)))
    assert fine.caveat is None and "caveat" not in fine.to_dict()
    assert fine.interval[1] / fine.interval[0] == pytest.approx(np.exp(0.4), rel=1e-6)
