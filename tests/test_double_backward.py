"""Second-order gradients through the fused ops: gradient penalties, Hessian-vector products.

The op-level ``gradgradcheck`` tests live with each op (test_linear_act.py, test_mse.py,
test_mlp.py). Here:

* a model-level check: ``aecomp.models.Autoencoder`` in float64, a gradient penalty and a
  Hessian-vector product on the ``cpu`` backend equal the ``reference`` backend's (plain
  PyTorch) to 1e-10 relative -- float64 rounding of a few hundred terms;
* the plain ``backward()`` still runs the fused backward kernels (the differentiable path is
  only taken when a graph is built);
* the triton backend under Triton's interpreter (``@interpreted``: one TRITON_INTERPRET=1
  worker): float32 only (the Triton kernels take float32/bf16/fp16), so its second-order
  gradients are compared with the float64 reference of the same inputs at 1e-4 relative to the
  largest magnitude (float32 rounding through two chained products and the recomputed chain).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import aecomp
from aecomp import ops
from aecomp import _ext
from aecomp.models import Autoencoder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _triton_interp_runner import interpreted  # noqa: E402

# not conftest's marker: the interpreter worker loads this file by path, outside the package
requires_cpu_ext = pytest.mark.skipif(_ext.load()[0] is None, reason="aecomp._C is not built")


def _second_order(model, x, backend):
    """(gradient-penalty gradients, Hessian-vector product) of the model's loss."""
    params = list(model.parameters())
    with aecomp.use_backend(backend):
        loss = model.loss(x)
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        penalty = gx.pow(2).sum()
        gp = torch.autograd.grad(penalty, params)
        loss = model.loss(x)
        g = torch.autograd.grad(loss, params, create_graph=True)
        gen = torch.Generator().manual_seed(3)
        vs = [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]
        hv = torch.autograd.grad(sum((gi * v).sum() for gi, v in zip(g, vs)), params)
    return gp, hv


@requires_cpu_ext
def test_autoencoder_gradient_penalty_and_hvp_match_reference_float64():
    torch.manual_seed(0)
    model = Autoencoder((20, 12, 6)).double()
    x = torch.rand(9, 20, dtype=torch.float64, requires_grad=True)
    gp_ref, hv_ref = _second_order(model, x, "reference")
    gp, hv = _second_order(model, x, "cpu")
    for a, b in zip(gp + hv, gp_ref + hv_ref):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * b.abs().max().item())


@requires_cpu_ext
def test_accelerated_user_model_contractive_penalty_matches_reference():
    """A user's own model after accelerate: the chain ops and FusedMSELoss under create_graph."""
    from torch import nn

    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(10, 7), nn.Sigmoid(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 10)).double()
    fast = aecomp.accelerate(plain, backend="cpu")
    x = torch.rand(5, 10, dtype=torch.float64, requires_grad=True)
    outs = []
    for model in (plain, fast):
        loss = nn.MSELoss()(model(x), x) if model is plain else aecomp.nn.FusedMSELoss(backend="cpu")(model(x), x)
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        outs.append(torch.autograd.grad(gx.pow(2).sum(), [x, *model.parameters()]))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@requires_cpu_ext
def test_plain_backward_still_uses_the_fused_kernels(monkeypatch):
    """Without create_graph the backward is the fused kernel (no differentiable recompute)."""
    x = torch.rand(4, 6, requires_grad=True)
    w = torch.randn(5, 6, requires_grad=True)
    y = ops.mlp(x, [w, torch.randn(3, 5, requires_grad=True)], None, ("relu", "sigmoid"), backend="cpu")
    with torch.autograd.profiler.profile() as prof:
        y.sum().backward()
    names = {e.name for e in prof.function_events}
    assert "aecomp::mlp_backward" in names and "aten::linear" not in names
    y = ops.mlp(x, [w, torch.randn(3, 5, requires_grad=True)], None, ("relu", "sigmoid"), backend="cpu")
    with torch.autograd.profiler.profile() as prof:
        torch.autograd.grad(y.sum(), x, create_graph=True)
    names = {e.name for e in prof.function_events}
    assert "aecomp::mlp_backward" not in names and "aten::linear" in names


# ---------------------------------------------------------------------------------- triton
def _triton_vs_reference(fn, inputs32):
    """Gradient-penalty style second order of ``fn`` on triton (float32) vs reference (float64)."""
    results = []
    for backend, dtype in (("triton", torch.float32), ("reference", torch.float64)):
        ins = [t.detach().to(dtype).requires_grad_() for t in inputs32]
        out = fn(backend, *ins)
        g = torch.autograd.grad(out.sum() if out.dim() else out, ins, create_graph=True)
        penalty = sum(gi.pow(2).sum() for gi in g)
        # (activation none: the bias does not reach the penalty; its second-order gradient is 0)
        results.append(torch.autograd.grad(penalty, ins, allow_unused=True, materialize_grads=True))
    scale = max(b.abs().max().item() for b in results[1])
    assert scale > 0
    for a, b in zip(*results):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("activation", ["none", "relu", "sigmoid"])
@interpreted
def test_triton_linear_act_double_backward(activation):
    torch.manual_seed(2)
    x, w, b = torch.randn(5, 7), torch.randn(6, 7) / 3, torch.randn(6)
    _triton_vs_reference(lambda be, x, w, b: ops.linear_act(x, w, b, activation, backend=be), [x, w, b])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@interpreted
def test_triton_mse_loss_double_backward(reduction):
    torch.manual_seed(3)
    _triton_vs_reference(lambda be, a, t: ops.mse_loss(a, t, reduction, backend=be),
                         [torch.randn(4, 5), torch.randn(4, 5)])


@pytest.mark.parametrize("fused_loss", [False, True], ids=["mlp", "mlp_mse_loss"])
@interpreted
def test_triton_chain_double_backward(fused_loss):
    torch.manual_seed(4)
    x = torch.rand(6, 8)
    ws = [torch.randn(5, 8) / 3, torch.randn(4, 5) / 2, torch.randn(8, 4) / 2]
    b0, b2 = torch.randn(5) * 0.1, torch.randn(8) * 0.1
    acts = ("sigmoid", "none", "sigmoid")

    def f(be, x, w0, w1, w2, b0, b2):
        if fused_loss:  # target = x: x reaches the loss by two paths
            return ops.mlp_mse_loss(x, [w0, w1, w2], [b0, None, b2], acts, None, backend=be)
        return ops.mlp(x, [w0, w1, w2], [b0, None, b2], acts, backend=be)

    _triton_vs_reference(f, [x, *ws, b0, b2])


# ------------------------------------------------------------------ zero-width layers
def _zero_width_case(backend, shape, create_graph):
    """out_features = 0: the output is empty and dx is zeros, as torch's; in_features = 0 too:
    dW [N, 0] of zeros, dx empty. The differentiable backward (create_graph) once failed reshaping
    its [M, 0] gradient with -1 (the row count cannot be inferred from 0 elements)."""
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(0, 6, requires_grad=True)
    b = torch.randn(0, requires_grad=True)
    y = ops.linear_act(x, w, b, "relu", backend=backend)
    assert y.shape == (*shape[:-1], 0)
    gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b), create_graph=create_graph)
    assert torch.equal(gx, torch.zeros_like(x)) and gw.shape == (0, 6) and gb.shape == (0,)
    x0 = torch.randn(*shape[:-1], 0, requires_grad=True)
    w0 = torch.randn(5, 0, requires_grad=True)
    y0 = ops.linear_act(x0, w0, None, "sigmoid", backend=backend)
    gx0, gw0 = torch.autograd.grad(y0.sum(), (x0, w0), create_graph=create_graph)
    assert gx0.shape == x0.shape and torch.equal(gw0, torch.zeros(5, 0))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("create_graph", [False, True], ids=["first", "second_order"])
def test_zero_out_features_gives_zero_dx_like_torch(backend, create_graph):
    if backend == "cpu" and _ext.load()[0] is None:
        pytest.skip("aecomp._C is not built")
    for shape in ((4, 6), (2, 3, 6)):
        _zero_width_case(backend, shape, create_graph)


@interpreted
def test_zero_out_features_gives_zero_dx_like_torch_on_triton():
    pytest.importorskip("triton")
    for shape in ((4, 6), (2, 3, 6)):
        for create_graph in (False, True):
            _zero_width_case("triton", shape, create_graph)
