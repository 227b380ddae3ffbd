"""A user's own model after ``aecomp.accelerate`` in the rest of the library: ``FusedStep``,
``CompressedNet.from_autoencoder`` and ``save_packed`` / ``load_packed``.

Tolerances: float32, one step 1e-5; 20 Adam steps ``rtol = 1e-4`` (the fused step and the
autograd loop sum in a different order; Adam amplifies a rounding difference in a small
gradient a little each step).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import aecomp
from aecomp.compress import CompressedNet
from aecomp.compress.storage import load_packed, save_packed
from aecomp.nn import accelerated_chain
from aecomp.train import FusedStep


class SeedAutoencoder(nn.Module):
    """The shape of the seed's model: encoder/decoder Sequentials, the loss in the training loop."""

    def __init__(self, dims=(30, 16, 8)):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dims[0], dims[1]), nn.ReLU(), nn.Linear(dims[1], dims[2]))
        self.decoder = nn.Sequential(nn.Linear(dims[2], dims[1]), nn.ReLU(), nn.Linear(dims[1], dims[0]), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.mark.parametrize("backend", [None, "reference"])
def test_fused_step_trains_an_accelerated_user_model_like_its_usual_loop(backend):
    torch.manual_seed(0)
    plain = SeedAutoencoder()
    model = aecomp.accelerate(copy.deepcopy(plain), backend=backend)
    layers, chain_backend = accelerated_chain(model)
    assert [layer.activation for layer in layers] == ["relu", "none", "relu", "sigmoid"]
    assert chain_backend == backend
    o1 = torch.optim.Adam(plain.parameters(), lr=1e-2)
    o2 = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = FusedStep(model, o2)
    crit = nn.MSELoss()
    for _ in range(20):
        x = torch.rand(16, 30)
        o1.zero_grad()
        loss = crit(plain(x), x)
        loss.backward()
        o1.step()
        assert step.step(x).item() == pytest.approx(loss.item(), rel=1e-4)
    for p, q in zip(plain.parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    # a model that is one Sequential chain itself
    seq = aecomp.accelerate(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6)))
    assert len(accelerated_chain(seq)[0]) == 2 and FusedStep.supports(seq)


def test_fused_step_refuses_what_is_not_one_chain():
    class Residual(SeedAutoencoder):
        def forward(self, x):
            return self.decoder(self.encoder(x)) + x

    class OwnLoss(SeedAutoencoder):
        def loss(self, x):
            return (self(x) - x).abs().mean()

    mixed = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    for model, why in ((Residual(), "not one chain"), (OwnLoss(), "own loss"), (mixed, "not one chain of FusedLinear layers: .*Tanh"),
                       (SeedAutoencoder(), "not a fused layer")):
        fast = aecomp.accelerate(model) if why != "not a fused layer" else model
        assert not FusedStep.supports(fast)
        with pytest.raises(NotImplementedError, match=why):
            FusedStep(fast, torch.optim.SGD(fast.parameters(), lr=0.1))


def test_compressed_net_and_packed_file_from_accelerated_models(tmp_path):
    torch.manual_seed(1)
    model = aecomp.accelerate(SeedAutoencoder())
    net = CompressedNet.from_autoencoder(model, num_classes=3)
    x = torch.rand(5, 30)
    torch.testing.assert_close(net.encoder(x), model.encoder(x), rtol=1e-6, atol=1e-6)
    assert list(net.encoder.state_dict()) == list(model.encoder.state_dict())
    # a plain (not accelerated) user model is accepted too
    CompressedNet.from_autoencoder(SeedAutoencoder(), num_classes=3)

    clf = aecomp.accelerate(nn.Sequential(nn.Linear(30, 12), nn.ReLU(), nn.Linear(12, 4)))
    path = tmp_path / "clf.safetensors"
    assert save_packed(clf, path) > 0
    back = load_packed(path)
    torch.testing.assert_close(back(x), clf(x), rtol=1e-6, atol=1e-6)
    assert list(back.state_dict()) == list(clf.state_dict())
