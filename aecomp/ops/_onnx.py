"""ONNX export of the C++ ops, so ``torch.onnx.export`` of an accelerated model works as is.

Each op is written in standard ONNX: ``linear_act`` is ``Gemm`` (2-D input) or ``MatMul`` +
``Add`` (batched input) followed by ``Relu`` / ``Sigmoid``; ``mlp`` is that per layer;
``mse_loss`` is ``Sub``, ``Mul`` and ``ReduceMean`` / ``ReduceSum``. Both exporters find it
with the plain call:

* ``torch.onnx.export(..., dynamo=True)`` (the default): the exporter decomposes every op it
  has no ONNX function for through ``torch._decomp.decomposition_table`` before translating
  (``torch.onnx._internal.exporter._decomp``). Each op gets its decomposition into the plain
  PyTorch reference (``F.linear`` + activation, ``F.mse_loss``), which the exporter already
  translates; so does ``mlp_forward``, which export reaches by tracing into the C++ autograd
  functions of ``mlp`` and ``mlp_mse_loss``. ``torch.compile`` and ``torch.export`` keep the ops: neither reads that table
  by default.
* ``torch.onnx.export(..., dynamo=False)`` (TorchScript): ``register_custom_op_symbolic``
  with the same graphs built from torch's own ``linear``/``relu``/``sigmoid`` symbolics.
"""
from __future__ import annotations

import torch

from . import _reference

_OPSET = 9  # the symbolics below use nothing newer; registered for every opset from here up


def _unpack(values):
    from torch.onnx import symbolic_helper as sh

    return sh._unpack_list(values)


def _act(g, y, activation: str):
    if activation == "relu":
        return g.op("Relu", y)
    if activation == "sigmoid":
        return g.op("Sigmoid", y)
    return y


def _linear(g, x, weight, bias, activation: str):
    from torch.onnx import symbolic_opset9 as op9

    # torch's own aten::linear symbolic: Gemm for a 2-D input with a bias, else MatMul (+ Add)
    return _act(g, op9.linear(g, x, weight, bias), activation)


def _mse(g, input, target, reduction: str):
    d = g.op("Sub", input, target)
    sq = g.op("Mul", d, d)
    if reduction == "none":
        return sq
    return g.op("ReduceMean" if reduction == "mean" else "ReduceSum", sq, keepdims_i=0)


def _symbolic_linear_act(g, x, weight, bias, activation):
    from torch.onnx import symbolic_helper as sh

    return _linear(g, x, weight, bias, sh._maybe_get_const(activation, "s"))


def _symbolic_mse_loss(g, input, target, reduction):
    from torch.onnx import symbolic_helper as sh

    return _mse(g, input, target, sh._maybe_get_const(reduction, "s"))


def _symbolic_chain(g, x, weights, biases, activations):
    from torch.onnx import symbolic_helper as sh

    acts = sh._maybe_get_const(activations, "s").split(",")
    for w, b, a in zip(_unpack(weights), _unpack(biases), acts):
        x = _linear(g, x, w, b, a)
    return x


def _symbolic_mlp_mse_loss(g, x, weights, biases, activations, target, reduction):
    from torch.onnx import symbolic_helper as sh

    return _mse(g, _symbolic_chain(g, x, weights, biases, activations), target,
                sh._maybe_get_const(reduction, "s"))


def _split(activations: str):
    return activations.split(",")


def _mlp_forward(x, weights, biases, activations):
    """Every layer's output, batch dims flattened ``[M, D_{i+1}]``, as the C++ op returns them."""
    h, outs = x.reshape(-1, x.shape[-1]), []
    for w, b, a in zip(weights, biases, _split(activations)):
        h = _reference.linear_act(h, w, b, a)
        outs.append(h)
    return outs


def register() -> None:
    """Register both exporters' translations of ``aecomp::*`` (needs ``aecomp._C`` loaded)."""
    from torch._decomp import register_decomposition

    ops = torch.ops.aecomp
    register_decomposition(ops.linear_act.default)(_reference.linear_act)
    register_decomposition(ops.mse_loss.default)(_reference.mse_loss)
    register_decomposition(ops.mlp.default)(
        lambda x, weights, biases, activations: _reference.mlp(x, weights, biases, _split(activations)))
    # export traces into the C++ autograd functions, whose forwards call mlp_forward
    register_decomposition(ops.mlp_forward.default)(_mlp_forward)
    register_decomposition(ops.mlp_mse_loss.default)(
        lambda x, weights, biases, activations, target, reduction: _reference.mlp_mse_loss(
            x, weights, biases, _split(activations), target, reduction))

    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aecomp::linear_act", _symbolic_linear_act, _OPSET)
    register_custom_op_symbolic("aecomp::mse_loss", _symbolic_mse_loss, _OPSET)
    register_custom_op_symbolic("aecomp::mlp", _symbolic_chain, _OPSET)
    register_custom_op_symbolic("aecomp::mlp_mse_loss", _symbolic_mlp_mse_loss, _OPSET)
