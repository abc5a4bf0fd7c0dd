"""Tile plans, tuple layouts, labels, and the resumable dataset folder."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import MemorySlide, nuclei_image, textured
from histomag.cli.main import run
from histomag.data.folder import DatasetFolder, TileSettings, manifest_columns
from histomag.tiling.jobs import SlideJob, patient_id_for, tile_slides
from histomag.errors import ConfigError, DatasetError
from histomag.tiling.fields import Field, make_tuple_spec, plan_fields, read_tuple
from histomag.tissue import TissueMask


def _tissue_image(h, w, seed=0):
    """Pink texture on the left 3/4, glass on the right quarter."""
    t = textured(h, w, seed).astype(np.float32) / 255
    rgb = np.stack([230 - 50 * t[..., 0], 110 + 70 * t[..., 1], 190 - 40 * t[..., 2]], axis=2).astype(np.uint8)
    rgb[:, 3 * w // 4:] = 242
    return rgb


@pytest.fixture
def slide_png(tmp_path):
    """A 2048 px 'slide' at 0.25 µm/px with a label mask at downsample 16: left half tumor, rest normal."""
    path = tmp_path / "slides" / "case-01.png"
    path.parent.mkdir()
    Image.fromarray(_tissue_image(2048, 2048)).save(path)
    labels = np.full((128, 128), 2, np.uint8)  # normal
    labels[:, :64] = 1  # tumor on the left half
    Image.fromarray(labels).save(tmp_path / "slides" / "case-01.labels.png")
    (tmp_path / "slides" / "classes.json").write_text(json.dumps({"0": "background", "1": "tumor", "2": "normal"}))
    return path


def test_same_fov_and_context_layouts():
    s = make_tuple_spec([20, 40], 600, "same-fov")
    assert [(m.magnification, m.size) for m in s.members] == [(40, 600), (20, 300)]
    assert s.members[0].field_um == s.members[1].field_um == pytest.approx(150)
    c = make_tuple_spec([40, 20, 10], 256, "context")
    assert [m.size for m in c.members] == [256, 256, 256]
    assert [m.field_um for m in c.members] == pytest.approx([64, 128, 256])
    with pytest.raises(ConfigError) as e:
        make_tuple_spec([40, 15], 300, "same-fov")  # 112.5 px
    assert "divisible by 8" in str(e.value)
    with pytest.raises(ConfigError):
        make_tuple_spec([40, 20], 600, "zoom")  # type: ignore[arg-type]


def test_grid_overlap_and_tissue_filter():
    slide = MemorySlide(textured(1200, 1600))
    mask = np.ones((75, 100), bool)
    mask[:, 50:] = False  # right half has no tissue
    tissue = TissueMask(mask, (16.0, 16.0))
    spec = make_tuple_spec([40, 20], 200, "same-fov")
    fields = plan_fields(slide, spec, tissue, overlap=0.25, min_tissue=0.5)
    xs = sorted({f.x for f in fields})
    assert np.allclose(np.diff(xs), 150)  # stride = 200 * (1 - 0.25)
    assert all(f.x <= 800 + 100 for f in fields)  # centres of tissue fields are in the left half
    no_overlap = plan_fields(slide, spec, tissue, overlap=0.0, min_tissue=0.5)
    assert len(no_overlap) < len(fields)
    with pytest.raises(ConfigError):
        plan_fields(slide, spec, tissue, overlap=1.0)


def test_random_placement_is_seeded_and_inside_tissue():
    slide = MemorySlide(textured(1200, 1600))
    mask = np.zeros((75, 100), bool)
    mask[10:60, 10:40] = True
    tissue = TissueMask(mask, (16.0, 16.0))
    spec = make_tuple_spec([40, 20], 100, "same-fov")
    a = plan_fields(slide, spec, tissue, placement="random", n_random=20, seed=3)
    b = plan_fields(slide, spec, tissue, placement="random", n_random=20, seed=3)
    c = plan_fields(slide, spec, tissue, placement="random", n_random=20, seed=4)
    assert a == b and a != c and len(a) == 20
    assert all(tissue.fraction(f.left, f.top, f.width, f.width) >= 0.5 for f in a)


def test_random_placement_is_local():
    """A few mask pixels changed move only the fields that touch them (plus as many replacements)."""
    slide = MemorySlide(textured(2048, 2048))
    rng = np.random.default_rng(0)
    mask = rng.random((128, 128)) < 0.9
    spec = make_tuple_spec([40, 20], 128, "same-fov")
    before = plan_fields(slide, spec, TissueMask(mask, (16.0, 16.0)), placement="random", n_random=40, seed=7)
    changed = mask.copy()
    changed[60:62, 60:62] = False  # 4 of 16,384 mask pixels: a 32 x 32 px patch of the slide
    after = plan_fields(slide, spec, TissueMask(changed, (16.0, 16.0)), placement="random", n_random=40, seed=7)
    assert len(before) == len(after) == 40

    def touches(f):  # the field's box meets the changed patch (level-0 px 960..992)
        return f.left < 992 and f.left + f.width > 960 and f.top < 992 and f.top + f.width > 960

    lost = set(before) - set(after)
    gained = set(after) - set(before)
    assert all(touches(f) for f in lost)  # no field away from the change moved
    assert len(gained) == len(lost) <= 4
    # the old scheme drew every field from one stream: this change would have moved most of them
    other_seed = plan_fields(slide, spec, TissueMask(changed, (16.0, 16.0)), placement="random", n_random=40, seed=8)
    assert len(set(other_seed) & set(after)) < 10


def test_random_placement_gives_many_fields_on_a_small_image_when_asked():
    slide = MemorySlide(textured(1024, 1024))
    spec = make_tuple_spec([40, 20], 256, "same-fov")
    tissue = TissueMask(np.ones((64, 64), bool), (16.0, 16.0))
    fields = plan_fields(slide, spec, tissue, placement="random", n_random=300, seed=0)
    assert len(fields) == len(set(fields)) == 300  # finer candidate cells, still one field per cell


def test_random_placement_is_local_to_the_slide_extent():
    """Fields of a region do not depend on how far the slide extends elsewhere."""
    spec = make_tuple_spec([40, 20], 128, "same-fov")
    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True
    small = plan_fields(MemorySlide(textured(1024, 1024)), spec, TissueMask(mask, (16.0, 16.0)),
                        placement="random", n_random=15, seed=1)
    wide_mask = np.zeros((64, 96), bool)
    wide_mask[8:40, 8:40] = True  # the same tissue; the slide is wider, empty on the right
    wide = plan_fields(MemorySlide(textured(1024, 1536)), spec, TissueMask(wide_mask, (16.0, 16.0)),
                       placement="random", n_random=15, seed=1)
    assert small == wide


def test_context_tuple_reads_wider_fields():
    slide = MemorySlide(textured(1200, 1600))
    spec = make_tuple_spec([40, 20], 128, "context")
    hi, lo = read_tuple(slide, spec, Field(800.0, 600.0, 128.0))
    assert hi.shape == lo.shape == (128, 128, 3)
    # the centre of the 20x field, upsampled back, is the 40x field's tissue at half resolution
    centre = lo[32:96, 32:96]
    ref = np.asarray(Image.fromarray(hi).reduce(2))
    assert np.abs(centre.astype(int) - ref.astype(int)).max() <= 1


def test_tile_labels_manifest_and_sizes(slide_png, tmp_path):
    out = tmp_path / "ds"
    settings = TileSettings((40.0, 20.0), 300, overlap=0.0, min_tissue=0.5)
    [res] = tile_slides([SlideJob(str(slide_png), mpp=0.25, labels=str(slide_png.with_suffix("")) + ".labels.png",
                                  patient_id="P1")], settings, out, progress=False)
    assert res.status == "ok" and res.tuples_written > 0 and res.fields_dropped > 0  # fields on the border
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == res.tuples_written
    for r in rows:
        fr = json.loads(r["class_fractions"])
        x = int(r["x"])
        # the label rule: >= 80% of one class; the left half is tumor
        assert r["label"] == ("tumor" if x < 1024 else "normal")
        assert fr[r["label"]] >= 0.8
        assert r["patient_id"] == "P1" and r["mpps"] == "0.25;0.5"
        assert Image.open(out / r["image_40x"]).size == (300, 300)
        assert Image.open(out / r["image_20x"]).size == (150, 150)
        assert float(r["tissue_fraction"]) >= 0.5
    assert not list(out.rglob("*.tmp"))


def test_negative_class_rule(slide_png, tmp_path):
    # right half: normal only on every other mask column, so normal covers ~50% of a field there
    labels = np.full((128, 128), 2, np.uint8)
    labels[:, :64] = 1
    labels[:, 65::2] = 0
    path = tmp_path / "sparse.png"
    Image.fromarray(labels).save(path)
    (tmp_path / "classes.json").write_text(json.dumps({"0": "background", "1": "tumor", "2": "normal"}))
    job = SlideJob(str(slide_png), mpp=0.25, labels=str(path))
    plain = TileSettings((40.0, 20.0), 256, overlap=0.0)
    tile_slides([job], plain, tmp_path / "a", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv")))
    assert {r["label"] for r in rows} == {"tumor"}  # the half-covered normal fields are dropped
    neg = TileSettings((40.0, 20.0), 256, overlap=0.0, negative_class="normal")
    tile_slides([job], neg, tmp_path / "b", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "b" / "manifest.csv")))
    normal = [r for r in rows if r["label"] == "normal"]
    assert normal and all(json.loads(r["class_fractions"])["tumor"] == 0 for r in normal)
    assert all(json.loads(r["class_fractions"])["normal"] < 0.8 for r in normal)


def test_resume_skips_finished_and_repairs_a_crash(slide_png, tmp_path):
    out = tmp_path / "ds"
    settings = TileSettings((40.0, 20.0), 256, overlap=0.0)
    job = SlideJob(str(slide_png), mpp=0.25)
    [first] = tile_slides([job], settings, out, progress=False)
    n = first.tuples_written
    assert n > 3
    # simulate a crash: a torn journal line, a lost image of the last tuple, a leftover temp file
    part = out / "parts" / "case-01.csv"
    lines = part.read_text().splitlines()
    rows = list(csv.DictReader(open(part)))
    lost = out / rows[-1]["image_20x"]
    lost.unlink()
    part.write_text("\n".join(lines) + "\n" + lines[1][: len(lines[1]) // 2])
    (out / "manifest.csv").unlink()
    [second] = tile_slides([job], settings, out, progress=False)
    assert second.tuples_resumed == n - 1 and second.tuples_written == 1
    final = DatasetFolder(out).read_manifest()  # raises if an image is missing
    assert len(final) == n and len({r["tuple_id"] for r in final}) == n
    # a third run writes nothing
    [third] = tile_slides([job], settings, out, progress=False)
    assert third.tuples_written == 0 and third.tuples_resumed == n


def test_resume_refuses_other_settings(slide_png, tmp_path):
    out = tmp_path / "ds"
    tile_slides([SlideJob(str(slide_png), mpp=0.25)], TileSettings((40.0, 20.0), 256), out, progress=False)
    with pytest.raises(DatasetError) as e:
        tile_slides([SlideJob(str(slide_png), mpp=0.25)], TileSettings((40.0, 10.0), 256), out, progress=False)
    assert "another output folder" in str(e.value)


def test_manifest_with_missing_images_lists_them(slide_png, tmp_path):
    out = tmp_path / "ds"
    tile_slides([SlideJob(str(slide_png), mpp=0.25)], TileSettings((40.0, 20.0), 256), out, progress=False)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    for r in rows[:5]:
        (out / r["image_40x"]).unlink()
    with pytest.raises(DatasetError) as e:
        DatasetFolder(out).read_manifest()
    assert "5 referenced images are missing" in str(e.value) and "and 2 more" in str(e.value)


def test_cli_tile_with_sidecar_labels_and_mask_mismatch(slide_png, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run(["tile", str(slide_png.parent), "--mpp", "0.25", "--mags", "40,20", "--size", "256",
                "--out", str(out), "-q"]) == 0
    labels = {r["label"] for r in csv.DictReader(open(out / "manifest.csv"))}
    assert labels == {"tumor", "normal"}  # found case-01.labels.png and classes.json beside the slide
    bad = tmp_path / "wide.png"
    Image.fromarray(np.zeros((10, 40), np.uint8)).save(bad)
    code = run(["tile", str(slide_png), "--mpp", "0.25", "--labels", str(bad), "--out", str(tmp_path / "x"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "aspect" in err and err.count("\n") == 1


def test_cli_no_tissue_and_bad_geojson(tmp_path, capsys):
    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((1024, 1024, 3), 240, np.uint8)).save(glass)
    assert run(["tile", str(glass), "--mpp", "0.25", "--size", "256", "--out", str(tmp_path / "a"), "-q"]) == 2
    assert "no tissue" in capsys.readouterr().err
    img = tmp_path / "t.png"
    Image.fromarray(_tissue_image(1024, 1024)).save(img)
    for text in ("", "{not json", json.dumps({"type": "FeatureCollection", "features": []})):
        gj = tmp_path / "a.geojson"
        gj.write_text(text)
        code = run(["tile", str(img), "--mpp", "0.25", "--size", "256", "--labels", str(gj),
                    "--out", str(tmp_path / "b"), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "a.geojson" in err


def test_patient_ids():
    assert patient_id_for("TCGA-18-5592-01Z-00-DX1") == "TCGA-18-5592"
    assert patient_id_for("synth-003") == "synth-003"


def test_manifest_columns():
    cols = manifest_columns([20, 40])
    assert cols[-2:] == ["image_40x", "image_20x"] and "patient_id" in cols


@pytest.mark.parametrize("fmt, suffix", [("jpeg", ".jpg"), ("webp", ".webp")])
def test_tile_writes_lossy_formats_and_resumes_them(tmp_path: Path, fmt: str, suffix: str) -> None:
    from histomag.data.tuples import TupleDataset

    slide = tmp_path / "s.png"
    Image.fromarray(nuclei_image(512, 512, 0.25, np.random.default_rng(0), density=0.01)).save(slide)
    out = tmp_path / "ds"
    args = ["tile", str(slide), "--mpp", "0.25", "--mags", "40,20", "--size", "128", "--min-tissue", "0",
            "--overlap", "0", "--format", fmt, "--quality", "85", "-q"]
    assert run([*args, "--out", str(out)]) == 0
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and all(r["image_40x"].endswith(suffix) and r["image_20x"].endswith(suffix) for r in rows)
    data = TupleDataset(out, [40, 20], labelled_only=False)
    big, small = data[0][0]
    assert big.shape == (3, 128, 128) and small.shape == (3, 64, 64)
    original = np.asarray(Image.open(out / rows[0]["image_40x"]).convert("RGB"), dtype=float)
    assert original.std() > 5  # a real picture, not a blank
    # a truncated file is found on resume and written again; nothing else is rewritten
    victim = out / rows[3]["image_20x"]
    victim.write_bytes(victim.read_bytes()[:-50])
    assert run([*args, "--out", str(out)]) == 0
    assert Image.open(victim).size == (64, 64) and Image.open(victim).convert("RGB")  # decodes again
    # resuming with another format is refused in one line
    assert run(["tile", str(slide), "--mpp", "0.25", "--mags", "40,20", "--size", "128", "--min-tissue", "0",
                "--overlap", "0", "--format", "png", "-q", "--out", str(out)]) == 2


def test_out_that_is_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    slide = tmp_path / "s.png"
    Image.fromarray(nuclei_image(256, 256, 0.25, np.random.default_rng(0), density=0.01)).save(slide)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        code = run(["tile", str(slide), "--mpp", "0.25", "--mags", "40", "--size", "64", "--out", str(out), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "a file is in the way" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("flag", ["--layout", "--mode"])  # --mode is the older name, still accepted
def test_tile_layout_flag_gives_context_pairs(tmp_path: Path, flag: str) -> None:
    slide = tmp_path / "s.png"
    Image.fromarray(nuclei_image(512, 512, 0.25, np.random.default_rng(0), density=0.01)).save(slide)
    out = tmp_path / "ctx"
    assert run(["tile", str(slide), "--mpp", "0.25", "--mags", "40,20", "--size", "64", flag, "context",
                "--min-tissue", "0", "--max-tuples", "3", "--out", str(out), "-q"]) == 0
    settings = json.loads((out / "dataset.json").read_text())
    assert settings["mode"] == "context"
    with open(out / "manifest.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    # context: the same pixel size at both magnifications, the 20x field twice as wide
    assert Image.open(out / row["image_40x"]).size == Image.open(out / row["image_20x"]).size == (64, 64)


@pytest.mark.parametrize("args, message", [(["--quality", "0"], "image quality 0 must be in 1..100"),
                                           (["--format", "bmp"], "unknown image format 'bmp'; valid: png, jpeg, webp, qoi, jxl")])
def test_bad_format_or_quality_is_one_line_before_any_work(tmp_path: Path, capsys, args, message) -> None:
    slide = tmp_path / "s.png"
    Image.fromarray(textured(64, 64)).save(slide)
    code = run(["tile", str(slide), "--mpp", "0.25", "--mags", "40", "--size", "32", "--out", str(tmp_path / "o"),
                "-q", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: {message}" and not (tmp_path / "o").exists()
