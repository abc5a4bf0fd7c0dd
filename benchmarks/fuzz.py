"""Seeded mutation fuzzing of every file parser histomag has (issue 23, item 2).

Each parser gets small valid seed files made here (synthetic slides, images, CSVs, JSON, checkpoints;
no data is read from elsewhere), mutated at random from ``--seed``: bit flips, overwrites with
interesting values (0, 0xFF, 0x7FFFFFFF, huge dimensions), truncation, chunk duplication and deletion,
and for text formats structural changes (dropped or renamed keys and columns, wrong types, NaN,
huge numbers, unicode). Every input runs in a worker process under a timeout and an address-space
cap, and counts as one of:

- ok / clean: it was read, or refused with an error of histomag's hierarchy (``HistomagError``);
- traceback: any other exception (a ``MemoryError`` under the cap included: a memory bomb);
- hang: no answer within ``--timeout`` seconds (the worker is killed and restarted);
- crash: the worker died (a signal in a C decoder, or the kernel's OOM killer).

Prints per parser: inputs tried, tracebacks (the first distinct exception types and where they were
raised), hangs, crashes and the worker's peak RSS; exits 1 when anything was found.

    python benchmarks/fuzz.py --n 2000                 # every parser
    python benchmarks/fuzz.py --parser tiff --n 500 --save /tmp/finds   # keep the failing inputs

``tests/test_fuzz.py`` runs a small seeded subset through :func:`fuzz_parser`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Files = dict[str, bytes]  # relative path -> content: one input (a file and the folder it sits in)


# ================================================================================================
# seeds: small valid inputs, made here
# ================================================================================================
def _rgb(h: int, w: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([200 - (xx * 7 + yy * 3) % 90, 120 + (xx * yy) % 60, 180 - (yy * 5) % 70], -1)
    return (base + rng.integers(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _tmp_bytes(suffix: str, write: Callable[[Path], Any]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"seed{suffix}"
        write(p)
        return p.read_bytes()


def seeds_tiff() -> list[tuple[Files, str]]:
    """Tiled pyramidal SVS-style TIFFs (JPEG and deflate), a plain tiled TIFF, a stripped one."""
    import tifffile

    from histomag.synth.tiff import write_pyramidal_tiff

    rgb = _rgb(640, 700)
    out = []
    for comp in ("jpeg", "deflate"):
        b = _tmp_bytes(".svs", lambda p, c=comp: write_pyramidal_tiff(
            p, rgb, mpp=0.5, objective_power=20, tile=128, min_level_size=160, compression=c, thumbnail_size=96))
        out.append(({"slide.svs": b}, "slide.svs"))
    small = _rgb(300, 260, 1)
    out.append(({"tiled.tif": _tmp_bytes(".tif", lambda p: tifffile.imwrite(
        p, small, tile=(64, 64), photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER"))},
        "tiled.tif"))
    out.append(({"strips.tif": _tmp_bytes(".tif", lambda p: tifffile.imwrite(
        p, small, rowsperstrip=32, photometric="rgb", compression="zlib"))}, "strips.tif"))
    return out


def seeds_png() -> list[tuple[Files, str]]:
    from PIL import Image

    out = []
    for mode, kw in (("RGB", {}), ("RGBA", {"dpi": (50800, 50800)}), ("P", {}), ("L", {})):
        img = Image.fromarray(_rgb(48, 40, 2)).convert(mode)
        buf = io.BytesIO()
        img.save(buf, "PNG", **kw)
        out.append(({"image.png": buf.getvalue()}, "image.png"))
    return out


def seeds_jpeg() -> list[tuple[Files, str]]:
    from PIL import Image

    out = []
    for mode, kw in (("RGB", {"quality": 80}), ("RGB", {"progressive": True, "dpi": (50800, 50800)}),
                     ("L", {}), ("CMYK", {})):
        buf = io.BytesIO()
        Image.fromarray(_rgb(40, 48, 3)).convert(mode).save(buf, "JPEG", **kw)
        out.append(({"image.jpg": buf.getvalue()}, "image.jpg"))
    return out


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def seeds_index_csv() -> list[tuple[Files, str]]:
    return [
        ({"index.csv": _csv([["image", "mpp", "label", "group", "organ"], ["a.png", "0.5", "tumor", "p1", "breast"],
                             ["sub/b.png", "0.25", "normal", "p2", "colon"], ["c.jpg", "1", "tumor", "", ""]])},
         "index.csv"),
        ({"index.csv": _csv([["image", "mpp_x", "mpp_y", "patient"], ["a.png", "0.5", "0.45", "p1"],
                             ["b.tif", "0.25", "0.25", "p2"]])}, "index.csv"),
        ({"index.csv": _csv([["image", "magnification", "label"], ["a.png", "40", "x"], ["b.png", "20", "y"],
                             ["c7.png", "10", "x"]])}, "index.csv"),
    ]


def seeds_mpp_csv() -> list[tuple[Files, str]]:
    return [
        ({"mpp.csv": _csv([["slide", "mpp"], ["a.svs", "0.25"], ["b.svs", "0.5"]])}, "mpp.csv"),
        ({"mpp.csv": _csv([["slide_id", "mpp_x", "mpp_y"], ["a", "0.25", "0.26"], ["b", "0.5", "0.5"]])}, "mpp.csv"),
    ]


def seeds_geojson() -> list[tuple[Files, str]]:
    def poly(x, y, s):
        return [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]

    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": poly(100, 100, 500)},
         "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "isLocked": False}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [poly(900, 200, 300), poly(50, 900, 200)]},
         "properties": {"classification": "Stroma"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [poly(1200, 700, 600)[0],
                                                                            poly(1300, 800, 100)[0]]},
         "properties": {"name": "Necrosis"}}]}
    single = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": poly(0, 0, 1000)},
              "properties": {"classification": {"name": "Tumor"}}}
    return [({"a.geojson": json.dumps(fc).encode()}, "a.geojson"),
            ({"a.geojson": json.dumps([single, fc["features"][1]]).encode()}, "a.geojson")]


def _png(h: int = 8, w: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_rgb(h, w, 4)).save(buf, "PNG")
    return buf.getvalue()


def _dataset_files() -> Files:
    from histomag.data.folder import DATASET_VERSION, TileSettings, manifest_columns

    settings = TileSettings(magnifications=(20.0, 10.0), size=8)
    cols = manifest_columns(settings.magnifications)
    png = _png()
    files: Files = {"dataset.json": json.dumps({"version": DATASET_VERSION, **settings.to_json()}).encode()}
    rows = [cols]
    for i in range(3):
        tid = f"s1_{i:04d}"
        row = {"tuple_id": tid, "slide_id": "s1", "patient_id": "p1", "x": str(100 * i), "y": "50",
               "field_width": "16", "mode": "same-fov", "magnifications": "20;10", "mpps": "0.5;1",
               "label": ["tumor", "normal", "tumor"][i], "class_fractions": "{}", "tissue_fraction": "0.9",
               "slide_mpp": "0.25", "mpp_source": "metadata"}
        for m in (20, 10):
            rel = f"images/s1/{tid}_{m}x.png"
            files[rel] = png
            row[f"image_{m}x"] = rel
        rows.append([row.get(c, "") for c in cols])
    files["manifest.csv"] = _csv(rows)
    files["parts/s1.csv"] = _csv(rows)
    return files


def seeds_dataset_json() -> list[tuple[Files, str]]:
    return [(_dataset_files(), "dataset.json")]


def seeds_manifest() -> list[tuple[Files, str]]:
    return [(_dataset_files(), "manifest.csv")]


def seeds_journal() -> list[tuple[Files, str]]:
    return [(_dataset_files(), "parts/s1.csv")]


def seeds_shard_json() -> list[tuple[Files, str]]:
    from histomag.tiling.jobs import SLIDE_COLUMNS

    ds = _dataset_files()
    files: Files = {}
    batch = ["/data/s1.svs", "/data/s2.svs"]
    for k, sid in ((1, "s1"), (2, "s2")):
        base = f"shards/{k}-of-2/"
        files[base + "shard.json"] = json.dumps({"kind": "tile", "shard": k, "of": 2, "batch": batch}).encode()
        files[base + "dataset.json"] = ds["dataset.json"]
        row = {"slide_id": sid, "path": batch[k - 1], "status": "ok" if k == 1 else "failed",
               "tuples_written": "3", "error": "" if k == 1 else "no tissue"}
        files[base + "slides.csv"] = _csv([SLIDE_COLUMNS, [row.get(c, "") for c in SLIDE_COLUMNS]])
    for rel, b in ds.items():
        if rel.startswith(("images/", "parts/")):
            files["shards/1-of-2/" + rel] = b
    return [(files, "shards/1-of-2/shard.json"), (files, "shards/2-of-2/shard.json")]


def seeds_dmsl_config() -> list[tuple[Files, str]]:
    from histomag.data.folder import TileSettings
    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.runfolder import MODEL_TYPE, RUN_VERSION

    meta = {"model_type": MODEL_TYPE, "version": RUN_VERSION,
            "config": DMSLConfig(backbone="tiny", magnifications=(20.0, 10.0)).to_dict(), "data": "/data/tiles",
            "classes": ["normal", "tumor"], "tuple_mode": "same-fov",
            "tile_settings": TileSettings(magnifications=(20.0, 10.0)).to_json()}
    split = {"train": ["p1", "p2"], "val": ["p3"], "test": ["p4"], "train_fraction": 1.0}
    return [({"config.json": json.dumps(meta).encode(), "folds/0/split.json": json.dumps(split).encode()},
             "config.json")]


def seeds_mag_config() -> list[tuple[Files, str]]:
    from histomag.magnification.config import MagnifierConfig

    cfg = {**MagnifierConfig(backbone="tiny").to_dict(), "version": 1, "data_dir": "/data/magset",
           "versions": {"torch": "2"}}
    return [({"config.json": json.dumps(cfg).encode()}, "config.json")]


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _dmsl_checkpoint() -> dict:
    import torch

    from histomag.dmsl.config import DMSLConfig
    from histomag.dmsl.fit import DMSLTask
    from histomag.dmsl.runfolder import MODEL_TYPE

    torch.manual_seed(0)
    cfg = DMSLConfig(backbone="tiny", magnifications=(20.0, 10.0), weights=None).to_dict()
    task = DMSLTask(cfg, ["normal", "tumor"], weights=None)
    return {"state_dict": task.state_dict(), "epoch": 1,
            "histomag": {"model_type": MODEL_TYPE, "config": cfg, "class_names": ["normal", "tumor"]}}


def _mag_checkpoint() -> dict:
    import torch

    from histomag.magnification.config import MagnifierConfig, build_magnifier

    torch.manual_seed(0)
    cfg = MagnifierConfig(backbone="tiny")
    model = build_magnifier(cfg, weights=None)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    return {"state_dict": state, "histomag": {
        "model_type": cfg.model_type, "config": cfg.to_dict(), "tta": [1.0, 0.8], "method": "cnn",
        "interval": {"q": 0.2, "level": 0.9, "floor": 0.05, "n": 40, "scaled": True},
        "intervals": {"cnn": {"q": 0.3, "level": 0.9, "floor": 0.05, "n": 40, "scaled": False}}}}


def seeds_dmsl_checkpoint() -> list[tuple[Files, str]]:
    return [({"best.ckpt": _torch_bytes(_dmsl_checkpoint())}, "best.ckpt")]


def seeds_mag_checkpoint() -> list[tuple[Files, str]]:
    return [({"model.ckpt": _torch_bytes(_mag_checkpoint())}, "model.ckpt")]


def seeds_ruler_json() -> list[tuple[Files, str]]:
    from histomag.magnification.rulers.estimator import DEFAULT_CALIBRATION

    return [({"rulers.json": DEFAULT_CALIBRATION.read_bytes()}, "rulers.json")]


# ================================================================================================
# targets: what a user's command does with the file (run in the worker)
# ================================================================================================
def target_slide(root: Path, name: str) -> None:
    from histomag.slide import open_slide

    mpp = 0.5 if Path(name).suffix in (".png", ".jpg") else None
    with open_slide(root / name, mpp=mpp) as slide:
        slide.info()
        slide.read_overview(256)
        if slide.mpp:
            W, H = slide.dimensions
            slide.read((W / 2, H / 2), 32, mpp=slide.mpp * 2)


def target_image(root: Path, name: str) -> None:
    from histomag.slide.image import open_image

    with open_image(root / name) as img:
        img.size  # noqa: B018 - the header only: what info-like callers look at
    target_slide(root, name)


def target_index_csv(root: Path, name: str) -> None:
    from histomag.data.index import block_groups, read_index
    from histomag.magnification.sources import read_index_entries

    rows = read_index(root / name, require_resolution=False)
    block_groups(rows, 4)
    [r.mpp for r in rows]  # noqa: B018
    read_index_entries(root / name)


def target_mpp_csv(root: Path, name: str) -> None:
    from histomag.data.index import match_mpp_table, read_mpp_table

    table = read_mpp_table(root / name)
    match_mpp_table(table, [Path("/x/a.svs"), Path("/x/b.svs"), Path("c.svs")])


def target_geojson(root: Path, name: str) -> None:
    from histomag.annotations import assign_label, load_geojson

    mask = load_geojson(root / name, (2000, 1500), downsample=16)
    assign_label(mask.fractions(0, 0, 800, 800))
    mask.fractions(1000, 600, 900, 900)


def target_dataset(root: Path, name: str) -> None:
    from histomag.data.folder import DatasetFolder, TileSettings, manifest_columns
    from histomag.data.tuples import TupleDataset

    folder = DatasetFolder(root)
    settings = folder.read_settings()
    folder.prepare(settings)  # a resumed run checks its settings against the folder's
    ds = TupleDataset(root)
    for i in range(len(ds)):
        ds[i]
    if name.startswith("parts/") or name == "manifest.csv":
        folder.write_manifest(["s1"], manifest_columns(TileSettings.from_json(settings).magnifications))


def target_shards(root: Path, name: str) -> None:
    from histomag.data.shards import merge_shards, shard_kind

    shard_kind(root)
    merge_shards(root, partial=True)


def target_dmsl_config(root: Path, name: str) -> None:
    from histomag.data.folder import TileSettings
    from histomag.dmsl.runfolder import RunFolder

    run = RunFolder(root).load()
    run.config, run.class_names, run.data_dir  # noqa: B018
    TileSettings.from_json(run.tile_settings, placement="grid", max_tuples=None, extra={})
    run.read_split(0)


def target_mag_config(root: Path, name: str) -> None:
    from histomag.magnification.config import MagnifierConfig
    from histomag.magnification.runfolder import MagnificationRun

    run = MagnificationRun(root)
    meta = run.read_meta()
    run.data_dir()
    MagnifierConfig.from_dict(meta)


def target_dmsl_checkpoint(root: Path, name: str) -> None:
    from histomag.dmsl.fit import load_task

    load_task(root / name)


def target_mag_checkpoint(root: Path, name: str) -> None:
    from histomag.magnification.infer import load_estimator

    load_estimator(root / name)


def target_ruler_json(root: Path, name: str) -> None:
    from histomag.magnification.rulers.estimator import load_ruler_estimator

    load_ruler_estimator(root / name)


# ================================================================================================
# the parsers
# ================================================================================================
@dataclass(frozen=True)
class Parser:
    name: str
    seeds: Callable[[], list[tuple[Files, str]]]
    target: Callable[[Path, str], None]
    kind: str  # binary | json | csv | torch
    about: str = ""
    fixup: Callable[[bytes, random.Random], bytes] | None = None  # e.g. make checksums right again


PARSERS: dict[str, Parser] = {p.name: p for p in [
    Parser("tiff", seeds_tiff, target_slide, "binary", "TIFF/SVS headers via open_slide"),
    Parser("png", seeds_png, target_image, "binary", "open_image + open_slide", fixup=lambda b, rng: fix_png_crcs(b)
           if rng.random() < 0.6 else b),
    Parser("jpeg", seeds_jpeg, target_image, "binary", "open_image + open_slide"),
    Parser("index_csv", seeds_index_csv, target_index_csv, "csv", "read_index, read_index_entries"),
    Parser("mpp_csv", seeds_mpp_csv, target_mpp_csv, "csv", "read_mpp_table"),
    Parser("geojson", seeds_geojson, target_geojson, "json", "load_geojson"),
    Parser("dataset_json", seeds_dataset_json, target_dataset, "json", "DatasetFolder, TupleDataset"),
    Parser("manifest", seeds_manifest, target_dataset, "csv", "read_manifest, write_manifest"),
    Parser("journal", seeds_journal, target_dataset, "csv", "read_part (resume)"),
    Parser("shard_json", seeds_shard_json, target_shards, "json", "shard_kind, merge_shards"),
    Parser("dmsl_config", seeds_dmsl_config, target_dmsl_config, "json", "dmsl RunFolder config.json"),
    Parser("mag_config", seeds_mag_config, target_mag_config, "json", "MagnificationRun config.json"),
    Parser("dmsl_checkpoint", seeds_dmsl_checkpoint, target_dmsl_checkpoint, "torch", "dmsl.fit.load_task"),
    Parser("mag_checkpoint", seeds_mag_checkpoint, target_mag_checkpoint, "torch", "load_estimator (model file)"),
    Parser("ruler_json", seeds_ruler_json, target_ruler_json, "json", "load_ruler_estimator"),
]}


def target_selftest(root: Path, name: str) -> None:
    """A parser that fails in each way the harness must notice (tests/test_fuzz.py runs it)."""
    text = (root / name).read_text()
    if text == "hang":
        time.sleep(60)
    if text == "bomb":
        bytearray(16 * 2**30)  # over any worker's memory cap
    if text != "ok":
        raise KeyError(text)


#: the harness's own check, not a parser of histomag's
SELFTEST = Parser("selftest", lambda: [({"x.txt": b"ok"}, "x.txt")], target_selftest, "binary", "harness check")


def get_parser(name: str) -> Parser:
    return SELFTEST if name == SELFTEST.name else PARSERS[name]


# ================================================================================================
# mutations
# ================================================================================================
INTERESTING_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                    0xFFFFFFFF, 100_000, 1_000_000, 2**31 - 2, 2**40]
INTERESTING_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e308, 1e-320, float("nan"), float("inf"),
    float("-inf"), "", "x", "0.25", "NaN", "ü\u202eé\U0001F600", "\x00", "a" * 5000, [], [[]], {}, {"a": None},
    [1, 2, 3], "../../../etc/passwd", "C:\\x", 0.0, -0.0,
]
INTERESTING_CELLS = ["", "0", "-1", "nan", "NaN", "inf", "-inf", "1e308", "1e-320", "9" * 400, "0x10", "1,5",
                     "ü\u202e", "\x00", '"', "'", "a" * 5000, " 0.5 ", "true", "[]", "{}", "None", "-0", "1e5",
                     "tumor", "../x.png", "/", "."]


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every whole chunk's CRC, so a mutation reaches the decoder instead of the checksum test."""
    import zlib

    b = bytearray(data)
    i = 8
    while i + 12 <= len(b):
        n = int.from_bytes(b[i:i + 4], "big")
        end = i + 8 + n
        if end + 4 > len(b):
            break
        b[end:end + 4] = (zlib.crc32(bytes(b[i + 4:end])) & 0xFFFFFFFF).to_bytes(4, "big")
        i = end + 4
    return bytes(b)


def mutate_bytes(data: bytes, rng: random.Random, n_ops: int | None = None) -> bytes:
    """Bit flips, interesting-value overwrites, truncation, chunk duplication/deletion; biased to headers."""
    b = bytearray(data)

    def pos() -> int:
        if not b:
            return 0
        r = rng.random()
        if r < 0.5:
            return rng.randrange(min(len(b), 1024))
        if r < 0.7:
            return rng.randrange(max(0, len(b) - 1024), len(b))
        return rng.randrange(len(b))

    for _ in range(n_ops or rng.choice([1, 1, 1, 2, 2, 3, 4, 8])):
        op = rng.random()
        if not b:
            b.extend(rng.randbytes(rng.randint(1, 16)))
            continue
        if op < 0.3:
            i = pos()
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.6:
            v = rng.choice(INTERESTING_INTS)
            width = rng.choice([1, 2, 4, 8])
            v &= (1 << (8 * width)) - 1
            raw = v.to_bytes(width, rng.choice(["little", "big"]))
            i = pos()
            b[i:i + width] = raw
        elif op < 0.7:
            i = pos()
            b[i] = rng.randrange(256)
        elif op < 0.8:
            cut = rng.choice([pos(), rng.randrange(len(b)), len(b) // 2, max(0, len(b) - rng.randint(1, 64))])
            del b[cut:]
        elif op < 0.9:
            i = pos()
            n = rng.choice([1, 4, 16, 256, 4096])
            b[i:i] = b[i:i + n]
        else:
            i = pos()
            del b[i:i + rng.choice([1, 4, 16, 256, 4096])]
    return bytes(b)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:20]):
            out += _paths(v, prefix + (i,))
    return out


def _get(node: Any, path: tuple) -> Any:
    for k in path:
        node = node[k]
    return node


def mutate_tree(tree: Any, rng: random.Random, values: list[Any] | None = None) -> Any:
    """One structural change of a JSON-like tree (a deep copy): drop/rename a key, replace a value,
    duplicate or drop a list item, wrap a value in a list."""
    import copy

    tree = copy.deepcopy(tree)
    values = values or INTERESTING_VALUES
    paths = _paths(tree)
    path = rng.choice(paths)
    if not path:
        return rng.choice(values) if rng.random() < 0.3 else tree
    parent, key = _get(tree, path[:-1]), path[-1]
    op = rng.random()
    if op < 0.2 and isinstance(parent, dict):
        del parent[key]
    elif op < 0.3 and isinstance(parent, dict):
        parent[rng.choice([str(key).upper(), f"{key}_", "", "ü", str(key)[:-1]])] = parent.pop(key)
    elif op < 0.4 and isinstance(parent, list):
        if rng.random() < 0.5:
            del parent[key]
        else:
            parent.extend([parent[key]] * rng.choice([1, 2, 50]))
    elif op < 0.45:
        parent[key] = [parent[key]]
    else:
        old = parent[key]
        if isinstance(old, (int, float)) and not isinstance(old, bool) and rng.random() < 0.4:
            parent[key] = rng.choice([-old, old * 1e6, old + 1, 0, float("nan"), str(old)])
        else:
            parent[key] = rng.choice(values)
    return tree


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return mutate_bytes(data, rng)
    tree = json.loads(data)
    for _ in range(rng.choice([1, 1, 2, 3])):
        tree = mutate_tree(tree, rng)
    return json.dumps(tree, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def mutate_csv(data: bytes, rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.2:
        return mutate_bytes(data, rng)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.random()
        if not rows:
            rows = [[rng.choice(INTERESTING_CELLS)]]
            continue
        width = max(len(row) for row in rows) or 1
        if op < 0.15:  # drop a column
            c = rng.randrange(width)
            rows = [row[:c] + row[c + 1:] for row in rows]
        elif op < 0.25:  # rename a header cell
            c = rng.randrange(len(rows[0]) or 1)
            if rows[0]:
                rows[0][c] = rng.choice(["", "IMAGE", "mpp ", "label", "image", "mpp", "x", rows[0][c] * 2])
        elif op < 0.65:  # a cell gets an interesting value
            row = rng.choice(rows[1:] or rows)
            if row:
                row[rng.randrange(len(row))] = rng.choice(INTERESTING_CELLS)
        elif op < 0.75:  # drop or duplicate a row
            i = rng.randrange(len(rows))
            if rng.random() < 0.5:
                del rows[i]
            else:
                rows.insert(i, list(rows[i]))
        elif op < 0.85:  # extra or missing cells
            row = rng.choice(rows)
            if rng.random() < 0.5 and row:
                row.pop()
            else:
                row.extend(rng.choice(INTERESTING_CELLS) for _ in range(rng.randint(1, 3)))
        else:  # many rows
            if len(rows) > 1:
                rows += [list(rows[-1]) for _ in range(rng.choice([10, 200]))]
    return _csv(rows)


def mutate_torch(data: bytes, rng: random.Random) -> bytes:
    import torch

    if rng.random() < 0.4:
        return mutate_bytes(data, rng)
    ckpt = torch.load(io.BytesIO(data), weights_only=True)
    r = rng.random()
    if r < 0.55:  # the histomag metadata
        for _ in range(rng.choice([1, 2])):
            if rng.random() < 0.15 or not isinstance(ckpt.get("histomag"), (dict, list)):
                ckpt = mutate_tree(ckpt, rng)
            else:
                ckpt = {**ckpt, "histomag": mutate_tree(ckpt["histomag"], rng)}
            if not isinstance(ckpt, dict):
                break
    else:  # the weights
        state = ckpt.get("state_dict", {})
        keys = list(state)
        if keys:
            k = rng.choice(keys)
            op = rng.random()
            if op < 0.3:
                del state[k]
            elif op < 0.6:
                t = state[k]
                state[k] = torch.zeros(tuple(s + rng.choice([1, -1]) if s > 1 else 3 for s in t.shape) or (2,),
                                       dtype=t.dtype)
            elif op < 0.75:
                state[k] = rng.choice([1, "x", None, [1.0], torch.zeros(0)])
            elif op < 0.85:
                state[f"{k}.extra"] = torch.zeros(2)
            else:
                ckpt["state_dict"] = rng.choice([[], None, "x", {}])
    return _torch_bytes(ckpt)


MUTATORS = {"binary": mutate_bytes, "json": mutate_json, "csv": mutate_csv, "torch": mutate_torch}


def make_inputs(parser: Parser, n: int, seed: int) -> list[tuple[int, Files, str]]:
    """``n`` mutated inputs of ``parser``, reproducible from ``seed`` (input i depends on (seed, i) only)."""
    seeds = parser.seeds()
    mutate = MUTATORS[parser.kind]
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{parser.name}:{i}")
        files, name = seeds[i % len(seeds)]
        try:
            data = mutate(files[name], rng)
        except Exception:  # noqa: BLE001 - a tree the mutator cannot re-serialise: mutate its bytes instead
            data = mutate_bytes(files[name], rng)
        if parser.fixup is not None:
            data = parser.fixup(data, rng)
        out.append((i, {**files, name: data}, name))
    return out


# ================================================================================================
# the worker: one process runs inputs one at a time, under a memory cap
# ================================================================================================
def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM (ru_maxrss would include the parent's peak from before the exec)."""
    return _status_bytes("VmHWM") // 1024 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost histomag frame (where it should have been caught) and the raising frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "histomag" in f.filename and "benchmarks" not in f.filename]
    inner = frames[-1] if frames else None

    def short(f: traceback.FrameSummary) -> str:
        p = f.filename
        for marker in ("/src/", "/site-packages/"):
            if marker in p:
                p = p.split(marker, 1)[1]
        return f"{p}:{f.lineno}"

    loc = short(ours[-1]) if ours else "?"
    if inner is not None and (not ours or inner is not ours[-1]):
        loc += f" (raised in {short(inner)})"
    return loc


def _run_one(parser: Parser, files: Files, name: str) -> tuple[str, str]:
    from histomag.errors import HistomagError

    with tempfile.TemporaryDirectory(prefix="histomag-fuzz-") as d:
        root = Path(d)
        for rel, data in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        try:
            parser.target(root, name)
        except HistomagError as exc:
            text = str(exc)
            return "clean", text.splitlines()[0][:200] if "\n" not in text.strip() else "MULTILINE " + text[:200]
        except BaseException as exc:  # noqa: BLE001 - everything else is the finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            msg = (str(exc).strip().splitlines() or [""])[0][:160]
            return "traceback", f"{type(exc).__module__}.{type(exc).__qualname__} at {_where(exc)}: {msg}"
    return "ok", ""


def _worker(conn, parser_name: str, mem_mb: int) -> None:
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # C decoders (libtiff, libjpeg) print their complaints; the result says what happened
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    parser = get_parser(parser_name)
    files, name = conn.recv()  # the unmutated seed: imports everything, then the cap goes on
    status, detail = _run_one(parser, files, name)
    if mem_mb > 0:
        cap = _status_bytes("VmSize") + mem_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    conn.send((status, detail, _peak_rss_kib()))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        status, detail = _run_one(parser, *msg)
        conn.send((status, detail, _peak_rss_kib()))


class Worker:
    def __init__(self, parser: str, seed_input: tuple[Files, str], mem_mb: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, parser, mem_mb), daemon=True)
        self.proc.start()
        child.close()
        self.conn.send(seed_input)
        if not self.conn.poll(120):
            self.kill()
            raise RuntimeError(f"{parser}: the worker did not start within 120 s")
        self.seed_result = self.conn.recv()

    def run(self, files: Files, name: str, timeout: float) -> tuple[str, str, int]:
        try:
            self.conn.send((files, name))
            if not self.conn.poll(timeout):
                return "hang", f"no answer in {timeout:g} s", 0
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.proc.join(1)
            code = self.proc.exitcode
            return "crash", f"worker died (exit code {code})", 0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        self.kill()


# ================================================================================================
# running and reporting
# ================================================================================================
@dataclass
class Result:
    parser: str
    tried: int = 0
    ok: int = 0
    clean: int = 0
    tracebacks: int = 0
    hangs: int = 0
    crashes: int = 0
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    findings: Counter = field(default_factory=Counter)  # "kind: type at where" -> count
    examples: dict = field(default_factory=dict)  # same key -> (input index, detail)
    seed_problem: str = ""

    @property
    def found(self) -> int:
        return self.tracebacks + self.hangs + self.crashes + (1 if self.seed_problem else 0)


def _key(status: str, detail: str) -> str:
    if status == "traceback":
        return detail.split(": ", 1)[0]
    return f"{status}: {detail.split(' (exit')[0] if status == 'crash' else 'timeout'}"


def fuzz_parser(name: str, n: int, seed: int = 0, *, timeout: float = 10.0, mem_mb: int = 2048,
                save: Path | None = None, only: int | None = None) -> Result:
    """Run ``n`` mutated inputs of parser ``name`` (or just input ``only``) in a worker; the findings."""
    parser = get_parser(name)
    res = Result(name)
    t0 = time.perf_counter()
    inputs = make_inputs(parser, n if only is None else only + 1, seed)
    if only is not None:
        inputs = inputs[only:]
    seed_input = parser.seeds()[0]
    worker = Worker(name, seed_input, mem_mb)
    if worker.seed_result[0] != "ok":
        res.seed_problem = f"the unmutated seed gives {worker.seed_result[0]}: {worker.seed_result[1]}"
    try:
        for i, files, fname in inputs:
            status, detail, rss = worker.run(files, fname, timeout)
            res.tried += 1
            res.peak_rss_mb = max(res.peak_rss_mb, rss / 1024)
            if status == "ok":
                res.ok += 1
            elif status == "clean":
                res.clean += 1
                if detail.startswith("MULTILINE"):
                    status = "traceback"
                    detail = f"multi-line HistomagError: {detail}"
            if status in ("traceback", "hang", "crash"):
                res.tracebacks += status == "traceback"
                res.hangs += status == "hang"
                res.crashes += status == "crash"
                key = _key(status, detail)
                res.findings[key] += 1
                res.examples.setdefault(key, (i, detail))
                if save is not None:
                    d = Path(save) / name / f"{i:05d}-{status}"
                    for rel, data in files.items():
                        (d / rel).parent.mkdir(parents=True, exist_ok=True)
                        (d / rel).write_bytes(data)
                    (d / "FINDING.txt").write_text(f"{status}: {detail}\n")
                if status in ("hang", "crash"):
                    worker.kill()
                    worker = Worker(name, seed_input, mem_mb)
    finally:
        worker.close()
    res.seconds = time.perf_counter() - t0
    return res


def print_table(results: list[Result], *, show: int = 5) -> None:
    head = f"{'parser':<16} {'inputs':>7} {'read':>6} {'refused':>8} {'tracebacks':>10} {'hangs':>6} {'crashes':>7} " \
           f"{'peak RSS MB':>11} {'s':>6}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r.parser:<16} {r.tried:>7} {r.ok:>6} {r.clean:>8} {r.tracebacks:>10} {r.hangs:>6} {r.crashes:>7} "
              f"{r.peak_rss_mb:>11.0f} {r.seconds:>6.0f}")
    total = sum(r.tried for r in results)
    print(f"{'total':<16} {total:>7} {sum(r.ok for r in results):>6} {sum(r.clean for r in results):>8} "
          f"{sum(r.tracebacks for r in results):>10} {sum(r.hangs for r in results):>6} "
          f"{sum(r.crashes for r in results):>7} {max((r.peak_rss_mb for r in results), default=0):>11.0f} "
          f"{sum(r.seconds for r in results):>6.0f}")
    for r in results:
        if r.seed_problem:
            print(f"\n{r.parser}: {r.seed_problem}")
        if r.findings:
            print(f"\n{r.parser}: {len(r.findings)} distinct finding(s)")
            for key, count in r.findings.most_common(show):
                i, detail = r.examples[key]
                print(f"  {count:>5} x {detail}  [input {i}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="inputs per parser")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parser", action="append", choices=sorted(PARSERS), help="only these parsers (repeatable)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before an input counts as a hang")
    ap.add_argument("--mem-mb", type=int, default=2048, help="address space a worker may add over its imports")
    ap.add_argument("--save", type=Path, help="write each finding's input here")
    ap.add_argument("--only", type=int, help="run only input number ONLY (to reproduce a finding)")
    ap.add_argument("--show", type=int, default=5, help="distinct findings listed per parser")
    args = ap.parse_args(argv)
    names = args.parser or list(PARSERS)
    print(f"fuzz: {len(names)} parser(s), {args.n} inputs each, seed {args.seed}, timeout {args.timeout:g} s, "
          f"memory cap +{args.mem_mb} MiB per worker\n", flush=True)
    results = []
    for name in names:
        r = fuzz_parser(name, args.n, args.seed, timeout=args.timeout, mem_mb=args.mem_mb, save=args.save,
                        only=args.only)
        print(f"  {name}: {r.tried} inputs, {r.tracebacks} tracebacks, {r.hangs} hangs, {r.crashes} crashes "
              f"({r.seconds:.0f} s)", flush=True)
        results.append(r)
    print()
    print_table(results, show=args.show)
    return 1 if any(r.found for r in results) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
