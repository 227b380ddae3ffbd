"""Post-training int8 weight quantization, symmetric and per output channel, on plain tensors.

For a weight ``W`` of shape ``[out, in]`` (row ``r`` = output channel ``r``)::

    s_r      = max_j |W_rj| / 127                 (float32; a row of zeros gets s_r = 1)
    q_rj     = clamp(round(W_rj / s_r), -127, 127) (int8; -128 is never used, so the grid is symmetric)
    W'_rj    = q_rj * s_r                          (dequantized)

so ``|W_rj - W'_rj| <= s_r / 2`` for every weight: the error is at most half a step of its own
row's grid. Biases stay float32 (``out`` values a layer; quantizing them would save little and
they add straight into the output). Activations stay float32: this is weight-only
quantization, which is what shrinks the stored model.

The int8 model is stored as int8 (``aecomp.compress.storage``: ``q`` as int8, ``s`` as float32)
and dequantized when it is loaded, so it runs with the fused float32 ops; its accuracy is that
of the dequantized weights, which :func:`quantize_model` reproduces in memory. (No
``torch.ao.quantization``: that API is deprecated.)
"""
from __future__ import annotations

import copy
from typing import Tuple

import torch
from torch import nn

from .net import linear_layers

__all__ = ["QMAX", "dequantize_per_channel", "quantize_model", "quantize_per_channel"]

QMAX = 127


def quantize_per_channel(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [out, in], scale float32 [out])`` with ``weight ~= q * scale[:, None]``."""
    if weight.dim() != 2:
        raise ValueError(f"quantize_per_channel: weight must be 2-D [out, in], got shape {list(weight.shape)}")
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if w.shape[1] > 0 else w.new_zeros(w.shape[0])
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale.contiguous()


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W' = q * scale[:, None]`` in float32."""
    return q.float() * scale.float()[:, None]


@torch.no_grad()
def quantize_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (CompressedNet or FusedMLP) whose weights are replaced by their
    int8-dequantized values ``q * s`` -- exactly the weights the stored int8 file loads to."""
    out = copy.deepcopy(model)
    for layer in linear_layers(out):
        q, s = quantize_per_channel(layer.weight)
        layer.weight.copy_(dequantize_per_channel(q, s))
    return out.eval()
