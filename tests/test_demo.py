"""`histomag demo --quick` runs every stage end to end on built-in synthetic data, and every DMSL mode learns."""

import csv
import json
from collections import Counter

import pytest

from histomag.cli.main import run

MODES = ("single-40x", "single-20x", "mm-40x+20x", "sim-40x+20x")
#: every mode must beat chance by this much in patch AUC (chance 0.5). Measured with the local random field
#: placement (docs/dmsl-fusion.md, quick demo at seeds 0, 1, 2): single-40x 0.806 / 0.955 / 0.922, single-20x
#: 0.839 / 0.939 / 0.947, mm 0.798 / 0.970 / 0.964, sim 0.763 / 0.972 / 0.978 — a 2-fold CV on 4 slides moves
#: by up to 0.2 AUC between seeds, so the bar sits below the lowest seed, well above chance
MIN_AUC = 0.7
#: the default SIM may trail the same network without SIM by at most this much patch accuracy. Measured at
#: seeds 0, 1, 2: sim - mm = -0.057, -0.013, +0.156 (the quick demo's seed spread, docs/dmsl-fusion.md); the
#: bar still fails the old default that broke training (l1, beta 0.5: sim 0.456 vs mm 0.881)
SIM_MARGIN = 0.1


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(["demo", "--quick", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    for name in (*MODES, "snapshots"):
        assert name in printed
    assert (out / "cohort" / "cohort.csv").is_file() and (out / "tiles" / "manifest.csv").is_file()

    with open(out / "tiles" / "manifest.csv", newline="") as fh:
        labels = Counter(row["label"] for row in csv.DictReader(fh) if row["label"])
    majority = max(labels.values()) / sum(labels.values())  # accuracy of always guessing the commonest class
    patch = {name: json.loads((out / "runs" / name / "metrics.json").read_text())["summary"]["patch"]
             for name in MODES}
    acc = {name: p["accuracy"]["mean"] for name, p in patch.items()}
    auc = {name: p["auc"]["mean"] for name, p in patch.items()}
    for name in MODES:
        assert acc[name] > majority, f"{name} at chance: accuracy {acc[name]:.3f} <= majority share {majority:.3f}"
        assert auc[name] >= MIN_AUC, f"{name} at chance: AUC {auc[name]:.3f} < {MIN_AUC}"
    assert acc["sim-40x+20x"] >= acc["mm-40x+20x"] - SIM_MARGIN, acc
    config = json.loads((out / "runs" / "sim-40x+20x" / "config.json").read_text())["config"]
    assert {"sim_form", "sim_warmup", "beta"} <= set(config)

    assert (out / "magnifier" / "checkpoints" / "best.ckpt").is_file()
    assert len(list((out / "snapshots").glob("*.png"))) >= 4
    assert list((out / "runs" / "sim-40x+20x" / "cams").glob("*.png"))
    assert (out / "similarity" / "similarity_pies.png").is_file()
    html = (out / "report.html").read_text()
    assert str(out / "report.html") in printed
    for section in ("settings", "metrics", "roc", "confusion", "gradcam", "similarity", "magnification"):
        assert f'id="{section}"' in html
    assert html.count("data:image/png;base64,") >= 6
