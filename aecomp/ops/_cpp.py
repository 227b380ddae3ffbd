"""The ``cpu`` and ``cuda`` backends: kernels compiled into ``aecomp._C``.

Both backends call the same dispatcher ops (``torch.ops.aecomp.*``); the dispatcher picks
the CPU or CUDA kernel from the tensors' device, and the C++ autograd function serves both.
Outside ``torch.compile`` the ops are called through the pybind11 entry points, which skip
the Python-side op lookup (a few microseconds a call, which matters for small layers);
under ``torch.compile``, ``torch.export`` and ``torch.jit.trace`` they are called as
``torch.ops.aecomp.*`` so the graph holds the op itself, which ONNX export and
``torch.jit.load`` then find by name (``torch.jit.trace`` records a chain as one
``aecomp::linear_act`` per layer: its tracer cannot record the ``Tensor?[]`` biases).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _ext
from .._backend import Backend

_is_tracing = torch._C._is_tracing


def _is_compiling() -> bool:
    """torch.compile / export, or torch.jit.trace: the graph must hold torch.ops.aecomp.* itself."""
    return torch.compiler.is_compiling() or _is_tracing()


def _probe_cpu():
    mod, err = _ext.load()
    if mod is None:
        return False, err
    return True, "C++ kernels in aecomp._C"


def _probe_cuda():
    mod, err = _ext.load()
    if mod is None:
        return False, err
    info = mod.build_info()
    if not info.get("cuda"):
        return False, (
            "aecomp._C was built without CUDA kernels (the build needs nvcc and a CUDA build of torch; "
            f"this torch is {torch.__version__}, CUDA {torch.version.cuda})"
        )
    if not torch.cuda.is_available():
        return False, "CUDA kernels are built but no GPU is visible (torch.cuda.is_available() is False)"
    return True, f"CUDA kernels in aecomp._C for {info.get('cuda_archs') or 'the default arch'}"


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    if _is_compiling():
        return torch.ops.aecomp.linear_act.default(x, weight, bias, activation)
    return _ext._C.linear_act(x, weight, bias, activation)


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    if _is_compiling():
        return torch.ops.aecomp.mse_loss.default(input, target, reduction)
    return _ext._C.mse_loss(input, target, reduction)


def mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
        activations: Sequence[str]) -> torch.Tensor:
    acts = ",".join(activations)
    if _is_compiling():
        if not torch.compiler.is_compiling():  # torch.jit.trace cannot record a Tensor?[] argument
            for w, b, a in zip(weights, biases, activations):
                x = torch.ops.aecomp.linear_act.default(x, w, b, a)
            return x
        return torch.ops.aecomp.mlp.default(x, weights, biases, acts)
    return _ext._C.mlp(x, weights, biases, acts)


def mlp_mse_loss(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
                 activations: Sequence[str], target: torch.Tensor, reduction: str) -> torch.Tensor:
    acts = ",".join(activations)
    if _is_compiling():
        if not torch.compiler.is_compiling():  # torch.jit.trace (see mlp)
            return mse_loss(mlp(x, weights, biases, activations), target, reduction)
        return torch.ops.aecomp.mlp_mse_loss.default(x, weights, biases, acts, target, reduction)
    return _ext._C.mlp_mse_loss(x, weights, biases, acts, target, reduction)


_HOW = "Build the extension with `pip install --no-build-isolation -e .`."

def _fast_ops() -> dict:
    """The pybind11 functions themselves where the signature already matches."""
    mod = _ext.load()[0]
    return {} if mod is None else {"linear_act": mod.linear_act, "mse_loss": mod.mse_loss}


CPU = Backend(
    name="cpu",
    probe=_probe_cpu,
    devices=lambda: frozenset({"cpu"}),
    dtypes={"cpu": frozenset({torch.float32, torch.float64})},
    ops={"linear_act": linear_act, "mse_loss": mse_loss, "mlp": mlp, "mlp_mse_loss": mlp_mse_loss},
    how_to_get=_HOW,
    describe_mlp=lambda: "whole chain in one C++ call (any widths), fused MSE loss entry",
    fast_ops=_fast_ops(),
)

CUDA = Backend(
    name="cuda",
    probe=_probe_cuda,
    devices=lambda: frozenset({"cuda"}),
    dtypes={"cuda": frozenset({torch.float32, torch.bfloat16, torch.float16})},
    ops={"linear_act": linear_act, "mse_loss": mse_loss, "mlp": mlp, "mlp_mse_loss": mlp_mse_loss},
    describe_mlp=lambda: (
        "one fused forward kernel per chain when every inner width <= 256 and <= 16 layers (tensor cores "
        "for bf16/fp16 with widths a multiple of 8, else SIMT), else one linear_act per layer "
        "(AECOMP_CUDA_MLP=layers forces that); backward: fused MSE loss entry, then per-layer dgrad/wgrad"
    ),
    fast_ops=_fast_ops(),
    how_to_get="Build on a machine with nvcc and a CUDA build of torch: `pip install --no-build-isolation -e .`.",
)
