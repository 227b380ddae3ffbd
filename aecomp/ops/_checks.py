"""Input checks for the Python-side backends (reference, triton).

They raise the same errors, with the same wording, as the C++ checks in ``csrc/ops.cpp``:
ValueError for shapes, devices and names, TypeError for dtypes; every message names the op,
the argument and the shapes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

ACTIVATIONS = ("none", "relu", "sigmoid")
REDUCTIONS = ("mean", "sum", "none")
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(op: str, arg: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {arg} must be a torch.Tensor, got {type(t).__name__}")


def check_activation(op: str, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {activation!r}; expected one of 'none', 'relu', 'sigmoid'")


def check_reduction(op: str, reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: unknown reduction {reduction!r}; expected one of 'mean', 'sum', 'none'")


def check_dtype(op: str, arg: str, t: torch.Tensor, dtypes: Sequence[torch.dtype] = _FLOATS) -> None:
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: {arg} has dtype {t.dtype} (shape {shape_str(t)}) but this backend takes {names}")


def check_linear_act(op: str, x, weight, bias: Optional[torch.Tensor], activation,
                     dtypes: Sequence[torch.dtype] = _FLOATS) -> None:
    check_tensor(op, "x", x)
    check_tensor(op, "weight", weight)
    if bias is not None:
        check_tensor(op, "bias", bias)
    check_activation(op, activation)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension [..., in_features], got shape {shape_str(x)}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D [out_features, in_features], got shape {shape_str(weight)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{op}: x.shape[-1] = {x.shape[-1]} does not match weight.shape[1] = {weight.shape[1]} "
            f"(x: {shape_str(x)}, weight: {shape_str(weight)})"
        )
    check_dtype(op, "x", x, dtypes)
    if weight.dtype != x.dtype:
        raise TypeError(
            f"{op}: weight has dtype {weight.dtype} but x has dtype {x.dtype} "
            f"(x: {shape_str(x)}, weight: {shape_str(weight)})"
        )
    if weight.device != x.device:
        raise ValueError(
            f"{op}: weight is on {weight.device} but x is on {x.device} (x: {shape_str(x)}, weight: {shape_str(weight)})"
        )
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"{op}: bias must have shape [{weight.shape[0]}] (weight.shape[0]), got {shape_str(bias)} "
                f"(weight: {shape_str(weight)})"
            )
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias has dtype {bias.dtype} but x has dtype {x.dtype} (bias: {shape_str(bias)})")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device} (bias: {shape_str(bias)})")


def check_mse(op: str, input, target, reduction, dtypes: Sequence[torch.dtype] = _FLOATS) -> None:
    check_tensor(op, "input", input)
    check_tensor(op, "target", target)
    check_reduction(op, reduction)
    if input.shape != target.shape:
        raise ValueError(
            f"{op}: input and target must have the same shape, got input {shape_str(input)} and target {shape_str(target)}"
        )
    check_dtype(op, "input", input, dtypes)
    if target.dtype != input.dtype:
        raise TypeError(
            f"{op}: target has dtype {target.dtype} but input has dtype {input.dtype} (shape {shape_str(input)})"
        )
    if target.device != input.device:
        raise ValueError(f"{op}: target is on {target.device} but input is on {input.device} (shape {shape_str(input)})")


def check_mlp(op: str, x, weights, biases, activations) -> None:
    """Checks the chain as a whole; each layer is then checked like linear_act."""
    check_tensor(op, "x", x)
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ValueError(f"{op}: weights must be a non-empty list of [out, in] tensors")
    n = len(weights)
    if biases is not None and len(biases) != n:
        raise ValueError(f"{op}: got {n} weights but {len(biases)} biases (use None for a layer without bias)")
    if isinstance(activations, str) or len(activations) != n:
        raise ValueError(
            f"{op}: activations must be a list with one entry per layer ({n}), got {activations!r}"
        )
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension [..., in_features], got shape {shape_str(x)}")
    width = x.shape[-1]
    for i, w in enumerate(weights):
        check_tensor(op, f"weights[{i}]", w)
        if w.dim() != 2:
            raise ValueError(f"{op}: weights[{i}] must be 2-D [out, in], got shape {shape_str(w)}")
        if width is not None and w.shape[1] != width:
            prev = "x.shape[-1]" if i == 0 else f"weights[{i - 1}].shape[0]"
            raise ValueError(
                f"{op}: weights[{i}].shape[1] = {w.shape[1]} does not match {prev} = {width} "
                f"(weights[{i}]: {shape_str(w)}, x: {shape_str(x)})"
            )
        width = w.shape[0]
        check_activation(f"{op} (layer {i})", activations[i])
