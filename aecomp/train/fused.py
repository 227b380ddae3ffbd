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

The optimizer fused into the backward (CPU, float32): when the optimizer is a plain
``torch.optim.Adam``, ``AdamW`` or ``SGD`` (with or without momentum, nesterov, weight decay;
not amsgrad / maximize / capturable / differentiable, float hyper-parameters, no step hooks),
the whole step is ``aecomp._C.mlp_mse_train_step``: forward, loss, backward, and each weight
tile updated by the optimizer's formula in the epilogue of the GEMM that finishes its
gradient, so no gradient tensor is written (``p.grad`` stays None). The state is the
optimizer's own (``exp_avg``, ``exp_avg_sq``, ``step``; ``momentum_buffer``), created the way
torch.optim creates it and updated in place, so ``optimizer.state_dict()``, checkpoints and
resume work unchanged; hyper-parameters are read from ``param_groups`` every step (LR
schedulers work). Anything else takes the plain path: gradients, then ``optimizer.step()``.

On the triton backend (CUDA tensors; CPU tensors under TRITON_INTERPRET=1), float32 or
bfloat16, the same optimizers take ``aecomp.ops._triton.mlp_mse_train_step_triton``: the chain
forward and dgrad kernels, then per layer one weight-gradient GEMM that updates each ``W``/``b``
tile in its epilogue (kernels/optim.py), when every parameter is trained, contiguous, of the
batch's dtype, and each layer's weight and bias share a param group; the plain path otherwise.

``precision="bf16"`` (CPU): the same fused step with every GEMM in bfloat16 on the CPU's matrix
engine (``aecomp._C.mlp_mse_train_step_bf16``, csrc/cpu/train_step_bf16.cpp: oneDNN's brgemm
through PyTorch -- AMX tiles, or AVX512-BF16), float32 master weights, optimizer state and loss;
the error model is in that file's header. With another optimizer, bf16 still computes the
gradients (``aecomp.ops._bf16.mlp_bf16``: float32 gradients of the float32 parameters) and
``optimizer.step()`` follows. It applies to non-empty float32 CPU batches on the cpu backend
where the matrix engine runs bf16 (``aecomp info``); elsewhere the step runs float32
(``compute_precision(x)`` says which). The default is ``"fp32"``.

Shared parameters: a parameter used by two layers (``forward = l(l(x))`` with one layer, a weight
tied between encoder and decoder) gets ONE gradient, the sum over its uses, and ONE optimizer
step per training step, as in the usual torch loop. The fused optimizer updates each layer's
slot as soon as that slot's gradient is complete, so it cannot sum; for such a model step()
takes the plain path (on the CPU: the C++ value-and-grad call, the slots' gradients summed per
parameter, then ``optimizer.step()``), and the fused calls themselves refuse shared parameters.

Empty batches: the fused step matches torch.optim. An empty batch's gradients are zero, and
torch's Adam/AdamW/SGD still step on them (the step count moves, the moments decay, weight
decay and momentum apply); the fused optimizer runs the same update with a zero gradient (the
loss is NaN for 'mean', as torch's). Every argument of the fused step is checked before
anything changes: an error leaves the parameters, the optimizer state and its step counts as
they were.

On the GPU, ``cuda_graph=True`` captures the whole step (forward, loss, backward, optimizer)
in a ``torch.cuda.CUDAGraph`` per batch shape and replays it: for small batches the step is
then one launch from Python instead of dozens. It needs an optimizer that can be captured
(``torch.optim.Adam(..., capturable=True)``); the warm-up that capture needs runs on copies
of the parameters and optimizer state, which are put back, so the training is unchanged.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

try:  # the dtype torch.optim gives the step counter (float32 unless the default is float64)
    from torch.optim.optimizer import _get_scalar_dtype
except ImportError:  # pragma: no cover - older/newer torch
    def _get_scalar_dtype(is_fused=None):
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

from .. import _ext
from .._backend import requested_backend
from ..nn import accelerated_chain
from ..ops import mlp_mse_loss, mse_loss
from ..ops._bf16 import engine as bf16_engine
from ..ops._bf16 import mlp_bf16


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



PRECISIONS = ("fp32", "bf16")


# Hyper-parameter row per param group for aecomp._C.mlp_mse_train_step (csrc/cpu/train_step.cpp):
# [kind (1 Adam, 2 SGD), lr, beta1, beta2, eps, weight_decay, decoupled, momentum, dampening, nesterov]
_ADAM, _SGD = 1.0, 2.0


def _is_float(v) -> bool:
    return isinstance(v, (float, int)) and not isinstance(v, bool)


def _fused_optimizer_kind(optimizer) -> Optional[float]:
    """_ADAM / _SGD when the optimizer's update can run fused into the backward, else None."""
    kind = {torch.optim.Adam: _ADAM, torch.optim.AdamW: _ADAM, torch.optim.SGD: _SGD}.get(type(optimizer))
    if kind is None or getattr(optimizer, "_optimizer_step_pre_hooks", None) or getattr(
            optimizer, "_optimizer_step_post_hooks", None):
        return None
    from torch.optim import optimizer as _opt_mod
    if getattr(_opt_mod, "_global_optimizer_pre_hooks", None) or getattr(_opt_mod, "_global_optimizer_post_hooks", None):
        return None
    for g in optimizer.param_groups:
        if g.get("maximize") or g.get("differentiable") or g.get("capturable"):
            return None
        if kind == _ADAM:
            if g.get("amsgrad") or not all(_is_float(v) for v in (g["lr"], *g["betas"], g["eps"], g["weight_decay"])):
                return None
        elif not all(_is_float(g.get(k, 0.0)) for k in ("lr", "momentum", "dampening", "weight_decay")):
            return None
    return kind


def _hyper_row(optimizer, kind: float, g: dict) -> List[float]:
    if kind == _ADAM:
        decoupled = g.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
        return [kind, g["lr"], g["betas"][0], g["betas"][1], g["eps"], g["weight_decay"], float(bool(decoupled)),
                0.0, 0.0, 0.0]
    return [kind, g["lr"], 0.0, 0.0, 0.0, g["weight_decay"], 0.0, g["momentum"], g["dampening"],
            float(bool(g["nesterov"]))]

class FusedStep:
    """A training step whose forward, loss and backward run as one fused chain call."""

    kind = "fused"

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cuda_graph: bool = False,
                 precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"FusedStep: precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.precision = precision
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

    def _shared(self, weights=None, biases=None) -> bool:
        """Whether two layers share a trained parameter (``l(l(x))``, a weight tied between layers).

        Such a parameter has ONE gradient, the sum over its uses, and one optimizer step; the
        fused optimizer updates each layer's slot as soon as that slot's gradient is complete, so
        it cannot sum them, and step() takes the plain path (gradients summed per parameter,
        then ``optimizer.step()``)."""
        from ..ops._checks import shared_parameters

        if weights is None:
            weights, biases = [layer.weight for layer in self.layers], [layer.bias for layer in self.layers]
        params = [p if p is not None and p.requires_grad else None for p in (*weights, *biases)]
        key = tuple(None if p is None else (id(p), p.data_ptr()) for p in params)  # cached: checked every step
        if getattr(self, "_shared_key", None) != key:
            self._shared_key, self._shared_value = key, shared_parameters(params) is not None
        return self._shared_value

    def uses_fused_optimizer(self, x: Optional[torch.Tensor] = None) -> bool:
        """Whether step() runs the optimizer fused into the backward (for a float32 CPU batch x)."""
        params = [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        ok = (_fused_optimizer_kind(self.optimizer) is not None and hasattr(_ext._C, "mlp_mse_train_step")
              and all(p.dtype == torch.float32 and p.device.type == "cpu" and p.is_contiguous() for p in params)
              and not self._shared())
        if x is not None:
            ok = ok and x.dtype == torch.float32 and self._direct_cpu(x)
        return ok

    def compute_precision(self, x: Optional[torch.Tensor] = None) -> str:
        """``"bf16"`` when step() runs its GEMMs in bfloat16 on the matrix engine (for a float32
        CPU batch ``x``; None: a typical one), else ``"fp32"``."""
        if self.precision != "bf16" or not bf16_engine():
            return "fp32"
        if x is None:
            return "bf16" if self._direct_cpu(torch.empty(1, 1)) else "fp32"
        return "bf16" if self._bf16_batch(x) else "fp32"

    def _bf16_batch(self, x: torch.Tensor) -> bool:
        """precision="bf16", a non-empty float32 CPU batch on the cpu backend, the engine running."""
        return (self.precision == "bf16" and x.dtype == torch.float32 and x.numel() > 0 and self._direct_cpu(x)
                and bf16_engine())

    def _fused_optim_args(self, weights, biases):
        """The per-parameter arguments of mlp_mse_train_step, creating torch.optim's state lazily.

        The state lists are cached while the optimizer's state dict, its param groups and the
        parameters are the same objects (load_state_dict replaces them, so a resume rebuilds);
        the hyper-parameters are read every step (LR schedulers)."""
        opt = self.optimizer
        kind = _fused_optimizer_kind(opt)
        if kind is None:
            return None
        hyper: List[float] = []
        for g in opt.param_groups:
            hyper.extend(_hyper_row(opt, kind, g))
        params = list(weights) + list(biases)
        token = (kind, id(opt.state), len(opt.state), tuple(map(id, opt.param_groups)),
                 tuple(len(g["params"]) for g in opt.param_groups))
        cached = getattr(self, "_optim_cache", None)
        if cached is not None and cached[0] == token and all(a is b for a, b in zip(cached[1], params)):
            return (hyper, *cached[2])
        args = self._build_optim_args(opt, kind, params)
        if args is not None:
            for p in params:
                if p is not None:
                    p.grad = None  # the fused step writes no gradient; drop stale ones once
            token = token[:2] + (len(opt.state),) + token[3:]  # the build may have created state
            first = args[-1]
            self._optim_cache = None if any(first) else (token, params, args)
        return None if args is None else (hyper, *args)

    def _build_optim_args(self, opt, kind, params, device: str = "cpu", dtypes=(torch.float32,)):
        group_index = {}
        for gi, g in enumerate(opt.param_groups):
            for p in g["params"]:
                group_index[p] = gi
        group_of, state1, state2, steps, first = [], [], [], [], []
        for p in params:
            gi = group_index.get(p, -1) if p is not None and p.requires_grad else -1
            if gi >= 0 and (p.dtype not in dtypes or not p.is_contiguous() or p.device.type != device):
                return None
            group_of.append(gi)
            s1 = s2 = st = None
            fst = False
            if gi >= 0:
                # (plain SGD keeps no state: torch.optim leaves no entry for it, so none is made here)
                state = opt.state[p] if kind == _ADAM or opt.param_groups[gi]["momentum"] != 0 else {}
                if kind == _ADAM:
                    if len(state) == 0:
                        g = opt.param_groups[gi]
                        state["step"] = (torch.zeros((), dtype=_get_scalar_dtype(is_fused=g.get("fused")))
                                         if g.get("fused") else torch.tensor(0.0, dtype=_get_scalar_dtype()))
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    s1, s2, st = state["exp_avg"], state["exp_avg_sq"], state["step"]
                elif opt.param_groups[gi]["momentum"] != 0:
                    s1 = state.get("momentum_buffer")
                    if s1 is None:
                        s1 = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        fst = True
            state1.append(s1)
            state2.append(s2)
            steps.append(st)
            first.append(fst)
        return group_of, state1, state2, steps, first

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
        shared = self._shared(weights, biases)
        if (weight is None and x.dtype == torch.float32 and self._direct_cpu(x) and torch.is_grad_enabled()
                and hasattr(_ext._C, "mlp_mse_train_step") and not shared):
            args = self._fused_optim_args(weights, biases)
            if args is not None:
                fn = _ext._C.mlp_mse_train_step_bf16 if self._bf16_batch(x) else _ext._C.mlp_mse_train_step
                with torch.no_grad():  # the C++ call reads and updates the parameters in place
                    loss = fn(x, weights, biases, self._acts, x, "mean", *args)
                self.optimizer._opt_called = True  # what a wrapped optimizer.step() records for LR schedulers
                return loss
        if weight is None and torch.is_grad_enabled() and not shared and self._direct_triton(x):
            loss = self._triton_fused_step(x, weights, biases)
            if loss is not None:
                return loss
        if torch.is_grad_enabled() and self._bf16_batch(x):  # any optimizer: bf16 gradients, then its step
            self.optimizer.zero_grad(set_to_none=True)
            y = mlp_bf16(x, weights, biases, self.activations)
            loss = mse_loss(y, x, "mean", backend=self.backend)
            (loss if weight is None else loss * weight).backward()
            loss = loss.detach()
        elif weight is None and self._direct_cpu(x) and torch.is_grad_enabled():
            loss, gw, gb = _ext._C.mlp_mse_value_and_grad(
                x, [w.detach() for w in weights], [None if b is None else b.detach() for b in biases],
                self._acts, x, "mean")
            # one gradient per parameter: the sum over the slots that use it (a shared parameter)
            grads = {}
            for p, g in zip([*weights, *biases], [*gw, *gb]):
                if p is not None and p.requires_grad:
                    grads[id(p)] = (p, g if id(p) not in grads else grads[id(p)][1] + g)
            for p, g in grads.values():
                p.grad = g
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = mlp_mse_loss(x, weights, biases, self.activations, x, "mean", backend=self.backend)
            (loss if weight is None else loss * weight).backward()
            loss = loss.detach()
        self.optimizer.step()
        return loss

    # ------------------------------------------------------------------ triton: optimizer fused into the backward

    def _direct_triton(self, x: torch.Tensor) -> bool:
        """True when the triton backend runs this batch (CUDA tensors; CPU ones under TRITON_INTERPRET=1)."""
        if x.dtype not in (torch.float32, torch.bfloat16) or self.cuda_graph:
            return False
        from .._backend import auto_backend_name

        name = requested_backend(self.backend) or auto_backend_name(x.device.type, x.dtype, "mlp_mse_loss")
        if name != "triton":
            return False
        if x.device.type == "cuda":
            return True
        from ..ops._triton import INTERPRETED  # CPU tensors only under Triton's interpreter

        return x.device.type == "cpu" and INTERPRETED

    def _triton_fused_step(self, x: torch.Tensor, weights, biases) -> Optional[torch.Tensor]:
        """The step through ``mlp_mse_train_step_triton`` when the optimizer qualifies (as on
        the CPU: plain Adam / AdamW / SGD), every parameter is trained, contiguous, of ``x``'s
        dtype and device, and each layer's weight and bias are in one param group; else None."""
        opt = self.optimizer
        kind = _fused_optimizer_kind(opt)
        if kind is None:
            return None
        params = list(weights) + list(biases)
        if any(p is not None and not p.requires_grad for p in params) or any(0 in w.shape for w in weights):
            return None
        group_of_p = {p: gi for gi, g in enumerate(opt.param_groups) for p in g["params"]}
        L = len(weights)
        for w, b in zip(weights, biases):
            if group_of_p.get(w, -1) < 0 or (b is not None and group_of_p.get(b, -1) != group_of_p[w]):
                return None
        built = self._build_optim_args(opt, kind, params, device=x.device.type, dtypes=(x.dtype,))
        if built is None:
            return None
        from ..ops._triton import ADAM, SGD, OptimHyper, check_train_step, mlp_mse_train_step_triton

        group_of, state1, state2, steps, first = built
        states = [((state1[i], state2[i]), (state1[L + i], state2[L + i])) for i in range(L)]
        hypers = []
        for i in range(L):  # checked before any step count moves
            g = opt.param_groups[group_of[i]]
            hypers.append(OptimHyper(ADAM, g["lr"]) if kind == _ADAM else
                          OptimHyper(SGD, g["lr"], momentum=g["momentum"], first=first[i]))
        check_train_step(x, weights, biases, self.activations, x, "mean", hypers, states)
        for p in params:
            if p is not None:
                p.grad = None  # no gradient is written: drop stale ones
        hypers = []
        for i in range(L):
            g = opt.param_groups[group_of[i]]
            if kind == _ADAM:
                for j in (i, L + i):
                    if params[j] is not None:
                        steps[j] += 1  # torch.optim counts the step before the update
                t = float(steps[i])
                decoupled = g.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW))
                hypers.append(OptimHyper(ADAM, g["lr"], g["betas"][0], g["betas"][1], g["eps"], g["weight_decay"],
                                         bool(decoupled), step=t))
            else:
                hypers.append(OptimHyper(SGD, g["lr"], weight_decay=g["weight_decay"], momentum=g["momentum"],
                                         dampening=g["dampening"], nesterov=bool(g["nesterov"]), first=first[i]))
        loss = mlp_mse_train_step_triton(x, weights, biases, self.activations, x, "mean", hypers, states)
        opt._opt_called = True  # what a wrapped optimizer.step() records for LR schedulers
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
