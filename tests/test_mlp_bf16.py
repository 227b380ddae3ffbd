"""The bf16 chain op of a user's own loop (aecomp/ops/_bf16.py, csrc/cpu/mlp_bf16.cpp) and its
opt-in through aecomp.accelerate(model, precision="bf16"):

* forward output and the gradients of x, every W and b: equal, up to float32 sums, to the
  float64 emulation of the bf16 algorithm, and against exact float64 autograd within the
  per-element bounds of tests/_bf16_reference.py (error model of csrc/cpu/train_step_bf16.cpp),
  on odd shapes, odd batches and leading batch dims, with parts of the parameters frozen;
* the module plumbing: FusedLinear / FusedSequential with precision="bf16" run the op for
  float32 CPU inputs and the float32 op otherwise (float64 input, and no engine: subprocess with
  ONEDNN_MAX_CPU_ISA=AVX2); accelerate shares the user's parameters, so their optimizer trains;
* bad precision names are refused; the backward is first-order only.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import aecomp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bf16_reference import EMU, bf16_emulation, chain_reference  # noqa: E402  (tests/_bf16_reference.py)
from aecomp.ops import _bf16  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(aecomp._ext.load()[0] or object(), "mlp_bf16_forward"),
                                reason="aecomp._C not built")
needs_bf16 = pytest.mark.skipif(not _bf16.engine(), reason="no bf16 matrix engine on this CPU")


def _params(dims, bias=True):
    ws = [torch.randn(n, k) / k ** 0.5 for k, n in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(n) * 0.1 if bias else None for n in dims[1:]]
    return ws, bs


@needs_bf16
@pytest.mark.parametrize("batch", [1, 9, 64])
@pytest.mark.parametrize("dims,acts,frozen", [
    ([784, 128, 64, 32], ["relu", "relu", "none"], ()),
    ([33, 17, 5, 17, 33], ["sigmoid", "relu", "none", "sigmoid"], (1,)),
    ([6, 3], ["relu"], ()),
], ids=["encoder", "odd", "one"])
def test_forward_and_gradients_against_float64(dims, acts, frozen, batch):
    ws, bs = _params(dims, bias=len(dims) != 2)
    x = torch.rand(batch, dims[0]).requires_grad_()
    wp = [w.clone().requires_grad_(i not in frozen) for i, w in enumerate(ws)]
    bp = [None if b is None else b.clone().requires_grad_(i not in frozen) for i, b in enumerate(bs)]
    y = _bf16.mlp_bf16(x, wp, bp, acts)
    g = torch.randn_like(y)
    y.backward(g)
    r = chain_reference(ws, bs, acts, x, grad=g)
    e = bf16_emulation(ws, bs, acts, x, grad=g)
    assert y.dtype == torch.float32 and y.shape == (batch, dims[-1])
    assert (y.double() - e["y"]).norm() <= EMU * e["y"].norm()
    assert (x.grad.double() - e["gx"]).norm() <= EMU * e["gx"].norm() + 1e-9
    assert ((y.double() - r["y"]).abs() <= r["bound_y"] + 1e-6).all()
    assert ((x.grad.double() - r["gx"]).abs() <= r["bound_x"] + 1e-6).all()
    for i in range(len(ws)):
        if i in frozen:
            assert wp[i].grad is None
            continue
        assert wp[i].grad.dtype == torch.float32
        assert ((wp[i].grad.double() - r["gw"][i]).abs() <= r["bounds"][i][0] + 1e-6).all(), f"dW_{i}"
        assert (wp[i].grad.double() - e["gw"][i]).norm() <= EMU * e["gw"][i].norm() + 1e-9, f"dW_{i} emulated"
        if bp[i] is not None:
            assert ((bp[i].grad.double() - r["gb"][i]).abs() <= r["bounds"][i][1] + 1e-6).all(), f"db_{i}"


@needs_bf16
def test_leading_dims_and_non_contiguous_input():
    ws, bs = _params([20, 12, 7])
    base = torch.rand(3, 5, 40)
    x = base[..., ::2]  # [3, 5, 20], column stride 2
    y = _bf16.mlp_bf16(x, ws, bs, ["relu", "sigmoid"])
    r = chain_reference(ws, bs, ["relu", "sigmoid"], x.reshape(-1, 20), grad=torch.ones(15, 7))
    assert y.shape == (3, 5, 7)
    assert ((y.reshape(15, 7).double() - r["y"]).abs() <= r["bound_y"] + 1e-6).all()


@needs_bf16
def test_double_backward_is_refused():
    ws, bs = _params([8, 4])
    w = ws[0].requires_grad_()
    x = torch.rand(3, 8, requires_grad=True)
    y = _bf16.mlp_bf16(x, [w], bs, ["relu"])
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|does not require grad"):
        gx.sum().backward()


class Seed(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
        self.decoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


@needs_bf16
def test_accelerate_bf16_trains_the_users_parameters_in_their_loop(monkeypatch):
    """The user's optimizer, built before accelerate, trains the bf16 model as far as float32 in
    the same loop (within 5% of its final loss after 60 Adam steps)."""
    torch.manual_seed(0)
    model = Seed()
    plain = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    opt32 = torch.optim.Adam(plain.parameters(), lr=3e-3)
    fast = aecomp.accelerate(model, precision="bf16", inplace=True)
    assert "bf16" in str(fast.aecomp_report)
    calls = []
    real = _bf16.mlp_bf16
    monkeypatch.setattr(_bf16, "mlp_bf16", lambda *a: calls.append(1) or real(*a))
    x = torch.rand(128, 64)
    losses = {"bf16": [], "fp32": []}
    for _ in range(60):
        for name, m, o in (("bf16", fast, opt), ("fp32", plain, opt32)):
            o.zero_grad()
            loss = nn.functional.mse_loss(m(x), x)
            loss.backward()
            o.step()
            losses[name].append(loss.item())
    assert len(calls) == 2 * 60  # encoder and decoder, each one bf16 chain op per step
    assert losses["bf16"][-1] < 0.9 * losses["bf16"][0]
    assert losses["bf16"][-1] <= 1.05 * losses["fp32"][-1], (losses["bf16"][-1], losses["fp32"][-1])
    # float64 inputs take the float32 op path of the same modules (no bf16 for them)
    fast64 = copy.deepcopy(fast).double()
    assert fast64(x.double()).dtype == torch.float64


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        aecomp.accelerate(Seed(), precision="half")
    from aecomp.nn import FusedLinear

    with pytest.raises(ValueError, match="FusedLinear: precision must be one of fp32, bf16"):
        FusedLinear(3, 4, precision="bf16 ")


_SUB = """
import torch, aecomp
from aecomp.ops import _bf16
m = aecomp.accelerate(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()), precision="bf16")
x = torch.rand(5, 8)
print(_bf16.engine(), torch.allclose(m(x), torch.relu(x @ m[0].weight.t() + m[0].bias), atol=1e-6))
"""


def test_without_the_engine_the_float32_op_runs():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", _SUB], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


@needs_bf16
def test_sigmoid_saturates_on_huge_and_infinite_pre_activations():
    """sigmoid(+inf) = 1 and sigmoid(3e20) = 1 as torch's (the bf16 epilogue's e^-v was clamped
    from above only: +inf or v > ~2e14 gave NaN); -inf -> 0; NaN stays NaN."""
    b = torch.tensor([float("inf"), 3e20, 1e15, float("-inf"), -3e20, 0.0, float("nan"), 2.0])
    ws, bs = [torch.zeros(8, 6)], [b]
    y = _bf16.mlp_bf16(torch.rand(5, 6), ws, bs, ["sigmoid"])
    want = torch.sigmoid(b).expand(5, 8)
    torch.testing.assert_close(y, want, equal_nan=True, atol=1e-6, rtol=0)
