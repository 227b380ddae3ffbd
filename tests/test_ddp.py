"""DistributedDataParallel over a fused model: 2 CPU processes (gloo on 127.0.0.1).

Run: ``.venv/bin/python -m pytest tests/test_ddp.py -q`` (10-20 s here, almost all of it the two
processes importing torch and torch._dynamo, which DDP imports; the 10 steps take 0.1 s).

Each rank trains ``Autoencoder(64-32-8)`` with Adam on its half of every global batch of the
sklearn digits; DDP averages the gradients, which is the gradient of the mean loss over the
whole global batch (the halves are of equal size). So after N steps

- the two ranks hold bit-identical parameters (both apply the same all-reduced gradient);
- they match one process trained on the whole global batch to ``rtol = 1e-4, atol = 1e-5``:
  the all-reduce sums the two half-batch gradients in another order than one full-batch
  reduction, and Adam's division by sqrt(v) amplifies those float32 roundings a little each step.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 10
GLOBAL_BATCH = 64
DIMS = (64, 32, 8)
WORLD = 2
TIMEOUT_S = 120


def _digits():
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float32) / 16.0


def _batches():
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, 1797, (GLOBAL_BATCH,), generator=gen) for _ in range(STEPS)]


def _train(model, forward, x_all, rank, world):
    """Adam steps; each rank sees its contiguous slice of every global batch."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    per = GLOBAL_BATCH // world
    losses = []
    for idx in _batches():
        x = x_all[idx[rank * per:(rank + 1) * per]]
        loss = model.criterion(forward(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _worker(rank, world, port, outdir, x_all):
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from aecomp.models import Autoencoder

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different inits on purpose: DDP must broadcast rank 0's
        model = Autoencoder(dims=DIMS)
        ddp = DDP(model)
        losses = _train(model, ddp, x_all, rank, world)
        torch.save({"state": model.state_dict(), "losses": losses}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process():
    from aecomp.models import Autoencoder

    x_all = _digits()  # loaded once here and handed to the workers (they skip importing sklearn)
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_worker, args=(WORLD, _free_port(), outdir, x_all), nprocs=WORLD, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
        results = [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(WORLD)]

    # in sync: bit-identical on both ranks
    s0, s1 = results[0]["state"], results[1]["state"]
    assert list(s0) == list(s1)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k

    # the same as one process over the global batch, starting from rank 0's init
    torch.manual_seed(0)
    single = Autoencoder(dims=DIMS)
    init = {k: v.clone() for k, v in single.state_dict().items()}
    losses = _train(single, single, x_all, 0, 1)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(s0[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
        assert not torch.equal(v, init[k]), f"{k} did not train"
    # mean of the two half-batch losses = the global-batch loss
    ddp_losses = torch.tensor([results[0]["losses"], results[1]["losses"]]).mean(0)
    torch.testing.assert_close(ddp_losses, torch.tensor(losses), rtol=1e-4, atol=1e-6)
