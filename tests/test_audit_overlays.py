"""``histomag audit --overlays``: per file, the thumbnail with its tissue mask and the fields the estimate measured."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import nuclei_image
from histomag.cli.main import run
from histomag.magnification.audit import FIELD_COLOUR, OVERLAY_WIDTH


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two images whose right third is glass (no tissue there), and one unreadable file."""
    folder = tmp_path_factory.mktemp("audit-images")
    for i, mpp in enumerate((0.25, 0.5)):
        rgb = np.full((1536, 2304, 3), 246, np.uint8)
        rgb[:, :1536] = nuclei_image(1536, 1536, mpp, np.random.default_rng(i), density=0.01)
        Image.fromarray(rgb).save(folder / f"i{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "audit.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _red(png: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return np.all(np.abs(rgb - np.array(FIELD_COLOUR)) <= 2, axis=2)


def test_overlays_outline_the_fields_measured_on_the_tissue(images: Path, tmp_path: Path, capsys) -> None:
    from histomag.magnification.estimate import slide_tissue_mask
    from histomag.magnification.rulers.estimator import load_ruler_estimator
    from histomag.slide import open_slide

    out = tmp_path / "audit"
    assert run(["audit", str(images), "--out", str(out), "--overlays", "-q"]) == 1  # the broken file
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["broken.png"]["overlay"] == "" and rows["broken.png"]["verdict"] == "error"
    html = (out / "audit.html").read_text()
    estimator = load_ruler_estimator()
    for name in ("i0.png", "i1.png"):
        row = rows[name]
        assert row["overlay"].startswith("overlays/") and (out / row["overlay"]).is_file()
        assert f'href="{row["overlay"]}"' in html
        with open_slide(images / name) as slide:
            boxes = estimator.field_boxes_slide(slide, slide_tissue_mask(slide), 32)
        assert 2 <= len(boxes) and all(x + w <= 1536 for x, y, w, h in boxes)  # on the tissue only
        image = Image.open(out / row["overlay"])
        assert image.width == OVERLAY_WIDTH and image.height > OVERLAY_WIDTH * 1536 / 2304  # + the key band
        red = _red(out / row["overlay"])[: round(OVERLAY_WIDTH * 1536 / 2304)]  # the thumbnail, not the key
        ys, xs = np.nonzero(red)
        scale = OVERLAY_WIDTH / 2304
        assert xs.max() <= 1536 * scale + 2  # outlines on the tissue's two thirds, none on the glass
        # every field's corner is drawn
        for x, y, w, h in boxes:
            cx, cy = min(round(x * scale), red.shape[1] - 1), min(round(y * scale), red.shape[0] - 1)
            assert red[max(0, cy - 1):cy + 2, max(0, cx - 1):cx + 2].any(), (x, y)
    # without the option: no overlay column values, no folder
    plain = tmp_path / "plain"
    assert run(["audit", str(images), "--out", str(plain), "-q"]) == 1
    assert all(r["overlay"] == "" for r in _rows(plain)) and not (plain / "overlays").exists()


def test_shards_carry_their_overlays_into_the_merged_audit(images: Path, tmp_path: Path, capsys) -> None:
    local, sharded = tmp_path / "local", tmp_path / "sharded"
    assert run(["audit", str(images), "--out", str(local), "--overlays", "-q"]) == 1
    for k in (1, 2):
        assert run(["audit", str(images), "--out", str(sharded), "--overlays", "-q", "--shard", f"{k}/2"]) in (0, 1)
    assert run(["merge", str(sharded)]) == 1
    assert (sharded / "audit.csv").read_text() == (local / "audit.csv").read_text()
    assert (sharded / "audit.html").read_text() == (local / "audit.html").read_text()
    for row in _rows(sharded):
        if row["overlay"]:
            assert (sharded / row["overlay"]).read_bytes() == (local / row["overlay"]).read_bytes()
    assert not (sharded / "shards").exists()
