"""The chain ops mlp and mlp_mse_loss (C++ CPU backend) against plain PyTorch.

Tolerances: float32 against the float64 reference, rtol 1e-5 and atol 1e-5 (a chain of 6
layers compounds the per-layer rounding; each layer's own bound is in test_linear_act.py);
float64 rtol 1e-10.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aecomp import ops

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext

_ACT = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}
AE_DIMS = (784, 128, 64, 32, 64, 128, 784)
AE_ACTS = ("relu", "relu", "none", "relu", "relu", "sigmoid")


def make_chain(dims, dtype=torch.float32, bias_mask=None):
    ws, bs = [], []
    for i in range(len(dims) - 1):
        ws.append((torch.randn(dims[i + 1], dims[i], dtype=dtype) / dims[i] ** 0.5).requires_grad_())
        has = True if bias_mask is None else bias_mask[i]
        bs.append((torch.randn(dims[i + 1], dtype=dtype) * 0.1).requires_grad_() if has else None)
    return ws, bs


def ref_chain(x, ws, bs, acts):
    for w, b, a in zip(ws, bs, acts):
        x = _ACT[a](F.linear(x, w, b))
    return x


def _double(ts):
    return [None if t is None else t.detach().double().requires_grad_() for t in ts]


def _params(ws, bs):
    return ws + [b for b in bs if b is not None]


@pytest.mark.parametrize("batch", [0, 1, 7, 65])
@pytest.mark.parametrize("bias_mask", [None, (True, False, True, False, True, True)], ids=["bias", "mixed"])
def test_autoencoder_chain_matches_reference(batch, bias_mask):
    ws, bs = make_chain(AE_DIMS, bias_mask=bias_mask)
    x = torch.rand(batch, 784, requires_grad=True)
    y = ops.mlp(x, ws, bs, AE_ACTS, backend="cpu")
    ws64, bs64, x64 = _double(ws), _double(bs), x.detach().double().requires_grad_()
    r = ref_chain(x64, ws64, bs64, AE_ACTS)
    torch.testing.assert_close(y, r.float(), rtol=1e-5, atol=1e-5)
    if batch == 0:
        return
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x] + _params(ws, bs), g)
    want = torch.autograd.grad(r, [x64] + _params(ws64, bs64), g.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mlp_mse_loss_fused_entry_matches_reference(reduction):
    dims, acts = (37, 20, 9, 20, 37), ("relu", "none", "relu", "sigmoid")
    ws, bs = make_chain(dims)
    x = torch.rand(13, 37)
    loss = ops.mlp_mse_loss(x, ws, bs, acts, None, reduction, backend="cpu")
    ws64, bs64 = _double(ws), _double(bs)
    ref = F.mse_loss(ref_chain(x.double(), ws64, bs64, acts), x.double(), reduction=reduction)
    torch.testing.assert_close(loss, ref.float(), rtol=1e-5, atol=1e-6)
    g = torch.rand_like(loss)
    got = torch.autograd.grad(loss, _params(ws, bs), g)
    want = torch.autograd.grad(ref, _params(ws64, bs64), g.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-6)


def test_mlp_mse_loss_target_gradient():
    ws, bs = make_chain((5, 4, 5))
    x = torch.rand(6, 5)
    t = torch.rand(6, 5, requires_grad=True)
    loss = ops.mlp_mse_loss(x, ws, bs, ("relu", "sigmoid"), t, backend="cpu")
    (gt,) = torch.autograd.grad(loss, (t,))
    y = ref_chain(x, ws, bs, ("relu", "sigmoid"))
    torch.testing.assert_close(gt, -2 * (y - t).detach() / t.numel(), rtol=1e-5, atol=1e-7)


def test_3d_input_and_single_activation_string():
    ws, bs = make_chain((6, 5, 3))
    x = torch.randn(2, 4, 6)
    y = ops.mlp(x, ws, bs, "relu", backend="cpu")
    assert y.shape == (2, 4, 3)
    torch.testing.assert_close(y, ref_chain(x, ws, bs, ("relu", "relu")), rtol=1e-5, atol=1e-6)


def test_non_contiguous_input_and_weights():
    w0 = torch.randn(16, 10).t().requires_grad_()  # [10, 16] view: a layer 16 -> 10
    w1 = torch.randn(8, 20)[:, ::2].requires_grad_()  # [8, 10] strided
    x = torch.randn(16, 7).t()  # [7, 16]
    y = ops.mlp(x, [w0, w1], [None, None], ("relu", "sigmoid"), backend="cpu")
    torch.testing.assert_close(y, ref_chain(x, [w0, w1], [None, None], ("relu", "sigmoid")), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mse", [False, True], ids=["mlp", "mlp_mse_loss"])
def test_gradcheck_float64(mse):
    while True:  # keep relu pre-activations away from 0
        ws, bs = make_chain((4, 5, 3, 4), dtype=torch.float64, bias_mask=(True, False, True))
        x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
        h = F.linear(x, ws[0], bs[0])
        if h.abs().min() > 1e-3:
            break
    acts = ("relu", "none", "sigmoid")
    inputs = (x, ws[0], ws[1], ws[2], bs[0], bs[2])
    target = torch.rand(3, 4, dtype=torch.float64)  # its own storage: gradcheck perturbs x in place

    def f(x, w0, w1, w2, b0, b2):
        if mse:
            return ops.mlp_mse_loss(x, [w0, w1, w2], [b0, None, b2], acts, target, backend="cpu")
        return ops.mlp(x, [w0, w1, w2], [b0, None, b2], acts, backend="cpu")

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("mse", [False, True], ids=["mlp", "mlp_mse_loss"])
def test_gradgradcheck_float64(backend, mse):
    """Double backward through the chain; the target is x itself (an autoencoder's loss), so
    x reaches the loss by two paths and each must be differentiated."""
    while True:  # keep relu pre-activations away from 0
        ws, bs = make_chain((4, 5, 3, 4), dtype=torch.float64, bias_mask=(True, False, True))
        x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
        if F.linear(x, ws[0], bs[0]).abs().min() > 1e-3:
            break
    acts = ("relu", "none", "sigmoid")
    inputs = (x, ws[0], ws[1], ws[2], bs[0], bs[2])

    def f(x, w0, w1, w2, b0, b2):
        if mse:
            return ops.mlp_mse_loss(x, [w0, w1, w2], [b0, None, b2], acts, None, backend=backend)
        return ops.mlp(x, [w0, w1, w2], [b0, None, b2], acts, backend=backend)

    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradgradcheck_mlp_mse_loss_reductions_and_repeated_weight(reduction):
    """The same tensor in two weight slots and a separate target that needs a gradient."""
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b, t):
        return ops.mlp_mse_loss(x, [w, w], [b, None], ("sigmoid", "none"), t, reduction, backend="cpu")

    assert torch.autograd.gradgradcheck(f, (x, w, b, t), eps=1e-6, atol=1e-5)


def test_opcheck_chain_ops():
    ws, bs = make_chain((6, 5, 4), bias_mask=(True, False))
    x = torch.rand(3, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.aecomp.mlp.default, (x, ws, bs, "relu,sigmoid"))
    torch.library.opcheck(torch.ops.aecomp.mlp_mse_loss.default, (x, ws, bs, "relu,sigmoid", torch.rand(3, 4), "mean"))


def test_compile_fullgraph_chain():
    torch._dynamo.reset()
    ws, bs = make_chain((12, 8, 12))
    x = torch.rand(5, 12)

    def loss_fn(x):
        return ops.mlp_mse_loss(x, ws, bs, ("relu", "sigmoid"), x)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x), _params(ws, bs))
    want = torch.autograd.grad(F.mse_loss(ref_chain(x, ws, bs, ("relu", "sigmoid")), x), _params(ws, bs))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_chains_are_named():
    ws, bs = make_chain((6, 5, 4))
    x = torch.rand(3, 6)
    with pytest.raises(ValueError, match=r"mlp.*weights\[1\]\.shape\[1\] = 7 does not match weights\[0\]\.shape\[0\] = 5"):
        ops.mlp(x, [ws[0], torch.randn(4, 7)], bs, ("relu", "none"), backend="cpu")
    with pytest.raises(ValueError, match=r"mlp.*2 weights but 1 activations"):
        ops.mlp(x, ws, bs, ("relu",), backend="cpu")
    with pytest.raises(ValueError, match=r"mlp.*unknown activation 'gelu'"):
        ops.mlp(x, ws, bs, ("gelu", "relu"), backend="cpu")
    with pytest.raises(ValueError, match=r"mlp.*x\.shape\[-1\] = 7|weights\[0\]\.shape\[1\] = 6 does not match x"):
        ops.mlp(torch.rand(3, 7), ws, bs, ("relu", "none"), backend="cpu")
    with pytest.raises(ValueError, match=r"mlp.*biases\[1\] must have shape \[4\]"):
        ops.mlp(x, ws, [bs[0], torch.zeros(3)], ("relu", "none"), backend="cpu")
    with pytest.raises(TypeError, match=r"mlp.*weights\[1\] has dtype torch.float64"):
        ops.mlp(x, [ws[0], ws[1].double()], [None, None], ("relu", "none"), backend="cpu")
    with pytest.raises(ValueError, match=r"aecomp::mlp_mse_loss: target has shape \[3, 5\] but the chain's output is "
                                         r"\[3, 4\]"):
        ops.mlp_mse_loss(x, ws, bs, ("relu", "none"), torch.rand(3, 5), backend="cpu")


def test_reference_backend_agrees():
    ws, bs = make_chain((9, 4, 9))
    x = torch.rand(5, 9)
    a = ops.mlp_mse_loss(x, ws, bs, ("relu", "sigmoid"), backend="cpu")
    b = ops.mlp_mse_loss(x, ws, bs, ("relu", "sigmoid"), backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_scalar_x_is_named_x_by_the_chain_op(backend):
    w = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"aecomp::mlp: x must have at least 1 dimension .* got shape \[\]"):
        ops.mlp(torch.tensor(1.0), [w], None, ["relu"], backend=backend)
    # 1-D x is one sample: [in] -> [out]
    x = torch.randn(5)
    torch.testing.assert_close(ops.mlp(x, [w], None, ["relu"], backend=backend), torch.relu(w @ x))
