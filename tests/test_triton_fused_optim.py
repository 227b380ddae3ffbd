"""The optimizer fused into the Triton chain backward (kernels/optim.py through
``aecomp.ops._triton.mlp_mse_train_step_triton`` and ``FusedStep`` on the triton backend),
under Triton's interpreter on CPU tensors (the ``@interpreted`` worker, TRITON_INTERPRET=1).

Each case trains the same float32 model twice from the same start: ``FusedStep`` (the fused
update, no gradient tensor) and the plain step (autograd on the triton backend's ``mlp_mse_loss``,
then ``torch.optim``'s own ``step``), a few steps, and compares parameters, losses and the
optimizer's ``state_dict``.

Tolerance: float32 both ways; the gradients are the same float32 sums (the same kernel
structure, tile and split order), so the only difference is the update's arithmetic (fused FMA
order against torch's foreach ops), ~1e-7 relative per step: rtol 1e-5 / atol 1e-6 on
parameters and state over 3 steps (lr 2e-3 .. 0.2 moves a parameter ~lr per step).

Shapes: the 7-13-5-13-7 autoencoder (four layers, one fused chain kernel) at batch 20 (one wgrad
row split: the update runs in the GEMM epilogue) and batch 33 (AdamW, SGD with momentum; two splits: the update runs in the
final split-sum pass), and 7-200-7 in float32 (200 exceeds the on-chip limit: each layer is a
one-layer piece, dgrad by linear_act then the fused update). Also: one SGD step against the
float64 chain (the update uses the gradient of the OLD weights), bfloat16 parameters and state
(looser tolerance, see that test), a non-qualifying optimizer taking the plain path, bad input.
"""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

pytest.importorskip("triton")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _triton_interp_runner import interpreted  # noqa: E402

OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_wd": lambda ps: torch.optim.Adam(ps, lr=2e-3, weight_decay=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.2),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
}


def _train(dims, name, batch, steps=3):
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep

    torch.manual_seed(0)
    m1 = Autoencoder(dims, backend="triton")
    m2 = copy.deepcopy(m1)
    o1, o2 = OPTIMIZERS[name](m1.parameters()), OPTIMIZERS[name](m2.parameters())
    fused = FusedStep(m1, o1)
    start = [p.detach().clone() for p in m1.parameters()]
    data = torch.rand(steps, batch, dims[0])
    for x in data:
        a = fused.step(x)
        assert all(p.grad is None for p in m1.parameters()), "the fused step wrote a gradient"
        o2.zero_grad()
        b = m2.loss(x)
        b.backward()
        o2.step()
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    moved = [(p - p0).abs().max().item() for p, p0 in zip(m1.parameters(), start)]
    assert min(moved) > 0 and max(moved) > 1e-3, moved  # every parameter moved (a no-op step fails here)
    return m1, o1, m2, o2


def _check_same(m1, o1, m2, o2):
    for (n, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda s: f"{n}: {s}")
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    for k, st in s2["state"].items():
        assert st.keys() == s1["state"][k].keys()
        for n, v in st.items():
            torch.testing.assert_close(s1["state"][k][n], v, rtol=1e-5, atol=1e-6, msg=lambda s: f"{k}.{n}: {s}")


@interpreted
@pytest.mark.parametrize("name,batch", [(n, 20) for n in OPTIMIZERS] + [("adamw", 33), ("sgd_momentum", 33)])
def test_triton_fused_optimizer_follows_torch_optim(name, batch):
    from aecomp.kernels.linear_act import wgrad_splits

    assert wgrad_splits(batch, 13, 5, "interpreter", 4)[0] == (1 if batch == 20 else 2)
    m1, o1, m2, o2 = _train((7, 13, 5), name, batch)
    _check_same(m1, o1, m2, o2)


@interpreted
@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_triton_fused_optimizer_one_layer_pieces(name):
    from aecomp.kernels import mlp

    assert all(not s.fused for s in mlp.plan_chain((7, 200, 7), 128))
    m1, o1, m2, o2 = _train((7, 200), name, 9, steps=3)
    _check_same(m1, o1, m2, o2)


@interpreted
def test_triton_fused_step_updates_and_dgrad_reads_old_weights():
    """One step by hand against the float64 chain: the update uses the gradient of the OLD
    weights (the dgrad of layer i must read W_i before its update)."""
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep

    torch.manual_seed(1)
    m = Autoencoder((7, 13, 5), backend="triton")
    ref = copy.deepcopy(m).double()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x = torch.rand(11, 7)
    FusedStep(m, opt).step(x)
    loss = torch.nn.functional.mse_loss(_plain_forward(ref, x.double()), x.double())
    loss.backward()
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.double(), q.detach() - 0.5 * q.grad, rtol=1e-5, atol=1e-5,
                                   msg=lambda s: f"{n}: {s}")
        assert not torch.allclose(p.double(), q.detach(), atol=1e-4)


def _plain_forward(model, x):
    layers, _ = model.fused_chain()
    h = x
    for layer in layers:
        h = torch.nn.functional.linear(h, layer.weight, layer.bias)
        if layer.activation == "relu":
            h = torch.relu(h)
        elif layer.activation == "sigmoid":
            h = torch.sigmoid(h)
    return h


def test_triton_fused_optimizer_qualification():
    """amsgrad, maximize and other optimizers take the plain path (no kernel needed to decide)."""
    from aecomp.train.fused import _fused_optimizer_kind

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert _fused_optimizer_kind(torch.optim.Adam(p, amsgrad=True)) is None
    assert _fused_optimizer_kind(torch.optim.SGD(p, lr=0.1, maximize=True)) is None
    assert _fused_optimizer_kind(torch.optim.RMSprop(p)) is None
    assert _fused_optimizer_kind(torch.optim.AdamW(p)) is not None


@interpreted
def test_triton_fused_step_plain_path_for_other_optimizers():
    """An optimizer that does not qualify (Adam with amsgrad) takes the plain path: gradients are
    written and torch.optim steps; the result equals the plain step's."""
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep

    torch.manual_seed(2)
    m1 = Autoencoder((7, 13, 5), backend="triton")
    m2 = copy.deepcopy(m1)
    o1, o2 = (torch.optim.Adam(m.parameters(), lr=1e-2, amsgrad=True) for m in (m1, m2))
    x = torch.rand(9, 7)
    FusedStep(m1, o1).step(x)
    assert all(p.grad is not None for p in m1.parameters())
    m2.loss(x).backward()
    o2.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_triton_fused_step_bad_input():
    """One clear error naming the argument: non-contiguous state, a hyper-parameter list of the
    wrong length (checked on the host, before any kernel)."""
    from aecomp.kernels.optim import ADAM, OptimHyper, wgrad_optim
    from aecomp.ops._triton import mlp_mse_train_step_triton

    w = torch.zeros(6, 4).t()  # [4, 6], not contiguous
    h, g = torch.zeros(3, 6), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        wgrad_optim(g, h, g, 0, w, None, (None, None), (None, None), OptimHyper(ADAM, 1e-3))
    ws = [torch.zeros(4, 6), torch.zeros(6, 4)]
    with pytest.raises(ValueError, match="one hyper-parameter set and one state pair per layer"):
        mlp_mse_train_step_triton(torch.zeros(3, 6), ws, [None, None], ["relu", "none"], torch.zeros(3, 6), "mean",
                                  [OptimHyper(ADAM, 1e-3)], [])


@interpreted
def test_triton_fused_optimizer_bfloat16():
    """bfloat16 parameters and state: the fused update runs in float32 on the float32 gradient
    (the plain path rounds dW to bfloat16 and torch.optim computes in bfloat16), so after 3 Adam
    steps the parameters agree to a few bfloat16 ulps: atol 1.2e-2 (~6 ulps at |p| < 0.5;
    measured 3e-3 .. 6e-3)."""
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep

    torch.manual_seed(0)
    m1 = Autoencoder((7, 13, 5), backend="triton").to(torch.bfloat16)
    m2 = copy.deepcopy(m1)
    o1, o2 = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (m1, m2))
    start = [p.detach().clone() for p in m1.parameters()]
    fused = FusedStep(m1, o1)
    for _ in range(3):
        x = torch.rand(20, 7).to(torch.bfloat16)
        fused.step(x)
        assert all(p.grad is None for p in m1.parameters())
        o2.zero_grad()
        m2.loss(x).backward()
        o2.step()
    for p, q, p0 in zip(m1.parameters(), m2.parameters(), start):
        assert p.dtype == torch.bfloat16 and o1.state[p]["exp_avg"].dtype == torch.bfloat16
        torch.testing.assert_close(p.float(), q.float(), rtol=0, atol=1.2e-2)
        assert (p.float() - p0.float()).abs().max() > 1e-2  # moved (lr 1e-2, 3 steps)
