"""The reference autoencoder's layers and the eager baselines the benchmarks compare against."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# (in, out, activation) of the reference autoencoder 784-128-64-32 / 32-64-128-784
REFERENCE_LAYERS = [
    (784, 128, "relu"),
    (128, 64, "relu"),
    (64, 32, "none"),
    (32, 64, "relu"),
    (64, 128, "relu"),
    (128, 784, "sigmoid"),
]

_ACT = {"none": lambda t: t, "relu": F.relu, "sigmoid": torch.sigmoid}


def eager_linear_act(x, w, b, act):
    """The usual PyTorch: F.linear followed by the activation module's function."""
    return _ACT[act](F.linear(x, w, b))


def layer_inputs(batch, k, n, dtype=torch.float32, device="cpu", requires_grad=True):
    x = torch.rand(batch, k, dtype=dtype, device=device)
    w = (torch.randn(n, k, dtype=dtype, device=device) / k**0.5).requires_grad_(requires_grad)
    b = torch.zeros(n, dtype=dtype, device=device).uniform_(-0.1, 0.1).requires_grad_(requires_grad)
    return x, w, b


def fwd_bwd(fn, x, w, b, act, g):
    y = fn(x, w, b, act)
    y.backward(g)


class EagerAutoencoder(nn.Module):
    """The reference workload as people write it (the seed's model): two ``nn.Sequential``
    halves, same state_dict keys as aecomp's ``Autoencoder``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
        self.decoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(),
                                     nn.Linear(128, 784), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
