"""aecomp.train.FusedStep: one fused call for forward + loss + backward, then the optimizer."""
from __future__ import annotations

import copy

import pytest
import torch

from aecomp.models import Autoencoder, VAE
from aecomp.train import FusedStep, PlainStep, Trainer

from .conftest import requires_cpu_ext


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=requires_cpu_ext), "reference"])
def test_fused_step_follows_the_plain_step(backend):
    torch.manual_seed(0)
    m1 = Autoencoder((30, 12, 5), backend=backend)
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.Adam(m1.parameters(), lr=1e-2)
    o2 = torch.optim.Adam(m2.parameters(), lr=1e-2)
    fused, plain = FusedStep(m1, o1), PlainStep(m2.loss, o2)
    losses = []
    for _ in range(25):
        x = torch.rand(16, 30)
        losses.append((fused.step(x).item(), plain.step(x).item()))
    for a, b in losses:
        assert a == pytest.approx(b, rel=1e-4)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert losses[-1][0] < losses[0][0]


def test_supports_only_pure_chain_models():
    assert FusedStep.supports(Autoencoder((8, 4)))
    assert not FusedStep.supports(VAE((8, 6, 2)))

    class Custom(Autoencoder):
        def loss(self, batch):
            return super().loss(batch) * 2

    assert not FusedStep.supports(Custom((8, 4)))
    with pytest.raises(NotImplementedError):
        FusedStep(VAE((8, 6, 2)), torch.optim.Adam(VAE((8, 6, 2)).parameters()))


def test_frozen_parameters_get_no_gradient():
    m = Autoencoder((10, 4))
    for p in m.encoder.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in m.encoder.parameters()]
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    FusedStep(m, opt).step(torch.rand(8, 10))
    assert all(p.grad is None for p in m.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, m.encoder.parameters()))


def test_bad_batch_shape_is_named():
    m = Autoencoder((10, 4))
    with pytest.raises(ValueError, match=r"Autoencoder.loss.*\[batch, 10\]"):
        FusedStep(m, torch.optim.Adam(m.parameters())).step(torch.rand(3, 11))


def test_trainer_uses_the_fused_step():
    m = Autoencoder((16, 8, 4))
    t = Trainer(m, epochs=1, batch_size=8, progress=False, log=lambda s: None)
    step = t._make_step(m.loss, torch.optim.Adam(m.parameters()))
    assert getattr(step, "kind", None) == "fused"
    assert Trainer(VAE((16, 8, 4)), progress=False)._make_step(m.loss, torch.optim.Adam(m.parameters())).kind == "plain"


def test_cuda_graph_needs_a_capturable_optimizer():
    m = Autoencoder((10, 4))
    with pytest.raises(ValueError, match="capturable=True"):
        FusedStep(m, torch.optim.Adam(m.parameters()), cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_step_matches_eager_step_on_gpu():
    torch.manual_seed(0)
    m1 = Autoencoder((784, 128, 64, 32)).cuda()
    m2 = copy.deepcopy(m1)
    f1 = FusedStep(m1, torch.optim.Adam(m1.parameters(), lr=1e-3, capturable=True), cuda_graph=True)
    f2 = FusedStep(m2, torch.optim.Adam(m2.parameters(), lr=1e-3, capturable=True))
    for _ in range(10):
        x = torch.rand(64, 784, device="cuda")
        l1, l2 = f1.step(x), f2.step(x)
        torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-6)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
