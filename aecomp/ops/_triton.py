"""The ``triton`` backend: the kernels of ``aecomp.kernels`` as registered torch ops.

Ops (namespace ``aecomp_triton``, separate from the C++ ``aecomp`` ops; same schemas)::

    aecomp_triton::linear_act(x, weight, bias?, activation) -> y
    aecomp_triton::linear_act_backward(grad_y, x, weight, y, activation,
                                       need_x, need_weight, need_bias) -> (dx, dW, db)
    aecomp_triton::mse_loss(input, target, reduction) -> out
    aecomp_triton::mse_loss_backward(grad, input, target, reduction,
                                     need_input, need_target) -> (d input, d target)

A gradient that is not needed comes back as an empty tensor of shape ``[0]``. Autograd is
registered with ``torch.library.register_autograd``: linear_act saves ``x``, ``weight`` and
its output ``y`` (the backward uses ``act'(y)``); mse_loss saves ``input`` and ``target``.
``mlp`` is a Python chain of ``linear_act`` for now.

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

from typing import Optional, Sequence, Tuple

import torch
import triton

from aecomp.kernels.linear_act import INTERPRETED
from aecomp.kernels.linear_act import linear_act_backward as _linear_act_backward_launch
from aecomp.kernels.linear_act import linear_act_forward as _linear_act_forward_launch
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
    _checks.check_linear_act(op, x, weight, None, activation, DTYPES)
    out_shape = (*x.shape[:-1], weight.shape[0])
    for arg, t in (("grad_y", grad_y), ("y", y)):
        _checks.check_tensor(op, arg, t)
        if tuple(t.shape) != out_shape:
            raise ValueError(
                f"{op}: {arg} must have the output's shape [{', '.join(map(str, out_shape))}], "
                f"got {_checks.shape_str(t)} (x: {_checks.shape_str(x)}, weight: {_checks.shape_str(weight)})"
            )
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{op}: {arg} is {t.dtype} on {t.device} but x is {x.dtype} on {x.device}")
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
    _checks.check_mse(op, input, target, reduction, DTYPES)
    _checks.check_tensor(op, "grad", grad)
    want = tuple(input.shape) if reduction == "none" else ()
    if tuple(grad.shape) != want:
        raise ValueError(f"{op}: grad must have shape [{', '.join(map(str, want))}] for reduction {reduction!r}, "
                         f"got {_checks.shape_str(grad)} (input: {_checks.shape_str(input)})")
    if grad.dtype != input.dtype or grad.device != input.device:
        raise TypeError(f"{op}: grad is {grad.dtype} on {grad.device} but input is {input.dtype} on {input.device}")
    _check_device(op, "input", input)


def _mse_loss_backward(grad: torch.Tensor, input: torch.Tensor, target: torch.Tensor, reduction: str,
                       need_input: bool, need_target: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_mse_backward(f"{NAMESPACE}::mse_loss_backward", grad, input, target, reduction)
    return _mse_backward_launch(grad, input, target, reduction, need_input, need_target, wrap_triton=_wrap)


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


def _define(name: str, body, fake):
    qualname = f"{NAMESPACE}::{name}"
    if INTERPRETED:
        op = torch.library.custom_op(qualname, body, mutates_args=())
        op.register_fake(fake)
    else:
        op = torch.library.triton_op(qualname, body, mutates_args=())
    return op


linear_act_op = _define("linear_act", _linear_act, _linear_act_fake)
linear_act_backward_op = _define("linear_act_backward", _linear_act_backward, _linear_act_backward_fake)
mse_loss_op = _define("mse_loss", _mse_loss, _mse_loss_fake)
mse_loss_backward_op = _define("mse_loss_backward", _mse_loss_backward, _mse_loss_backward_fake)


# ----------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------
def _linear_act_setup_context(ctx, inputs, output):
    x, weight, bias, activation = inputs
    ctx.save_for_backward(x, weight, output)
    ctx.activation = activation
    ctx.has_bias = bias is not None


def _linear_act_grad(ctx, grad_y):
    x, weight, y = ctx.saved_tensors
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    need_bias = bool(need_bias and ctx.has_bias)
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
    gi, gt = mse_loss_backward_op(grad, input, target, ctx.reduction, need_input, need_target)
    return (gi if need_input else None, gt if need_target else None, None)


torch.library.register_autograd(f"{NAMESPACE}::linear_act", _linear_act_grad, setup_context=_linear_act_setup_context)
torch.library.register_autograd(f"{NAMESPACE}::mse_loss", _mse_grad, setup_context=_mse_setup_context)


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
    for w, b, a in zip(weights, biases, activations):
        x = linear_act(x, w, b, a)
    return x


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
    ops={"linear_act": linear_act, "mse_loss": mse_loss, "mlp": mlp},
    how_to_get=(
        "The triton backend needs `pip install triton` and an NVIDIA GPU; for CPU tensors start Python with "
        "TRITON_INTERPRET=1 (Triton's interpreter, slow)."
    ),
)
