"""Multi-process data-parallel training: ``torchrun --nproc_per_node=N -m aecomp train ...``.

torchrun starts N processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init` joins the process group (NCCL on GPUs, gloo on the CPU).
Each process keeps the whole dataset in memory, draws the same permutation each epoch, and
trains on its own shard of every global batch (see ``aecomp.data.InMemoryLoader``).

Gradient of a global batch of ``N`` samples split into shards of ``n_r`` samples:

.. math:: \\nabla \\frac{1}{N}\\sum_i \\ell_i
          = \\frac{1}{W}\\sum_r \\nabla\\Big(\\frac{n_r W}{N}\\,\\frac{1}{n_r}\\sum_{i \\in r}\\ell_i\\Big)

DistributedDataParallel averages gradients over the ``W`` ranks, so each rank scales its mean
loss by ``w_r = n_r W / N`` (1 when the shards are equal) and the result is the single-process
gradient of the same global batch (up to the order of floating-point sums). This assumes
``model.loss(batch)`` is a mean over the batch's samples.

Only rank 0 writes checkpoints, logs and plots.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "LossModule", "all_gather", "all_reduce_sum", "barrier", "current", "init", "shutdown", "wrap"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current() -> DistInfo:
    """This process's place in the initialised process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                        dist.get_backend())
    return DistInfo()


def init(device: Union[str, torch.device, None] = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment, once.

    Without ``WORLD_SIZE > 1`` in the environment this does nothing and returns rank 0 of 1.
    Backend: NCCL when training on CUDA, else gloo.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if _env_world() <= 1:
        return DistInfo()
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise RuntimeError("this torch build has no torch.distributed; run a single process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if dev_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        # every rank reaches this point before any tears its group down: a rank that destroys
        # its gloo context while a peer's last collective is still in flight aborted the peer
        # ("terminate called without an active exception", SIGABRT at exit; seen once in CI-like runs)
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def device_for(info: DistInfo, requested: Union[str, torch.device, None]) -> torch.device:
    """``requested`` (``None``/``"auto"``: CUDA if available), with a CUDA device per local rank."""
    if requested is None or str(requested) == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {requested!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but CUDA is not available here "
                         f"(torch {torch.__version__}); use cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return dev


class LossModule(nn.Module):
    """``forward(batch) = model.loss(batch)``, so DistributedDataParallel sees the loss call.

    DDP prepares its gradient reduction in ``forward``; calling ``model.loss`` on the bare model
    would skip that, so the loss is routed through this module's forward.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.loss(batch)


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """A DistributedDataParallel module whose ``forward(batch)`` returns the loss."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(LossModule(model), device_ids=ids, output_device=device.index if ids else None)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself is left alone)."""
    out = t.clone()
    if info.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather(t: torch.Tensor, info: DistInfo, device: torch.device) -> List[torch.Tensor]:
    """Every rank's copy of ``t`` (same shape on every rank), on the CPU, in rank order."""
    if not info.enabled:
        return [t.cpu()]
    src = t.to(device)
    out = [torch.empty_like(src) for _ in range(info.world_size)]
    dist.all_gather(out, src)
    return [o.cpu() for o in out]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
