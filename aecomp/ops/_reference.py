"""The reference backend: plain PyTorch, the definition of truth for every other backend."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import _checks

_ACT = {"none": lambda y: y, "relu": torch.relu, "sigmoid": torch.sigmoid}


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    _checks.check_linear_act("aecomp::linear_act", x, weight, bias, activation)
    return _ACT[activation](F.linear(x, weight, bias))


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    _checks.check_mse("aecomp::mse_loss", input, target, reduction)
    return F.mse_loss(input, target, reduction=reduction)


def mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
        activations: Sequence[str]) -> torch.Tensor:
    _checks.check_mlp("aecomp::mlp", x, weights, biases, activations)
    for w, b, a in zip(weights, biases, activations):
        x = linear_act(x, w, b, a)
    return x


def mlp_mse_loss(x, weights, biases, activations, target, reduction):
    return mse_loss(mlp(x, weights, biases, activations), target, reduction)
