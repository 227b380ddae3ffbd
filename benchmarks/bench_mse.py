"""mse_loss, cpu backend against F.mse_loss, single-threaded, on the reference autoencoder's
reconstruction (batch x 784).

    pytest benchmarks/bench_mse.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import aecomp
from aecomp import ops

pytestmark = pytest.mark.skipif(not aecomp.available_backends()["cpu"][0], reason="aecomp._C not built")

IMPLS = {"eager": F.mse_loss, "aecomp_cpu": lambda a, t: ops.mse_loss(a, t, backend="cpu")}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("batch", [64, 1024])
def test_forward(benchmark, impl, batch):
    a, t = torch.rand(batch, 784), torch.rand(batch, 784)
    with torch.no_grad():
        benchmark(IMPLS[impl], a, t)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("batch", [64, 1024])
def test_forward_backward(benchmark, impl, batch):
    a, t = torch.rand(batch, 784, requires_grad=True), torch.rand(batch, 784)

    def step():
        a.grad = None
        IMPLS[impl](a, t).backward()

    benchmark(step)
