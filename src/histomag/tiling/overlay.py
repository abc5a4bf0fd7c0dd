"""Slide thumbnails with fields drawn over them, and the key that makes them readable (legend, scale bar).

Everything here works on square-pixel thumbnails (:func:`slide_thumbnail`): a field given as a
level-0 box ``(left, top, width, height)`` is divided by the thumbnail's downsample. A scale bar's
length comes from the slide's true resolution through :class:`~histomag.resolution.Resolution`
(:func:`scale_bar`), never from a magnification name. Drawing is PIL and numpy only.

Example:
    >>> rgb, ds = slide_thumbnail(slide, 1600)  # doctest: +SKIP
    >>> tinted = tint_boxes(rgb, [(l / ds[0], t / ds[1], w / ds[0], h / ds[1])], [(214, 39, 40)], [0.5])  # doctest: +SKIP
    >>> image, key = add_key(tinted, [("tumour", (214, 39, 40))], scale_bar(slide.resolution.coarser(ds[0]), 400))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from histomag.resolution import Resolution

RGB = tuple[int, int, int]
#: one colour per class, in class order (tab10; repeats after ten classes)
PALETTE: tuple[RGB, ...] = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
                            (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127))
#: opacity of a field whose probability is 1 (so the tissue stays visible under every tint)
MAX_ALPHA = 0.6
#: scale bars are 1, 2 or 5 times a power of ten µm long
NICE_STEPS = (1.0, 2.0, 5.0)


def class_colours(class_names: Sequence[str]) -> dict[str, RGB]:
    """The colour of each class, in class order (the same in every overlay of a run)."""
    return {str(c): PALETTE[i % len(PALETTE)] for i, c in enumerate(class_names)}


def slide_thumbnail(slide: Any, width: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The whole slide ``width`` px wide, in square pixels; returns ``(rgb, (downsample_x, downsample_y))``.

    The downsample is level-0 (square) pixels per thumbnail pixel. A thumbnail wider than the slide
    itself is read at the slide's own size and enlarged for display only.
    """
    W, H = slide.dimensions
    width = max(1, int(width))
    height = max(1, round(H * width / W))
    read = (width, height) if width <= W else (W, H)
    rgb = np.asarray(slide.read_rect(0, 0, W, H, read))[..., :3]
    if read != (width, height):
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))
    return np.ascontiguousarray(rgb), (W / width, H / height)


def box_pixels(box: tuple[float, float, float, float], shape: tuple[int, int]) -> tuple[slice, slice]:
    """The ``(rows, cols)`` slices of the pixels whose centres lie in ``box`` (abutting boxes share none)."""
    left, top, w, h = box
    x0, x1 = (max(0, min(shape[1], math.ceil(v - 0.5))) for v in (left, left + w))
    y0, y1 = (max(0, min(shape[0], math.ceil(v - 0.5))) for v in (top, top + h))
    return slice(y0, y1), slice(x0, x1)


def tint_boxes(rgb: np.ndarray, boxes: Sequence[tuple[float, float, float, float]], colours: Sequence[RGB],
               alphas: Sequence[float], *, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend ``colour`` over each box with opacity ``alpha``: ``(1 - a) * rgb + a * colour``.

    Boxes are in the image's pixels; where they overlap, the later box wins (it is not blended twice).
    ``mask`` (bool, the image's shape) limits the tint to its True pixels, e.g. tissue.
    """
    h, w = rgb.shape[:2]
    colour_layer = np.zeros((h, w, 3), np.float32)
    alpha_layer = np.zeros((h, w), np.float32)
    for box, colour, alpha in zip(boxes, colours, alphas):
        rows, cols = box_pixels(box, (h, w))
        colour_layer[rows, cols] = colour
        alpha_layer[rows, cols] = float(np.clip(alpha, 0.0, 1.0))
    if mask is not None:
        alpha_layer *= mask.astype(np.float32)
    a = alpha_layer[..., None]
    out = rgb[..., :3].astype(np.float32) * (1.0 - a) + colour_layer * a
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def outline_boxes(rgb: np.ndarray, boxes: Sequence[tuple[float, float, float, float]], colour: RGB,
                  line: int = 2) -> np.ndarray:
    """Draw each box's outline (``line`` px, inside the box) in ``colour``."""
    im = Image.fromarray(np.ascontiguousarray(rgb[..., :3]))
    draw = ImageDraw.Draw(im)
    for left, top, w, h in boxes:
        draw.rectangle([round(left), round(top), max(round(left), round(left + w) - 1),
                        max(round(top), round(top + h) - 1)], outline=colour, width=line)
    return np.asarray(im)


@dataclass(frozen=True)
class ScaleBar:
    """A scale bar: ``um`` µm long, ``px`` image pixels at the image's resolution ``mpp``; drawn at ``(x, y)``."""

    um: float
    px: int
    mpp: float
    x: int = -1  # left end of the bar in the keyed image (-1: not drawn yet)
    y: int = -1  # top row of the bar
    thickness: int = 0

    @property
    def mm(self) -> float:
        return self.um / 1000.0

    @property
    def label(self) -> str:
        return f"{self.mm:g} mm" if self.um >= 1000 else f"{self.mm:g} mm ({self.um:g} µm)"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mm": self.mm}


def scale_bar(resolution: Resolution, max_px: float) -> ScaleBar:
    """The longest 1-2-5 length whose bar fits in ``max_px`` pixels at ``resolution`` (the image's, not level 0's)."""
    longest = resolution.length_um(max(1.0, max_px))
    exponent = math.floor(math.log10(longest))
    um = max(s * 10.0 ** e for e in (exponent - 1, exponent) for s in NICE_STEPS if s * 10.0 ** e <= longest)
    um = float(f"{um:.6g}")
    return ScaleBar(um=um, px=max(1, round(resolution.length_px(um))), mpp=resolution.mpp)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (matplotlib's, which has µ and ²) at ``size`` px; else PIL's default font."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except (ImportError, OSError, ValueError):
        try:
            return ImageFont.load_default(size=size)
        except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
            return ImageFont.load_default()


@dataclass(frozen=True)
class Key:
    """Where :func:`add_key` drew the key: the band's top row, its height, and the scale bar as drawn."""

    top: int
    height: int
    scale: ScaleBar
    entries: tuple[str, ...]


def add_key(rgb: np.ndarray, entries: Sequence[tuple[str, RGB]], scale: ScaleBar, *, title: str = "",
            note: str = "") -> tuple[np.ndarray, Key]:
    """Append a white band under the image: a title, a legend (a swatch per entry), the scale bar, a note.

    The image keeps its width; the band adds rows below it. The scale bar is a black bar of exactly
    ``scale.px`` pixels at the band's right, its length written above it.
    """
    h, w = rgb.shape[:2]
    fs = max(11, min(24, w // 70))
    fnt = font(fs)
    pad, swatch = fs // 2 + 2, fs
    bar_h = max(3, fs // 4)
    line = fs + fs // 2
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(text: str) -> int:
        return int(math.ceil(scratch.textlength(text, font=fnt)))

    def wrap(text: str, room: int) -> list[str]:
        lines: list[str] = []
        for word in text.split():
            if lines and text_w(lines[-1] + " " + word) <= room:
                lines[-1] += " " + word
            else:
                lines.append(word)
        return lines

    bar_px = int(scale.px)  # as computed: a clipped bar would no longer be its stated length
    right_w = max(bar_px, text_w(scale.label)) + 2 * pad
    room = max(fs * 6, w - right_w)
    rows: list[list[tuple[str, RGB]]] = [[]]
    x = pad
    for label, colour in entries:
        item = swatch + fs // 3 + text_w(label) + fs
        if rows[-1] and x + item > room:
            rows.append([])
            x = pad
        rows[-1].append((label, colour))
        x += item
    title_lines = wrap(title, w - 2 * pad)
    note_lines = wrap(note, w - 2 * pad)
    block = max(len(rows) * line, line + bar_h + fs // 2)
    band = 2 * pad + len(title_lines) * line + block + len(note_lines) * line
    out = Image.new("RGB", (w, h + band), (255, 255, 255))
    out.paste(Image.fromarray(np.ascontiguousarray(rgb[..., :3])), (0, 0))
    draw = ImageDraw.Draw(out)
    y = h + pad
    for text in title_lines:
        draw.text((pad, y), text, fill=(0, 0, 0), font=fnt)
        y += line
    block_top = y
    for row in rows:
        x = pad
        for label, colour in row:
            draw.rectangle([x, y + 2, x + swatch - 1, y + swatch + 1], fill=tuple(colour), outline=(60, 60, 60))
            draw.text((x + swatch + fs // 3, y), label, fill=(0, 0, 0), font=fnt)
            x += swatch + fs // 3 + text_w(label) + fs
        y += line
    bx, by = w - pad - bar_px, block_top + line
    draw.text((w - pad - text_w(scale.label), block_top), scale.label, fill=(0, 0, 0), font=fnt)
    draw.rectangle([bx, by, bx + bar_px - 1, by + bar_h - 1], fill=(0, 0, 0))
    y = block_top + block
    for text in note_lines:
        draw.text((pad, y), text, fill=(80, 80, 80), font=fnt)
        y += line
    drawn = ScaleBar(um=scale.um, px=bar_px, mpp=scale.mpp, x=bx, y=by, thickness=bar_h)
    return np.asarray(out), Key(top=h, height=band, scale=drawn, entries=tuple(e[0] for e in entries))


def png_bytes(rgb: np.ndarray) -> bytes:
    """``rgb`` encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
