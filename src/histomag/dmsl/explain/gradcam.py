"""Grad-CAM of every magnification branch of a DMSL model, and PNG panels of a tuple's maps.

The class score is the **log of the fused probability** ``log p(c) = log sum_m w_m softmax_m(c)``,
the quantity the model decides with, so a branch's map shows what in *its* input moves the
fused decision (its gradient is scaled by the branch's share of ``p(c)``). A branch head's own
logit would explain a branch in isolation, ignoring the fusion that makes the prediction; the
log (rather than ``p(c)``) keeps gradients from vanishing where ``p(c)`` saturates.

pytorch-grad-cam expects a one-input model, so :class:`BranchCAMModel` presents a
:class:`~histomag.dmsl.network.MultiMagNet` as one: the member of branch ``i`` is the input, the
other members' feature maps are computed once (no grad) and held fixed. Only branch ``i`` runs
inside the hooked forward, so a shared backbone's layer fires its hooks once.

Maps are ReLU'd, min-max normalised to ``[0, 1]`` at the layer's resolution and bilinearly
upsampled to the member's pixel size (pytorch-grad-cam's ``scale_cam_image``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from histomag.errors import ConfigError

Which = Literal["low", "high"]
LAYERS: tuple[Which, Which] = ("low", "high")
#: panel layout (px): outer margin, width of the row-label column, column-header and title line heights
MARGIN, LABEL_W, HEADER_H, LINE_H = 6, 110, 18, 16


def _net(model: nn.Module) -> nn.Module:
    """The MultiMagNet inside a DMSLTask (or the model itself)."""
    from histomag.dmsl.network import MultiMagNet

    inner = getattr(model, "model", model)
    if not isinstance(inner, MultiMagNet):
        raise ConfigError(f"Grad-CAM needs a MultiMagNet or DMSLTask, got {type(model).__name__}")
    return inner


def _batch(members: Sequence[Tensor]) -> list[Tensor]:
    out = [m if m.ndim == 4 else m.unsqueeze(0) for m in members]
    if any(m.ndim != 4 or m.shape[0] != 1 for m in out):
        raise ConfigError(f"tuple_cams takes one tuple: (3, H, W) members, got {[tuple(m.shape) for m in members]}")
    return out


class BranchCAMModel(nn.Module):
    """A MultiMagNet as a one-input model for pytorch-grad-cam: ``x -> fused log-probabilities``.

    Args:
        model: the multi-branch network (eval mode is set by pytorch-grad-cam).
        members: the tuple's members, ``(1, 3, H_m, W_m)`` each, in input order.
        index: the branch whose member is the input; the others' feature maps are fixed.
    """

    def __init__(self, model: nn.Module, members: Sequence[Tensor], index: int) -> None:
        super().__init__()
        self.net = _net(model)
        self.index = index
        with torch.no_grad():
            self.fixed = [None if i == index else self.net.branch(i).forward_features(x).detach()
                          for i, x in enumerate(members)]

    def forward(self, x: Tensor) -> Tensor:
        feats = [self.net.branch(self.index).forward_features(x) if f is None else f.expand(x.shape[0], -1, -1, -1)
                 for f in self.fixed]
        return self.net.forward_head(feats)["log_probs"]  # type: ignore[return-value]


@torch.no_grad()
def tuple_probs(model: nn.Module, members: Sequence[Tensor]) -> np.ndarray:
    """Fused class probabilities of one tuple, ``(n_classes,)``."""
    net = _net(model).eval()
    return net(_batch(members))["probs"][0].double().cpu().numpy()


def tuple_cams(model: nn.Module, members: Sequence[Tensor], target: int | None = None,
               layers: Sequence[Which] = LAYERS) -> dict[tuple[int, str], np.ndarray]:
    """Grad-CAM maps of one tuple for every branch and layer.

    Args:
        model: a :class:`~histomag.dmsl.network.MultiMagNet` or a ``DMSLTask`` holding one
            (put in eval mode).
        members: the tuple's normalised members, ``(3, H_m, W_m)`` or ``(1, 3, H_m, W_m)`` each.
        target: class index to explain; None: the fused prediction.
        layers: ``"low"`` (first conv) and/or ``"high"`` (last feature block).

    Returns:
        ``{(branch index, "low" | "high"): (H_m, W_m) float32 map in [0, 1]}``.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _net(model).eval()
    xs = _batch(members)
    if target is None:
        target = int(np.argmax(tuple_probs(net, xs)))
    if not 0 <= target < net.n_classes:
        raise ConfigError(f"target class {target} out of range for {net.n_classes} classes")
    out: dict[tuple[int, str], np.ndarray] = {}
    with torch.enable_grad():
        for i in range(net.n_inputs):
            wrapper = BranchCAMModel(net, xs, i)
            for which in layers:
                layer = net.get_submodule(net.layer_name(i, which))
                cam = GradCAM(model=wrapper, target_layers=[layer])
                # an input that needs a gradient makes every layer's output need one, frozen or not
                x = xs[i].detach().clone().requires_grad_(True)
                try:
                    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])
                finally:
                    cam.activations_and_grads.release()
                out[(i, which)] = np.clip(np.nan_to_num(maps[0].astype(np.float32)), 0.0, 1.0)
    net.zero_grad(set_to_none=True)
    return out


# ----- drawing ----------------------------------------------------------------------------------
def to_rgb_uint8(image: np.ndarray | Tensor) -> np.ndarray:
    """``(H, W, 3)`` or ``(3, H, W)`` image, float in [0, 1] or uint8 -> ``(H, W, 3)`` uint8."""
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped ``[0, 1]`` map over an RGB image (same size); uint8 RGB."""
    import matplotlib

    rgb = to_rgb_uint8(image).astype(np.float32)
    if cam.shape != rgb.shape[:2]:
        raise ConfigError(f"map {cam.shape} and image {rgb.shape[:2]} differ in size")
    colour = matplotlib.colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1.0 - alpha) * rgb + alpha * colour, 0, 255).astype(np.uint8)


def display_sizes(shapes: Sequence[tuple[int, int]], magnifications: Sequence[float],
                  cell: int = 256) -> list[tuple[int, int]]:
    """Display ``(height, width)`` of each member so that all show tissue at one physical scale.

    A member of ``h`` px at magnification ``m`` covers ``h / m`` units of tissue; members are
    scaled by ``max(m) / m`` (a same-fov 20x patch at half the pixels of the 40x one is shown
    as large), then all by one factor so the tallest is ``cell`` px. Display only: the maps
    were computed at the members' own pixel sizes.
    """
    top = max(float(m) for m in magnifications)
    natural = [(h * top / float(m), w * top / float(m)) for (h, w), m in zip(shapes, magnifications)]
    scale = cell / max(h for h, _ in natural)
    return [(max(1, int(round(h * scale))), max(1, int(round(w * scale)))) for h, w in natural]


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))


def _font(size: int = 12):  # noqa: ANN202 - PIL font
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def panel_size(sizes: Sequence[tuple[int, int]], title: str, n_rows: int = 3) -> tuple[int, int]:
    """``(height, width)`` of a :func:`cam_panel` with these display sizes and title."""
    title_h = LINE_H * len(title.splitlines() or [""]) + MARGIN
    row_h = max(h for h, _ in sizes)
    width = LABEL_W + sum(w for _, w in sizes) + MARGIN * (len(sizes) + 1)
    height = title_h + HEADER_H + n_rows * row_h + MARGIN * (n_rows + 1)
    return height, width


def cam_panel(images: Sequence[np.ndarray | Tensor], cams: Mapping[tuple[int, str], np.ndarray],
              magnifications: Sequence[float], title: str = "", *, row_labels: Sequence[str] | None = None,
              cell: int = 256, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Compose one tuple's panel: columns = magnifications, rows = input / low CAM / high CAM.

    Args:
        images: the members as shown (RGB, ``[0, 1]`` float or uint8, HWC or CHW), input order.
        cams: :func:`tuple_cams` output (maps at each member's pixel size).
        magnifications: one per member (column titles and the physical display scale).
        title: text above the panel (``\\n`` for more lines).
        row_labels: labels of the three rows (default input / low-level / high-level).
        cell: display height (px) of the tallest member, see :func:`display_sizes`.
        alpha, cmap: overlay opacity and matplotlib colormap.

    Returns:
        ``(H, W, 3)`` uint8 RGB panel of size :func:`panel_size`.
    """
    from PIL import Image, ImageDraw

    from histomag.resolution import format_magnification

    rgbs = [to_rgb_uint8(im) for im in images]
    if len(rgbs) != len(magnifications):
        raise ConfigError(f"{len(rgbs)} images but {len(magnifications)} magnifications")
    sizes = display_sizes([im.shape[:2] for im in rgbs], magnifications, cell)
    labels = list(row_labels) if row_labels is not None else ["input", "low-level CAM", "high-level CAM"]
    height, width = panel_size(sizes, title, len(labels))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(13), _font(12)
    title_h = LINE_H * len(title.splitlines() or [""]) + MARGIN
    for k, line in enumerate(title.splitlines()):
        draw.text((MARGIN, MARGIN // 2 + k * LINE_H), line, fill=(0, 0, 0), font=font)
    row_h = max(h for h, _ in sizes)
    x0 = LABEL_W + MARGIN
    for i, (rgb, (h, w), mag) in enumerate(zip(rgbs, sizes, magnifications)):
        draw.text((x0, title_h + 2), f"{format_magnification(mag)}  ({rgb.shape[1]}x{rgb.shape[0]} px)",
                  fill=(0, 0, 0), font=small)
        tiles = [rgb] + [overlay(rgb, cams[(i, which)], alpha=alpha, cmap=cmap) if (i, which) in cams
                         else np.full_like(rgb, 255) for which in LAYERS[: len(labels) - 1]]
        for r, tile in enumerate(tiles):
            y = title_h + HEADER_H + MARGIN + r * (row_h + MARGIN)
            canvas.paste(Image.fromarray(_resize(tile, (h, w))), (x0, y))
        x0 += w + MARGIN
    for r, label in enumerate(labels):
        y = title_h + HEADER_H + MARGIN + r * (row_h + MARGIN) + row_h // 2 - LINE_H
        draw.multiline_text((MARGIN, y), label, fill=(0, 0, 0), font=small, spacing=2)
    return np.asarray(canvas)


def choose_tuples(correct: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` indices, half wrong and half correct where there are enough of each.

    A group with too few tuples is made up from the other; picks are spread evenly over each
    group (deterministic), wrong ones first.
    """
    correct = np.asarray(correct, dtype=bool)
    right, wrong = np.flatnonzero(correct), np.flatnonzero(~correct)
    n_wrong = min(len(wrong), n // 2)
    n_right = min(len(right), n - n_wrong)
    n_wrong = min(len(wrong), n - n_right)

    def spread(idx: np.ndarray, k: int) -> list[int]:
        if k <= 0:
            return []
        return [int(idx[j]) for j in np.unique(np.linspace(0, len(idx) - 1, k).round().astype(int))]

    return spread(wrong, n_wrong) + spread(right, n_right)


def run_cams(run_dir: str | Path, data_dir: str | Path | None, out_dir: str | Path, *, n: int = 16,
             class_name: str | None = None, fold: int | None = None, cell: int = 256,
             progress: bool = False) -> list[Path]:
    """Write Grad-CAM panels of ``n`` test tuples of one fold of a DMSL run.

    The tuples are a mix of correct and wrong predictions of the fold's test split (see
    :func:`choose_tuples`). Writes ``OUT/NN_<correct|wrong>_<tuple_id>.png`` and ``OUT/cams.csv``
    (tuple, label, prediction, probability, explained class, panel file).

    Args:
        run_dir: run folder made by ``histomag dmsl train``.
        data_dir: its dataset folder (default: the one recorded in ``config.json``).
        out_dir: output folder.
        n: number of tuples.
        class_name: explain this class for every tuple (default: each tuple's prediction).
        fold: fold to use (default 1).
        cell: display height of the tallest member in px.
        progress: show a progress bar.

    Returns:
        The PNG paths, in panel order.

    Raises:
        ConfigError: unknown class (the message lists the model's classes) or fold.
        CheckpointError: the run folder lacks config.json, the fold's split.json or checkpoint.
    """
    from histomag.data.atomic import atomic_write_csv, atomic_write_png
    from histomag.dmsl.explain import check_class, fold_test_data
    from histomag.progress import progress_bar
    from histomag.resolution import format_magnification
    from histomag.dmsl.cv import read_run
    from histomag.dmsl.fit import predict_probs

    if n < 1:
        raise ConfigError(f"n={n} must be >= 1")
    run = read_run(run_dir)
    target = check_class(class_name, run.class_names)
    k = fold if fold is not None else 1
    data = fold_test_data(run_dir, data_dir, k)
    ds, names = data.dataset, data.class_names
    ids = [r["tuple_id"] for r in ds.rows]
    probs = run.saved_probs(k, ids, names)
    if probs is None:
        probs = predict_probs([data.task], ds, batch_size=run.config.batch_size)
    truth = np.asarray(ds.targets)
    chosen = choose_tuples(probs.argmax(axis=1) == truth, n)
    net = data.task.model
    labels = ["input", f"low-level CAM\n{net.branch(0).low_layer}", f"high-level CAM\n{net.branch(0).high_layer}"]
    out_dir = Path(out_dir)
    paths: list[Path] = []
    index_rows = []
    with progress_bar(progress) as bar:
        task_id = bar.add_task("Grad-CAM", total=len(chosen)) if bar else None
        for j, i in enumerate(chosen):
            members, _, _ = ds[i]
            images = ds.load(i)
            p = tuple_probs(net, members)  # this checkpoint's own probabilities, for the title
            pred = int(np.argmax(p))
            explained = pred if target is None else target
            cams = tuple_cams(net, members, explained)
            ok = pred == truth[i]
            mags = "+".join(format_magnification(m) for m in ds.magnifications)
            title = (f"{ids[i]}  ({mags}, fold {k}, {data.mode})\n"
                     f"true {names[truth[i]]} | predicted {names[pred]} p={p[pred]:.2f} | "
                     f"{'correct' if ok else 'WRONG'} | CAM of {names[explained]} (p={p[explained]:.2f})")
            panel = cam_panel(images, cams, ds.magnifications, title, row_labels=labels, cell=cell)
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ids[i])
            path = out_dir / f"{j:02d}_{'correct' if ok else 'wrong'}_{safe}.png"
            atomic_write_png(path, panel, compress_level=6)
            paths.append(path)
            index_rows.append([ids[i], names[truth[i]], names[pred], f"{p[pred]:.4f}", names[explained],
                               f"{p[explained]:.4f}", int(ok), path.name])
            if bar:
                bar.advance(task_id)  # type: ignore[arg-type]
    atomic_write_csv(out_dir / "cams.csv", ["tuple_id", "label", "predicted", "prob_predicted", "explained_class",
                                            "prob_explained", "correct", "png"], index_rows)
    return paths
