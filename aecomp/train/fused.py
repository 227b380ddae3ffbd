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

On the GPU, ``cuda_graph=True`` captures the whole step (forward, loss, backward, optimizer)
in a ``torch.cuda.CUDAGraph`` per batch shape and replays it: for small batches the step is
then one launch from Python instead of dozens. It needs an optimizer that can be captured
(``torch.optim.Adam(..., capturable=True)``); the warm-up that capture needs runs on copies
of the parameters and optimizer state, which are put back, so the training is unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .. import _ext
from .._backend import requested_backend
from ..nn import accelerated_chain
from ..ops import mlp_mse_loss


def _chain(model) -> Tuple[List[torch.nn.Linear], List[str], Optional[str]]:
    """(layers, activations, backend) of a model whose loss is mse(chain(x), x), or raise."""
    fused_chain = getattr(model, "fused_chain", None)
    if fused_chain is None:  # a user's model after aecomp.accelerate: the chain is read off its forward
        try:
            layers, backend = accelerated_chain(model)
        except NotImplementedError as exc:
            raise NotImplementedError(
                f"FusedStep: {type(model).__name__} has no fused_chain() and is not an accelerated chain ({exc}); "
                "it takes aecomp.models.Autoencoder, aecomp.accelerate(model) where model(x) is Linear/ReLU/Sigmoid "
                "layers only, and other models whose loss is mse(chain(x), x)"
            ) from None
    else:
        layers, backend = fused_chain()
    return list(layers), [layer.activation for layer in layers], backend


class FusedStep:
    """A training step whose forward, loss and backward run as one fused chain call."""

    kind = "fused"

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cuda_graph: bool = False) -> None:
        self.model = model
        self.optimizer = optimizer
        self.layers, self.activations, self.backend = _chain(model)
        self._acts = ",".join(self.activations)
        self.cuda_graph = cuda_graph
        if cuda_graph:
            groups = getattr(optimizer, "param_groups", [])
            if not groups or not all(g.get("capturable", False) for g in groups):
                raise ValueError(
                    "FusedStep(cuda_graph=True) needs an optimizer that can be captured in a CUDA graph, "
                    "e.g. torch.optim.Adam(params, capturable=True)"
                )
        self._graphs = {}

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
        if self.cuda_graph and x.is_cuda and weight is None:
            return self._graph_step(x)
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

    # ------------------------------------------------------------------ CUDA graphs

    def _eager_step(self, x: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        weights = [layer.weight for layer in self.layers]
        biases = [layer.bias for layer in self.layers]
        loss = mlp_mse_loss(x, weights, biases, self.activations, x, "mean", backend=self.backend)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _graph_step(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(x)
            self._graphs[key] = entry
        graph, static_x, static_loss = entry
        static_x.copy_(x)
        graph.replay()
        return static_loss.clone()

    def _capture(self, x: torch.Tensor):
        params = [p for p in self.model.parameters()]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in st.items()}
                       for k, st in self.optimizer.state.items()}
        static_x = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: allocator pools, lazy optimizer state, autotuning
                self._eager_step(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = self._eager_step(static_x)
        # put back what the warm-up changed, in place (the graph holds these very tensors)
        with torch.no_grad():
            for p, v in zip(params, saved_params):
                p.copy_(v)
            for k, st in self.optimizer.state.items():
                for n, v in saved_state.get(k, {}).items():
                    if torch.is_tensor(v) and torch.is_tensor(st.get(n)):
                        st[n].copy_(v)
                if k not in saved_state:  # state created by the warm-up: start it from zero
                    for v in st.values():
                        if torch.is_tensor(v):
                            v.zero_()
        return graph, static_x, static_loss
