"""ReLU's backward on a NaN output, against torch's threshold_backward (which passes the gradient
where the saved output is NaN: ``grad * (y <= 0 ? 0 : 1)``, and ``NaN <= 0`` is false).

A NaN bias entry makes one output column NaN for every row while x and the weights stay finite,
so every gradient is finite and must equal torch's (a ``y > 0`` mask zeroes that column of
``gz`` instead: dx, dW and db all differ). Checked on each backend that runs here: the C++
kernels (both GEMM paths: the microkernels' ActGradStore / relu_mask and ATen + the element-wise
pass; float32 and float64), the chain ops (mlp, and mlp_mse_loss whose fused loss entry applies
act' of the output layer), the reference backend, and the Triton kernels under the interpreter.
The CUDA kernels are checked on the CPU emulator (csrc/cuda/harness/glue_on_cpu_checks.py,
tests/test_cuda_ops.py::test_glue_on_cpu_emulator).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

import aecomp
from aecomp import _ext, ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _triton_interp_runner import interpreted  # noqa: E402

CPU = aecomp.available_backends()["cpu"][0]


def _nan_layer(m, k, n, dtype):
    x, w, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)
    b[n // 2] = float("nan")
    return x, w, b


def _check_linear(backend, dtype, m=9, k=13, n=7):
    x, w, b = _nan_layer(m, k, n, dtype)
    y = ops.linear_act(x, w, b, "relu", backend=backend)
    assert torch.isnan(y[:, n // 2]).all()
    g = torch.randn_like(y)
    got = torch.autograd.grad(ops.linear_act(*[t.requires_grad_() for t in (x, w, b)], "relu", backend=backend),
                              (x, w, b), g)
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    want = torch.autograd.grad(torch.relu(F.linear(xr, wr, br)), (xr, wr, br), g)
    for name, a, e in zip(("dx", "dW", "db"), got, want):
        assert torch.isfinite(e).all()
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=lambda s, name=name: f"{backend} {name}: {s}")


def _check_chain(backend, dtype):
    """mlp (relu hidden layer with a NaN column) and mlp_mse_loss (relu OUTPUT layer: the fused
    loss entry) against the same chain in plain torch."""
    x = torch.rand(6, 5, dtype=dtype)
    ws = [torch.randn(8, 5, dtype=dtype), torch.randn(4, 8, dtype=dtype)]
    bs = [torch.randn(8, dtype=dtype), torch.randn(4, dtype=dtype)]
    bs[0][3] = float("nan")

    def torch_chain(x, w0, w1, b0, b1, out_act):
        h = torch.relu(F.linear(x, w0, b0))
        return out_act(F.linear(h, w1, b1))

    leaves = [t.clone().requires_grad_() for t in (x, *ws, *bs)]
    ref = [t.clone().requires_grad_() for t in (x, *ws, *bs)]
    y = ops.mlp(leaves[0], leaves[1:3], leaves[3:], ["relu", "sigmoid"], backend=backend)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, g)
    want = torch.autograd.grad(torch_chain(*ref, torch.sigmoid), ref, g)
    for i, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, equal_nan=True, msg=lambda s, i=i: f"mlp {i}: {s}")
    # the output layer relu with one NaN output column: target finite, loss NaN, gradients through
    # the loss entry: d loss / d y is NaN in that column (y - t), so only compare the NaN pattern
    # and the finite columns of what flows below
    bs2 = [bs[0].clone(), bs[1].clone()]
    bs2[0][3] = 0.0
    bs2[1][1] = float("nan")
    leaves = [t.clone().requires_grad_() for t in (x, *ws, *bs2)]
    ref = [t.clone().requires_grad_() for t in (x, *ws, *bs2)]
    t = torch.rand(6, 4, dtype=dtype)
    got = torch.autograd.grad(ops.mlp_mse_loss(leaves[0], leaves[1:3], leaves[3:], ["relu", "relu"], t,
                                               backend=backend), leaves)
    want = torch.autograd.grad(F.mse_loss(torch_chain(*ref, torch.relu), t), ref)
    for i, (a, e) in enumerate(zip(got, want)):
        assert torch.equal(torch.isnan(a), torch.isnan(e)), (i, a, e)
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, equal_nan=True, msg=lambda s, i=i: f"mlp_mse {i}: {s}")


@pytest.mark.skipif(not CPU, reason="aecomp._C is not built")
@pytest.mark.parametrize("path", ["mk", "aten"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_relu_backward_passes_the_gradient_where_y_is_nan(path, dtype):
    C = _ext.load()[0]
    old = C._get_cpu_gemm()
    C._set_cpu_gemm(path)
    try:
        _check_linear("cpu", dtype)
        _check_linear("cpu", dtype, m=40, k=70, n=33)  # full tiles and edges
        _check_chain("cpu", dtype)
    finally:
        C._set_cpu_gemm(old)


def test_reference_relu_backward_passes_the_gradient_where_y_is_nan():
    _check_linear("reference", torch.float32)
    _check_chain("reference", torch.float32)


@interpreted
def test_triton_relu_backward_passes_the_gradient_where_y_is_nan():
    pytest.importorskip("triton")
    _check_linear("triton", torch.float32)
    _check_chain("triton", torch.float32)
