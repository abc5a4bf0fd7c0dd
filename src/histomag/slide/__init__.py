"""Slide readers behind one interface: the direct tile reader (tiled SVS/TIFF), OpenSlide, TiffSlide, plain images."""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass

from histomag.errors import ConfigError, DecoderLimitError, InputPathError, UnreadableSlideError
from histomag.registry import Registry
from histomag.slide.base import MppOverride, MppSource, Slide, SlideMetadata, slide_id_from_path

log = logging.getLogger(__name__)

Backend = str  # "auto" or a registered backend name
#: files only the plain-image reader opens
PLAIN_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
#: whole-slide formats (a .tif/.tiff may also be a plain image: the image reader takes it when no slide reader does)
WSI_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"})
#: tiled TIFF-family files the direct tile reader may take (it refuses the ones it cannot decode tile by tile)
TIFF_FAMILY_SUFFIXES = frozenset({".svs", ".tif", ".tiff"})
#: what a folder of "slides or images" is expanded to, everywhere
SLIDE_AND_IMAGE_SUFFIXES = WSI_SUFFIXES | PLAIN_IMAGE_SUFFIXES

__all__ = ["Slide", "SlideMetadata", "MppSource", "MppOverride", "open_slide", "slide_id_from_path", "BACKENDS",
           "BackendSpec", "register_backend", "backend_names"]


@dataclass(frozen=True)
class BackendSpec:
    """One slide reader: how to open a file with it and which files ``auto`` offers it.

    Attributes:
        name: the ``backend=`` value.
        open: ``(path, mpp) -> Slide`` (import the reading library inside, so that registering
            costs nothing).
        detect: ``path -> bool``: whether ``auto`` tries this backend for the file.
        priority: ``auto`` tries the detected backends in increasing priority.
    """

    name: str
    open: Callable[[Path, MppOverride | None], Slide]
    detect: Callable[[Path], bool]
    priority: int = 50


SLIDE_BACKENDS: Registry = Registry("slide backend", hint="or auto")


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Register a slide backend (ConfigError if the name is taken); ``open_slide`` can use it at once."""
    SLIDE_BACKENDS.register(spec.name)(spec)  # type: ignore[arg-type]
    return spec


def backend_names() -> list[str]:
    """``auto`` and every registered backend, in ``auto``'s order of priority."""
    specs = sorted((SLIDE_BACKENDS.get(n) for n in SLIDE_BACKENDS.names()), key=lambda s: s.priority)
    return ["auto", *(s.name for s in specs)]


def _open_openslide(path: Path, mpp: MppOverride | None) -> Slide:
    from histomag.slide.openslide import OpenSlideSlide

    return OpenSlideSlide(path, mpp)


def _open_tiffslide(path: Path, mpp: MppOverride | None) -> Slide:
    from histomag.slide.tiffslide import TiffSlideSlide

    return TiffSlideSlide(path, mpp)


def _open_tiles(path: Path, mpp: MppOverride | None) -> Slide:
    from histomag.slide.tiles import TileSlide

    return TileSlide(path, mpp)


def _tiff_family(path: Path) -> bool:
    return path.suffix.lower() in TIFF_FAMILY_SUFFIXES


def _open_image(path: Path, mpp: MppOverride | None) -> Slide:
    from histomag.slide.image import ImageSlide

    return ImageSlide(path, mpp)


def _not_plain_image(path: Path) -> bool:
    return path.suffix.lower() not in PLAIN_IMAGE_SUFFIXES


register_backend(BackendSpec("tiles", _open_tiles, _tiff_family, priority=5))
register_backend(BackendSpec("openslide", _open_openslide, _not_plain_image, priority=10))
register_backend(BackendSpec("tiffslide", _open_tiffslide, _not_plain_image, priority=20))
register_backend(BackendSpec("image", _open_image, lambda path: True, priority=90))
BACKENDS = tuple(backend_names())  # the built-ins, for help texts


def open_slide(path: str | Path, *, mpp: MppOverride | None = None, backend: Backend = "auto",
               probe: bool = True) -> Slide:
    """Open a slide or image at its true resolution.

    Args:
        path: whole-slide file (SVS, NDPI, MRXS, pyramidal TIFF, ...) or a PNG/JPEG/TIFF image.
        mpp: explicit resolution override in µm/px (wins over any metadata): one number for
            square pixels, or ``(mpp_x, mpp_y)`` for pixels that are not square, e.g.
            ``(0.56, 0.42)`` for a snapshot whose pixels are 0.56 µm wide and 0.42 µm tall. The
            slide then reads square pixels at the coarser value (here 0.56 µm/px; the finer axis
            is area-averaged, never upsampled).
        backend: ``auto`` tries the direct tile reader (tiled SVS/TIFF), OpenSlide, TiffSlide, then a
            plain image reader.
        probe: decode a few tiles now so a truncated or corrupt file fails here, not mid-job.

    Raises:
        InputPathError: the path does not exist or is a folder.
        UnreadableSlideError: no backend can read the file, or it is truncated/corrupt.
        DecoderLimitError: (an UnreadableSlideError) a plain image over the pixel limit
            (:func:`histomag.slide.image.max_image_pixels`), or a tiled TIFF whose tiles are missing
            or lie past the end of the file; checked on the header, before any pixel is decoded.
    """
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"{path}: no such file; check the path")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise InputPathError(f"{path}: is a folder, not a slide; give a slide file (or the folder's files)")
    if backend != "auto" and backend not in SLIDE_BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(backend_names())}")

    if backend == "auto":
        order = [n for n in backend_names()[1:] if SLIDE_BACKENDS.get(n).detect(path)]
    else:
        order = [backend]
    reasons: list[str] = []
    for name in order:
        try:
            slide = _open_with(name, path, mpp)
            if probe:
                _probe(slide)
        except DecoderLimitError:
            raise  # a header over histomag's limits, or claiming more than the file holds: no other reader is tried
        except UnreadableSlideError as exc:
            reasons.append(f"{name}: {str(exc).split(': ', 1)[-1]}")
            log.debug("%s: %s failed: %s", path.name, name, exc)
            if _is_damage(str(exc)):
                break  # a damaged file is not retried as a plain image: that would hide the damage
            continue
        if name != order[0]:
            log.info("%s: opened with %s (%s)", path.name, name, "; ".join(reasons))
        return slide
    if any(_is_damage(r) for r in reasons):
        raise UnreadableSlideError(
            f"{path.name}: the file opens but its image data cannot be decoded (truncated or corrupt?); "
            "copy or export the slide again"
        )
    detail = reasons[0].split(": ", 1)[-1] if len(reasons) == 1 else f"tried {', '.join(order)}"
    raise UnreadableSlideError(
        f"{path.name}: not a readable slide or image ({detail}); "
        "give a whole-slide file (SVS, NDPI, MRXS, pyramidal TIFF) or a PNG/JPEG/TIFF image"
    )


def _is_damage(message: str) -> bool:
    """Whether a backend's error says the file is a slide whose data is damaged (not another format)."""
    low = message.lower()
    return any(k in low for k in ("truncated", "read failed", "short read", "unexpected end", "corrupt"))


def _open_with(name: str, path: Path, mpp: MppOverride | None) -> Slide:
    return SLIDE_BACKENDS.get(name).open(path, mpp)


def _probe(slide: Slide) -> None:
    """Decode the lowest level (or its centre) and the last level-0 tile, closing the slide on failure."""
    try:
        level = len(slide.level_dimensions) - 1
        lw, lh = slide.level_dimensions[level]
        w, h = min(lw, 1024), min(lh, 1024)
        slide._read_level_padded((lw - w) // 2, (lh - h) // 2, level, w, h)
        W, H = slide.level_dimensions[0]  # file pixels, as _read_level_padded takes
        slide._read_level_padded(max(W - 64, 0), max(H - 64, 0), 0, min(W, 64), min(H, 64))
    except UnreadableSlideError:
        slide.close()
        raise
