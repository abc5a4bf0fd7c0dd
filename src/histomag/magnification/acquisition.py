"""Acquisition randomisation: make a magnification model unable to read magnification from how an image was taken.

A crop at a lower magnification cut from a 40x scan differs from a natively scanned one in more
than scale: the resampling kernel, the blur per pixel, the noise and the compression all differ,
and a network trained on resampled scans learns those cues instead of the size of the tissue
(then it calls every blurry camera snapshot "high magnification"). :func:`simulate_acquisition`
draws, per training crop, everything that depends on the acquisition and not on the tissue:

* the **resampling kernel** that brings a region to the crop size (box, bilinear, bicubic,
  Lanczos, Hamming, or an aliasing nearest-neighbour);
* the **optical blur** in output pixels (Gaussian, sigma up to ~1.2 px: native 40x and 20x
  scanners sit at ~0.5–1 px, microscope cameras behind a relay lens higher);
* **sharpening** (scanner and camera software apply unsharp masks);
* **sensor noise** (Gaussian, per pixel and channel);
* **JPEG re-compression** (SVS tiles, snapshots saved as JPEG at any quality);
* **stain** (haematoxylin/eosin/DAB optical densities scaled and shifted) and colour variation.

The crop itself is never resized afterwards: its pixel scale *is* the label.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image, ImageFilter

from histomag.errors import ConfigError

#: PIL kernels a region may be resampled with (NEAREST aliases, like a naive reader)
KERNELS = (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS,
           Image.Resampling.HAMMING, Image.Resampling.NEAREST)
_KERNEL_P = np.array([0.25, 0.2, 0.2, 0.15, 0.1, 0.1])

# Ruifrok & Johnston stain vectors (as scikit-image's rgb_from_hed), rows H, E, DAB
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


@dataclass(frozen=True)
class AcquisitionSettings:
    """What :func:`simulate_acquisition` randomises (each part can be switched off for ablations).

    Attributes:
        random_kernel: draw the resampling kernel (False: always box/area averaging).
        blur_sigma: (low, high) Gaussian blur sigma in output px, drawn uniformly; (0, 0) = off.
        sharpen_p: probability of an unsharp mask (radius 0.5–2 px, 30–150%).
        noise_p: probability of Gaussian sensor noise (sigma 1–6 grey levels).
        jpeg_p: probability of JPEG re-compression (quality 30–95).
        stain: amount of the HED stain jitter (scale ±stain, shift ±stain/4 in optical density); 0 = off.
        color: (brightness, contrast, saturation) jitter amounts; 0 = off.
    """

    random_kernel: bool = True
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    sharpen_p: float = 0.25
    noise_p: float = 0.3
    jpeg_p: float = 0.5
    stain: float = 0.15
    color: tuple[float, float, float] = (0.1, 0.1, 0.15)

    def __post_init__(self) -> None:
        lo, hi = self.blur_sigma
        if not (0 <= lo <= hi <= 5):
            raise ConfigError(f"blur_sigma must be 0 <= low <= high <= 5 px, got {self.blur_sigma}")
        for name in ("sharpen_p", "noise_p", "jpeg_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.stain < 1 or min(self.color) < 0:
            raise ConfigError("stain must be in [0, 1) and color jitter amounts >= 0")

    @classmethod
    def off(cls) -> AcquisitionSettings:
        """Box resampling only: the recipe of a set built from resampled scans (for ablations)."""
        return cls(random_kernel=False, blur_sigma=(0.0, 0.0), sharpen_p=0.0, noise_p=0.0, jpeg_p=0.0, stain=0.0,
                   color=(0.1, 0.1, 0.1))

    def without(self, part: str) -> AcquisitionSettings:
        """These settings with one part switched off: ``kernel``, ``blur``, ``sharpen``, ``noise``, ``jpeg``, ``stain``."""
        off = {"kernel": {"random_kernel": False}, "blur": {"blur_sigma": (0.0, 0.0)}, "sharpen": {"sharpen_p": 0.0},
               "noise": {"noise_p": 0.0}, "jpeg": {"jpeg_p": 0.0}, "stain": {"stain": 0.0}}
        if part not in off:
            raise ConfigError(f"unknown acquisition part {part!r}; valid: {', '.join(off)}")
        return replace(self, **off[part])

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> AcquisitionSettings:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def resample(region: np.ndarray, size: int, kernel: Image.Resampling = Image.Resampling.BOX) -> np.ndarray:
    """A uint8 ``(h, w, 3)`` region resampled to ``size`` x ``size`` px with a PIL kernel."""
    if region.shape[0] == size and region.shape[1] == size:
        return region
    return np.asarray(Image.fromarray(region).resize((size, size), kernel))


def jitter_stain(rgb: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the H, E and DAB optical densities of a uint8 RGB image."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    hed = od @ _HED_FROM_RGB.astype(np.float32)
    scale = 1.0 + rng.uniform(-amount, amount, 3).astype(np.float32)
    shift = rng.uniform(-amount / 4, amount / 4, 3).astype(np.float32)
    od = (hed * scale + shift) @ _RGB_FROM_HED.astype(np.float32)
    return np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).astype(np.uint8)


def jitter_color(rgb: np.ndarray, amounts: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation factors drawn from ``[1 - a, 1 + a]``."""
    b, c, s = amounts
    x = rgb.astype(np.float32)
    if b > 0:
        x = x * rng.uniform(1 - b, 1 + b)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    if c > 0:
        m = grey.mean()
        f = rng.uniform(1 - c, 1 + c)
        x = (x - m) * f + m
        grey = (grey - m) * f + m
    if s > 0:
        x = (x - grey[..., None]) * rng.uniform(1 - s, 1 + s) + grey[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def simulate_acquisition(region: np.ndarray, size: int, settings: AcquisitionSettings,
                         rng: np.random.Generator) -> np.ndarray:
    """One randomised acquisition of a square region as a ``size`` x ``size`` uint8 crop.

    Args:
        region: uint8 ``(h, w, 3)`` square-pixel region covering the crop's field of view.
        size: output side in px (the region is downsampled to it; never upsampled by more than 2%).
        settings: what to randomise.
        rng: the random generator (one per item).
    """
    kernel = KERNELS[rng.choice(len(KERNELS), p=_KERNEL_P)] if settings.random_kernel else Image.Resampling.BOX
    if region.shape[0] < size * 0.98:
        raise ConfigError(f"a {region.shape[0]} px region cannot give a {size} px crop without upsampling")
    out = resample(region, size, kernel)
    if settings.stain > 0:
        out = jitter_stain(out, settings.stain, rng)
    if max(settings.color) > 0:
        out = jitter_color(out, settings.color, rng)
    img = Image.fromarray(out)
    sigma = rng.uniform(*settings.blur_sigma) if settings.blur_sigma[1] > 0 else 0.0
    if sigma > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(float(sigma)))
    if rng.random() < settings.sharpen_p:
        img = img.filter(ImageFilter.UnsharpMask(radius=float(rng.uniform(0.5, 2.0)),
                                                 percent=int(rng.uniform(30, 150)), threshold=0))
    out = np.asarray(img)
    if rng.random() < settings.noise_p:
        noise = rng.normal(0.0, rng.uniform(1.0, 6.0), out.shape).astype(np.float32)
        out = np.clip(out.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < settings.jpeg_p:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
        buf.seek(0)
        with Image.open(buf) as im:
            out = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(out)


# ----- the acquisition checks: fixed transforms an estimate of scale must not follow ----------------
def unsharp(rgb: np.ndarray, radius: float = 2, percent: int = 150) -> np.ndarray:
    """An ordinary unsharp mask (as cameras and several scanners apply)."""
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=0)))


def gaussian_blur(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A Gaussian blur of ``sigma`` px (slight defocus)."""
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(rgb.astype(np.float32), (sigma, sigma, 0)) + 0.5, 0, 255).astype(np.uint8)


def jpeg_again(rgb: np.ndarray, quality: int = 70) -> np.ndarray:
    """The image JPEG-compressed once more at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def stain_shift(rgb: np.ndarray, h: float = 1.15, e: float = 0.85) -> np.ndarray:
    """Haematoxylin 15% stronger, eosin 15% weaker (colour deconvolution)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    hed[..., 0] *= h
    hed[..., 1] *= e
    return np.clip(hed2rgb(hed) * 255 + 0.5, 0, 255).astype(np.uint8)


def sensor_noise(rgb: np.ndarray, sd: float = 6.0, seed: int = 0) -> np.ndarray:
    """Gaussian pixel noise of ``sd`` grey levels (seeded)."""
    noise = np.random.default_rng(seed).normal(0, sd, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


#: the acquisition checks by name: an estimate of scale should move less than 10% under each
ACQUISITION_CHECKS = {"unsharp": unsharp, "blur-1px": gaussian_blur, "jpeg-q70": jpeg_again, "stain": stain_shift,
                      "noise": sensor_noise}
