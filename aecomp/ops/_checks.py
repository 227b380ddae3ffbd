"""Input checks for the Python-side backends (reference, triton).

They raise the same errors, with the same wording, as the C++ checks in ``csrc/ops.cpp``:
ValueError for shapes, devices and names, TypeError for dtypes; every message names the op,
the argument and the shapes.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

ACTIVATIONS = ("none", "relu", "sigmoid")
REDUCTIONS = ("mean", "sum", "none")
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(op: str, arg: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {arg} must be a torch.Tensor, got {type(t).__name__}")


def check_same_as(op: str, arg: str, t: torch.Tensor, ref_arg: str, ref: torch.Tensor) -> None:
    """``t`` has ``ref``'s dtype (else TypeError) and device (else ValueError)."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {arg} has dtype {t.dtype} but {ref_arg} has dtype {ref.dtype} "
                        f"({arg}: {shape_str(t)})")
    if t.device != ref.device:
        raise ValueError(f"{op}: {arg} is on {t.device} but {ref_arg} is on {ref.device} ({arg}: {shape_str(t)})")


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


def check_linear_act_backward(op: str, grad_y, x, weight, y, activation, dtypes: Sequence[torch.dtype] = _FLOATS) -> None:
    """linear_act_backward: x and weight as linear_act; grad_y and y the output's shape, x's dtype and device."""
    check_linear_act(op, x, weight, None, activation, dtypes)
    out_shape = (*x.shape[:-1], weight.shape[0])
    for arg, t in (("grad_y", grad_y), ("y", y)):
        check_tensor(op, arg, t)
        if tuple(t.shape) != out_shape:
            raise ValueError(
                f"{op}: {arg} must have the output's shape [{', '.join(map(str, out_shape))}], "
                f"got {shape_str(t)} (x: {shape_str(x)}, weight: {shape_str(weight)})"
            )
        check_same_as(op, arg, t, "x", x)


def check_mse_backward(op: str, grad, input, target, reduction, dtypes: Sequence[torch.dtype] = _FLOATS) -> None:
    """mse_loss_backward: input and target as mse_loss; grad one value (mean, sum) or input's shape (none)."""
    check_mse(op, input, target, reduction, dtypes)
    check_tensor(op, "grad", grad)
    want = tuple(input.shape) if reduction == "none" else ()
    if tuple(grad.shape) != want and not (reduction != "none" and grad.numel() == 1):
        raise ValueError(f"{op}: grad must have shape [{', '.join(map(str, want))}] for reduction {reduction!r}, "
                         f"got {shape_str(grad)} (input: {shape_str(input)})")
    check_same_as(op, "grad", grad, "input", input)


def chain_activations(op: str, activations, n: int) -> List[str]:
    if not isinstance(activations, str):
        raise TypeError(f"{op}: activations must be one comma-separated string, got {type(activations).__name__}")
    acts = activations.split(",")
    if len(acts) != n:
        raise ValueError(f"{op}: got {n} weights but {len(acts)} activations ({activations!r}); "
                         "give one activation per layer")
    for a in acts:
        check_activation(op, a)
    return acts


def check_chain(op: str, x, weights, biases, activations, dtypes: Sequence[torch.dtype] = _FLOATS) -> List[str]:
    """The C++ check_mlp's checks and wording (``activations`` one comma-separated string), with
    the backend's dtypes; returns the activations."""
    check_tensor(op, "x", x)
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ValueError(f"{op}: weights must be a non-empty list of [out, in] tensors")
    n = len(weights)
    if biases is None:
        biases = [None] * n
    if len(biases) != n:
        raise ValueError(f"{op}: got {n} weights but {len(biases)} biases (use None for a layer without bias)")
    acts = chain_activations(op, activations, n)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension [..., in_features], got shape {shape_str(x)}")
    check_dtype(op, "x", x, dtypes)
    width = x.shape[-1]
    for i, w in enumerate(weights):
        check_tensor(op, f"weights[{i}]", w)
        ws = shape_str(w)
        if w.dim() != 2:
            raise ValueError(f"{op}: weights[{i}] must be 2-D [out, in], got shape {ws}")
        if w.shape[1] != width:
            prev = "x.shape[-1]" if i == 0 else f"weights[{i - 1}].shape[0]"
            raise ValueError(f"{op}: weights[{i}].shape[1] = {w.shape[1]} does not match {prev} = {width} "
                             f"(weights[{i}]: {ws}, x: {shape_str(x)})")
        check_same_as(op, f"weights[{i}]", w, "x", x)
        b = biases[i]
        if b is not None:
            check_tensor(op, f"biases[{i}]", b)
            if b.dim() != 1 or b.shape[0] != w.shape[0]:
                raise ValueError(f"{op}: biases[{i}] must have shape [{w.shape[0]}] (weights[{i}].shape[0]), "
                                 f"got {shape_str(b)}")
            check_same_as(op, f"biases[{i}]", b, "x", x)
        width = w.shape[0]
    return acts


def chain_out_shape(x, weights) -> Tuple[int, ...]:
    return (*x.shape[:-1], weights[-1].shape[0])


def check_chain_target(op: str, x, weights, target, reduction) -> None:
    check_tensor(op, "target", target)
    check_reduction(op, reduction)
    want = chain_out_shape(x, weights)
    if tuple(target.shape) != want:
        raise ValueError(f"{op}: target must have the chain output's shape [{', '.join(map(str, want))}], "
                         f"got {shape_str(target)} (x: {shape_str(x)}, "
                         f"weights[-1]: {shape_str(weights[-1])})")
    if target.dtype != x.dtype:
        raise TypeError(f"{op}: target has dtype {target.dtype} but x has dtype {x.dtype} "
                        f"(target: {shape_str(target)})")
    if target.device != x.device:
        raise ValueError(f"{op}: target is on {target.device} but x is on {x.device} "
                         f"(target: {shape_str(target)})")


def check_chain_backward(op: str, x, weights, outputs, activations, need_bias,
                         dtypes: Sequence[torch.dtype] = _FLOATS) -> List[str]:
    """The chain backward ops: x and weights as the chain; one saved output per layer, [rows, d_{i+1}]
    (or x's leading dims), and one need_bias flag per layer."""
    acts = check_chain(op, x, weights, None, activations, dtypes)
    n = len(weights)
    if len(outputs) != n or len(need_bias) != n:
        raise ValueError(f"{op}: got {n} weights, {len(outputs)} saved outputs and {len(need_bias)} need_bias "
                         "flags; they must match")
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    for i, (o, w) in enumerate(zip(outputs, weights)):
        check_tensor(op, f"outputs[{i}]", o)
        want = (rows, w.shape[0])
        if tuple(o.shape) != want and tuple(o.shape) != (*x.shape[:-1], w.shape[0]):
            raise ValueError(f"{op}: outputs[{i}] must have shape [{rows}, {w.shape[0]}] (layer {i}'s output, "
                             f"batch dims flattened), got {shape_str(o)} (x: {shape_str(x)})")
        check_same_as(op, f"outputs[{i}]", o, "x", x)
    return acts


def check_chain_grad(op: str, grad, x, weights, want_shapes) -> None:
    check_tensor(op, "grad", grad)
    if tuple(grad.shape) not in want_shapes:
        alts = " or ".join("[" + ", ".join(map(str, s)) + "]" for s in want_shapes)
        raise ValueError(f"{op}: grad must have shape {alts}, got {shape_str(grad)} "
                         f"(x: {shape_str(x)}, weights[-1]: {shape_str(weights[-1])})")
    check_same_as(op, "grad", grad, "x", x)


def rows_of(x) -> int:
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    return rows


def shared_parameters(params: Sequence[Optional[torch.Tensor]]) -> Optional[Tuple[int, int]]:
    """The first pair of slots ``(i, j)`` whose tensors share memory (one parameter used by two
    layers, a weight tied between layers), else None. Compares the byte ranges of the elements
    (contiguous tensors), so disjoint views of one flat buffer do not count."""
    ranges = []
    for i, p in enumerate(params):
        if p is None or p.numel() == 0:
            continue
        base = p.untyped_storage().data_ptr()
        start = base + p.storage_offset() * p.element_size()
        end = start + p.numel() * p.element_size() if p.is_contiguous() else base + p.untyped_storage().nbytes()
        for j, (s0, e0) in ranges:
            if start < e0 and s0 < end:
                return j, i
        ranges.append((i, (start, end)))
    return None
