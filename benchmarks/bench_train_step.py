"""One training step of the reference autoencoder 784-128-64-32-64-128-784 (forward, MSE,
backward, Adam), single-threaded: torch eager written the usual way (default Adam, and
Adam(fused=True)), against aecomp's FusedStep (on CPU float32: forward, loss, backward and
the Adam update fused into the weight-gradient GEMMs, one C++ call, aecomp._C.mlp_mse_train_step).

    pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-group-by=param:batch

Targets (issue 17, CPU, one thread): batch 64 >= 3x eager (default Adam) and >= 2x eager with
Adam(fused=True), >= 70% of the single-core sgemm rate; batch 1024 >= 90% of it. The direct
script with the ceiling and both clocks: python -m benchmarks.bench_cpu_direct
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import aecomp
from aecomp.models import Autoencoder
from aecomp.train import FusedStep

from ._layers import EagerAutoencoder

pytestmark = pytest.mark.skipif(not aecomp.available_backends()["cpu"][0], reason="aecomp._C not built")




def _usual_loop(model, opt, crit, batch):
    """The seed's training step: zero_grad, loss, backward, step."""
    x = torch.rand(batch, 784)

    def step():
        opt.zero_grad()
        loss = crit(model(x), x)
        loss.backward()
        opt.step()

    return step


def eager_step_fn(batch, fused=False):
    model = EagerAutoencoder()
    return _usual_loop(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused), nn.MSELoss(), batch)


def fused_step_fn(batch):
    model = Autoencoder((784, 128, 64, 32))
    fs = FusedStep(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True))
    x = torch.rand(batch, 784)
    return lambda: fs.step(x)


def accelerated_step_fn(batch):
    """The eager model and its usual loop, after ``aecomp.accelerate`` (issue 12: target 1.25x
    eager with the same optimizer at batch 64)."""
    model = aecomp.accelerate(EagerAutoencoder())
    return _usual_loop(model, torch.optim.Adam(model.parameters(), lr=1e-3), aecomp.accelerate(nn.MSELoss()), batch)


STEPS = {"eager": eager_step_fn, "eager_fused_adam": lambda b: eager_step_fn(b, fused=True),
         "aecomp_fused": fused_step_fn, "aecomp_accelerate": accelerated_step_fn}


@pytest.mark.parametrize("impl", list(STEPS))
@pytest.mark.parametrize("batch", [64, 1024])
def test_train_step(benchmark, impl, batch):
    step = STEPS[impl](batch)
    for _ in range(3):
        step()
    benchmark(step)
