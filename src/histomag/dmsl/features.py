"""Cached encoder features of frozen branches: computed once per tuple and magnification, memory-mapped.

With ``freeze_backbone=True`` a branch's encoder never changes, so the feature map it makes of a
tuple's member is the same in every epoch, fold and mode. :class:`FeatureStore` keeps those maps
on disk, one memory-mapped ``.npy`` per magnification and encoder::

    ROOT/<key>/meta.json                          what the key stands for (dataset, tile settings, transform)
    ROOT/<key>/<mag>x-<encoder>.npy               (N, C, h, w) float32, row i = the i-th tuple of the dataset
    ROOT/<key>/<mag>x-<encoder>.done.npy          (N,) bool: which rows are filled

``<key>`` hashes the dataset's identity (its folder and the bytes of ``dataset.json`` and
``manifest.csv``, or the slides and tile settings of a run's ``source.json``), the tile settings,
its tuples and the evaluation transform (normalisation); ``<encoder>`` hashes the
backbone's name and every tensor of its state (the weights file's content, or a seeded random
init). A change to any of them is a new file, never a stale one. Rows are filled when first
needed (a fold's training and validation tuples at its start, its test tuples when they are
predicted), so later epochs, folds and modes (single, mm, sim, with equal encoders) read them.

The cache holds unaugmented tuples: :class:`~histomag.dmsl.config.DMSLConfig` refuses
``cache_features`` with ``augment=True``. Features are computed in float32; a distributed run's
ranks should not fill one cache at the same time (fill it first with one process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from histomag.data.atomic import atomic_write_json
from histomag.errors import DatasetError

log = logging.getLogger(__name__)

#: the cache folder's name beside a dataset folder's manifest (or in a run folder, for slides)
FEATURES_DIR = "features"
#: the layout of a cache folder (meta.json's "schema")
FEATURE_SCHEMA = 1


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_identity(data: str | Path) -> dict[str, Any]:
    """What identifies a run's data: the folder (or ``source.json``) and the bytes of its index files."""
    data = Path(data).resolve()
    if data.is_file():
        return {"data": str(data), "sha256": {data.name: _file_sha256(data)}}
    return {"data": str(data), "sha256": {n: _file_sha256(data / n) for n in ("dataset.json", "manifest.csv")}}


def encoder_digest(backbone: torch.nn.Module, name: str) -> str:
    """A short hash of a backbone's name and every tensor of its state (weights and buffers)."""
    h = hashlib.sha256(name.encode())
    for key, value in sorted(backbone.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureStore:
    """The feature cache of one run's data (see the module docstring).

    Args:
        root: cache root (e.g. ``DATA/features``); the store's folder is ``root/<key>``.
        data: the run's dataset folder (or ``source.json``), for its identity.
        tuple_ids: every tuple of the data, in a fixed order (the rows of the ``.npy`` files).
        magnifications: the run's magnifications, in input order.
        settings: the tile settings (as JSON).
        mean, std: the evaluation transform's normalisation.
        batch_size: tuples per encoder pass when filling.
        num_workers: DataLoader workers when filling.
    """

    def __init__(self, root: str | Path, data: str | Path, tuple_ids: Sequence[str], *,
                 magnifications: Sequence[float], settings: Any, mean: Sequence[float], std: Sequence[float],
                 batch_size: int = 32, num_workers: int = 0) -> None:
        self.tuple_ids = [str(t) for t in tuple_ids]
        self.position = {t: i for i, t in enumerate(self.tuple_ids)}
        self.magnifications = [float(m) for m in magnifications]
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        meta = {"schema": FEATURE_SCHEMA, "dataset": data_identity(data), "tile_settings": settings,
                "n_tuples": len(self.tuple_ids),
                "tuples_sha256": hashlib.sha256("\n".join(self.tuple_ids).encode()).hexdigest(),
                "transform": {"normalise_mean": [float(v) for v in mean], "normalise_std": [float(v) for v in std],
                              "augment": False}}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "meta.json").is_file():
            atomic_write_json(self.dir / "meta.json", meta)

    def paths(self, index: int, encoder: str) -> tuple[Path, Path]:
        """The ``.npy`` of magnification ``index`` by ``encoder`` (a digest), and its done mask."""
        stem = f"{self.magnifications[index]:g}x-{encoder}"
        return self.dir / f"{stem}.npy", self.dir / f"{stem}.done.npy"

    def _done(self, done_path: Path) -> np.ndarray:
        if done_path.is_file():
            done = np.load(done_path)
            if done.shape == (len(self.tuple_ids),):
                return done.astype(bool)
        return np.zeros(len(self.tuple_ids), dtype=bool)

    def dataset(self, net: Any, images: Any) -> FeatureTupleDataset:
        """The cached features of ``images``' tuples by ``net``'s branches, filling missing rows first.

        Args:
            net: a :class:`~histomag.dmsl.network.MultiMagNet` with frozen encoders.
            images: a tuple dataset (with ``rows``, ``targets`` and the evaluation transform) whose
                magnifications are ``net``'s.

        Raises:
            DatasetError: a tuple that is not among the store's tuples.
        """
        lost = [str(r["tuple_id"]) for r in images.rows if str(r["tuple_id"]) not in self.position]
        if lost:
            raise DatasetError(f"{len(lost)} tuples (e.g. {lost[0]}) are not in the data the feature cache {self.dir} "
                               "was made for; use the run's own dataset")
        positions = np.array([self.position[str(r["tuple_id"])] for r in images.rows], dtype=np.int64)
        digests = {}
        files = []
        for i in range(net.n_inputs):
            b = 0 if net.shared_backbone else i
            if b not in digests:
                digests[b] = encoder_digest(net.branches[b], net.backbone_name)
            files.append(self.paths(i, digests[b]))
        self._fill(net, images, positions, files)
        return FeatureTupleDataset([f for f, _ in files], positions, images)

    @torch.no_grad()
    def _fill(self, net: Any, images: Any, positions: np.ndarray, files: list[tuple[Path, Path]]) -> None:
        from histomag.fitloop import make_loader

        dones = [self._done(d) for _, d in files]
        need = sorted({int(j) for j, p in enumerate(positions) if not all(done[p] for done in dones)})
        if not need:
            return
        log.info("caching features of %d tuples in %s", len(need), self.dir)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        was_device = next(net.parameters()).device
        net.to(device)
        arrays: list[np.memmap | None] = [None] * len(files)
        loader = make_loader(torch.utils.data.Subset(images, need), self.batch_size, shuffle=False,
                             num_workers=self.num_workers, seed=0, persistent=False)
        try:
            with torch.random.fork_rng(devices=[]):  # filling draws nothing that training would
                for xs, _, local in loader:
                    rows = positions[local.numpy()]  # the dataset yields its own index
                    feats = net.forward_features([x.to(device) for x in xs])
                    for i, f in enumerate(feats):
                        arr = arrays[i]
                        if arr is None:
                            arr = arrays[i] = self._open(files[i][0], tuple(f.shape[1:]))
                        arr[rows] = f.float().cpu().numpy()
        finally:
            net.to(was_device)
        for arr, (path, done_path), done in zip(arrays, files, dones):
            if arr is None:
                continue
            arr.flush()
            done[positions[need]] = True
            tmp = done_path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, done)
            os.replace(tmp, done_path)

    def _open(self, path: Path, shape: tuple[int, ...]) -> np.memmap:
        """The ``.npy`` of one magnification and encoder, created (sparse) when new."""
        full = (len(self.tuple_ids), *shape)
        if path.is_file():
            arr = np.load(path, mmap_mode="r+")
            if arr.shape == full:
                return arr
            log.warning("%s has shape %s, not %s; made again", path, arr.shape, full)
            path.with_name(path.name.replace(".npy", ".done.npy")).unlink(missing_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=full)


class FeatureTupleDataset(Dataset):
    """Cached feature maps of some tuples: ``(list of (C, h_m, w_m) per magnification, label, index)``.

    Shaped like the tuple dataset it stands for (``rows``, ``targets``, ``classes``), so the
    cross-validation code treats it the same; ``yields_features`` tells the model to skip its
    encoders. The ``.npy`` files are opened lazily in each process (DataLoader workers map them
    themselves; nothing large is pickled).
    """

    yields_features = True

    def __init__(self, files: Sequence[Path], positions: np.ndarray, images: Any) -> None:
        self.files = [Path(f) for f in files]
        self.positions = np.asarray(positions, dtype=np.int64)
        self.rows = list(images.rows)
        self.targets = list(images.targets)
        self.classes = list(getattr(images, "classes", []))
        self.magnifications = list(getattr(images, "magnifications", []))
        self._arrays: list[np.ndarray] | None = None
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def patients(self) -> list[str]:
        from histomag.data.folder import patient_of

        return [patient_of(r) for r in self.rows]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _maps(self) -> list[np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays, self._pid = [np.load(f, mmap_mode="r") for f in self.files], os.getpid()
        return self._arrays

    def __getitem__(self, index: int) -> tuple[list[Tensor], int, int]:
        row = int(self.positions[index])
        return [torch.from_numpy(np.array(a[row])) for a in self._maps()], self.targets[index], index
