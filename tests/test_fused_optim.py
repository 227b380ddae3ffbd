"""The optimizer fused into the backward (aecomp._C.mlp_mse_train_step through FusedStep):
the same training as torch.optim's plain step over 100 steps, torch.optim's own state (so
state_dict / resume work), the plain path for what it does not support, and the same bits for
any thread count.

Tolerance: 100 steps of float32 training, our kernels against ATen's: parameters agree to
rtol 1e-4 / atol 2e-5 (lr 1e-3 to 1e-2; each step moves a parameter by ~lr, the per-step
rounding difference is ~1e-7 relative and does not grow beyond a few times that here).
"""
from __future__ import annotations

import copy

import pytest
import torch

from aecomp import _ext
from aecomp.models import Autoencoder
from aecomp.train import FusedStep, PlainStep

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext

OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "adam_fused_wd": lambda ps: torch.optim.Adam(ps, lr=2e-3, weight_decay=1e-2, fused=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.8, 0.99), weight_decay=0.05),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
}


def _pair(dims, make_opt, seed=0):
    torch.manual_seed(seed)
    m1 = Autoencoder(dims)
    m2 = copy.deepcopy(m1)
    return m1, make_opt(m1.parameters()), m2, make_opt(m2.parameters())


def _close(m1, m2):
    for (n, p), q in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5, msg=lambda s: f"{n}: {s}")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_optimizer_follows_torch_optim_for_100_steps(name):
    m1, o1, m2, o2 = _pair((45, 23, 7), OPTIMIZERS[name])
    fused, plain = FusedStep(m1, o1), PlainStep(m2.loss, o2)
    assert fused.uses_fused_optimizer(torch.rand(2, 45))
    data = torch.rand(100, 33, 45)
    for x in data:
        a, b = fused.step(x), plain.step(x)
        assert a.item() == pytest.approx(b.item(), rel=1e-4)
    _close(m1, m2)
    assert all(p.grad is None for p in m1.parameters())  # no gradient tensor was written
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k, st in s2["state"].items():
        assert set(s1["state"][k]) == set(st)
        for key, v in st.items():
            if key == "step":
                assert float(s1["state"][k][key]) == float(v) == 100.0
                assert s1["state"][k][key].dtype == v.dtype
            else:
                # gradient-sized state: compared at its own scale (elements near 0 differ relatively)
                torch.testing.assert_close(s1["state"][k][key], v, rtol=1e-3, atol=1e-3 * float(v.abs().max()))


def test_reference_autoencoder_shapes():
    """The 784-128-64-32 autoencoder at an odd batch (M edge of the tile, K = 784)."""
    m1, o1, m2, o2 = _pair((784, 128, 64, 32), lambda ps: torch.optim.Adam(ps, lr=1e-3))
    fused, plain = FusedStep(m1, o1), PlainStep(m2.loss, o2)
    for _ in range(5):
        x = torch.rand(7, 784)
        assert fused.step(x).item() == pytest.approx(plain.step(x).item(), rel=1e-4)
    _close(m1, m2)


def test_resume_from_a_state_dict_continues_the_same_training():
    make = lambda ps: torch.optim.Adam(ps, lr=5e-3)
    m1, o1, m2, o2 = _pair((20, 9, 4), make)
    xs = torch.rand(10, 8, 20)
    f1 = FusedStep(m1, o1)
    for x in xs:
        f1.step(x)
    f2 = FusedStep(m2, o2)
    for x in xs[:5]:
        f2.step(x)
    # checkpoint after 5 steps, restore into fresh objects, continue
    m3 = copy.deepcopy(m2)
    o3 = make(m3.parameters())
    o3.load_state_dict(copy.deepcopy(o2.state_dict()))
    f3 = FusedStep(m3, o3)
    for x in xs[5:]:
        f3.step(x)
    for p, q in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(p, q)


def test_unsupported_options_take_the_plain_path():
    m = Autoencoder((10, 4))
    for opt in (torch.optim.Adam(m.parameters(), amsgrad=True), torch.optim.Adam(m.parameters(), maximize=True),
                torch.optim.RMSprop(m.parameters())):
        fs = FusedStep(m, opt)
        assert not fs.uses_fused_optimizer(torch.rand(4, 10))
        fs.step(torch.rand(4, 10))
        assert all(p.grad is not None for p in m.parameters())  # the plain path: gradients, then step()


def test_amsgrad_matches_torch_through_the_plain_path():
    make = lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True)
    m1, o1, m2, o2 = _pair((12, 5), make)
    fused, plain = FusedStep(m1, o1), PlainStep(m2.loss, o2)
    for _ in range(10):
        x = torch.rand(6, 12)
        fused.step(x)
        plain.step(x)
    _close(m1, m2)


def test_frozen_and_unoptimized_parameters_stay():
    m = Autoencoder((10, 6, 4))
    for p in m.encoder.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in m.encoder.parameters()]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.5)
    FusedStep(m, opt).step(torch.rand(8, 10))
    assert all(torch.equal(a, b) for a, b in zip(before, m.encoder.parameters()))
    assert len(opt.state) == len([p for p in m.parameters() if p.requires_grad])


def test_param_groups_and_lr_changes_are_followed():
    torch.manual_seed(0)
    m1 = Autoencoder((16, 8, 4))
    m2 = copy.deepcopy(m1)

    def make(m):
        enc, dec = list(m.encoder.parameters()), list(m.decoder.parameters())
        return torch.optim.Adam([{"params": enc, "lr": 1e-2}, {"params": dec, "lr": 3e-3, "weight_decay": 0.1}])

    o1, o2 = make(m1), make(m2)
    fused, plain = FusedStep(m1, o1), PlainStep(m2.loss, o2)
    for i in range(20):
        if i == 10:
            for o in (o1, o2):
                o.param_groups[0]["lr"] = 1e-3
        x = torch.rand(5, 16)
        fused.step(x)
        plain.step(x)
    _close(m1, m2)


def test_fused_step_does_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            torch.manual_seed(0)
            m = Autoencoder((784, 128, 64, 32))
            fs = FusedStep(m, torch.optim.Adam(m.parameters(), lr=1e-3))
            x = torch.rand(1024, 784)
            for _ in range(2):
                fs.step(x)
            results.append([p.detach().clone() for p in m.parameters()])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_train_step_names_bad_state():
    C = _ext.load()[0]
    w, b = torch.randn(3, 5), torch.randn(3)
    hyper = [1.0, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"exp_avg\[0\].*\[4\]"):
        C.mlp_mse_train_step(torch.rand(2, 5), [w], [b], "none", torch.rand(2, 3), "mean", hyper, [0, 0],
                             [torch.zeros(4), torch.zeros(3)], [torch.zeros(3, 5), torch.zeros(3)],
                             [torch.tensor(0.0), torch.tensor(0.0)], [False, False])
