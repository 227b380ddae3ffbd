"""mse_loss on the C++ CPU backend against F.mse_loss.

Tolerances: float32 is compared with the reference computed in float64 (we accumulate the
sum in double, so we are closer to the truth than a float32 reference): rtol 1e-6 for the
reduced loss, 1e-6 / atol 1e-7 element-wise; float64 rtol 1e-12.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aecomp import ops

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext

TOL = {torch.float32: dict(rtol=1e-6, atol=1e-7), torch.float64: dict(rtol=1e-12, atol=1e-14)}
SHAPES = [(0,), (1,), (7,), (1023, 784), (3, 5, 7), (64, 784), (100_003,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_reference(dtype, reduction):
    for shape in SHAPES:
        a = torch.randn(shape, dtype=dtype, requires_grad=True)
        t = torch.rand(shape, dtype=dtype, requires_grad=True)
        a64, t64 = a.detach().double().requires_grad_(), t.detach().double().requires_grad_()
        out = ops.mse_loss(a, t, reduction, backend="cpu")
        ref = F.mse_loss(a64, t64, reduction=reduction)
        assert out.shape == ref.shape and out.dtype == dtype
        torch.testing.assert_close(out, ref.to(dtype), **TOL[dtype], equal_nan=True)
        if a.numel() == 0:
            continue
        g = torch.randn(ref.shape, dtype=dtype)
        out.backward(g)
        ref.backward(g.double())
        torch.testing.assert_close(a.grad, a64.grad.to(dtype), **TOL[dtype])
        torch.testing.assert_close(t.grad, t64.grad.to(dtype), **TOL[dtype])


def test_empty_mean_is_nan_like_torch():
    assert torch.isnan(ops.mse_loss(torch.empty(0), torch.empty(0)))
    assert ops.mse_loss(torch.empty(0), torch.empty(0), "sum").item() == 0.0


def test_non_contiguous_inputs():
    a = torch.randn(40, 30).t()
    t = torch.randn(30, 80)[:, ::2]
    for red in ("mean", "sum", "none"):
        torch.testing.assert_close(ops.mse_loss(a, t, red), F.mse_loss(a, t, reduction=red), rtol=1e-5, atol=1e-6)


def test_only_input_needs_grad():
    a = torch.randn(9, 4, requires_grad=True)
    t = torch.rand(9, 4)
    (g,) = torch.autograd.grad(ops.mse_loss(a, t), (a,))
    torch.testing.assert_close(g, 2 * (a - t).detach() / a.numel(), rtol=1e-6, atol=1e-8)


def test_nan_in_gives_nan_out():
    a = torch.randn(10)
    a[3] = float("nan")
    assert torch.isnan(ops.mse_loss(a, torch.zeros(10)))
    assert torch.isnan(ops.mse_loss(a, torch.zeros(10), "none")[3])


def test_deterministic_across_thread_counts():
    a, t = torch.randn(300_001), torch.randn(300_001)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            outs.append(ops.mse_loss(a, t))
        finally:
            torch.set_num_threads(1)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(reduction):
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ops.mse_loss(x, y, reduction, backend="cpu"), (a, t))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradgradcheck_float64(backend, reduction):
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, y: ops.mse_loss(x, y, reduction, backend=backend), (a, t))


def test_overflow_gives_inf_not_an_error():
    a = torch.full((1000,), 3e37)
    assert torch.isinf(ops.mse_loss(a, -a, "sum"))
    assert torch.isinf(ops.mse_loss(a, -a, "mean"))
