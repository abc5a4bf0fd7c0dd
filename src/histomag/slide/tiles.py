"""The direct tile path: tiled TIFF-family slides (SVS, tiled/OME-TIFF) decoded tile by tile.

A read finds the level's tiles that the region touches, takes the decoded ones from a bounded LRU
cache shared by every read in the process (the members of a tuple, neighbouring fields, other
handles of the same file),
reads the others' compressed bytes with ``os.pread`` and decodes them with tifffile's codec
(imagecodecs: libjpeg-turbo, JPEG 2000, deflate, ...) in a small thread pool. The decoders release
the GIL, so two tiles decode on two cores. Metadata (levels, mpp, objective power) come from
TiffSlide, as for the ``tiffslide`` backend, so both read the same pixels at the same resolution.

Only files whose pyramid levels are tiled pages of one series are taken; anything else (stripped
TIFFs, formats tifffile cannot decode) is refused in one line, and ``auto`` moves on to OpenSlide.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from histomag.errors import UnreadableSlideError
from histomag.slide.base import MppOverride
from histomag.slide.tiffslide import TiffSlideSlide, _one_line

#: decoded tiles kept per process, shared by every slide handle in it (MB): 128 MB holds ~770 RGB tiles of
#: 240 px (CMU-1); a training process with thousands of open slides stays within it
CACHE_MB = 128
#: threads (per process, shared by all slide handles) that decode the missing tiles of a read
DECODE_THREADS = 2


#: the DCT-domain scale factors JPEG tiles may be decoded at, largest first
DCT_FACTORS = (8, 4, 2)
#: TIFF compression and photometric codes used here
JPEG = 7
RGB = 2
#: an APP14 "Adobe" segment with transform 0: the JPEG's three components are R, G, B (no YCbCr)
ADOBE_NO_TRANSFORM = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


class TileCache:
    """A byte-bounded LRU of decoded tiles, safe to use from several threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Drop every tile (and take a fresh lock: used in a forked child, where the parent's may be held)."""
        self._lock = threading.Lock()
        self._items = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            tile = self._items.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: tuple, tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


#: the process's tile cache (a forked child starts with an empty one)
SHARED_CACHE = TileCache(CACHE_MB * 2**20)


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child starts with an empty cache, no pool and fresh locks (the parent's may be held)."""
    global _pool, _pool_pid, _pool_lock
    SHARED_CACHE.clear()
    _pool, _pool_pid, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _decode_pool() -> ThreadPoolExecutor:
    """The process's tile-decoding threads, one pool for every open slide (a cohort of open handles
    does not multiply threads); a forked child makes its own."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="tile-decode"), os.getpid()
        return _pool


class TileSlide(TiffSlideSlide):
    """A tiled TIFF-family slide read by decoding its tiles directly (see the module docstring)."""

    backend = "tiles"

    def __init__(self, path: Path, mpp_override: MppOverride | None = None, *, cache_mb: float | None = None,
                 dct_scaling: bool = False) -> None:
        """``cache_mb``: a private tile cache of this size (0: none); default the process's shared one.
        ``dct_scaling``: decode JPEG tiles 2, 4 or 8 times coarser for reads that coarse (see
        :meth:`_decode_factor`); off by default, so that every read equals OpenSlide's."""
        self.dct_scaling = bool(dct_scaling)
        super().__init__(path, mpp_override)
        import tifffile

        try:
            self._tif = tifffile.TiffFile(str(path))
            levels = self._tif.series[0].levels
            self._pages = [lvl.pages[0] for lvl in levels]
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types
            self._ts.close()
            raise UnreadableSlideError(f"{Path(path).name}: tifffile cannot list its levels "
                                       f"({_one_line(exc)})") from None
        # the levels' tile tables were checked against the file by TiffSlideSlide (tile_table_problem)
        try:
            problem = self._unsupported() or self._prepare_jpeg()
        except (TypeError, ValueError, AttributeError, IndexError, OSError) as exc:  # tags of the wrong count/type
            problem = f"malformed TIFF tags ({type(exc).__name__})"
        if problem:
            self.close()
            raise UnreadableSlideError(f"{Path(path).name}: not for the direct tile reader ({problem})")
        self._fd = os.open(str(path), os.O_RDONLY)
        self._cache = SHARED_CACHE if cache_mb is None else TileCache(int(cache_mb * 2**20))
        stat = os.fstat(self._fd)
        self._file_key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns)  # handles of one file share its tiles

    def _unsupported(self) -> str:
        """Why this file's levels cannot be decoded tile by tile ('' when they can)."""
        if len(self._pages) != len(self.level_dimensions):
            return f"{len(self._pages)} TIFF levels but {len(self.level_dimensions)} slide levels"
        for i, (page, (w, h)) in enumerate(zip(self._pages, self.level_dimensions)):
            try:  # tags of the wrong count or type (a damaged header) make tifffile's properties tuples or raise
                sizes = (page.imagewidth, page.imagelength, page.tilewidth, page.tilelength, page.samplesperpixel)
                page.dtype  # noqa: B018
            except (TypeError, ValueError, AttributeError, IndexError) as exc:
                return f"level {i} has malformed size tags ({type(exc).__name__})"
            if not all(isinstance(v, int) for v in sizes):
                return f"level {i} has malformed size tags"
            if not getattr(page, "is_tiled", False):
                return f"level {i} is not tiled"
            if (page.imagewidth, page.imagelength) != (w, h):
                return f"level {i} is {page.imagewidth}x{page.imagelength} in the TIFF, {w}x{h} in the slide"
            if page.samplesperpixel not in (3, 4) or page.dtype != np.uint8 or page.planarconfig != 1:
                return f"level {i} is not interleaved 8-bit RGB(A)"
            if getattr(page, "imagedepth", 1) != 1:
                return f"level {i} is a volume"
        return ""

    def _prepare_jpeg(self) -> str:
        """Strict JPEG decoding for the JPEG levels ('' when every level can be decoded strictly).

        libjpeg-turbo as tifffile/imagecodecs call it decodes damaged entropy data without a word (the
        damaged part comes out grey), which would put silently broken tiles into a dataset. JPEG tiles
        are therefore decoded by simplejpeg with ``strict=True`` (every libjpeg warning is an error),
        from a stream completed with the page's JPEGTables and, for photometric RGB, an Adobe marker
        that says "no colour transform". The first tile of each level must decode to the same pixels
        both ways, or the file is refused (and OpenSlide reads it).
        """
        self._jpeg_prefix: dict[int, bytes] = {}
        jpeg_levels = [i for i, page in enumerate(self._pages) if int(page.compression) == JPEG]
        if not jpeg_levels:
            return ""
        import importlib.util

        if importlib.util.find_spec("simplejpeg") is None:
            return "JPEG tiles need simplejpeg for strict decoding (pip install simplejpeg)"
        for i in jpeg_levels:
            page = self._pages[i]
            if page.samplesperpixel != 3:
                return f"level {i} has {page.samplesperpixel}-sample JPEG tiles"
            tables = bytes(page.jpegtables[2:-2]) if page.jpegtables is not None else b""
            self._jpeg_prefix[i] = b"\xff\xd8" + (ADOBE_NO_TRANSFORM if int(page.photometric) == RGB else b"") + tables
            first = next((k for k, n in enumerate(page.databytecounts) if n > 0), None)
            if first is None:
                return f"level {i} stores no tile data"
            self._tif.filehandle.seek(page.dataoffsets[first])
            raw = self._tif.filehandle.read(page.databytecounts[first])
            try:
                ours = self._decode_jpeg(i, raw)
                theirs = np.asarray(page.decode(raw, first, jpegtables=page.jpegtables)[0]).reshape(ours.shape)
            except Exception as exc:  # noqa: BLE001 - any failure: leave the file to OpenSlide
                return f"level {i}'s first tile does not decode ({_one_line(exc)})"
            if not np.array_equal(ours, theirs):
                return f"level {i}'s JPEG colour layout is not one the strict decoder reads the same way"
        return ""

    def _decode_jpeg(self, level: int, raw: bytes, factor: int = 1) -> np.ndarray:
        import simplejpeg

        page = self._pages[level]
        scaled = {} if factor == 1 else {"min_factor": factor, "min_width": page.tilewidth // factor,
                                         "min_height": page.tilelength // factor}
        return simplejpeg.decode_jpeg(self._jpeg_prefix[level] + raw[2:], colorspace="RGB", fastdct=False,
                                      fastupsample=False, strict=True, **scaled)

    # ----- reading ------------------------------------------------------------------------------
    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        out = np.empty((height, width, 3), np.uint8)
        self._paste_tiles(out, int(round(x / ds)), int(round(y / ds)), level, 1)
        return out

    def _decode_factor(self, level: int, scale: float) -> int:
        """With ``dct_scaling``, JPEG levels decode 2, 4 or 8 times coarser in the DCT domain
        (libjpeg-turbo's scaled IDCT).

        Measured on CMU-1's tiles: 2.3-3.1x faster than a full decode plus an area downsample, at
        55-60 dB PSNR against it; a tissue-mask read of CMU-1 10x faster (``benchmarks/tiling.py``).
        Off by default: the pictures are equal to the eye but not to the bit, and a tissue mask that
        differs in a few pixels moves every randomly placed field of a plan.
        """
        if not self.dct_scaling or level not in self._jpeg_prefix:
            return 1
        page = self._pages[level]
        return next((k for k in DCT_FACTORS if scale >= k and page.tilewidth % k == 0 and page.tilelength % k == 0), 1)

    def _read_scaled_padded(self, lx: int, ly: int, level: int, width: int, height: int, factor: int) -> np.ndarray:
        lw, lh = self.level_dimensions[level]
        sw, sh = lw // factor, lh // factor  # whole scaled pixels only; the rest reads as outside (white)
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + width, sw), min(ly + height, sh)
        if x1 > x0 and y1 > y0:
            part = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            self._paste_tiles(part, x0, y0, level, factor)
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = part
        return out

    def _paste_tiles(self, out: np.ndarray, lx: int, ly: int, level: int, factor: int) -> None:
        """Fill ``out`` with the level's pixels from (lx, ly) on, in pixels ``factor`` times coarser."""
        page = self._pages[level]
        height, width = out.shape[:2]
        tw, th = page.tilewidth // factor, page.tilelength // factor
        across = -(-page.imagewidth // page.tilewidth)
        tx0, ty0, tx1, ty1 = lx // tw, ly // th, (lx + width - 1) // tw, (ly + height - 1) // th
        wanted = [(ty, tx) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        tiles: dict[tuple[int, int], np.ndarray] = {}
        missing = []
        for ty, tx in wanted:
            tile = self._cache.get((self._file_key, level, ty * across + tx, factor))
            if tile is None:
                missing.append((ty, tx))
            else:
                tiles[(ty, tx)] = tile
        if len(missing) == 1:
            tiles[missing[0]] = self._decode(level, missing[0][0] * across + missing[0][1], factor)
        elif missing:
            for key, tile in zip(missing, self._executor().map(
                    lambda k: self._decode(level, k[0] * across + k[1], factor), missing)):
                tiles[key] = tile
        for (ty, tx), tile in tiles.items():
            x0, y0 = max(lx, tx * tw), max(ly, ty * th)
            x1, y1 = min(lx + width, (tx + 1) * tw), min(ly + height, (ty + 1) * th)
            out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = tile[y0 - ty * th:y1 - ty * th, x0 - tx * tw:x1 - tx * tw, :3]

    def _decode(self, level: int, index: int, factor: int = 1) -> np.ndarray:
        """One tile, decoded (``factor`` times coarser for JPEG) and cached; a damaged one is an
        UnreadableSlideError naming the tile."""
        page = self._pages[level]
        try:
            offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
            if count <= 0:
                raise ValueError("no data stored for it")
            raw = os.pread(self._fd, count, offset)
            if len(raw) != count:
                raise ValueError(f"short read ({len(raw)} of {count} bytes)")
            if level in self._jpeg_prefix:
                tile = self._decode_jpeg(level, raw, factor)
            else:
                data, _, _ = page.decode(raw, index, jpegtables=page.jpegtables)
                tile = np.asarray(data).reshape(data.shape[-3:])
        except Exception as exc:  # noqa: BLE001 - the codecs raise many types
            raise UnreadableSlideError(f"{self.path.name}: read failed at level {level}, tile {index} "
                                       f"({_one_line(exc)}); the file may be truncated or corrupt") from None
        if tile.shape[2] == 4:  # RGBA tiles: transparent pixels lie outside the scan (white)
            from histomag.slide.props import white_composite

            tile = white_composite(tile)
        tile.setflags(write=False)
        self._cache.put((self._file_key, level, index, factor), tile)
        return tile

    @staticmethod
    def _executor() -> ThreadPoolExecutor:
        return _decode_pool()

    @property
    def cache(self) -> TileCache:
        return self._cache

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None  # type: ignore[assignment]
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a slide handle is not pickled: open the slide again in the other process")
