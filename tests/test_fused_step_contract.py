"""What the fused training step owes torch.optim beyond the common case (issue 23, items 1-3):

1. a parameter used by two layers (``l(l(x))`` with one FusedLinear; a weight tied between
   encoder and decoder) gets ONE gradient, the sum over its uses, and ONE optimizer step per
   training step on every path of ``FusedStep``: the fused optimizer cannot sum (it updates each
   slot as its gradient completes), so FusedStep takes its plain path there and the raw fused
   steps (``aecomp._C.mlp_mse_train_step``, ``mlp_mse_train_step_triton``) refuse shared
   parameters; the plain path sums the slots' gradients. Checked against the usual torch loop
   (plain torch forward, ``loss.backward()``, ``torch.optim``) over several steps for Adam, AdamW
   and SGD with momentum, on the CPU fused path, the C++ value-and-grad path (a non-qualifying
   optimizer), the autograd path, and the triton path (interpreter);
2. an empty batch steps the optimizer as torch does (its gradients are zero, but Adam's moments
   still decay and weight decay / momentum still apply): the fused step matches torch exactly;
3. an argument error part way through the fused step changes nothing (no parameter, state,
   step count or version counter moves).

Tolerance (1): both sides compute float32 gradients in a different order, and Adam divides by
sqrt(v), so where a gradient is tiny its rounding moves the update by a sizeable part of lr:
after 4 steps at lr 1e-2 two correct implementations differ by up to ~2e-4 (the per-ISA
optimizer check of test_microkernel.py sees the same); a second update per step, or a lost
use's gradient, moves parameters by ~lr = 1e-2.
"""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import aecomp
from aecomp import _ext
from aecomp.nn import FusedLinear
from aecomp.train import FusedStep

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _triton_interp_runner import interpreted  # noqa: E402

CPU = aecomp.available_backends()["cpu"][0]

OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),  # never fused: the C++ plain path
}


class Twice(torch.nn.Module):
    """forward = l(l(x)): one FusedLinear (weight AND bias) used by two layers."""

    def __init__(self, width=12, backend=None):
        super().__init__()
        self.l = FusedLinear(width, width, activation="sigmoid", backend=backend)

    def forward(self, x):
        return self.l(self.l(x))


class Tied(torch.nn.Module):
    """An encoder and a decoder sharing their weight (biases separate)."""

    def __init__(self, width=12, backend=None):
        super().__init__()
        self.enc = FusedLinear(width, width, activation="relu", backend=backend)
        self.dec = FusedLinear(width, width, activation="sigmoid", backend=backend)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(self.enc(x))


def _plain_forward(model, x):
    """The same chain in plain torch (F.linear + activation), for the usual torch loop."""
    if isinstance(model, Twice):
        layers = [model.l, model.l]
    elif isinstance(model, Tied):
        layers = [model.enc, model.dec]
    else:
        layers = model.fused_chain()[0]
    for layer in layers:
        x = F.linear(x, layer.weight, layer.bias)
        x = torch.relu(x) if layer.activation == "relu" else torch.sigmoid(x) if layer.activation == "sigmoid" else x
    return x


def _train_both(make_model, name, steps=4, batch=9, backend_ctx=None):
    torch.manual_seed(0)
    model = make_model()
    ref = copy.deepcopy(model)
    o1, o2 = OPTIMIZERS[name](model.parameters()), OPTIMIZERS[name](ref.parameters())
    step = FusedStep(model, o1)
    assert step._shared()
    assert not step.uses_fused_optimizer(torch.rand(2, 12))
    for x in torch.rand(steps, batch, 12):
        a = step.step(x)
        o2.zero_grad()
        b = F.mse_loss(_plain_forward(ref, x), x)
        b.backward()
        o2.step()
        assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6)
    return model, o1, ref, o2


def _same(model, o1, ref, o2):
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-4, msg=lambda s: f"{n}: {s}")
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s2:
        if "step" in s2[k]:
            assert float(s1[k]["step"]) == float(s2[k]["step"])  # one step per training step


@pytest.mark.skipif(not CPU, reason="aecomp._C is not built")
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("make", [Twice, Tied], ids=["twice", "tied"])
def test_shared_parameters_follow_the_torch_loop_on_the_cpu(make, name):
    _same(*_train_both(make, name))


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_shared_parameters_follow_the_torch_loop_through_autograd(name):
    """The autograd path (backend 'reference': no C++ value-and-grad, the engine sums the slots)."""
    _same(*_train_both(lambda: Twice(backend="reference"), name))


@interpreted
@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_shared_parameters_follow_the_torch_loop_on_triton(name):
    pytest.importorskip("triton")
    _same(*_train_both(lambda: Tied(backend="triton"), name, steps=2))


@pytest.mark.skipif(not CPU, reason="aecomp._C is not built")
def test_the_raw_fused_step_refuses_shared_parameters():
    C = _ext.load()[0]
    w = torch.randn(6, 6)
    state = [torch.zeros(6, 6), torch.zeros(6, 6), None, None]
    with pytest.raises(ValueError, match=r"weights\[0\] and weights\[1\] share memory \(one parameter used by two"):
        C.mlp_mse_train_step(torch.rand(3, 6), [w, w], [None, None], "relu,sigmoid", torch.rand(3, 6), "mean",
                             [2.0, 0.1, 0, 0, 0, 0, 0, 0.9, 0, 0], [0, 0, -1, -1], state, [None] * 4, [None] * 4,
                             [True] * 4)
    assert torch.equal(state[0], torch.zeros(6, 6))


@interpreted
def test_the_raw_triton_step_refuses_shared_parameters():
    pytest.importorskip("triton")
    from aecomp.kernels.optim import SGD, OptimHyper
    from aecomp.ops._triton import mlp_mse_train_step_triton

    w = torch.randn(6, 6)
    with pytest.raises(ValueError, match=r"weights\[0\] and weights\[1\] share memory"):
        mlp_mse_train_step_triton(torch.rand(3, 6), [w, w], [None, None], ["relu", "sigmoid"], torch.rand(3, 6),
                                  "mean", [OptimHyper(SGD, 0.1)] * 2, [((None, None), (None, None))] * 2)


# ------------------------------------------------------------------ 2. empty batches
def _empty_batch_case(backend, name):
    from aecomp.models import Autoencoder

    torch.manual_seed(1)
    m1 = Autoencoder((10, 7, 3), backend=backend)
    m2 = copy.deepcopy(m1)
    o1, o2 = OPTIMIZERS[name](m1.parameters()), OPTIMIZERS[name](m2.parameters())
    step = FusedStep(m1, o1)
    for x in (torch.rand(5, 10), torch.rand(0, 10), torch.rand(0, 10), torch.rand(4, 10)):
        a = step.step(x)
        o2.zero_grad()
        b = F.mse_loss(_plain_forward(m2, x), x)
        b.backward()
        o2.step()
        assert torch.isnan(a) == torch.isnan(b)
    return m1, o1, m2, o2


@pytest.mark.skipif(not CPU, reason="aecomp._C is not built")
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd_momentum"])
def test_an_empty_batch_steps_the_optimizer_like_torch(name):
    """The fused step's empty batch: Adam's moments decay and the parameters move as torch's do."""
    m1, o1, m2, o2 = _empty_batch_case(None, name)
    assert FusedStep(m1, o1).uses_fused_optimizer(torch.rand(0, 10))
    _same(m1, o1, m2, o2)


@interpreted
@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_an_empty_batch_steps_the_optimizer_like_torch_on_triton(name):
    pytest.importorskip("triton")
    _same(*_empty_batch_case("triton", name))


# ------------------------------------------------------------------ 3. errors change nothing
def _snapshot(tensors):
    return [(t.clone(), t._version) for t in tensors if t is not None]


def _unchanged(before, tensors):
    after = [t for t in tensors if t is not None]
    for (v, ver), t in zip(before, after):
        assert torch.equal(v, t) and t._version == ver


@pytest.mark.skipif(not CPU, reason="aecomp._C is not built")
def test_an_argument_error_part_way_changes_nothing():
    """The last parameter's state is wrong: before, earlier parameters had their step counted and
    their version bumped when the check of the last one failed."""
    C = _ext.load()[0]
    ws = [torch.randn(4, 6), torch.randn(6, 4)]
    bs = [torch.randn(4), torch.randn(6)]
    exp_avg = [torch.zeros(4, 6), torch.zeros(6, 4), torch.zeros(4), torch.zeros(5)]  # the last is the wrong shape
    exp_avg_sq = [torch.zeros(4, 6), torch.zeros(6, 4), torch.zeros(4), torch.zeros(6)]
    steps = [torch.tensor(3.0) for _ in range(4)]
    everything = [*ws, *bs, *exp_avg, *exp_avg_sq, *steps]
    before = _snapshot(everything)
    with pytest.raises(ValueError, match=r"exp_avg\[3\] has shape \[5\]"):
        C.mlp_mse_train_step(torch.rand(3, 6), ws, bs, "relu,sigmoid", torch.rand(3, 6), "mean",
                             [1.0, 1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0, 0, 0, 0], [0, 0, 0, 0], exp_avg, exp_avg_sq,
                             steps, [False] * 4)
    _unchanged(before, everything)


@interpreted
def test_an_argument_error_part_way_changes_nothing_on_triton():
    """FusedStep on the triton backend counted Adam's steps before the twin checked the state."""
    pytest.importorskip("triton")
    from aecomp.models import Autoencoder

    m = Autoencoder((7, 5, 3), backend="triton")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    step = FusedStep(m, opt)
    step.step(torch.rand(4, 7))
    params = list(m.parameters())
    last = params[-1]
    opt.state[last]["exp_avg_sq"] = torch.zeros(last.numel() + 1)  # broken state for the last parameter
    everything = [*params, *(v for st in opt.state.values() for v in st.values())]
    before = _snapshot(everything)
    with pytest.raises(ValueError, match="state 1 of"):
        step.step(torch.rand(4, 7))
    _unchanged(before, everything)
