"""aecomp: fused kernels for autoencoders, and compressing networks with them.

Ops: ``aecomp.ops`` (``linear_act``, ``mse_loss``, ``mlp``), each on the ``reference``,
``cpu``, ``triton`` or ``cuda`` backend. Backend selection: ``aecomp.use_backend``,
``AECOMP_BACKEND``, ``aecomp.available_backends()``. Importing aecomp registers the C++ ops
as ``torch.ops.aecomp.*`` (with their fake and ONNX translations).
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._backend import (  # noqa: E402
    BACKENDS,
    BackendUnavailableError,
    auto_backend_name,
    available_backends,
    use_backend,
)
from . import ops  # noqa: E402
from .nn import accelerate, accelerate_report  # noqa: E402

__all__ = [
    "BACKENDS",
    "accelerate",
    "accelerate_report",
    "BackendUnavailableError",
    "auto_backend_name",
    "available_backends",
    "ops",
    "use_backend",
]
