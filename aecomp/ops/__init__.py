"""The fused ops, one call per fused computation, each dispatched to a backend.

============  ==============================================  =====================================
op            computes                                        backward
============  ==============================================  =====================================
linear_act    ``act(x @ weight.T + bias)``                    from the saved output ``y``:
              act in {none, relu, sigmoid};                   ``gz = g * act'(y)`` (relu: 0 at ``y <= 0``;
              ``weight`` is ``[out, in]`` like nn.Linear      sigmoid: ``y (1 - y)``), ``db = sum_rows
                                                              gz``, ``dx = gz @ W``, ``dW = gz^T x``
mse_loss      mean / sum / none of ``(input - target)^2``     ``d input = 2 (input - target) g / n``
                                                              (``n`` = numel for mean, 1 otherwise)
mlp           a chain of linear_act layers                    the chain's backward
mlp_mse_loss  ``mse_loss(mlp(x), target)``                    the fused loss entry: the output
                                                              layer's ``gz = 2 (y - t) g / n *
                                                              act'(y)`` in one pass, then the chain
============  ==============================================  =====================================

Leading batch dimensions are flattened; a zero-size batch gives an empty result;
non-contiguous inputs are fine. Backend selection: the ``backend=`` argument >
``aecomp.use_backend`` > ``AECOMP_BACKEND`` > automatic (see ``aecomp._backend``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .._backend import resolve, resolve_fast
from ._checks import ACTIVATIONS, REDUCTIONS

_is_tracing = torch._C._is_tracing


def _is_compiling() -> bool:
    return torch.compiler.is_compiling() or _is_tracing()


def _impl(op: str, arg: str, t, backend: Optional[str], missing_ok: bool = False):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"aecomp::{op}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if _is_compiling():  # the traceable path (compile, export, jit.trace): no caches, no pybind11 entries
        return resolve(op, t.device, t.dtype, backend, missing_ok)
    return resolve_fast(op, t, backend, missing_ok)

__all__ = [
    "linear_act",
    "linear_relu",
    "linear_sigmoid",
    "mse_loss",
    "mlp",
    "mlp_mse_loss",
    "mlp_fusion_info",
    "ACTIVATIONS",
    "REDUCTIONS",
]


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               activation: str = "relu", backend: Optional[str] = None) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` with ``weight`` of shape ``[out_features, in_features]``.

    ``activation`` is ``"none"``, ``"relu"`` or ``"sigmoid"``. ``x`` is ``[..., in_features]``;
    the result is ``[..., out_features]``. Differentiable in ``x``, ``weight`` and ``bias``.
    """
    if activation not in ACTIVATIONS:  # before dispatch: the pybind11 entry would say less
        raise ValueError(f"aecomp::linear_act: unknown activation {activation!r}; expected one of "
                         f"'none', 'relu', 'sigmoid'")
    return _impl("linear_act", "x", x, backend)(x, weight, bias, activation)


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                backend: Optional[str] = None) -> torch.Tensor:
    """``relu(x @ weight.T + bias)``."""
    return linear_act(x, weight, bias, "relu", backend)


def linear_sigmoid(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   backend: Optional[str] = None) -> torch.Tensor:
    """``sigmoid(x @ weight.T + bias)``."""
    return linear_act(x, weight, bias, "sigmoid", backend)


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
             backend: Optional[str] = None) -> torch.Tensor:
    """Mean (or sum, or elementwise) of ``(input - target)^2``, in one pass.

    Unlike ``F.mse_loss`` the shapes must match exactly: a silent broadcast of a
    ``[B, 1]`` target against a ``[B, D]`` input is a classic wrong answer.
    """
    if reduction not in REDUCTIONS:  # before dispatch: the pybind11 entry would say less
        raise ValueError(f"aecomp::mse_loss: unknown reduction {reduction!r}; expected one of 'mean', 'sum', 'none'")
    return _impl("mse_loss", "input", input, backend)(input, target, reduction)


def mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
        activations: Sequence[str] = (), backend: Optional[str] = None) -> torch.Tensor:
    """A chain of ``linear_act`` layers: ``x -> act_i(x @ W_i.T + b_i)`` for each layer ``i``.

    ``weights[i]`` is ``[d_{i+1}, d_i]``; ``biases`` is a list with ``None`` for a layer
    without bias (or ``None`` for no biases at all); ``activations`` has one name per layer.
    """
    impl = _impl("mlp", "x", x, backend)
    weights, biases, activations = _chain_args(weights, biases, activations)
    return impl(x, weights, biases, activations)


def mlp_mse_loss(x: torch.Tensor, weights: Sequence[torch.Tensor],
                 biases: Optional[Sequence[Optional[torch.Tensor]]] = None, activations: Sequence[str] = (),
                 target: Optional[torch.Tensor] = None, reduction: str = "mean",
                 backend: Optional[str] = None) -> torch.Tensor:
    """``mse_loss(mlp(x, weights, biases, activations), target)`` with the fused loss entry.

    ``target=None`` means ``x`` itself (an autoencoder's reconstruction loss). The backward
    starts from the output layer's ``gz = 2 (y - t) g / n * act'(y)``, formed in one pass:
    the loss gradient and the output activation's gradient are never written out apart.
    """
    impl = _impl("mlp_mse_loss", "x", x, backend, missing_ok=True)
    weights, biases, activations = _chain_args(weights, biases, activations)
    target = x if target is None else target
    if impl is None:  # the backend has no fused loss entry: compose it
        return mse_loss(mlp(x, weights, biases, activations, backend), target, reduction, backend)
    return impl(x, weights, biases, activations, target, reduction)


def _chain_args(weights, biases, activations):
    if isinstance(weights, torch.Tensor) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"aecomp::mlp: weights must be a list of tensors, got {type(weights).__name__}")
    weights = list(weights)
    biases = [None] * len(weights) if biases is None else list(biases)
    if isinstance(activations, str):
        activations = [activations] * len(weights)
    activations = list(activations)
    for a in activations:
        if a not in ACTIVATIONS:
            raise ValueError(f"aecomp::mlp: unknown activation {a!r}; expected one of 'none', 'relu', 'sigmoid'")
    return weights, biases, activations


from . import _registry  # noqa: E402,F401  (registers the backends and torch.ops.aecomp.* now)


def mlp_fusion_info() -> dict:
    """How each available backend runs a chain (for ``aecomp info``)."""
    from .._backend import available_backends, get_backend

    out = {}
    for name, (ok, _) in available_backends().items():
        if not ok:
            continue
        describe = getattr(get_backend(name), "describe_mlp", None)
        out[name] = describe() if describe else "one linear_act per layer"
    return out


# ---------------------------------------------------------------------- packed-weight inference
# aecomp.ops.packed_mlp(x, chain): a chain whose weights stay packed (int8 + per-channel scales,
# or b-bit codes + codebook), unpacked in registers inside the GEMM; inference only. Built by
# aecomp.compress.packed from a model file; the layouts and the math: aecomp/ops/_packed.py and
# csrc/cpu/packed_mlp.cpp.
from ._packed import PackedChain, PackedLayer, codebook_layer, int8_layer, packed_mlp  # noqa: E402

__all__ += ["PackedChain", "PackedLayer", "codebook_layer", "int8_layer", "packed_mlp"]
