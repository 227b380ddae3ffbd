"""PNG figures of a training run: inputs vs reconstructions, and the loss curve.

Drawn with matplotlib's object API on the Agg renderer (``matplotlib.figure.Figure``, no
``pyplot``), so nothing needs a display and no global backend is switched. Files are written
atomically (``aecomp.train.checkpoint.atomic_write``).
"""
from __future__ import annotations

import io
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .checkpoint import atomic_write

__all__ = ["save_loss_curve", "save_reconstructions"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _write_png(fig, path: Union[str, os.PathLike]) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def _as_images(x: torch.Tensor, sample_shape: Optional[Sequence[int]]) -> Tuple[torch.Tensor, bool]:
    """``[n, H, W]`` (grey) or ``[n, H, W, 3]`` images, and whether they are real images.

    A flat sample whose width is a perfect square (784 = 28 x 28, 64 = 8 x 8) is drawn as a
    square image: that is what a flat file of pixels is, and a strip of 784 values shows only
    stripes. Other non-image samples (a vector of features) come back as ``[n, 1, F]`` strips.
    """
    x = x.detach().float().cpu()
    n = x.shape[0]
    shape = tuple(sample_shape) if sample_shape is not None else tuple(x.shape[1:])
    if math.prod(shape) != math.prod(x.shape[1:]):
        shape = tuple(x.shape[1:])
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side >= 2 and side * side == shape[0]:
            shape = (side, side)
    x = x.reshape(n, *shape)
    if x.dim() == 3:
        return x, True
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0], True
    if x.dim() == 4 and x.shape[1] == 3:
        return x.permute(0, 2, 3, 1), True
    return x.reshape(n, 1, -1), False


def save_reconstructions(inputs: torch.Tensor, reconstructions: torch.Tensor, path: Union[str, os.PathLike],
                         sample_shape: Optional[Sequence[int]] = None, n: int = 8,
                         title: Optional[str] = None) -> None:
    """A grid: the first ``n`` inputs on the top row, their reconstructions below.

    ``sample_shape`` (e.g. ``(28, 28)``) says how to draw one sample; feature vectors are drawn
    as one heat-map row per sample (inputs left, reconstructions right).
    """
    n = max(1, min(n, inputs.shape[0]))
    a, images = _as_images(inputs[:n], sample_shape)
    b, _ = _as_images(reconstructions[:n], sample_shape)
    lo = float(min(a.min(), b.min()))
    hi = float(max(a.max(), b.max()))
    if hi <= lo:
        hi = lo + 1.0
    if images:
        fig = _figure(1.2 * n, 2.8)
        for i in range(n):
            for row, (src, label) in enumerate(((a, "input"), (b, "reconstruction"))):
                ax = fig.add_subplot(2, n, row * n + i + 1)
                ax.imshow(src[i].clamp(lo, hi).numpy(), cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_ylabel(label, fontsize=8)
    else:
        fig = _figure(8, 0.4 * n + 1.2)
        for col, (src, label) in enumerate(((a, "inputs"), (b, "reconstructions"))):
            ax = fig.add_subplot(1, 2, col + 1)
            ax.imshow(src[:, 0].numpy(), aspect="auto", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("feature")
            ax.set_ylabel("sample")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _write_png(fig, path)


def save_loss_curve(history: Sequence[Dict[str, Any]], path: Union[str, os.PathLike],
                    title: Optional[str] = None) -> None:
    """Training and validation loss per epoch (log scale when all values are positive)."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    values = []
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None and math.isfinite(r[key])]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
            values += [p[1] for p in pts]
    if values and min(values) > 0:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if values:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no epochs finished", ha="center", va="center", transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _write_png(fig, path)
