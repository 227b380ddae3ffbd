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


def _train(dims, name, batch, steps=3, device="cpu", dtype=torch.float32, loss_rel=1e-5):
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep

    torch.manual_seed(0)
    m1 = Autoencoder(dims, backend="triton").to(device=device, dtype=dtype)
    m2 = copy.deepcopy(m1)
    o1, o2 = OPTIMIZERS[name](m1.parameters()), OPTIMIZERS[name](m2.parameters())
    fused = FusedStep(m1, o1)
    start = [p.detach().clone() for p in m1.parameters()]
    data = torch.rand(steps, batch, dims[0]).to(device=device, dtype=dtype)
    for x in data:
        a = fused.step(x)
        assert all(p.grad is None for p in m1.parameters()), "the fused step wrote a gradient"
        o2.zero_grad()
        b = m2.loss(x)
        b.backward()
        o2.step()
        assert a.item() == pytest.approx(b.item(), rel=loss_rel)
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


# ----------------------------------------------------------------------------------------
# on the GPU (and the same check on the CPU under the interpreter)
# ----------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _close_but_rare_flips(got, want, rtol, atol, what, flip):
    """``got`` equals ``want`` within ``atol + rtol |want|`` except at no more than 1 in 10^4
    elements (at least one), which may differ by up to ``flip``. Why: Adam's first steps move a
    weight by about ``lr * sign(g)``, so a gradient within rounding of zero, summed in another
    order by another tile (the fused update's GEMM against the plain wgrad, each autotuned on
    its own), may move it the other way. A kernel that is wrong moves far more than 1 in 10^4."""
    diff = (got.detach().float() - want.detach().float()).abs()
    bad = diff > atol + rtol * want.float().abs()
    allowed = max(1, want.numel() // 10_000)
    assert int(bad.sum()) <= allowed, (f"{what}: {int(bad.sum())} of {want.numel()} elements off (allowed {allowed}); "
                                       f"max diff {float(diff.max()):.3g}")
    assert float(diff.max()) <= flip, f"{what}: max diff {float(diff.max()):.3g} > {flip:.3g}"


def _fused_step_on_device(device, dims, name, batch, dtype):
    """FusedStep (the optimizer fused into the Triton chain backward) against the plain step
    (triton backend's autograd + torch.optim) on ``device``, 3 steps from the same start.

    Tolerances. float32: the forward and dgrad kernels are the same ones; only the weight
    gradient's summation order (another GEMM, maybe another tile) and the update's FMA order
    differ, ~1e-6 relative: loss rtol 1e-4, parameters rtol 1e-4 / atol 1e-6, optimizer state
    rtol 1e-3 / atol 1e-6 x its largest magnitude; Adam's rare sign flips allowed (see
    :func:`_close_but_rare_flips`; a flip moves a weight by at most twice the largest move of
    the plain step). bfloat16: the fused update runs in float32 on the float32 gradient, the
    plain path rounds dW to bfloat16 and updates in bfloat16: parameters atol 1.2e-2 (as
    test_triton_fused_optimizer_bfloat16: catches a missing or misdirected update, not a few
    percent of error, which the float32 cases do), loss rtol 2e-2, state not compared."""
    bf16 = dtype == torch.bfloat16
    from aecomp.models import Autoencoder

    # (the fused path ran: _train checks that it wrote no gradient, which the plain path would)
    m1, o1, m2, o2 = _train(dims, name, batch, device=device, dtype=dtype, loss_rel=2e-2 if bf16 else 1e-4)
    torch.manual_seed(0)  # _train's starting model again (same seed, same init), for the plain step's largest move
    start = Autoencoder(dims, backend="triton").to(device=device, dtype=dtype)
    flip = 2 * max(float((q.detach().float() - q0.detach().float()).abs().max())
                   for q, q0 in zip(m2.parameters(), start.parameters()))
    rtol, atol = (0.0, 1.2e-2) if bf16 else (1e-4, 1e-6)
    for (n, p), q in zip(m1.named_parameters(), m2.parameters()):
        assert p.dtype == dtype and p.device.type == device
        _close_but_rare_flips(p, q, rtol, atol, n, max(flip, atol))
    if bf16:
        return
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys() and s1
    for k, st in s2.items():
        assert st.keys() == s1[k].keys()
        for n, v in st.items():
            if v.dim() == 0:  # the step count
                assert float(s1[k][n]) == float(v), f"{k}.{n}"
                continue
            scale = float(v.abs().max()) + 1e-30
            _close_but_rare_flips(s1[k][n], v, 1e-3, 1e-6 * scale, f"state {k}.{n}", 2 * scale)


@gpu
@pytest.mark.parametrize("dims,name,batch,dtype", [
    ((784, 128, 64, 32), "adam", 4096, torch.float32),
    ((784, 128, 64, 32), "adam", 4096, torch.bfloat16),
    ((784, 128, 64, 32), "sgd_momentum", 1000, torch.float32),
    ((784, 300, 33), "adamw", 777, torch.float32),
], ids=["ae-adam-f32", "ae-adam-bf16", "ae-sgd-momentum-ragged", "wide-adamw"])
def test_gpu_fused_optimizer_follows_torch_optim(dims, name, batch, dtype):
    """CUDA tensors through the Triton fused-optimizer step (the reference autoencoder at batch
    4096 and a ragged 1000; a 300-wide layer that runs as one-layer pieces) against torch.optim."""
    _fused_step_on_device("cuda", dims, name, batch, dtype)


@interpreted
@pytest.mark.parametrize("name,dtype", [("adam", torch.float32), ("adam", torch.bfloat16)], ids=["f32", "bf16"])
def test_fused_step_device_check_under_the_interpreter(name, dtype):
    """The GPU test's body on CPU tensors under TRITON_INTERPRET=1 (small shapes), so its checks
    run wherever the tests run."""
    _fused_step_on_device("cpu", (7, 13, 5), name, 20, dtype)
