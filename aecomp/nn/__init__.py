"""Drop-in fused modules, and ``accelerate`` to put them into an existing model.

- ``FusedLinear(in, out, bias=True, activation="none"|"relu"|"sigmoid", backend=None)``:
  an ``nn.Linear`` (same parameters, same state_dict) whose forward is one
  ``aecomp.ops.linear_act`` call.
- ``FusedMLP(dims, activations, bias=True, backend=None)``: a chain of those run by
  ``aecomp.ops.mlp``; its state_dict equals that of ``nn.Sequential(Linear, ReLU, Linear, ...)``
  (``FusedMLP.from_sequential`` / ``.to_sequential``).
- ``FusedMSELoss(reduction="mean", backend=None)``: ``nn.MSELoss`` over ``aecomp.ops.mse_loss``.
- ``FusedSequential``: an ``nn.Sequential`` running each run of fused layers as one chain op.
- ``accelerate(model, backend=None, inplace=False, share_parameters=True) -> model``: rewrites any
  module, sharing its parameters (like torch.compile); the report
  is ``model.aecomp_report`` (or ``accelerate_report(model)``).
"""
from __future__ import annotations

from .accelerate import AccelerateReport, LeftAlone, Replaced, accelerate, accelerate_report, accelerated_chain
from .modules import ACTIVATIONS, FusedLinear, FusedMLP, FusedMSELoss, FusedSequential

__all__ = [
    "ACTIVATIONS",
    "AccelerateReport",
    "FusedLinear",
    "FusedMLP",
    "FusedMSELoss",
    "FusedSequential",
    "LeftAlone",
    "Replaced",
    "accelerate",
    "accelerate_report",
    "accelerated_chain",
]
