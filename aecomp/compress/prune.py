"""Magnitude pruning (per layer), with optional retraining under the mask.

For each weight matrix ``W`` (``n`` entries) and sparsity ``s`` the ``k = round((1 - s) n)``
entries of largest ``|W_ij|`` are kept and the rest set to zero (the mask ``M`` is 1 on the
kept entries); biases are not pruned. This is the per-layer magnitude criterion of Han et al.
(Learning both Weights and Connections, NeurIPS 2015; Deep Compression, ICLR 2016).
Retraining then runs the usual optimizer and re-applies ``W <- W * M`` after every step, so a
pruned weight stays exactly zero. Retraining trains what the model trains: parameters with
``requires_grad=False`` (a frozen CompressedNet's encoder) are pruned but never retrained, so a
frozen encoder stays the autoencoder's weights, less the pruned ones.

**Input folding** (:func:`input_basis`, ``prune_and_retrain(..., fold_inputs=True)``): before
magnitude pruning, the first layer keeps only input columns that span the training inputs.
Pivoted QR of the training inputs ``X`` (``n x d``), ``X P = Q R``, ranks the columns by how
much each adds to the span of those before it; the first ``k = #{i : |R_ii| > tol |R_00|}``
pivots form ``S``, and ``A = argmin ||X_S A - X||_F`` (least squares, ``k x d``) rebuilds every
column from them: ``x ~= A^T x_S`` for every input in the span of the training inputs (exactly,
up to float rounding, when the data lie in a ``k``-dimensional subspace). The first layer's
``W`` becomes ``W' = W A^T`` on the columns ``S`` and zero elsewhere: the same outputs on that
span, from ``k`` columns. Columns that are never nonzero in training are the simplest case
(``R_ii = 0``); data upsampled from fewer pixels (``digits28``: 8x8 images resized to 28x28,
rank 61) is the extreme one. Magnitude pruning then chooses only among the kept columns.

A mask over dense weights saves nothing: the pruned model is stored sparse (only the kept
values and their positions, see ``aecomp.compress.storage``), and its size is the size of that
file.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .net import fit_classifier, linear_layers

__all__ = ["fold_inputs", "input_basis", "magnitude_masks", "prune_", "prune_and_retrain", "sparsity"]


def _check_sparsity(s) -> float:
    if not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
        raise ValueError(f"pruning sparsity must be in [0, 1), got {s!r}")
    return float(s)


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float,
                    allowed: Optional[Dict[nn.Parameter, torch.Tensor]] = None) -> Dict[nn.Parameter, torch.Tensor]:
    """``{weight: mask}`` keeping the ``round((1 - sparsity) * numel)`` largest-magnitude
    entries of every layer's weight (float 0/1 masks of the weights' shapes); ``allowed[w]``
    (0/1) limits the choice to its entries (fewer are kept when fewer are allowed)."""
    s = _check_sparsity(sparsity)
    masks: Dict[nn.Parameter, torch.Tensor] = {}
    for layer in linear_layers(model):
        w = layer.weight
        ok = allowed.get(w) if allowed else None
        keep = int(round((1.0 - s) * w.numel()))
        score = w.detach().abs().flatten()
        if ok is not None:
            keep = min(keep, int(ok.sum()))
            score = torch.where(ok.flatten().bool(), score, torch.full_like(score, -1.0))
        mask = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        if keep > 0:
            mask[score.topk(keep, sorted=False).indices] = 1
        masks[w] = mask.view_as(w)
    return masks


@torch.no_grad()
def prune_(model: nn.Module, sparsity: float,
           allowed: Optional[Dict[nn.Parameter, torch.Tensor]] = None) -> Dict[nn.Parameter, torch.Tensor]:
    """Zero the smallest-magnitude weights of ``model`` in place; returns the masks."""
    masks = magnitude_masks(model, sparsity, allowed)
    for p, m in masks.items():
        p.mul_(m)
    return masks


@torch.no_grad()
def input_basis(x: torch.Tensor, tol: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(S, A)``: the sorted indices of the input columns that span the rows of ``x`` (``[n, d]``)
    and the fold matrix ``A`` (``[k, d]``, float64) with ``x ~= x[:, S] @ A`` (module docstring;
    pivoted QR and least squares from scipy/numpy, in float64)."""
    import numpy as np
    import scipy.linalg

    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"input_basis: x must be a non-empty [n, d] matrix, got shape {list(x.shape)}")
    xn = x.detach().double().cpu().numpy()
    r, piv = scipy.linalg.qr(xn, mode="r", pivoting=True, check_finite=True)
    diag = np.abs(np.diag(r))
    k = int((diag > tol * diag[0]).sum()) if diag.size and diag[0] > 0 else 0
    if k == 0:
        raise ValueError("input_basis: the training inputs are all zero; no column carries information")
    cols = np.sort(piv[:k])
    fold = np.linalg.lstsq(xn[:, cols], xn, rcond=None)[0]
    return torch.from_numpy(cols).long(), torch.from_numpy(fold)


@torch.no_grad()
def fold_inputs(model: nn.Module, x: torch.Tensor, tol: float = 1e-6) -> Tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` whose first layer reads only the columns :func:`input_basis` keeps
    (``W' = W A^T`` there, zeros elsewhere), and that layer's 0/1 column mask."""
    cols, fold = input_basis(x, tol)
    folded = copy.deepcopy(model)
    w = linear_layers(folded)[0].weight
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"fold_inputs: the first layer takes {w.shape[1]} inputs, x has {x.shape[1]} columns")
    new = torch.zeros_like(w)
    new[:, cols] = (w.detach().double() @ fold.T.to(w.device)).to(w.dtype)
    w.copy_(new)
    mask = torch.zeros_like(w)
    mask[:, cols] = 1
    return folded, mask


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
                      progress=None, fold: bool = False, tol: float = 1e-6) -> nn.Module:
    """A pruned copy of ``model``, retrained ``epochs`` epochs with the mask held (0: no retraining).

    ``fold``: first keep only the input columns that span ``x`` (:func:`fold_inputs`; skipped
    when ``x`` is all zero), then prune by magnitude among them. Only the parameters with ``requires_grad`` retrain (a frozen
    CompressedNet's head; every parameter of the other modes and of a plain classifier).
    ``distill``/``progress``: see ``fit_classifier``. ``model`` itself is not modified.
    """
    allowed = None
    if fold and bool((x != 0).any()):  # all-zero inputs carry nothing to fold (and nothing to learn)
        pruned, cols = fold_inputs(model, x, tol)
        allowed = {linear_layers(pruned)[0].weight: cols}
    else:
        pruned = copy.deepcopy(model)
    masks = prune_(pruned, sparsity, allowed)
    if epochs > 0:
        fit_classifier(pruned, x, y, x_val=x_val, y_val=y_val, epochs=epochs, lr=lr, batch_size=batch_size,
                       seed=seed, masks={p: m for p, m in masks.items() if p.requires_grad}, distill=distill,
                       progress=progress)
    return pruned.eval()
