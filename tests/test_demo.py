"""`histomag demo --quick` runs every stage end to end on built-in synthetic data."""

import json

from histomag.cli.main import run


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run(["demo", "--quick", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    for name in ("single-40x", "single-20x", "mm-40x+20x", "sim-40x+20x", "snapshots"):
        assert name in printed
    assert (out / "cohort" / "cohort.csv").is_file() and (out / "tiles" / "manifest.csv").is_file()
    for name in ("single-40x", "single-20x", "mm-40x+20x", "sim-40x+20x"):
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        assert 0.0 <= metrics["summary"]["patch"]["accuracy"]["mean"] <= 1.0
    assert (out / "magnifier" / "checkpoints" / "best.ckpt").is_file()
    assert len(list((out / "snapshots").glob("*.png"))) >= 4
    assert list((out / "runs" / "sim-40x+20x" / "cams").glob("*.png"))
    assert (out / "similarity" / "similarity_pies.png").is_file()
    html = (out / "report.html").read_text()
    assert str(out / "report.html") in printed
    for section in ("settings", "metrics", "roc", "confusion", "gradcam", "similarity", "magnification"):
        assert f'id="{section}"' in html
    assert html.count("data:image/png;base64,") >= 6
