"""The fused training step for MLP autoencoders: ``FusedStep(model, optimizer).step(batch)``.

One step is forward + MSE + backward + optimizer step. For a model whose whole forward is
one chain of fused layers ending in an MSE loss against its input (``aecomp.models.
Autoencoder``, or any model with a ``fused_chain()`` method), the loss and every parameter
gradient come from ONE call:

- on the ``cpu`` backend, ``aecomp._C.mlp_mse_value_and_grad``: the chain forward, the loss,
  and the chain backward entered through the fused loss gradient
  ``gz = 2 (y - x) / n * act'(y)``, in C++, with no autograd graph and no Python between
  layers; the gradients are handed to the optimizer as ``.grad``;
- on other backends, the ``mlp_mse_loss`` op with autograd (the same fused loss entry).

Then ``optimizer.step()`` (use ``torch.optim.Adam(..., fused=True)``: one kernel for all
parameters). The result is the same, up to float rounding, as the plain step
``zero_grad; model.loss(batch).backward(); optimizer.step()``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .. import _ext
from .._backend import requested_backend
from ..ops import mlp_mse_loss


def _chain(model) -> Tuple[List[torch.nn.Linear], List[str], Optional[str]]:
    """(layers, activations, backend) of a model whose loss is mse(chain(x), x), or raise."""
    fused_chain = getattr(model, "fused_chain", None)
    if fused_chain is None:
        raise NotImplementedError(
            f"FusedStep: {type(model).__name__} has no fused_chain(); it takes aecomp.models.Autoencoder "
            "and other models whose loss is mse(chain(x), x)"
        )
    layers, backend = fused_chain()
    return list(layers), [layer.activation for layer in layers], backend


class FusedStep:
    """A training step whose forward, loss and backward run as one fused chain call."""

    kind = "fused"

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.layers, self.activations, self.backend = _chain(model)
        self._acts = ",".join(self.activations)

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        try:
            _chain(model)
        except NotImplementedError:
            return False
        return True

    def _direct_cpu(self, x: torch.Tensor) -> bool:
        """True when the C++ value-and-grad call applies: CPU tensors, the cpu backend chosen."""
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return False
        name = requested_backend(self.backend)
        if name is None:
            return _ext.load()[0] is not None
        return name == "cpu" and _ext.load()[0] is not None

    def step(self, batch, weight: Optional[float] = None) -> torch.Tensor:
        batch_input = getattr(self.model, "batch_input", None)
        x = batch_input(batch) if batch_input else (batch[0] if isinstance(batch, (tuple, list)) else batch)
        check = getattr(self.model, "_check_input", None)
        if check is not None:
            check("loss", x)
        weights = [layer.weight for layer in self.layers]
        biases = [layer.bias for layer in self.layers]
        if weight is None and self._direct_cpu(x) and torch.is_grad_enabled():
            loss, gw, gb = _ext._C.mlp_mse_value_and_grad(
                x, [w.detach() for w in weights], [None if b is None else b.detach() for b in biases],
                self._acts, x, "mean")
            for p, g in zip(weights, gw):
                if p.requires_grad:
                    p.grad = g
            for p, g in zip(biases, gb):
                if p is not None and p.requires_grad:
                    p.grad = g
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = mlp_mse_loss(x, weights, biases, self.activations, x, "mean", backend=self.backend)
            (loss if weight is None else loss * weight).backward()
            loss = loss.detach()
        self.optimizer.step()
        return loss
