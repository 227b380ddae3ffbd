"""Evaluation and prediction of :class:`aecomp.train.Trainer` (mixed into the Trainer).

``evaluate`` gives the model's mean loss, ``mse = sum (x_hat - x)^2 / numel`` and, for data in
[0, 1], ``psnr = 10 log10(1 / mse)``; sums are float64, over all ranks under torchrun (each rank
takes its contiguous shard), with evaluation noise (a VAE's) seeded the same every time.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch

from .. import data as data_mod
from . import distributed as dist_mod

__all__ = ["DataLike", "EvaluationMixin"]

DataLike = Union[data_mod.Dataset, torch.Tensor]


class EvaluationMixin:
    """``evaluate`` / ``predict`` (and the per-epoch ``_evaluate_tensor``) on the Trainer's model."""

    def _evaluate_tensor(self, x: torch.Tensor, unit_range: bool) -> Dict[str, Any]:
        model, info = self.model, self.dist
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss*n, squared error, n, numel
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)  # evaluation noise (a VAE's) is the same every time
                for xb in data_mod.batches(x, self.eval_batch_size, info.rank, info.world_size):
                    xb = xb.to(self.device, non_blocking=True)
                    with self._autocast():
                        loss = model.loss(xb)
                        recon = model(xb)
                    n = xb.shape[0]
                    sums[0] += loss.double() * n
                    sums[1] += (recon.double() - xb.double()).pow(2).sum()
                    sums[2] += n
                    sums[3] += xb.numel()
        finally:
            model.train(was_training)
        sums = dist_mod.all_reduce_sum(sums, info)
        loss_sum, se, n, numel = (float(v) for v in sums.tolist())
        if n == 0:
            return {"loss": None, "mse": None, "psnr": None, "samples": 0}
        mse = se / numel
        psnr = None
        if unit_range and math.isfinite(mse):
            psnr = float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
        return {"loss": loss_sum / n, "mse": mse, "psnr": psnr, "samples": int(n)}

    def evaluate(self, data: DataLike) -> Dict[str, Any]:
        """``{"loss", "mse", "psnr", "samples"}`` on ``data``: the model's mean loss, the mean
        squared reconstruction error ``sum (x_hat - x)^2 / numel`` and, for data in [0, 1],
        ``psnr = 10 log10(1 / mse)`` (else None)."""
        self.model.to(self.device)
        x = self._samples(data, "evaluation")
        return self._evaluate_tensor(x, self._unit_range(data, x))

    def predict(self, data: DataLike, batch_size: Optional[int] = None) -> torch.Tensor:
        """Reconstructions of ``data`` (on the CPU, shaped like the model's input)."""
        model = self.model.to(self.device)
        x = self._samples(data, "prediction")
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.no_grad():
                for xb in data_mod.batches(x, batch_size or self.eval_batch_size):
                    with self._autocast():
                        out.append(model(xb.to(self.device)).float().cpu())
        finally:
            model.train(was_training)
        if not out:
            return x.new_empty((0, *x.shape[1:]))
        return torch.cat(out)
