"""Labelled images from an index CSV: one reader, ``tile INDEX.csv``, one final model and image-level prediction."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import nuclei_image
from PIL import Image

from histomag.data.index import block_groups, read_index
from histomag.errors import DatasetError

pytestmark = pytest.mark.usefixtures("one_thread")

DENSITY = {"sparse": 0.0015, "dense": 0.012}


def _index(folder: Path, lines: list[str], header: str) -> Path:
    path = folder / "index.csv"
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


# ----- the reader -------------------------------------------------------------------------------
def test_rows_keep_label_group_and_both_axes(tmp_path: Path) -> None:
    idx = _index(tmp_path, ["a.png,tumour,0.56,0.42,,P1", "sub/b.jpeg,normal,,,20,"],
                 "image,label,mpp_x,mpp_y,magnification,patient")
    a, b = read_index(idx)
    assert (a.image_id, a.label, a.group, a.mpp) == ("a", "tumour", "P1", (0.56, 0.42))
    assert a.path == str((tmp_path / "a.png").resolve())
    assert (b.image_id, b.label, b.group, b.mpp, b.magnification_given) == ("b", "normal", "", 0.5, True)
    assert b.path == str((tmp_path / "sub" / "b.jpeg").resolve())


@pytest.mark.parametrize("header, line, message", [
    ("image,mpp_x,mpp_y", "a.png,0.5,", "row 2: has mpp_x but no mpp_y"),
    ("image,mpp_x,mpp_y", "a.png,,0.5", "row 2: has mpp_y but no mpp_x"),
    ("image,mpp", "a.png,0", "row 2: column 'mpp' is '0'; give a positive number"),
    ("image,mpp", "a.png,352.8", "row 2: mpp 352.8 is outside what microscopes produce"),
    ("image,magnification", "a.png,400", "row 2: magnification 400 is outside the objectives"),
    ("image,mpp", ",0.25", "row 2: the image column is empty"),
    ("path,mpp", "a.png,0.25", "needs an image column"),
])
def test_bad_rows_name_the_row_and_column(tmp_path: Path, header: str, line: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        read_index(_index(tmp_path, [line], header))


def test_labels_are_required_only_when_asked(tmp_path: Path) -> None:
    idx = _index(tmp_path, ["a.png,0.25"], "image,mpp")
    assert read_index(idx)[0].label == ""
    with pytest.raises(DatasetError, match="needs a label column"):
        read_index(idx, require_label=True)
    idx = _index(tmp_path, ["a.png,,0.25"], "image,label,mpp")
    with pytest.raises(DatasetError, match="row 2: the label column is empty"):
        read_index(idx, require_label=True)
    # no resolution at all is fine for tiling with --mpp or metadata, not for training a magnification model
    assert read_index(_index(tmp_path, ["a.png,x"], "image,label"), require_resolution=False)[0].mpp is None
    with pytest.raises(DatasetError, match="needs a resolution column"):
        read_index(_index(tmp_path, ["a.png,x"], "image,label"))


def test_block_groups_follow_image_numbers_within_a_label(tmp_path: Path) -> None:
    names = ["b000", "b009", "b010", "n003", "is015"]
    labels = ["benign", "benign", "benign", "normal", "insitu"]
    idx = _index(tmp_path, [f"{n}.jpeg,{lab},0.5" for n, lab in zip(names, labels)], "image,label,mpp")
    rows, made = block_groups(read_index(idx), 10)
    assert made
    assert [r.group for r in rows] == ["benign-000-009", "benign-000-009", "benign-010-019", "normal-000-009",
                                       "insitu-010-019"]
    grouped = _index(tmp_path, ["b000.jpeg,benign,0.5,G7"], "image,label,mpp,group")
    rows, made = block_groups(read_index(grouped), 10)
    assert not made and rows[0].group == "G7"


# ----- tile INDEX.csv ---------------------------------------------------------------------------
def _labelled_images(folder: Path, n_per_class: int = 4, size: tuple[int, int] = (192, 256), mpp: float = 0.5,
                     anisotropic: bool = False) -> Path:
    """Images of two classes (sparse vs dense nuclei) and their index CSV (mpp_x/mpp_y columns)."""
    rng = np.random.default_rng(0)
    rows = []
    for label, density in DENSITY.items():
        for i in range(n_per_class):
            h, w = size
            img = nuclei_image(h, w, mpp, rng, density=density)
            if anisotropic:  # the file squeezes rows: each stored row is 4/3 as tall
                img = np.asarray(Image.fromarray(img).resize((w, h * 3 // 4), Image.BILINEAR))
            name = f"{label[0]}{i:03d}.png"
            Image.fromarray(img).save(folder / name)
            rows.append(f"{name},{label},{mpp},{mpp * 4 / 3 if anisotropic else mpp}")
    return _index(folder, rows, "image,label,mpp_x,mpp_y")


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    import histomag.cli.dmsl  # noqa: F401  (registers the sub-app)
    from histomag.cli.main import run

    code = run(args)
    out, err = capsys.readouterr()
    return code, out, err


def _manifest(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tile_index_labels_every_tuple_and_squares_pixels(tmp_path: Path, capsys) -> None:
    idx = _labelled_images(tmp_path, n_per_class=2, anisotropic=True)
    code, out, err = _cli(["tile", str(idx), "--out", str(tmp_path / "ds"), "--mags", "10,5", "--size", "32",
                           "--overlap", "0", "--min-tissue", "0", "-q"], capsys)
    assert code == 0, err
    rows = _manifest(tmp_path / "ds")
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["slide_id"], []).append(r)
    assert set(by_image) == {"s000", "s001", "d000", "d001"}
    for sid, rs in by_image.items():
        assert {r["label"] for r in rs} == {"sparse" if sid[0] == "s" else "dense"}
        assert {r["patient_id"] for r in rs} == {f"{'sparse' if sid[0] == 's' else 'dense'}-000-009"}
        # squared to 0.667 µm/px: 256 x 192 µm... a 10x field is 32 µm = 48 px, so 5 x 4 fields at no overlap
        assert len(rs) == (int(256 * 0.5 // 32)) * (int(192 * 0.5 // 32)) and rs[0]["slide_mpp"] == "0.66667"
    assert "blocks of 10 consecutive image numbers" in err
    img = np.asarray(Image.open(tmp_path / "ds" / rows[0]["image_10x"]))
    assert img.shape == (32, 32, 3)


def test_tile_index_reports_bad_and_empty_images_and_goes_on(tmp_path: Path, capsys) -> None:
    idx = _labelled_images(tmp_path, n_per_class=1)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.fromarray(nuclei_image(60, 60, 0.5, np.random.default_rng(1), density=0.012)).save(tmp_path / "small.png")
    with open(idx, "a") as fh:
        fh.write("broken.png,sparse,0.5,0.5\nsmall.png,dense,0.5,0.5\nmissing.png,dense,0.5,0.5\n")
    code, out, err = _cli(["tile", str(idx), "--out", str(tmp_path / "ds"), "--mags", "10,5", "--size", "32",
                           "--min-tissue", "0", "-q"], capsys)
    assert code == 1
    assert "tiled 3 of 5 slides (2 failed)" in out
    assert "broken.png" in err and "missing.png" in err
    assert "1 slide(s)/image(s) gave no tuple" in err and "small" in err
    assert {r["slide_id"] for r in _manifest(tmp_path / "ds")} == {"s000", "d000"}


# ----- one final model, image-level prediction ----------------------------------------------------
@pytest.fixture(scope="module")
def final_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Images of two classes, tiled from their index, and a one-fold (final) run trained on them."""
    import histomag.cli.dmsl  # noqa: F401
    from histomag.cli.main import run

    root = tmp_path_factory.mktemp("final")
    idx = _labelled_images(root, n_per_class=4)
    assert run(["tile", str(idx), "--out", str(root / "ds"), "--mags", "10,5", "--size", "64", "--min-tissue", "0",
                "--group-block", "1", "-q"]) == 0  # 5x members of 32 px: 2 x 2 maps for the SIM
    assert run(["dmsl", "train", str(root / "ds"), "--out", str(root / "run"), "--backbone", "tiny", "--mags", "10,5",
                "--folds", "1", "--epochs", "2", "--batch-size", "16", "--workers", "0", "--quiet"]) == 0
    return root, idx


def test_folds_1_trains_one_model_with_validation_patients(final_run: tuple[Path, Path]) -> None:
    import json

    root, _ = final_run
    split = json.loads((root / "run" / "folds" / "1" / "split.json").read_text())
    assert split["final_model"] and split["n_test"] == 0 and split["n_val"] > 0
    assert not set(split["train_patients"]) & set(split["val_patients"])
    assert (root / "run" / "folds" / "1" / "checkpoints" / "best.ckpt").is_file()
    assert "optimistic" in (root / "run" / "table.md").read_text()


def test_predict_images_writes_images_and_tuples_csv(final_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, idx = final_run
    code, out, err = _cli(["dmsl", "predict", str(root / "run"), str(idx), "--out", str(tmp_path / "p"), "-q"], capsys)
    assert code == 0, err
    assert "predicted 8 of 8 images (0 failed); accuracy" in out
    with open(tmp_path / "p" / "images.csv", newline="") as fh:
        images = list(csv.DictReader(fh))
    with open(tmp_path / "p" / "tuples.csv", newline="") as fh:
        tuples = list(csv.DictReader(fh))
    assert len(images) == 8 and {r["label"] for r in images} == {"sparse", "dense"}
    for r in images:
        mine = [t for t in tuples if t["image"] == r["image"]]
        assert int(r["n_tuples"]) == len(mine) > 0
        probs = np.array([float(r["prob_dense"]), float(r["prob_sparse"])])
        assert probs.sum() == pytest.approx(1.0, abs=1e-4)
        mean = np.mean([[float(t["prob_dense"]), float(t["prob_sparse"])] for t in mine], axis=0)
        assert np.allclose(probs, mean, atol=1e-4)  # the image's probabilities are its tuples' mean
        assert r["predicted"] == ("dense" if probs[0] > probs[1] else "sparse")


def test_predict_images_folder_with_a_corrupt_file(final_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, _ = final_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("s000.png", "d001.png"):
        (folder / name).write_bytes((root / name).read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    code, out, err = _cli(["dmsl", "predict", str(root / "run"), str(folder), "--mpp", "0.5", "--out",
                           str(tmp_path / "p"), "-q"], capsys)
    assert code == 1
    assert "predicted 2 of 3 images (1 failed)" in out and "corrupt.png" in err and "Traceback" not in err
    with open(tmp_path / "p" / "images.csv", newline="") as fh:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(fh)}
    assert rows["corrupt.png"]["error"] and not rows["corrupt.png"]["predicted"]
    assert rows["s000.png"]["mpp"] == "0.5" and int(rows["s000.png"]["n_tuples"]) > 0


def test_predict_images_finer_than_the_data_is_one_line(final_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, _ = final_run
    # the model reads 10x (1 µm/px); images at 2 µm/px (5x) cannot give it without upsampling
    code, out, err = _cli(["dmsl", "predict", str(root / "run"), str(root / "s000.png"), str(root / "d000.png"),
                           "--mpp", "2", "--out", str(tmp_path / "p"), "-q"], capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "10x" in err and "Traceback" not in err


def test_a_class_in_one_group_is_warned_about() -> None:
    from histomag.dmsl.cv import warn_thin_classes

    with pytest.warns(UserWarning, match="rare appear in fewer than 2 patients/groups"):
        assert warn_thin_classes(["a", "a", "rare", "b", "b"], ["P1", "P2", "P1", "P1", "P3"]) == ["rare"]


def test_an_index_rows_resolution_wins_over_mpp_which_wins_over_metadata(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        Image.fromarray(nuclei_image(768, 768, 0.5, rng, density=0.012)).save(tmp_path / f"{name}.png")
    idx = _index(tmp_path, ["a.png,x,0.5", "b.png,x,"], "image,label,mpp")
    code, out, err = _cli(["tile", str(idx), "--out", str(tmp_path / "ds"), "--mags", "10", "--size", "32",
                           "--min-tissue", "0", "--mpp", "0.25", "--max-tuples", "2", "-q"], capsys)
    assert code == 0, err
    with open(tmp_path / "ds" / "slides.csv", newline="") as fh:
        slides = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert float(slides["a"]["mpp"]) == 0.5 and float(slides["b"]["mpp"]) == 0.25
    assert slides["a"]["mpp_source"] == "index-csv" and slides["b"]["mpp_source"] == "override"


def test_mpp_csv_wins_is_recorded_and_warns_about_mismatches(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(4)
    for name in ("a", "b", "c"):
        Image.fromarray(nuclei_image(768, 768, 0.5, rng, density=0.012)).save(tmp_path / f"{name}.png")
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\na.png,0.5\nghost.svs,0.25\n")
    code, out, err = _cli(["tile", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--mpp-csv", str(table),
                           "--mpp", "0.25", "--mags", "10", "--size", "32", "--min-tissue", "0", "--max-tuples", "2",
                           "--out", str(tmp_path / "ds"), "-q"], capsys)
    assert code == 0, err
    assert "1 listed slide(s) are not in this batch: ghost.svs" in err
    assert "does not list 1 slide(s) of this batch" in err and "b.png" in err
    with open(tmp_path / "ds" / "slides.csv", newline="") as fh:
        slides = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert (float(slides["a"]["mpp"]), slides["a"]["mpp_source"]) == (0.5, "mpp-csv")
    assert (float(slides["b"]["mpp"]), slides["b"]["mpp_source"]) == (0.25, "override")
    assert {r["mpp_source"] for r in _manifest(tmp_path / "ds") if r["slide_id"] == "a"} == {"mpp-csv"}
    table.write_text("slide,mpp_x,mpp_y\na.png,0.5,\n")
    code, out, err = _cli(["tile", str(tmp_path / "a.png"), "--mpp-csv", str(table), "--mags", "10", "--size", "32",
                           "--out", str(tmp_path / "ds2"), "-q"], capsys)
    assert code == 2 and "row 2: has mpp_x but no mpp_y" in err and err.count("\n") == 1


def test_predict_images_on_a_dask_cluster_equals_one_process(final_run: tuple[Path, Path], dask_cluster,
                                                              tmp_path: Path, capsys) -> None:
    root, idx = final_run
    args = ["dmsl", "predict", str(root / "run"), str(idx), "-q"]
    assert _cli([*args, "--out", str(tmp_path / "local")], capsys)[0] == 0
    code, out, err = _cli([*args, "--out", str(tmp_path / "remote"), "--cluster", dask_cluster.scheduler_address],
                          capsys)
    assert code == 0, err
    for name in ("images.csv", "tuples.csv"):
        assert (tmp_path / "remote" / name).read_text() == (tmp_path / "local" / name).read_text()
    code, _, err = _cli(["dmsl", "predict", str(root / "run"), str(root / "s000.png"), "--cluster",
                         dask_cluster.scheduler_address], capsys)
    assert code == 2 and "drop --cluster" in err
