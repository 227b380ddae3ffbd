"""Training autoencoders: :class:`Trainer` (fit / evaluate / predict), checkpoints, multi-process.

- ``aecomp.train.trainer``: :class:`Trainer`, :class:`PlainStep`, :class:`NonFiniteLossError`;
- ``aecomp.train.checkpoint``: safetensors + JSON checkpoints, written atomically, manifest last;
- ``aecomp.train.distributed``: torchrun / DistributedDataParallel helpers;
- ``aecomp.train.plots``: reconstruction grid and loss curve (PNG, matplotlib Agg);
- ``aecomp.train.cli``: the ``aecomp train`` subcommand.

A fused training step can be plugged in as ``aecomp.train.FusedStep(model, optimizer)`` with
``step(batch) -> loss`` (and optionally a classmethod ``supports(model) -> bool``): a module
``aecomp/train/fused.py`` that defines ``FusedStep`` is picked up here on first access, and the
Trainer uses it when it supports the model (else the plain forward/backward/Adam step).
"""
from __future__ import annotations

from .checkpoint import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint, load_model, save_checkpoint
from .trainer import FitResult, NonFiniteLossError, PlainStep, Trainer

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FitResult",
    "NonFiniteLossError",
    "PlainStep",
    "Trainer",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]


def __getattr__(name: str):
    if name == "FusedStep":  # provided by aecomp/train/fused.py once it exists
        try:
            from .fused import FusedStep
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.fused":
                raise AttributeError(f"module {__name__!r} has no attribute 'FusedStep' (no {__name__}.fused)") from None
            raise
        return FusedStep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
