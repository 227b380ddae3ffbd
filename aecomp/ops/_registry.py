"""Registers every backend with aecomp._backend. Imported once, lazily, by the selector."""
from __future__ import annotations

import torch

from .. import _ext
from .._backend import Backend, register_backend
from . import _cpp, _reference

register_backend(
    Backend(
        name="reference",
        probe=lambda: (True, "plain PyTorch"),
        devices=lambda: frozenset({"cpu", "cuda", "mps", "xpu", "meta"}),
        ops={
            "linear_act": _reference.linear_act,
            "mse_loss": _reference.mse_loss,
            "mlp": _reference.mlp,
            "mlp_mse_loss": _reference.mlp_mse_loss,
        },
        describe_mlp=lambda: "one F.linear + activation per layer (plain PyTorch)",
    )
)

register_backend(_cpp.CPU)
register_backend(_cpp.CUDA)

if _ext.load()[0] is not None:
    from . import _fake

    _fake.register()

try:
    from . import _triton
except Exception as exc:  # triton missing or broken: say why in `aecomp info`
    _reason = f"{type(exc).__name__}: {exc}"
    register_backend(
        Backend(
            name="triton",
            probe=lambda: (False, f"the triton backend could not be loaded ({_reason}); `pip install triton`"),
            devices=lambda: frozenset(),
            how_to_get="Install triton (`pip install triton`, Linux only).",
        )
    )
else:
    register_backend(_triton.BACKEND)

del torch
