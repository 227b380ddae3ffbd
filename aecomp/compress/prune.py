"""Magnitude pruning (per layer), with optional retraining under the mask.

For each weight matrix ``W`` (``n`` entries) and sparsity ``s`` the ``k = round((1 - s) n)``
entries of largest ``|W_ij|`` are kept and the rest set to zero (the mask ``M`` is 1 on the
kept entries); biases are not pruned. This is the per-layer magnitude criterion of Han et al.
(Learning both Weights and Connections, NeurIPS 2015; Deep Compression, ICLR 2016).
Retraining then runs the usual optimizer and re-applies ``W <- W * M`` after every step, so a
pruned weight stays exactly zero. Retraining trains what the model trains: parameters with
``requires_grad=False`` (a frozen CompressedNet's encoder) are pruned but never retrained, so a
frozen encoder stays the autoencoder's weights, less the pruned ones.

A mask over dense weights saves nothing: the pruned model is stored sparse (only the kept
values and their positions, see ``aecomp.compress.storage``), and its size is the size of that
file.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
from torch import nn

from .net import fit_classifier, linear_layers

__all__ = ["magnitude_masks", "prune_", "prune_and_retrain", "sparsity"]


def _check_sparsity(s) -> float:
    if not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
        raise ValueError(f"pruning sparsity must be in [0, 1), got {s!r}")
    return float(s)


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float) -> Dict[nn.Parameter, torch.Tensor]:
    """``{weight: mask}`` keeping the ``round((1 - sparsity) * numel)`` largest-magnitude
    entries of every layer's weight (float 0/1 masks of the weights' shapes)."""
    s = _check_sparsity(sparsity)
    masks: Dict[nn.Parameter, torch.Tensor] = {}
    for layer in linear_layers(model):
        w = layer.weight
        keep = int(round((1.0 - s) * w.numel()))
        mask = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        if keep > 0:
            mask[w.detach().abs().flatten().topk(keep, sorted=False).indices] = 1
        masks[w] = mask.view_as(w)
    return masks


@torch.no_grad()
def prune_(model: nn.Module, sparsity: float) -> Dict[nn.Parameter, torch.Tensor]:
    """Zero the smallest-magnitude weights of ``model`` in place; returns the masks."""
    masks = magnitude_masks(model, sparsity)
    for p, m in masks.items():
        p.mul_(m)
    return masks


def sparsity(model: nn.Module) -> float:
    """Fraction of weight entries (not biases) that are exactly zero."""
    total = zeros = 0
    for layer in linear_layers(model):
        total += layer.weight.numel()
        zeros += int((layer.weight == 0).sum())
    return zeros / total if total else 0.0


def prune_and_retrain(model: nn.Module, sparsity: float, x: torch.Tensor, y: torch.Tensor, *,
                      x_val: Optional[torch.Tensor] = None, y_val: Optional[torch.Tensor] = None,
                      epochs: int = 5, lr: float = 1e-3, batch_size: int = 64, seed: int = 0, distill=None,
                      progress=None) -> nn.Module:
    """A pruned copy of ``model``, retrained ``epochs`` epochs with the mask held (0: no retraining).

    Only the parameters with ``requires_grad`` retrain (a frozen CompressedNet's head; every
    parameter of the other modes and of a plain classifier). ``distill``/``progress``: see
    ``fit_classifier``. ``model`` itself is not modified.
    """
    pruned = copy.deepcopy(model)
    masks = prune_(pruned, sparsity)
    if epochs > 0:
        fit_classifier(pruned, x, y, x_val=x_val, y_val=y_val, epochs=epochs, lr=lr, batch_size=batch_size,
                       seed=seed, masks={p: m for p, m in masks.items() if p.requires_grad}, distill=distill,
                       progress=progress)
    return pruned.eval()
