"""Drop-in fused modules, and ``accelerate`` to put them into an existing model.

- ``FusedLinear(in, out, bias=True, activation="none"|"relu"|"sigmoid", backend=None)``:
  an ``nn.Linear`` (same parameters, same state_dict) whose forward is one
  ``aecomp.ops.linear_act`` call.
- ``FusedMLP(dims, activations, bias=True, backend=None)``: a chain of those run by
  ``aecomp.ops.mlp``; its state_dict equals that of ``nn.Sequential(Linear, ReLU, Linear, ...)``
  (``FusedMLP.from_sequential`` / ``.to_sequential``).
- ``FusedMSELoss(reduction="mean", backend=None)``: ``nn.MSELoss`` over ``aecomp.ops.mse_loss``.
- ``accelerate(model, backend=None, inplace=False) -> (model, report)``: rewrites any module.
"""
from __future__ import annotations

from .accelerate import AccelerateReport, LeftAlone, Replaced, accelerate
from .modules import ACTIVATIONS, FusedLinear, FusedMLP, FusedMSELoss

__all__ = [
    "ACTIVATIONS",
    "AccelerateReport",
    "FusedLinear",
    "FusedMLP",
    "FusedMSELoss",
    "LeftAlone",
    "Replaced",
    "accelerate",
]
