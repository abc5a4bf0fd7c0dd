"""Shards of one tiling batch (``tile --shard K/N``) and joining them (``histomag merge``).

Copy K of N writes a complete dataset folder of its own slides to ``OUT/shards/K-of-N/``, with
``shard.json`` naming the whole batch in order. :func:`merge_shards` moves every finished slide's
journal and images into ``OUT`` and writes ``OUT/manifest.csv`` and ``OUT/slides.csv`` in the
batch's order, so the result is the folder a one-process run would have written. Merging moves
files (one rename per slide) and can be re-run: a merge that was killed half-way finishes on the
next try.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

from histomag.cluster import Shard
from histomag.data.atomic import atomic_write_csv, atomic_write_json
from histomag.data.folder import DatasetFolder, first_difference, manifest_columns
from histomag.tiling.jobs import SLIDE_COLUMNS
from histomag.errors import DatasetError

T = TypeVar("T")
SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"
#: what makes tile shards, in API terms: one tile_slides call per shard, into the folder start_shard returns
TILE_SHARDS_API = "histomag.data.shards.start_shard + histomag.tiling.jobs.tile_slides"


def shard_folder(out: Path, shard: Shard) -> Path:
    """Where copy ``shard`` of a batch for ``out`` writes."""
    return Path(out) / SHARDS_DIR / shard.name


def write_shard_info(folder: Path, shard: Shard, batch: Sequence[str], kind: str = "tile", **extra: object) -> None:
    """Record which copy this is, of which command (``kind``), and the whole batch (in order)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    info = {"kind": kind, "shard": shard.index, "of": shard.count, "batch": [str(p) for p in batch], **extra}
    path = Path(folder) / SHARD_FILE
    if path.exists():
        old = _read_json(path)
        if old.get("of") != shard.count or old.get("batch") != info["batch"]:
            raise DatasetError(f"{folder} holds shard {old.get('shard')}/{old.get('of')} of another batch; give every "
                               "copy the same files in the same order, or use another output folder")
    atomic_write_json(path, info)


def start_shard(out: Path, shard: Shard, items: Sequence[T], batch: Sequence[str], kind: str = "tile",
                **extra: object) -> tuple[list[T], Path]:
    """This copy's share of ``items`` and the folder it writes (``shard.json`` recorded there).

    ``batch`` names the whole batch in order (the paths of ``items``), for the merge.
    """
    folder = shard_folder(out, shard)
    write_shard_info(folder, shard, batch, kind, **extra)
    return shard.take(items), folder


def shard_kind(root: str | Path) -> str:
    """The command whose shards ``root/shards`` holds (``tile`` or ``audit``; ``""`` when there are none)."""
    base = Path(root) / SHARDS_DIR
    for f in sorted(base.iterdir()) if base.is_dir() else []:
        if (f / SHARD_FILE).is_file():
            return str(_read_json(f / SHARD_FILE).get("kind", "tile"))
    return ""


def finished_shards(root: str | Path, *, done: str, partial: bool, make: str
                    ) -> tuple[list[Path], list[dict], list[str]]:
    """The finished shard folders of one batch (those holding ``done``), their infos and the batch.

    Raises:
        DatasetError: no shards, shards of different batches, or (unless ``partial``) a shard that
            has not finished; ``make`` is the call that makes them, for the message.
    """
    root = Path(root)
    base = root / SHARDS_DIR
    folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not folders:
        raise DatasetError(f"{root}: no shards to merge; make them with `{make}` (out_dir={root}, shard=K/N)")
    infos = {}
    for f in folders:
        if not (f / SHARD_FILE).is_file():
            raise DatasetError(f"{f}: not a shard (no {SHARD_FILE}); remove it from {base}")
        infos[f] = _read_json(f / SHARD_FILE)
    counts = {i.get("of") for i in infos.values()}
    batches = {json.dumps(i.get("batch")) for i in infos.values()}
    kinds = {i.get("kind", "tile") for i in infos.values()}
    if len(counts) != 1 or len(batches) != 1 or len(kinds) != 1:
        raise DatasetError(f"{base} holds shards of different batches ({', '.join(f.name for f in folders)}); "
                           "merge one batch at a time")
    n = counts.pop()
    finished = [f for f in folders if (f / done).is_file()]
    present = {infos[f]["shard"] for f in finished}
    missing = [k for k in range(1, n + 1) if k not in present]
    if missing and not partial:
        raise DatasetError(f"{root}: shard(s) {', '.join(map(str, missing))} of {n} have not finished (or not run); "
                           "run them, or merge the finished ones with partial=True")
    return finished, [infos[f] for f in finished], next(iter(infos.values()))["batch"]


def remove_shards(root: Path, finished: Sequence[Path]) -> None:
    """Delete merged shard folders (and ``shards/`` once empty)."""
    for f in finished:
        shutil.rmtree(f)
    base = Path(root) / SHARDS_DIR
    if base.is_dir() and not any(base.iterdir()):
        base.rmdir()


@dataclass
class MergeSummary:
    """What :func:`merge_shards` did."""

    shards: int
    slides_ok: int
    slides_failed: int
    tuples: int


def merge_shards(root: str | Path, *, partial: bool = False) -> MergeSummary:
    """Join ``root/shards/*`` into ``root``.

    Raises:
        DatasetError: no shards; shards of different batches or settings; a shard missing or
            unfinished (unless ``partial``: then the finished ones are merged and the rest stay).
        FolderInUseError: another run is writing ``root``.
    """
    root = Path(root)
    finished, _, batch = finished_shards(root, done="slides.csv", partial=partial, make=TILE_SHARDS_API)
    with DatasetFolder(root).lock() as token:
        folder = DatasetFolder(root, run_token=token)
        settings = [_read_json(f / "dataset.json") for f in finished]
        for f, s in zip(finished[1:], settings[1:]):
            k = first_difference(settings[0], s)
            if k:
                raise DatasetError(f"{f.name} was tiled with {k}={s.get(k)!r}, {finished[0].name} with "
                                   f"{settings[0].get(k)!r}; re-run the shards with the same options")
        folder.prepare(settings[0])
        rows = []
        for f in finished:
            for row in _read_csv(f / "slides.csv"):
                if row.get("status") == "ok":
                    _move_slide(f, root, row["slide_id"])
                rows.append(row)
        position = {p: i for i, p in enumerate(batch)}
        rows.sort(key=lambda r: position.get(r.get("path", ""), len(position)))
        columns = manifest_columns(settings[0]["magnifications"])
        ok = [r["slide_id"] for r in rows if r.get("status") == "ok"]
        tuples = folder.write_manifest(ok, columns)
        old = _read_csv(root / "slides.csv") if (root / "slides.csv").is_file() else []
        merged = {r["slide_id"] for r in rows}
        atomic_write_csv(root / "slides.csv", SLIDE_COLUMNS, [r for r in old if r.get("slide_id") not in merged] + rows)
        remove_shards(root, finished)
    return MergeSummary(len(finished), len(ok), len(rows) - len(ok), tuples)


def _move_slide(shard: Path, root: Path, slide_id: str) -> None:
    """Move one slide's journal and images from a shard into ``root`` (a re-merge finds them moved)."""
    part = shard / "parts" / f"{slide_id}.csv"
    images = shard / "images" / slide_id
    if part.is_file():
        (root / "parts").mkdir(parents=True, exist_ok=True)
        if images.is_dir():
            target = root / "images" / slide_id
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(images, target)  # images first: a journal in root always finds its images
        os.replace(part, root / "parts" / f"{slide_id}.csv")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        first = ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]
        raise DatasetError(f"{path}: unreadable ({first}); re-run the shard that wrote it") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a JSON object; re-run the shard that wrote it")
    if Path(path).name == SHARD_FILE:
        ok = (isinstance(data.get("kind", "tile"), str) and isinstance(data.get("batch"), list)
              and all(isinstance(p, str) for p in data["batch"])
              and all(type(data.get(k)) is int for k in ("shard", "of")) and 1 <= data["shard"] <= data["of"])
        if not ok:
            raise DatasetError(f"{path}: not a shard record (kind, shard K of N, batch of paths); "
                               "re-run the shard that wrote it")
    return data
