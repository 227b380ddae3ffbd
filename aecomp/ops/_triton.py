"""The ``triton`` backend: the kernels of ``aecomp.kernels`` as registered torch ops.

Ops (namespace ``aecomp_triton``, separate from the C++ ``aecomp`` ops; same schemas)::

    aecomp_triton::linear_act(x, weight, bias?, activation) -> y
    aecomp_triton::linear_act_backward(grad_y, x, weight, y, activation,
                                       need_x, need_weight, need_bias) -> (dx, dW, db)
    aecomp_triton::mse_loss(input, target, reduction) -> out
    aecomp_triton::mse_loss_backward(grad, input, target, reduction,
                                     need_input, need_target) -> (d input, d target)

    aecomp_triton::mlp_forward(x, weights[], biases[], has_bias[], activations) -> [y_0 .. y_{L-1}]
    aecomp_triton::mlp_backward(grad, x, weights[], outputs[], activations, need_x,
                                need_bias[]) -> [dx, dW_0 .. dW_{L-1}, db_0 .. db_{L-1}]
    aecomp_triton::mlp_mse_forward(x, weights[], biases[], has_bias[], activations, target,
                                   reduction) -> [loss, y_0 .. y_{L-1}]
    aecomp_triton::mlp_mse_backward(grad, x, weights[], outputs[], activations, target, reduction,
                                    need_x, need_bias[]) -> [dx, dW_0 .., db_0 ..]
    aecomp_triton::mlp(x, weights[], biases?[], activations) -> y
    aecomp_triton::mlp_mse_loss(x, weights[], biases?[], activations, target, reduction) -> loss

The chain ops take the activations as ONE comma-separated string ("relu,relu,none"), like
the C++ ``aecomp::mlp*`` ops, whose schemas ``mlp``, ``mlp_forward``, ``mlp_backward``,
``mlp_mse_loss`` and ``mlp_mse_backward`` share. ``mlp_forward`` returns every layer's output
(``[M, D_{i+1}]``, batch dims flattened: what the backward needs) and ``mlp_mse_forward`` the
loss first; ``mlp`` and ``mlp_mse_loss`` are CompositeImplicitAutograd ops over them (the
last output viewed to ``[..., D_L]``; the loss), so they need no autograd or fake of their
own and torch.compile sees through them to the kernels.

Biases: the two forward ops take the *defined* biases as a ``Tensor[]`` plus a per-layer
``has_bias`` mask (the packing the C++ autograd function does too), not ``Tensor?[]``:
``torch.library``'s autograd treats a tensor list that holds a ``None`` as one opaque
argument, so a chain with some bias-free layers would silently get no bias gradients.

A gradient that is not needed comes back as an empty tensor of shape ``[0]``. Autograd is
registered with ``torch.library.register_autograd``: linear_act saves ``x``, ``weight`` and
its output ``y`` (the backward uses ``act'(y)``); mse_loss saves ``input`` and ``target``;
mlp_forward saves ``x``, the weights and every layer output (the intermediates are marked
non-differentiable: only the last output carries a gradient), mlp_mse_forward the same plus
``target``; the loss gradient enters the chain backward in one kernel (the fused entry).

Registration depends on how this process runs Triton (decided when triton is imported):

* compiled kernels (a GPU): ``torch.library.triton_op`` with every launch wrapped in
  ``wrap_triton``, so ``torch.compile`` traces into the op and sees the kernels themselves
  (no graph break; the op body doubles as its fake implementation).
* ``TRITON_INTERPRET=1`` (CPU tensors, tests): ``torch.library.custom_op`` plus
  ``register_fake``. ``wrap_triton`` hands interpreted kernels back unwrapped, and a
  ``triton_op`` body is also its fake implementation, so under FakeTensorMode (opcheck,
  torch.compile) it would launch the interpreter on fake tensors; an opaque custom op with
  an explicit shape function compiles and passes ``opcheck`` instead.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import triton

from aecomp.kernels.linear_act import INTERPRETED
from aecomp.kernels.linear_act import linear_act_backward as _linear_act_backward_launch
from aecomp.kernels.linear_act import linear_act_forward as _linear_act_forward_launch
from aecomp.kernels import mlp as _mlp_kernels
from aecomp.kernels.mse import mse_backward as _mse_backward_launch
from aecomp.kernels.mse import mse_forward as _mse_forward_launch

from .._backend import Backend
from . import _checks

NAMESPACE = "aecomp_triton"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _unwrapped(kernel):
    return kernel


if INTERPRETED:
    _wrap = _unwrapped
else:
    from torch.library import wrap_triton as _wrap


def _check_device(op: str, arg: str, t: torch.Tensor) -> None:
    if not INTERPRETED and t.device.type != "cuda":
        raise ValueError(
            f"{op}: {arg} is on {t.device} (shape {_checks.shape_str(t)}) but the triton backend runs on CUDA "
            "tensors; start Python with TRITON_INTERPRET=1 to run its kernels on CPU tensors (slow, for testing)"
        )


# ----------------------------------------------------------------------------------------
# op bodies (compiled: also the fake implementations)
# ----------------------------------------------------------------------------------------
def _linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    op = f"{NAMESPACE}::linear_act"
    _checks.check_linear_act(op, x, weight, bias, activation, DTYPES)
    _check_device(op, "x", x)
    return _linear_act_forward_launch(x, weight, bias, activation, wrap_triton=_wrap)


def _check_backward(op: str, grad_y, x, weight, y, activation) -> None:
    _checks.check_linear_act_backward(op, grad_y, x, weight, y, activation, DTYPES)
    _check_device(op, "x", x)


def _linear_act_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
                         activation: str, need_x: bool, need_weight: bool,
                         need_bias: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_backward(f"{NAMESPACE}::linear_act_backward", grad_y, x, weight, y, activation)
    return _linear_act_backward_launch(grad_y, x, weight, y, activation, need_x, need_weight, need_bias,
                                       wrap_triton=_wrap)


def _mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    op = f"{NAMESPACE}::mse_loss"
    _checks.check_mse(op, input, target, reduction, DTYPES)
    _check_device(op, "input", input)
    return _mse_forward_launch(input, target, reduction, wrap_triton=_wrap)


def _check_mse_backward(op: str, grad, input, target, reduction) -> None:
    _checks.check_mse_backward(op, grad, input, target, reduction, DTYPES)
    _check_device(op, "input", input)


def _mse_loss_backward(grad: torch.Tensor, input: torch.Tensor, target: torch.Tensor, reduction: str,
                       need_input: bool, need_target: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_mse_backward(f"{NAMESPACE}::mse_loss_backward", grad, input, target, reduction)
    return _mse_backward_launch(grad, input, target, reduction, need_input, need_target, wrap_triton=_wrap)


# ----------------------------------------------------------------------------------------
# chain op bodies
# ----------------------------------------------------------------------------------------
def _check_chain(op: str, x, weights, biases, activations) -> List[str]:
    """The C++ check_mlp's checks and wording, plus the backend's dtypes and device."""
    acts = _checks.check_chain(op, x, weights, biases, activations, DTYPES)
    _check_device(op, "x", x)
    return acts


def _check_chain_backward(op: str, x, weights, outputs, activations, need_bias) -> List[str]:
    acts = _checks.check_chain_backward(op, x, weights, outputs, activations, need_bias, DTYPES)
    _check_device(op, "x", x)
    return acts


_acts = _checks.chain_activations
_chain_out_shape = _checks.chain_out_shape
_check_target = _checks.check_chain_target
_check_grad = _checks.check_chain_grad
_rows_of = _checks.rows_of


def _unpack_biases(op: str, biases, has_bias, n: int) -> List[Optional[torch.Tensor]]:
    """Layer-ordered biases (None where a layer has none) from the defined ones and the mask."""
    if len(has_bias) != n or sum(1 for h in has_bias if h) != len(biases):
        raise ValueError(f"{op}: has_bias {list(has_bias)} must have one flag per layer ({n}) and as many set "
                         f"flags as defined biases ({len(biases)})")
    it = iter(biases)
    return [next(it) if h else None for h in has_bias]


def _pack_biases(biases) -> Tuple[List[torch.Tensor], List[int]]:
    return [b for b in biases if b is not None], [int(b is not None) for b in biases]


def _mlp_forward(x: torch.Tensor, weights: List[torch.Tensor], biases: List[torch.Tensor], has_bias: List[int],
                 activations: str) -> List[torch.Tensor]:
    op = f"{NAMESPACE}::mlp"
    biases = _unpack_biases(op, biases, has_bias, len(weights))
    acts = _check_chain(op, x, weights, biases, activations)
    outputs, _ = _mlp_kernels.chain_forward(x, weights, biases, acts, wrap_triton=_wrap)
    return outputs


def _mlp_backward(grad: torch.Tensor, x: torch.Tensor, weights: List[torch.Tensor], outputs: List[torch.Tensor],
                  activations: str, need_x: bool, need_bias: List[int]) -> List[torch.Tensor]:
    op = f"{NAMESPACE}::mlp_backward"
    acts = _check_chain_backward(op, x, weights, outputs, activations, need_bias)
    n = weights[-1].shape[0]
    _check_grad(op, grad, x, weights, [(_rows_of(x), n), _chain_out_shape(x, weights)])
    dx, dws, dbs = _mlp_kernels.chain_backward(grad, x, weights, outputs, acts, need_x, [bool(b) for b in need_bias],
                                               wrap_triton=_wrap)
    return [dx, *dws, *dbs]


def _mlp_mse_forward(x: torch.Tensor, weights: List[torch.Tensor], biases: List[torch.Tensor], has_bias: List[int],
                     activations: str, target: torch.Tensor, reduction: str) -> List[torch.Tensor]:
    op = f"{NAMESPACE}::mlp_mse_loss"
    biases = _unpack_biases(op, biases, has_bias, len(weights))
    acts = _check_chain(op, x, weights, biases, activations)
    _check_target(op, x, weights, target, reduction)
    outputs, loss = _mlp_kernels.chain_forward(x, weights, biases, acts, target, reduction, wrap_triton=_wrap)
    return [loss, *outputs]


def _mlp_mse_backward(grad: torch.Tensor, x: torch.Tensor, weights: List[torch.Tensor], outputs: List[torch.Tensor],
                      activations: str, target: torch.Tensor, reduction: str, need_x: bool,
                      need_bias: List[int]) -> List[torch.Tensor]:
    op = f"{NAMESPACE}::mlp_mse_backward"
    acts = _check_chain_backward(op, x, weights, outputs, activations, need_bias)
    _check_target(op, x, weights, target, reduction)
    _check_grad(op, grad, x, weights, [tuple(target.shape) if reduction == "none" else ()])
    dx, dws, dbs = _mlp_kernels.chain_backward(grad, x, weights, outputs, acts, need_x, [bool(b) for b in need_bias],
                                               target, reduction, wrap_triton=_wrap)
    return [dx, *dws, *dbs]


# ----------------------------------------------------------------------------------------
# shape functions (interpreted mode's fakes)
# ----------------------------------------------------------------------------------------
def _linear_act_fake(x, weight, bias, activation):
    _checks.check_linear_act(f"{NAMESPACE}::linear_act", x, weight, bias, activation, DTYPES)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _linear_act_backward_fake(grad_y, x, weight, y, activation, need_x, need_weight, need_bias):
    _check_backward(f"{NAMESPACE}::linear_act_backward", grad_y, x, weight, y, activation)
    return (x.new_empty(x.shape) if need_x else x.new_empty((0,)),
            weight.new_empty(weight.shape) if need_weight else weight.new_empty((0,)),
            weight.new_empty((weight.shape[0],)) if need_bias else weight.new_empty((0,)))


def _mse_loss_fake(input, target, reduction):
    _checks.check_mse(f"{NAMESPACE}::mse_loss", input, target, reduction, DTYPES)
    return input.new_empty(input.shape if reduction == "none" else ())


def _mse_loss_backward_fake(grad, input, target, reduction, need_input, need_target):
    _check_mse_backward(f"{NAMESPACE}::mse_loss_backward", grad, input, target, reduction)
    return (input.new_empty(input.shape) if need_input else input.new_empty((0,)),
            target.new_empty(target.shape) if need_target else target.new_empty((0,)))


def _mlp_forward_fake(x, weights, biases, has_bias, activations):
    op = f"{NAMESPACE}::mlp"
    _check_chain(op, x, weights, _unpack_biases(op, biases, has_bias, len(weights)), activations)
    rows = _rows_of(x)
    return [x.new_empty((rows, w.shape[0])) for w in weights]


def _chain_grads_fake(x, weights, need_x, need_bias):
    gx = x.new_empty(x.shape) if need_x else x.new_empty((0,))
    gw = [w.new_empty(w.shape) for w in weights]
    gb = [w.new_empty((w.shape[0],)) if nb else w.new_empty((0,)) for w, nb in zip(weights, need_bias)]
    return [gx, *gw, *gb]


def _mlp_backward_fake(grad, x, weights, outputs, activations, need_x, need_bias):
    op = f"{NAMESPACE}::mlp_backward"
    _check_chain_backward(op, x, weights, outputs, activations, need_bias)
    _check_grad(op, grad, x, weights, [(_rows_of(x), weights[-1].shape[0]), _chain_out_shape(x, weights)])
    return _chain_grads_fake(x, weights, need_x, need_bias)


def _mlp_mse_forward_fake(x, weights, biases, has_bias, activations, target, reduction):
    op = f"{NAMESPACE}::mlp_mse_loss"
    _check_chain(op, x, weights, _unpack_biases(op, biases, has_bias, len(weights)), activations)
    _check_target(op, x, weights, target, reduction)
    loss = x.new_empty(target.shape if reduction == "none" else ())
    rows = _rows_of(x)
    return [loss, *[x.new_empty((rows, w.shape[0])) for w in weights]]


def _mlp_mse_backward_fake(grad, x, weights, outputs, activations, target, reduction, need_x, need_bias):
    op = f"{NAMESPACE}::mlp_mse_backward"
    _check_chain_backward(op, x, weights, outputs, activations, need_bias)
    _check_target(op, x, weights, target, reduction)
    _check_grad(op, grad, x, weights, [tuple(target.shape) if reduction == "none" else ()])
    return _chain_grads_fake(x, weights, need_x, need_bias)


def _define(name: str, body, fake, schema: Optional[str] = None):
    qualname = f"{NAMESPACE}::{name}"
    if INTERPRETED:
        op = torch.library.custom_op(qualname, body, mutates_args=(), schema=schema)
        op.register_fake(fake)
    else:
        op = torch.library.triton_op(qualname, body, mutates_args=(), schema=schema)
    return op


linear_act_op = _define("linear_act", _linear_act, _linear_act_fake)
linear_act_backward_op = _define("linear_act_backward", _linear_act_backward, _linear_act_backward_fake)
mse_loss_op = _define("mse_loss", _mse_loss, _mse_loss_fake)
mse_loss_backward_op = _define("mse_loss_backward", _mse_loss_backward, _mse_loss_backward_fake)
mlp_forward_op = _define(
    "mlp_forward", _mlp_forward, _mlp_forward_fake,
    "(Tensor x, Tensor[] weights, Tensor[] biases, int[] has_bias, str activations) -> Tensor[]")
mlp_backward_op = _define(
    "mlp_backward", _mlp_backward, _mlp_backward_fake,
    "(Tensor grad, Tensor x, Tensor[] weights, Tensor[] outputs, str activations, bool need_x, "
    "int[] need_bias) -> Tensor[]")
mlp_mse_forward_op = _define(
    "mlp_mse_forward", _mlp_mse_forward, _mlp_mse_forward_fake,
    "(Tensor x, Tensor[] weights, Tensor[] biases, int[] has_bias, str activations, Tensor target, "
    "str reduction) -> Tensor[]")
mlp_mse_backward_op = _define(
    "mlp_mse_backward", _mlp_mse_backward, _mlp_mse_backward_fake,
    "(Tensor grad, Tensor x, Tensor[] weights, Tensor[] outputs, str activations, Tensor target, "
    "str reduction, bool need_x, int[] need_bias) -> Tensor[]")

# The user-facing chain ops: CompositeImplicitAutograd over the ops above (autograd, fake and
# torch.compile all go through the decomposition).
_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
_LIB.define("mlp(Tensor x, Tensor[] weights, Tensor?[] biases, str activations) -> Tensor")
_LIB.define("mlp_mse_loss(Tensor x, Tensor[] weights, Tensor?[] biases, str activations, Tensor target, "
            "str reduction) -> Tensor")


def _mlp_composite(x, weights, biases, activations):
    defined, has = _pack_biases(biases)
    return mlp_forward_op(x, weights, defined, has, activations)[-1].view(_chain_out_shape(x, weights))


def _mlp_mse_loss_composite(x, weights, biases, activations, target, reduction):
    defined, has = _pack_biases(biases)
    return mlp_mse_forward_op(x, weights, defined, has, activations, target, reduction)[0]


_LIB.impl("mlp", _mlp_composite, "CompositeImplicitAutograd")
_LIB.impl("mlp_mse_loss", _mlp_mse_loss_composite, "CompositeImplicitAutograd")


# ----------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------
# Second order. The backward kernels' results carry no graph, so when a backward runs with
# create_graph=True (grad mode on inside it) each backward below is computed with
# differentiable torch ops instead (the same math as the C++ ops' "second order" path in
# csrc/ops.cpp): linear_act and mse_loss by their formulas on the saved tensors (the saved
# output y keeps its graph, so act'(y) is differentiated too); chains by recomputing the
# forward from the saved inputs and differentiating that with create_graph, each input slot
# aliased first so a tensor passed in two slots (target = x) gets each slot's own gradient.
def _linear_act_grad_with_graph(ctx, grad_y, x, weight, y, need_x, need_weight, need_bias):
    if ctx.activation == "relu":
        gz = torch.ops.aten.threshold_backward(grad_y, y, 0)
    elif ctx.activation == "sigmoid":
        gz = torch.ops.aten.sigmoid_backward(grad_y, y)
    else:
        gz = grad_y
    gz2 = gz.reshape(-1, weight.shape[0])
    return (gz.matmul(weight) if need_x else None,
            gz2.t().mm(x.reshape(-1, weight.shape[1])) if need_weight else None,
            gz2.sum(0) if need_bias else None, None)


def _mse_grad_input_with_graph(grad, input, target, reduction):
    d = (input - target) * grad * 2
    return d / input.numel() if reduction == "mean" else d


def _grad_with_graph(out, grad, slots, need):
    """d <out, grad> / d slot for each needed slot, with a graph; None elsewhere."""
    want = [s for s, n in zip(slots, need) if n]
    got = iter(torch.autograd.grad(out, want, grad, retain_graph=True, create_graph=True, allow_unused=True)
               if want else ())
    return [next(got) if n else None for n in need]


def _chain_with_graph(slots, layers: int, has_bias, activations: str):
    h, j = slots[0], 0
    for i, act in enumerate(activations.split(",")):
        b = None
        if has_bias[i]:
            b = slots[1 + layers + j]
            j += 1
        h = torch.nn.functional.linear(h, slots[1 + i], b)
        h = torch.relu(h) if act == "relu" else torch.sigmoid(h) if act == "sigmoid" else h
    return h


def _chain_slots_with_graph(ctx, x, weights, biases, extra=()):
    slots = [x, *weights, *biases, *extra]
    need = [bool(ctx.needs_input_grad[0]), *(bool(n) for n in ctx.needs_input_grad[1]),
            *(bool(n) for n in ctx.needs_input_grad[2])]
    need += [bool(ctx.needs_input_grad[5])] if extra else []
    return [s.view_as(s) if n else s for s, n in zip(slots, need)], need


def _linear_act_setup_context(ctx, inputs, output):
    x, weight, bias, activation = inputs
    ctx.save_for_backward(x, weight, output)
    ctx.activation = activation
    ctx.has_bias = bias is not None


def _linear_act_grad(ctx, grad_y):
    x, weight, y = ctx.saved_tensors
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_bias = bool(need_bias and ctx.has_bias)
    if torch.is_grad_enabled():  # create_graph: differentiable ops (see "second order")
        return _linear_act_grad_with_graph(ctx, grad_y, x, weight, y, need_x, need_weight, need_bias)
    dx, dw, db = linear_act_backward_op(grad_y, x, weight, y, ctx.activation, bool(need_x), bool(need_weight),
                                        need_bias)
    return (dx if need_x else None, dw if need_weight else None, db if need_bias else None, None)


def _mse_setup_context(ctx, inputs, output):
    input, target, reduction = inputs
    ctx.save_for_backward(input, target)
    ctx.reduction = reduction


def _mse_grad(ctx, grad):
    input, target = ctx.saved_tensors
    need_input, need_target = (bool(n) for n in ctx.needs_input_grad[:2])
    if torch.is_grad_enabled():  # create_graph: differentiable ops (see "second order")
        d = _mse_grad_input_with_graph(grad, input, target, ctx.reduction)
        return (d if need_input else None, -d if need_target else None, None)
    gi, gt = mse_loss_backward_op(grad, input, target, ctx.reduction, need_input, need_target)
    return (gi if need_input else None, gt if need_target else None, None)


def _chain_setup(ctx, x, weights, has_bias, activations, outputs, non_differentiable, extra=(), biases=()):
    # the biases come last: only the second-order path reads them
    ctx.save_for_backward(x, *extra, *weights, *outputs, *biases)
    ctx.layers = len(weights)
    ctx.activations = activations
    ctx.has_bias = [bool(h) for h in has_bias]
    # only the chain's output (mlp_forward) or the loss (mlp_mse_forward) carries a gradient;
    # one call: mark_non_differentiable replaces what an earlier call marked
    ctx.mark_non_differentiable(*non_differentiable)
    ctx.set_materialize_grads(False)


def _need_bias(ctx) -> List[int]:
    """Per layer: whether its bias needs a gradient (needs_input_grad[2] covers the defined ones)."""
    needs = iter(ctx.needs_input_grad[2])
    return [int(bool(next(needs))) if has else 0 for has in ctx.has_bias]


def _chain_grads(ctx, g: List[torch.Tensor], need_bias: List[int]):
    L = ctx.layers
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx = g[0] if need_x else None
    gw = [g[1 + i] if need_w[i] else None for i in range(L)]
    gb = [g[1 + L + i] if need_bias[i] else None for i in range(L) if ctx.has_bias[i]]
    return gx, gw, gb


def _no_grads(ctx):
    return None, [None] * ctx.layers, [None] * sum(ctx.has_bias)


def _mlp_forward_setup_context(ctx, inputs, output):
    x, weights, biases, has_bias, activations = inputs
    _chain_setup(ctx, x, weights, has_bias, activations, output, output[:-1], biases=biases)


def _mlp_forward_grad(ctx, grads):
    grad = grads[-1]
    if grad is None:
        return (*_no_grads(ctx), None, None)
    L = ctx.layers
    saved = ctx.saved_tensors
    x, weights, outputs, biases = saved[0], list(saved[1:1 + L]), list(saved[1 + L:1 + 2 * L]), saved[1 + 2 * L:]
    if torch.is_grad_enabled():  # create_graph (see "second order")
        slots, need = _chain_slots_with_graph(ctx, x, weights, biases)
        g = _grad_with_graph(_chain_with_graph(slots, L, ctx.has_bias, ctx.activations), grad, slots, need)
        return g[0], g[1:1 + L], g[1 + L:], None, None
    need_bias = _need_bias(ctx)
    g = mlp_backward_op(grad, x, weights, outputs, ctx.activations, bool(ctx.needs_input_grad[0]), need_bias)
    return (*_chain_grads(ctx, g, need_bias), None, None)


def _mlp_mse_forward_setup_context(ctx, inputs, output):
    x, weights, biases, has_bias, activations, target, reduction = inputs
    _chain_setup(ctx, x, weights, has_bias, activations, output[1:], output[1:], extra=(target,), biases=biases)
    ctx.reduction = reduction


def _mlp_mse_forward_grad(ctx, grads):
    grad = grads[0]
    if grad is None:
        return (*_no_grads(ctx), None, None, None, None)
    L = ctx.layers
    saved = ctx.saved_tensors
    x, target, weights = saved[0], saved[1], list(saved[2:2 + L])
    outputs, biases = list(saved[2 + L:2 + 2 * L]), saved[2 + 2 * L:]
    if torch.is_grad_enabled():  # create_graph (see "second order")
        slots, need = _chain_slots_with_graph(ctx, x, weights, biases, extra=(target,))
        y = _chain_with_graph(slots, L, ctx.has_bias, ctx.activations)
        g = _grad_with_graph(torch.nn.functional.mse_loss(y, slots[-1], reduction=ctx.reduction), grad, slots, need)
        return g[0], g[1:1 + L], g[1 + L:-1], None, None, g[-1], None
    need_bias = _need_bias(ctx)
    g = mlp_mse_backward_op(grad, x, weights, outputs, ctx.activations, target, ctx.reduction,
                            bool(ctx.needs_input_grad[0]), need_bias)
    gt = None
    if ctx.needs_input_grad[5]:
        # d loss / d target = -2 (y - t) g / n: the one term that does not pass through the chain
        y = outputs[-1].view(target.shape)
        gt = mse_loss_backward_op(grad, y, target, ctx.reduction, False, True)[1]
    return (*_chain_grads(ctx, g, need_bias), None, None, gt, None)


torch.library.register_autograd(f"{NAMESPACE}::linear_act", _linear_act_grad, setup_context=_linear_act_setup_context)
torch.library.register_autograd(f"{NAMESPACE}::mse_loss", _mse_grad, setup_context=_mse_setup_context)
torch.library.register_autograd(f"{NAMESPACE}::mlp_forward", _mlp_forward_grad,
                                setup_context=_mlp_forward_setup_context)
torch.library.register_autograd(f"{NAMESPACE}::mlp_mse_forward", _mlp_mse_forward_grad,
                                setup_context=_mlp_mse_forward_setup_context)


# ----------------------------------------------------------------------------------------
# backend entry points (what aecomp.ops calls)
# ----------------------------------------------------------------------------------------
def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    # Checked here too, with the public op's name, so a non-tensor argument gets our
    # message rather than the dispatcher's.
    _checks.check_linear_act("aecomp::linear_act", x, weight, bias, activation, DTYPES)
    return linear_act_op(x, weight, bias, activation)


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    _checks.check_mse("aecomp::mse_loss", input, target, reduction, DTYPES)
    return mse_loss_op(input, target, reduction)


def mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
        activations: Sequence[str]) -> torch.Tensor:
    _checks.check_mlp("aecomp::mlp", x, weights, biases, activations)
    weights, biases = list(weights), list(biases)
    acts = ",".join(activations)
    _check_chain("aecomp::mlp", x, weights, biases, acts)
    return torch.ops.aecomp_triton.mlp.default(x, weights, biases, acts)


def mlp_mse_loss(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
                 activations: Sequence[str], target: torch.Tensor, reduction: str) -> torch.Tensor:
    _checks.check_mlp("aecomp::mlp_mse_loss", x, weights, biases, activations)
    weights, biases = list(weights), list(biases)
    acts = ",".join(activations)
    _check_chain("aecomp::mlp_mse_loss", x, weights, biases, acts)
    _check_target("aecomp::mlp_mse_loss", x, weights, target, reduction)
    return torch.ops.aecomp_triton.mlp_mse_loss.default(x, weights, biases, acts, target, reduction)


def describe_mlp() -> str:
    return _mlp_kernels.describe()


def _probe() -> Tuple[bool, str]:
    version = f"triton {triton.__version__}"
    if INTERPRETED:
        return True, f"{version} under its interpreter (TRITON_INTERPRET=1): CPU tensors, slow, for testing"
    if not torch.cuda.is_available():
        return False, (
            f"{version} is installed but no GPU is visible (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}); start Python with TRITON_INTERPRET=1 to run the kernels on CPU tensors"
        )
    return True, f"{version} compiled kernels on {torch.cuda.get_device_name()}"


def _devices() -> frozenset:
    return frozenset({"cuda", "cpu"}) if INTERPRETED else frozenset({"cuda"})


BACKEND = Backend(
    name="triton",
    probe=_probe,
    devices=_devices,
    dtypes={"cuda": frozenset(DTYPES), "cpu": frozenset(DTYPES)},
    ops={"linear_act": linear_act, "mse_loss": mse_loss, "mlp": mlp, "mlp_mse_loss": mlp_mse_loss},
    describe_mlp=describe_mlp,
    how_to_get=(
        "The triton backend needs `pip install triton` and an NVIDIA GPU; for CPU tensors start Python with "
        "TRITON_INTERPRET=1 (Triton's interpreter, slow)."
    ),
)


# ----------------------------------------------------------------------------------------
# the training step with the optimizer fused into the chain backward (kernels/optim.py)
# ----------------------------------------------------------------------------------------
from aecomp.kernels.optim import ADAM, SGD, OptimHyper, wgrad_optim  # noqa: E402


def check_train_step(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
                     activations: Sequence[str], target: torch.Tensor, reduction: str, hypers: Sequence,
                     states) -> List[str]:
    """Every check of :func:`mlp_mse_train_step_triton`, before anything is changed (an error part
    way must leave the parameters and the optimizer state as they were); returns the activations."""
    op = f"{NAMESPACE}::mlp_mse_train_step"
    if len(hypers) != len(weights) or len(states) != len(weights):
        raise ValueError(f"{op}: need one hyper-parameter set and one state pair per layer ({len(weights)}), "
                         f"got {len(hypers)} and {len(states)}")
    acts = _check_chain(op, x, weights, biases, ",".join(activations))
    _check_target(op, x, weights, target, reduction)
    if reduction == "none":
        raise ValueError(f"{op}: reduction must be 'mean' or 'sum', got 'none'")
    L = len(weights)
    names = [f"weights[{i}]" for i in range(L)] + [f"biases[{i}]" for i in range(L)]
    shared = _checks.shared_parameters([*weights, *biases])
    if shared is not None:
        raise ValueError(f"{op}: {names[shared[0]]} and {names[shared[1]]} share memory (one parameter used by two "
                         "layers); the fused update of each slot cannot sum a shared parameter's gradients. "
                         "aecomp.train.FusedStep takes its plain path for such models")
    for i, (w, hyper) in enumerate(zip(weights, hypers)):
        if 0 in w.shape:
            raise ValueError(f"{op}: weights[{i}] has shape {_checks.shape_str(w)}; a layer without inputs or "
                             "outputs takes the plain path")
        need = 2 if hyper.kind == ADAM else (1 if hyper.consts["MOM"] else 0)
        for j, p in enumerate((w, biases[i])):
            if p is None:
                continue
            pname = names[i if j == 0 else L + i]
            if not p.is_contiguous():
                raise ValueError(f"{op}: {pname} must be contiguous, got strides {tuple(p.stride())}")
            for k, st in enumerate(states[i][j]):
                if k >= need:
                    continue
                sname = f"the optimizer state {k} of {pname}"
                if st is None:
                    raise ValueError(f"{op}: {sname} is missing")
                if st.shape != p.shape or st.dtype != p.dtype or st.device != p.device or not st.is_contiguous():
                    raise ValueError(f"{op}: {sname} must be a contiguous {p.dtype} tensor on {p.device} shaped "
                                     f"like it {_checks.shape_str(p)}, got {st.dtype} {_checks.shape_str(st)} on "
                                     f"{st.device}")
    return acts


def mlp_mse_train_step_triton(x: torch.Tensor, weights: Sequence[torch.Tensor],
                              biases: Sequence[Optional[torch.Tensor]], activations: Sequence[str],
                              target: torch.Tensor, reduction: str, hypers: Sequence,
                              states: Sequence[Tuple[Sequence[Optional[torch.Tensor]], Sequence[Optional[torch.Tensor]]]],
                              ) -> torch.Tensor:
    """One training step, no autograd: the chain forward with the fused MSE loss, the chain
    backward entered through the loss gradient, and each layer's weight-gradient pass updating
    ``W_i``/``b_i`` (and the optimizer state) in place -- no gradient tensor is written.

    ``hypers[i]``: the :class:`aecomp.kernels.optim.OptimHyper` of layer ``i`` (its weight and
    bias share it); ``states[i] = ((w_s1, w_s2), (b_s1, b_s2))``: the optimizer state tensors
    (``exp_avg``, ``exp_avg_sq`` or ``momentum_buffer``, ``None``). Parameters and state must be
    contiguous, and no two parameters may share memory (:func:`check_train_step`: everything is
    checked before anything changes). An empty batch updates like ``torch.optim`` with its zero
    gradients (the moments decay; weight decay and momentum apply). Returns the loss (detached)."""
    weights, biases = [w.detach() for w in weights], [None if b is None else b.detach() for b in biases]
    acts = check_train_step(x, weights, biases, activations, target, reduction, hypers, states)
    with torch.no_grad():
        outputs, loss = _mlp_kernels.chain_forward(x, weights, biases, acts, target, reduction)
        if _rows_of(x) == 0:  # the gradient is zero: the update kernels get one all-zero row
            for i, w in enumerate(weights):
                zg, zh = w.new_zeros((1, w.shape[0])), w.new_zeros((1, w.shape[1]))
                wgrad_optim(zg, zh, zg, 0, w, biases[i], states[i][0], states[i][1], hypers[i])
            return loss
        grad = torch.ones((), device=x.device, dtype=x.dtype)

        def update(i, g, h, y, act):
            wgrad_optim(g, h, y, act, weights[i], biases[i], states[i][0], states[i][1], hypers[i])

        _mlp_kernels.chain_backward(grad, x, weights, outputs, acts, False, [b is not None for b in biases],
                                    target, reduction, update=update)
    return loss


# ----------------------------------------------------------------------------------------
# packed-weight inference (issue 15): aecomp_triton::packed_mlp
# ----------------------------------------------------------------------------------------
#     aecomp_triton::packed_mlp(x, data[], meta[], activations) -> y
# The whole chain in one op call (one fused launch for 2-4 layers on <= 64 rows, else one launch
# per layer; kernels/packed.py); data
# and meta are PackedChain.gpu_args (3 tensors, 2 ints per layer). Inference only: the autograd
# registration refuses a gradient (setup_context runs only when grad mode is on and an input
# requires grad). Same registration split as above: triton_op compiled, custom_op interpreted.
from aecomp.kernels import packed as _packed_kernels  # noqa: E402

from . import _packed  # noqa: E402

_PACKED_OP = f"{NAMESPACE}::packed_mlp"


def _packed_mlp(x: torch.Tensor, data: List[torch.Tensor], meta: List[int], activations: str) -> torch.Tensor:
    _packed.check_gpu_args(_PACKED_OP, x, data, meta, activations, DTYPES)
    _check_device(_PACKED_OP, "x", x)
    layers = _packed_kernels.layers_from_data(data, meta, activations)
    return _packed_kernels.packed_chain(x, layers, wrap_triton=_wrap)


def _packed_mlp_fake(x, data, meta, activations):
    n = _packed.check_gpu_args(_PACKED_OP, x, data, meta, activations, DTYPES)
    return x.new_empty((*x.shape[:-1], n))


packed_mlp_op = _define("packed_mlp", _packed_mlp, _packed_mlp_fake,
                        "(Tensor x, Tensor[] data, int[] meta, str activations) -> Tensor")


def _packed_mlp_refuse(ctx, inputs, output):
    raise RuntimeError(_packed.INFERENCE_ONLY)


def _packed_mlp_no_grad(ctx, grad):  # never reached: the setup above refuses first
    raise RuntimeError(_packed.INFERENCE_ONLY)


torch.library.register_autograd(_PACKED_OP, _packed_mlp_no_grad, setup_context=_packed_mlp_refuse)


def packed_mlp(x: torch.Tensor, chain) -> torch.Tensor:
    if x.requires_grad and torch.is_grad_enabled():  # before the launches, not after
        raise RuntimeError(_packed.INFERENCE_ONLY)
    data, meta, acts = chain.gpu_args(x.device)
    return packed_mlp_op(x, data, meta, acts)


BACKEND.ops["packed_mlp"] = packed_mlp
