"""linear_act on the C++ CPU backend against the plain-PyTorch reference.

Tolerances (set here, used below):
- float32 is compared with the reference computed in float64 from the same inputs (the
  truth; a float32 reference has errors of its own, e.g. in the bias-gradient sum, which we
  accumulate in double). rtol 1e-5, and atol max(2e-6 * sqrt(L), 1.5e-7 * L) where L is the
  length of the sum behind the value (K for the output, N for dx, M for dW and the bias
  gradient). A float32 sum of L unit-size products rounds each partial sum (of size ~sqrt(i)),
  so its error is a random walk of size ~ u * L / sqrt(6) (u = 2^-24): linear in L once L is
  large; 1.5e-7 * L is about 6 standard deviations of it (2e-6 * sqrt(L) alone was exceeded
  at L = 1023 by fresh seeds).
- float64: rtol 1e-10, atol 1e-12 * sqrt(L).
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import aecomp
from aecomp import ops

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def tol(dtype, length=1):
    base = {torch.float32: (1e-5, 2e-6), torch.float64: (1e-10, 1e-12)}[dtype]
    grow = {torch.float32: 1.5e-7, torch.float64: 3e-16}[dtype]
    length = max(length, 1)
    return dict(rtol=base[0], atol=max(base[1] * length ** 0.5, grow * length))
ACTS = ("none", "relu", "sigmoid")
_ACT = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}


def reference(x, w, b, act):
    return _ACT[act](F.linear(x, w, b))


def _leaf(t):
    return t.detach().requires_grad_(True)


def check(x, w, b, act, dtype, backend="cpu"):
    """Forward and all gradients of ops.linear_act against the float64 reference, same inputs."""
    m, k, n = x.reshape(-1, x.shape[-1]).shape[0], x.shape[-1], w.shape[0]
    xs = [_leaf(x), _leaf(x.double())]
    ws = [_leaf(w), _leaf(w.double())]
    bs = [_leaf(b), _leaf(b.double())] if b is not None else [None, None]
    y = ops.linear_act(xs[0], ws[0], bs[0], act, backend=backend)
    r = reference(xs[1], ws[1], bs[1], act)
    assert y.shape == r.shape and y.dtype == dtype
    torch.testing.assert_close(y, r.to(dtype), **tol(dtype, k))
    g = torch.randn(r.shape, dtype=dtype)
    if r.numel():
        y.backward(g)
        r.backward(g.double())
        torch.testing.assert_close(xs[0].grad, xs[1].grad.to(dtype), **tol(dtype, n))
        torch.testing.assert_close(ws[0].grad, ws[1].grad.to(dtype), **tol(dtype, m))
        if b is not None:
            torch.testing.assert_close(bs[0].grad, bs[1].grad.to(dtype), **tol(dtype, m))


SHAPES = list(itertools.product((0, 1, 7, 1023), (1, 3, 784), (1, 10, 128)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_reference_on_odd_shapes(dtype, act, bias):
    for m, k, n in SHAPES:
        x = torch.randn(m, k, dtype=dtype)
        w = torch.randn(n, k, dtype=dtype) / k**0.5
        b = torch.randn(n, dtype=dtype) if bias else None
        check(x, w, b, act, dtype)


@pytest.mark.parametrize("act", ACTS)
def test_3d_input(act):
    x = torch.randn(4, 5, 17)
    w = torch.randn(9, 17)
    b = torch.randn(9)
    check(x, w, b, act, torch.float32)
    assert ops.linear_act(x, w, b, act).shape == (4, 5, 9)


@pytest.mark.parametrize("act", ACTS)
def test_non_contiguous_and_transposed_views(act):
    # x: a transposed view; weight: a strided slice; bias: every other element.
    x = torch.randn(33, 21).t()  # [21, 33], strides (1, 21)
    w = torch.randn(16, 66)[:, ::2]  # [16, 33], non-contiguous
    b = torch.randn(32)[::2]
    assert not x.is_contiguous() and not w.is_contiguous() and not b.is_contiguous()
    check(x, w, b, act, torch.float32)
    # a weight that is the transpose of a contiguous [in, out] tensor
    wt = torch.randn(33, 16).t()
    check(x, wt, None, act, torch.float32)
    # a 3-D input that is a permuted view
    x3 = torch.randn(33, 5, 3).permute(2, 1, 0)
    check(x3, w, b, act, torch.float32)


def test_zero_batch_returns_empty_and_zero_grads():
    x = torch.randn(0, 12, requires_grad=True)
    w = torch.randn(5, 12, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    y = ops.linear_act(x, w, b, "relu")
    assert y.shape == (0, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6)], ids=["2d", "3d"])
def test_zero_out_features_gives_zero_dx_like_torch(backend, shape):
    """out_features = 0: the output is empty and dx is zeros, as torch's (the CPU backward once
    failed reshaping its [M, 0] gradient with -1); in_features = 0 too: dW [N, 0], dx empty."""
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(0, 6, requires_grad=True)
    b = torch.randn(0, requires_grad=True)
    y = ops.linear_act(x, w, b, "relu", backend=backend)
    assert y.shape == (*shape[:-1], 0)
    gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b))
    assert torch.equal(gx, torch.zeros_like(x)) and gw.shape == (0, 6) and gb.shape == (0,)
    x0 = torch.randn(*shape[:-1], 0, requires_grad=True)
    w0 = torch.randn(5, 0, requires_grad=True)
    y0 = ops.linear_act(x0, w0, None, "sigmoid", backend=backend)
    gx0, gw0 = torch.autograd.grad(y0.sum(), (x0, w0))
    assert gx0.shape == x0.shape and torch.equal(gw0, torch.zeros(5, 0))


def test_linear_relu_and_linear_sigmoid_helpers():
    x, w, b = torch.randn(6, 4), torch.randn(3, 4), torch.randn(3)
    torch.testing.assert_close(ops.linear_relu(x, w, b), torch.relu(F.linear(x, w, b)), **TOL[torch.float32])
    torch.testing.assert_close(ops.linear_sigmoid(x, w, b), torch.sigmoid(F.linear(x, w, b)), **TOL[torch.float32])


def test_only_needed_gradients_are_computed():
    x = torch.randn(8, 6)  # data: no grad
    w = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = ops.linear_act(x, w, b, "sigmoid")
    gw, gb = torch.autograd.grad(y.sum(), (w, b))
    r = torch.sigmoid(F.linear(x, w, b))
    rw, rb = torch.autograd.grad(r.sum(), (w, b))
    torch.testing.assert_close(gw, rw, **TOL[torch.float32])
    torch.testing.assert_close(gb, rb, **TOL[torch.float32])
    assert x.grad is None


def test_sigmoid_extremes_and_nan_propagation():
    # one value per row (a [6, 1] x [1, 1] product) so a NaN stays in its own row
    w = torch.ones(1, 1)
    x = torch.tensor([-1e4, -100.0, -88.0, 0.0, 88.0, 1e4]).reshape(-1, 1)
    torch.testing.assert_close(ops.linear_act(x, w, None, "sigmoid"), torch.sigmoid(x), rtol=1e-5, atol=1e-30)
    special = torch.tensor([float("nan"), 1.0, -1.0, float("inf"), -float("inf"), 0.5]).reshape(-1, 1)
    for act in ACTS:
        y = ops.linear_act(special, w, None, act)
        assert torch.isnan(y[0, 0]), act
        torch.testing.assert_close(y[1:], _ACT[act](special[1:]), rtol=1e-6, atol=1e-30)
    # NaN in the weights: NaN out, never a crash
    assert torch.isnan(ops.linear_act(torch.randn(3, 4), torch.full((2, 4), float("nan")), None, "relu")).all()


def test_sigmoid_accuracy_over_the_whole_float_range():
    # the polynomial exp against torch's, on 1M points in [-30, 30]
    x = torch.linspace(-30, 30, 1_000_000).reshape(-1, 1)
    y = ops.linear_act(x, torch.ones(1, 1), None, "sigmoid")
    torch.testing.assert_close(y, torch.sigmoid(x), rtol=2e-7 * 8, atol=1e-30)


def _float64_case(act, bias, backend):
    """(f, inputs) for gradcheck / gradgradcheck: small float64 inputs that need gradients."""
    while True:  # relu: keep every pre-activation away from the kink at 0 (finite differences)
        x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(3, dtype=torch.float64, requires_grad=True) if bias else None
        if act != "relu" or F.linear(x, w, b).abs().min() > 1e-3:
            break

    def f(*args):
        return ops.linear_act(args[0], args[1], args[2] if bias else None, act, backend=backend)

    return f, ((x, w, b) if bias else (x, w))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck_float64(act, bias):
    assert torch.autograd.gradcheck(*_float64_case(act, bias, "cpu"), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradgradcheck_float64(backend, act, bias):
    """Double backward (create_graph=True): the gradient itself must be differentiable."""
    assert torch.autograd.gradgradcheck(*_float64_case(act, bias, backend), eps=1e-6, atol=1e-5)


def test_bias_gradient_is_deterministic():
    x = torch.randn(3000, 64)
    w = torch.randn(32, 64, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    g = torch.randn(3000, 32)
    grads = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        try:
            y = ops.linear_act(x, w, b, "sigmoid")
            grads.append(torch.autograd.grad(y, b, g)[0])
        finally:
            torch.set_num_threads(1)
    assert all(torch.equal(grads[0], gb) for gb in grads[1:])


def test_all_backends_agree_through_use_backend_and_env(monkeypatch):
    x, w, b = torch.randn(7, 5), torch.randn(3, 5), torch.randn(3)
    expect = torch.relu(F.linear(x, w, b))
    with aecomp.use_backend("reference"):
        torch.testing.assert_close(ops.linear_act(x, w, b), expect)
    monkeypatch.setenv("AECOMP_BACKEND", "cpu")
    torch.testing.assert_close(ops.linear_act(x, w, b), expect, **TOL[torch.float32])


@pytest.mark.parametrize("backend", aecomp.BACKENDS)
def test_activation_or_reduction_none_object_is_a_clean_value_error(backend):
    """Not a raw pybind11 'incompatible function arguments' message, on any backend."""
    with pytest.raises(ValueError, match=r"aecomp::linear_act: unknown activation None; expected one of"):
        ops.linear_act(torch.randn(2, 3), torch.randn(4, 3), None, None, backend=backend)
    with pytest.raises(ValueError, match=r"aecomp::mse_loss: unknown reduction None; expected one of"):
        ops.mse_loss(torch.randn(2), torch.randn(2), None, backend=backend)
