"""The magnification-set builder: sizes per magnification, never above the source, splits by source."""

import csv

import numpy as np
import pytest
from PIL import Image

from helpers import textured
from histomag.cli.main import run
from histomag.magnification.magset import MagSetSettings, Source, assign_splits, build_magnification_set, collect_sources


def _pink(h, w, seed=0):
    """Tissue-like pink texture (saturated, so the tissue mask keeps it)."""
    t = textured(h, w, seed).astype(np.float32) / 255
    rgb = np.stack([230 - 40 * t[..., 0], 120 + 60 * t[..., 1], 190 - 30 * t[..., 2]], axis=2)
    return rgb.clip(0, 255).astype(np.uint8)


@pytest.fixture
def sources(tmp_path):
    out = []
    for i, (mpp, size) in enumerate([(0.25, 800), (0.5, 600), (0.25, 700), (0.25, 640)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(_pink(size, size, i)).save(p)
        out.append(Source(str(p), f"img{i}", "colon", mpp))
    return out


def test_sizes_per_magnification_and_never_above_source(sources, tmp_path):
    settings = MagSetSettings(magnifications=(5.0, 10.0, 20.0, 40.0), regions_um=(150.0,), regions_per_size=1,
                              max_crop=500, min_crop=16, val_fraction=0.25, test_fraction=0.25)
    n, infos = build_magnification_set(sources, tmp_path / "set", settings, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "set" / "manifest.csv")))
    assert n == len(rows) > 0 and all(i["status"] == "ok" for i in infos)
    for r in rows:
        mag = float(r["magnification"])
        img = Image.open(tmp_path / "set" / r["image"])
        # a 150 µm region at magnification m is 150 * m / 10 px, capped at 500
        assert img.size == (int(r["width"]), int(r["height"]))
        assert img.size[0] == min(500, int(150 * mag / 10))
        assert float(r["mpp"]) == pytest.approx(10 / mag, rel=1e-3)
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_id"], set()).add(float(r["magnification"]))
    assert by_source["img1"] == {5.0, 10.0, 20.0}  # a 20x source never yields 40x
    assert by_source["img0"] == {5.0, 10.0, 20.0, 40.0}
    # one split per source
    splits = {}
    for r in rows:
        splits.setdefault(r["source_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == {"train", "val", "test"}


def test_background_crops_are_dropped(tmp_path):
    p = tmp_path / "glass.png"
    Image.fromarray(np.full((600, 600, 3), 245, np.uint8)).save(p)
    settings = MagSetSettings(magnifications=(10.0, 20.0), regions_um=(100.0,), val_fraction=0, test_fraction=0)
    n, infos = build_magnification_set([Source(str(p), "glass", "", 0.25)], tmp_path / "s", settings, progress=False)
    assert n == 0 and infos[0]["status"] == "failed" and "background" in infos[0]["error"]


def test_assign_splits_is_by_source_and_seeded():
    ids = [f"s{i}" for i in range(20)]
    a = assign_splits(ids, 0.15, 0.15, seed=1)
    assert a == assign_splits(list(reversed(ids)), 0.15, 0.15, seed=1)
    assert sorted(a.values()).count("test") == 3 and sorted(a.values()).count("val") == 3
    assert set(assign_splits(["a", "b", "c"], 0.1, 0.1, 0).values()) == {"train", "val", "test"}


def test_index_csv_and_cli(tmp_path, capsys):
    for i in range(3):
        Image.fromarray(_pink(400, 400, i)).save(tmp_path / f"im{i}.png")
    (tmp_path / "index.csv").write_text(
        "image,organ,magnification,mpp\nim0.png,liver,40,\nim1.png,kidney,,0.5\nim2.png,liver,40,0.2527\n")
    srcs = collect_sources([tmp_path / "index.csv"])
    assert [s.mpp for s in srcs] == [0.25, 0.5, 0.2527] and srcs[1].organ == "kidney"
    code = run(["magnification", "build", str(tmp_path / "index.csv"), "--out", str(tmp_path / "set"),
                "--mags", "10,20,40", "-q", "--min-crop", "16"])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "set" / "manifest.csv")))
    mags = {(r["source_id"], r["magnification"]) for r in rows}
    assert ("im1", "40") not in mags and ("im0", "40") in mags
    assert ("im2", "39.57") in mags  # a 39.6x scan is labelled with its true magnification
    bad = tmp_path / "bad.csv"
    bad.write_text("path,zoom\na.png,3\n")
    assert run(["magnification", "build", str(bad), "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "needs an image column" in err and err.count("\n") == 1


def test_builder_is_reproducible_across_processes(tmp_path):
    """Same sources and seed give the same crops, even in another interpreter (no str-hash seeding)."""
    import subprocess
    import sys

    Image.fromarray(_pink(600, 600, 3)).save(tmp_path / "a.png")
    code = ("import sys; from pathlib import Path; from histomag.magnification.magset import *; "
            "build_magnification_set([Source(sys.argv[1], 'a', '', 0.25)], Path(sys.argv[2]), "
            "MagSetSettings(magnifications=(10.0, 20.0), regions_um=(100.0,), regions_per_size=2, "
            "val_fraction=0, test_fraction=0), progress=False)")
    for out in ("x", "y"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png"), str(tmp_path / out)], check=True)
    a = (tmp_path / "x" / "manifest.csv").read_text()
    assert a == (tmp_path / "y" / "manifest.csv").read_text()
    for row in csv.DictReader(open(tmp_path / "x" / "manifest.csv")):
        assert (tmp_path / "x" / row["image"]).read_bytes() == (tmp_path / "y" / row["image"]).read_bytes()
