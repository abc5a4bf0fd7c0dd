"""Using a trained magnification model: load a run or checkpoint, predict magnifications of images.

Lightning-free: a checkpoint is read with ``torch.load(weights_only=True)`` and the network is
rebuilt from the config stored in it.

Example:
    >>> model, cfg = load_magnifier("runs/mag")  # doctest: +SKIP
    >>> predict_magnifications(model, [rgb_array], cfg.crop, n_crops=5)  # doctest: +SKIP
    [19.6]
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from histomag.errors import CheckpointError, ConfigError, InputPathError
from histomag.magnification.estimate import (FileEstimates, IntervalCalibration, MagnificationEstimate, estimate_from_rgb,
                                             estimate_magnification)
from histomag.magnification.network import MODEL_TYPES, MagnificationClassifier
from histomag.fitloop import read_checkpoint
from histomag.magnification.config import MagnifierConfig, build_magnifier
from histomag.magnification.runfolder import MAG_TRAIN_HINT, MagnificationRun
from histomag.magnification.data import (
    as_rgb_uint8,
    crop_boxes,
    pad_to_size,
    to_normalized_tensor,
)


def load_magnifier(run_or_ckpt: str | Path, *, which: str = "best",
                   map_location: str | torch.device = "cpu") -> tuple[nn.Module, MagnifierConfig]:
    """Load a trained magnification model (in eval mode) and its config.

    Args:
        run_or_ckpt: a run folder (reads ``checkpoints/<which>.ckpt``) or a ``.ckpt`` file.
        which: ``"best"`` or ``"last"`` for run folders.
        map_location: device to load onto.

    Raises:
        InputPathError: the path does not exist.
        CheckpointError: no checkpoint in the run folder, an unreadable file, a checkpoint of
            another model type, or weights that do not fit (one-line messages).
    """
    path = Path(run_or_ckpt)
    if not path.exists():
        raise InputPathError(f"{path} does not exist; pass a run folder or .ckpt file made by: {MAG_TRAIN_HINT}")
    if path.is_dir():
        ckpt_path = MagnificationRun(path).checkpoint(which)
    else:
        ckpt_path = path
    ckpt, meta = read_checkpoint(ckpt_path, map_location)
    model_type = meta.get("model_type") if meta else None
    if model_type not in MODEL_TYPES or not isinstance(meta.get("config"), dict):  # type: ignore[union-attr]
        raise CheckpointError(
            f"{ckpt_path} is not a magnification-model checkpoint (model type {model_type or 'unknown'}); "
            f"use one written by: {MAG_TRAIN_HINT}"
        )
    try:  # the stored config and weights come from the file: a damaged one fails in one line
        config = MagnifierConfig.from_dict(meta["config"])  # type: ignore[index]
        model = build_magnifier(config, weights=None)
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt_path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{ckpt_path} holds a damaged model config ({type(exc).__name__}: {_first_line(exc)}); "
                              f"use a checkpoint written by: {MAG_TRAIN_HINT}") from None
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt_path} holds no state_dict; use a checkpoint written by: {MAG_TRAIN_HINT}")
    state = {k[len("model."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("model.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:  # wrong shapes or non-tensors
        raise CheckpointError(f"{ckpt_path} holds weights that do not fit its own config ({_first_line(exc)}); "
                              f"use a checkpoint written by: {MAG_TRAIN_HINT}") from None
    if result.missing_keys or result.unexpected_keys:
        bad = (result.missing_keys + result.unexpected_keys)[:3]
        raise CheckpointError(f"{ckpt_path} does not fit a {config.model_type} with backbone {config.backbone!r} "
                              f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys, "
                              f"e.g. {', '.join(bad)})")
    return model.to(map_location).eval(), config


@torch.no_grad()
def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:160]


def predict_magnifications(model: nn.Module, images: Sequence[np.ndarray], crop: int, n_crops: int = 5,
                   batch_size: int = 32) -> list[float]:
    """Magnification of each image from up to ``n_crops`` crops, in eval mode (batch-independent).

    Every image is padded to ``crop`` where smaller (never scaled), cut into up to ``n_crops``
    crops spread over it (:func:`~histomag.magnification.data.crop_boxes`, centre first) and
    predicted crop by crop; the regressor's answer is the median over the crops, the
    classifier's the level with the highest mean probability.

    Args:
        model: a :class:`MagnificationRegressor` or :class:`MagnificationClassifier`.
        images: ``(H, W, 3)`` uint8 RGB arrays (grey and RGBA are converted).
        crop: crop side in px (the run's ``config.crop``).
        n_crops: crops per image (1: the centre crop).
        batch_size: crops per forward pass (does not change the result).

    Returns:
        One magnification per image.
    """
    backbone = model.backbone  # type: ignore[attr-defined]
    device = next(model.parameters()).device
    crops: list[Tensor] = []
    owners: list[int] = []
    for i, image in enumerate(images):
        padded, _ = pad_to_size(as_rgb_uint8(image), crop)
        for y, x in crop_boxes(padded.shape[0], padded.shape[1], crop, n_crops):
            crops.append(to_normalized_tensor(padded[y : y + crop, x : x + crop], backbone.input_mean,
                                              backbone.input_std))
            owners.append(i)
    was_training = model.training
    model.eval()
    try:
        classifier = isinstance(model, MagnificationClassifier)
        outs = []
        for start in range(0, len(crops), batch_size):
            x = torch.stack(crops[start : start + batch_size]).to(device)
            outs.append((model.predict_proba(x) if classifier else model.predict_magnification(x)).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        return []
    out = torch.cat(outs)
    owner = torch.tensor(owners)
    result = []
    for i in range(len(images)):
        mine = out[owner == i]
        if classifier:
            result.append(float(model.level_values.cpu()[mine.mean(dim=0).argmax()]))
        else:
            result.append(float(np.median(mine.numpy())))
    return result


def crop_predictor(model: nn.Module, crop: int):
    """A batch-independent predictor of one magnification per crop (for :mod:`histomag.magnification.estimate`)."""
    return lambda crops: predict_magnifications(model, crops, crop, n_crops=1)


#: the magnification model shipped with histomag (used when no checkpoint is given)
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "magnifier-small.pt"
DEFAULT_MODEL_HINT = ("reinstall histomag (the package ships weights/magnifier-small.pt), or pass a model made by "
                      "histomag.magnification.fit.train_magnifier(DATA, RUN, config)")


@dataclass
class Estimator(FileEstimates):
    """A magnification model ready to estimate resolutions, with its calibrated interval (if any).

    Attributes:
        model: the network (eval mode).
        config: its config (``crop`` is the input size).
        calibration: the interval calibration from leave-groups-out CV (None: no interval).
        source: where it was loaded from.
        tta: test-time scales (see :func:`histomag.magnification.estimate.estimate_from_rgb`), as calibrated.
        method: ``cnn`` (the network), ``nuclei`` (the nuclei-size ruler, :mod:`histomag.magnification.rulers.nuclei`) or
            ``combined`` (the geometric mean of both), as chosen by cross-validation.
        fallback: the CNN's own calibration, used when the ruler finds too few nuclei (fewer than
            20): then the CNN alone answers, with this interval.
    """

    model: nn.Module
    config: MagnifierConfig
    calibration: IntervalCalibration | None
    source: str
    tta: tuple[float, ...] = (1.0,)
    method: str = "cnn"
    fallback: IntervalCalibration | None = None

    def predictor(self):
        """One magnification per crop (batch-independent)."""
        return crop_predictor(self.model, self.config.crop)

    def _estimate(self, cnn: Any, ruler_crops: Any, name: str) -> MagnificationEstimate:
        """The chosen method's estimate.

        Args:
            cnn: ``calibration -> estimate`` by the network alone.
            ruler_crops: ``() -> crops`` for the nuclei-size ruler.
            name: the file, for messages.
        """
        from histomag.errors import NoTissueError
        from histomag.magnification.estimate import combine_estimates, nuclei_estimate, open_below_ruler_floor, with_interval

        if self.method == "cnn":
            return cnn(self.calibration)
        try:
            nuc = nuclei_estimate(ruler_crops(), name=name)
        except NoTissueError:  # too few nuclei: the CNN alone, with its own interval
            return cnn(self.fallback)
        if self.method == "nuclei":
            return open_below_ruler_floor(with_interval(nuc, self.calibration), nuc)
        return open_below_ruler_floor(combine_estimates(cnn(None), nuc, self.calibration), nuc)

    def estimate_slide(self, slide: Any, n_crops: int = 32) -> MagnificationEstimate:
        """Estimate of a slide or image file opened with :func:`histomag.slide.open_slide`."""
        from histomag.magnification.estimate import slide_nuclei_crops, slide_tissue_mask

        mask = slide_tissue_mask(slide)  # read once, shared by the network's and the ruler's crops
        return self._estimate(
            lambda cal: estimate_magnification(slide, self.predictor(), self.config.crop, n_crops, cal,
                                               tta=self.tta, mask=mask),
            lambda: slide_nuclei_crops(slide, mask), slide.path.name)

    def estimate_rgb(self, rgb: np.ndarray, n_crops: int = 32, name: str = "image") -> MagnificationEstimate:
        """Estimate of a square-pixel image in memory."""
        from histomag.magnification.estimate import rgb_nuclei_crops

        rgb = as_rgb_uint8(rgb)
        return self._estimate(
            lambda cal: estimate_from_rgb(rgb, self.predictor(), self.config.crop, n_crops, cal, name, tta=self.tta),
            lambda: rgb_nuclei_crops(rgb, name), name)


def load_estimator(checkpoint: str | Path | None = None, map_location: str | torch.device = "cpu") -> Any:
    """An estimator: the shipped rulers (default), a rulers' calibration (``.json``), ``"cnn"`` (the
    shipped network) or a network's run folder or model file.

    The default is the rulers' estimator (:mod:`histomag.magnification.rulers.estimator`): the
    leave-groups-out CV chose it over the network (docs/magnification-real.md).

    Raises:
        CheckpointError: the default model is missing from the installation, or the checkpoint
            is not a magnification model (one line).
    """
    if checkpoint is None or str(checkpoint).lower().endswith(".json"):
        from histomag.magnification.rulers.estimator import load_ruler_estimator

        return load_ruler_estimator(checkpoint)
    path = DEFAULT_MODEL if str(checkpoint) == "cnn" else Path(checkpoint)
    if str(checkpoint) == "cnn" and not path.is_file():
        raise CheckpointError(f"the default magnification model {path} is missing; {DEFAULT_MODEL_HINT}")
    model, config = load_magnifier(path, map_location=map_location)
    ckpt_path = MagnificationRun(path).checkpoint_path("best") if path.is_dir() else path
    _, meta = read_checkpoint(ckpt_path, map_location)
    try:  # the calibration and test-time augmentation stored beside the weights
        interval = (meta or {}).get("interval")
        calibration = IntervalCalibration.from_dict(interval) if isinstance(interval, dict) else None
        tta = tuple(float(f) for f in (meta or {}).get("tta", (1.0,)))
        if not tta or not all(math.isfinite(f) and f > 0 for f in tta):
            raise ValueError(f"tta factors {tta} must be positive")
        method = str((meta or {}).get("method", "cnn"))
        others = (meta or {}).get("intervals") or {}
        fallback_key = "cnn_tta" if tta != (1.0,) else "cnn"
        fallback = IntervalCalibration.from_dict(others[fallback_key]) if fallback_key in others else calibration
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"{ckpt_path} holds a damaged calibration ({type(exc).__name__}: {_first_line(exc)}); "
                              f"export the model again with export_model") from None
    return Estimator(model, config, calibration, "shipped network" if str(checkpoint) == "cnn" else str(path), tta,
                     "cnn" if method.startswith("cnn") else method, fallback)


@dataclass
class ResolvedResolutions:
    """What ``--mpp estimate`` decided for a batch.

    Attributes:
        values: µm per pixel per path used.
        failed: one line per path refused or unreadable.
        warnings: the batch's warnings (one saying loudly that resolutions are estimated).
        sources: per path used, where its resolution came from, with the interval
            (``"estimated 17.9x, 90% 15.6-20.5x (rulers)"``), for manifests and ``images.csv``.
    """

    values: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


def refusal(name: str, est: MagnificationEstimate, max_uncertainty: float | None = None) -> str | None:
    """Why an estimate cannot be used (one line naming the file and the fix), or None when it can.

    It is refused when its interval holds two standard objectives a factor of 2 or more apart (it
    cannot tell them apart), or is wider than ``max_uncertainty`` (a factor either side).
    """
    from histomag.magnification.rulers.evidence import ambiguous_objectives

    if est.interval is None:
        return None
    lo, hi = est.interval
    pair = ambiguous_objectives(est.interval)
    if pair is not None:
        return (f"{name}: the pixels cannot tell {pair[0]:g}x from {pair[1]:g}x (estimate {est.magnification:.3g}x, "
                f"{est.level:.0%} interval {lo:.3g}-{hi:.3g}x); give the true resolution (mpp=)")
    factor = est.uncertainty_factor
    if max_uncertainty is not None and factor is not None and factor > max_uncertainty:
        return (f"{name}: the estimate {est.magnification:.3g}x is uncertain by a factor ×{factor:.2f} ({est.level:.0%} "
                f"interval {lo:.3g}-{hi:.3g}x), more than the allowed ×{max_uncertainty:g}; give the true resolution "
                "(mpp=), or allow more (max_uncertainty=)")
    return None


def source_text(est: MagnificationEstimate) -> str:
    """``'estimated 17.9x, 90% 15.6-20.5x (rulers)'``: an estimate as a resolution's recorded source."""
    text = f"estimated {est.magnification:.3g}x"
    if est.interval is not None:
        text += f", {est.level:.0%} {est.interval[0]:.3g}-{est.interval[1]:.3g}x"
    return f"{text} ({est.method or 'cnn'})"


def estimate_resolutions(paths: Sequence[str | Path], checkpoint: str | Path | None = None,
                         max_uncertainty: float | None = None, *,
                         same_acquisition: bool = False) -> ResolvedResolutions:
    """Recover the resolution of each slide or image from its pixels, using every estimate that can
    tell the standard objectives apart.

    Args:
        paths: slides or images (each is opened with :func:`histomag.slide.open_slide`).
        checkpoint: estimator (default: the shipped rulers; see :func:`load_estimator`).
        max_uncertainty: also refuse an estimate whose interval is wider than this factor either
            side (``1.25``: from /1.25 to ×1.25); None: only the objective rule.
        same_acquisition: the files are one acquisition (one scanner or camera setting): one
            estimate pooled over all their fields serves them all (the rulers only).

    Returns:
        The values used, the one-line refusals, one warning for the batch, and each value's source.

    Raises:
        CheckpointError: the estimator cannot be loaded.
    """
    from histomag.errors import HistomagError
    from histomag.slide import open_slide

    estimator = load_estimator(checkpoint)
    out = ResolvedResolutions()
    estimates: dict[str, MagnificationEstimate] = {}
    if same_acquisition:
        if not hasattr(estimator, "estimate_group"):
            from histomag.errors import ConfigError

            raise ConfigError("same_acquisition=True pools the rulers' evidence; it needs the rulers' estimator "
                              "(no checkpoint, or a rulers' calibration .json)")
        est, errors = estimator.estimate_group(paths)
        out.failed.update(errors)
        if est is not None:
            estimates = {str(p): est for p in paths if str(p) not in errors}
    else:
        for p in map(Path, paths):
            try:
                with open_slide(p) as slide:
                    estimates[str(p)] = estimator.estimate_slide(slide)
            except HistomagError as exc:
                out.failed[str(p)] = str(exc)
    for key, est in estimates.items():
        why = refusal(Path(key).name, est, max_uncertainty)
        if why:
            out.failed[key] = why
            continue
        out.values[key] = est.mpp
        out.sources[key] = source_text(est)
    if out.values:
        used = [estimates[k] for k in out.values]
        mags = sorted(e.magnification for e in used)
        span = f"{mags[0]:.3g}x" if len(mags) == 1 or same_acquisition else f"{mags[0]:.3g}-{mags[-1]:.3g}x"
        pooled = f", one pooled estimate {used[0].describe()}" if same_acquisition else ""
        uncal = "" if all(e.interval is not None for e in used) else "; some have no calibrated interval"
        out.warnings.append(f"using ESTIMATED resolutions for {len(out.values)} of {len(list(paths))} file(s) "
                            f"({span}{pooled}){uncal}; each file's value and interval are recorded with it")
    return out


def export_model(run_or_ckpt: str | Path, out: str | Path, *, calibration: IntervalCalibration | None = None,
                 tta: Sequence[float] = (1.0,), method: str = "cnn",
                 intervals: dict[str, IntervalCalibration] | None = None, card: dict[str, Any] | None = None) -> Path:
    """Write a slim, weights-only model file (no optimiser state) with its interval calibration.

    The file loads with :func:`load_estimator` / :func:`load_magnifier` like a checkpoint.
    """
    from histomag.data.atomic import atomic_write_bytes

    path = Path(run_or_ckpt)
    ckpt_path = MagnificationRun(path).checkpoint_path("best") if path.is_dir() else path
    ckpt, meta = read_checkpoint(ckpt_path)
    load_magnifier(ckpt_path)  # checks that it is a magnification model
    meta = dict(meta or {})
    if calibration is not None:
        meta["interval"] = calibration.to_dict()
    meta["tta"] = [float(f) for f in tta]
    meta["method"] = method
    if intervals:
        meta["intervals"] = {k: v.to_dict() for k, v in intervals.items()}
    if card:
        meta["card"] = card
    state = {k: v.detach().clone().contiguous() for k, v in ckpt["state_dict"].items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "histomag": meta}, buf)
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)
