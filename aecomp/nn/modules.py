"""Drop-in modules over the fused ops: ``FusedLinear``, ``FusedMLP``, ``FusedMSELoss``.

Each module owns parameters and calls one op from ``aecomp.ops``; none launches a kernel itself.

=============  =============================================  ==========================================
module         computes                                       state_dict
=============  =============================================  ==========================================
FusedLinear    ``act(x @ W.T + b)``, act in none/relu/sigmoid  exactly ``nn.Linear``'s (``weight``, ``bias``)
FusedMLP       ``x -> act_i(x @ W_i.T + b_i)`` for each layer  exactly the equivalent ``nn.Sequential``'s
FusedMSELoss   mean / sum / none of ``(input - target)^2``     none (no parameters)
FusedSequential an ``nn.Sequential`` whose runs of FusedLinear  exactly the Sequential's (same children)
               layers run as one ``aecomp.ops.mlp`` call each
=============  =============================================  ==========================================

``backend=None`` means automatic selection (``aecomp.use_backend``, ``AECOMP_BACKEND``, then the
best backend built for the tensors' device); a name pins the module to that backend and raises
if it cannot run.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import ops
from .._backend import BACKENDS
from ..ops import _bf16

__all__ = ["FusedLinear", "FusedMLP", "FusedMSELoss", "FusedSequential", "ACTIVATIONS"]

ACTIVATIONS = ops.ACTIVATIONS  # ("none", "relu", "sigmoid")
# activation name <-> the torch module that computes it in a plain nn.Sequential
_ACT_MODULES = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def _check_activation(where: str, arg: str, activation) -> str:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"{where}: unknown {arg} {activation!r}; expected one of {', '.join(repr(a) for a in ACTIVATIONS)}"
        )
    return activation


PRECISIONS = ("fp32", "bf16")


def _check_precision(where: str, precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def _check_backend(where: str, backend) -> Optional[str]:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {backend!r}; expected None or one of {', '.join(BACKENDS)}")
    return backend


class FusedLinear(nn.Linear):
    """``nn.Linear`` with an optional activation fused into the same op.

    .. math:: y = \\mathrm{act}(x W^T + b), \\quad \\mathrm{act} \\in \\{\\mathrm{id}, \\mathrm{relu}, \\sigma\\}

    ``weight`` is ``[out_features, in_features]`` and ``bias`` ``[out_features]``, created and
    initialised by ``nn.Linear`` itself, so a state_dict moves between the two classes in
    both directions and ``isinstance(m, nn.Linear)`` holds. The forward pass is one call of
    ``aecomp.ops.linear_act``; its backward uses the saved output ``y`` (relu: ``y > 0``,
    sigmoid: ``y (1 - y)``).

    Note: a plain ``nn.Linear`` broadcasts any input ``[..., in_features]``; so does this one
    (leading dimensions are flattened by the op).

    ``precision="bf16"`` (an opt-in, like autocast; what ``aecomp.accelerate(model,
    precision="bf16")`` sets): float32 CPU inputs run the GEMMs in bfloat16 on the CPU's matrix
    engine (``aecomp.ops._bf16.mlp_bf16``: float32 in and out, float32 gradients of the float32
    parameters); where that engine does not run bf16, the float32 op runs.
    """

    precision = "fp32"  # a class default: modules pickled before the attribute existed load as fp32

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "none",
                 backend: Optional[str] = None, device=None, dtype=None, precision: str = "fp32") -> None:
        # check before allocating, so a typo does not cost a large init
        _check_activation("FusedLinear", "activation", activation)
        _check_backend("FusedLinear", backend)
        _check_precision("FusedLinear", precision)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation
        self.backend = backend
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16" and _bf16.applies(x, [self.weight]):
            return _bf16.mlp_bf16(x, [self.weight], [self.bias], [self.activation])
        return ops.linear_act(x, self.weight, self.bias, self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        extra = ", precision=bf16" if self.precision == "bf16" else ""
        return f"{super().extra_repr()}, activation={self.activation}, backend={self.backend}{extra}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str = "none", backend: Optional[str] = None,
                    share: bool = True, precision: str = "fp32") -> "FusedLinear":
        """A FusedLinear computing ``act(linear(x))``.

        With ``share=True`` the new module holds the very same Parameter objects as
        ``linear`` (an optimizer built on one keeps training the other); with ``share=False``
        it holds copies. Device, dtype, requires_grad and the training flag are kept.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"FusedLinear.from_linear: expected an nn.Linear, got {type(linear).__name__}")
        if isinstance(linear.weight, nn.parameter.UninitializedParameter):
            raise ValueError("FusedLinear.from_linear: the nn.LazyLinear is not initialised yet; run one forward first")
        # allocate on meta (no memory, no init), then adopt the real parameters
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, activation=activation,
                  backend=backend, device="meta", dtype=linear.weight.dtype, precision=precision)
        if share:
            new.weight = linear.weight
            new.bias = linear.bias
        else:
            new.weight = _copy_param(linear.weight)
            new.bias = _copy_param(linear.bias) if linear.bias is not None else None
        new.train(linear.training)
        return new

    def to_linear(self, share: bool = False) -> nn.Linear:
        """The plain ``nn.Linear`` part (the activation is not included)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta",
                        dtype=self.weight.dtype)
        lin.weight = self.weight if share else _copy_param(self.weight)
        lin.bias = (self.bias if share else _copy_param(self.bias)) if self.bias is not None else None
        lin.train(self.training)
        return lin


def _copy_param(p: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


class FusedMLP(nn.Module):
    """A chain of fused layers ``dims[0] -> dims[1] -> ... -> dims[-1]`` run by ``aecomp.ops.mlp``.

    .. math:: h_0 = x, \\quad h_{i+1} = \\mathrm{act}_i(h_i W_i^T + b_i), \\quad y = h_L

    ``activations`` has one name per layer (``len(dims) - 1`` of them), or is one string for
    all layers.

    **Parameter layout.** The layers are ``FusedLinear`` children registered under the index
    they would have in the equivalent plain ``nn.Sequential`` -- the one with an ``nn.ReLU`` /
    ``nn.Sigmoid`` module after each Linear whose activation is not ``"none"``. For dims
    (784, 128, 64, 32) with activations (relu, relu, none) that Sequential is
    ``Sequential(Linear, ReLU, Linear, ReLU, Linear)``, so the children are named ``0``, ``2``,
    ``4`` and the state_dict keys are ``0.weight, 0.bias, 2.weight, 2.bias, 4.weight, 4.bias``,
    exactly the Sequential's. This is done with ordinary registered children rather than
    state_dict hooks: ``named_parameters``, optimizers, DDP, ``load_state_dict(strict=True)``,
    ``assign=True`` and ``torch.compile`` all see plain parameters with the right names, and
    there is no key-rewriting code to drift out of sync. The gaps in the numbering (the
    activation modules) hold nothing, just as in the Sequential. (The same layout is what
    ``aecomp.nn.accelerate`` leaves in a Sequential: a FusedLinear at the Linear's index and an
    ``nn.Identity`` at the activation's.)

    ``mlp.layers`` is the tuple of FusedLinear children in order; ``len(mlp)`` their number.
    The activations are fixed at construction (they decide the key layout).
    """

    def __init__(self, dims: Sequence[int], activations: Union[str, Sequence[str]] = "relu", bias: bool = True,
                 backend: Optional[str] = None, device=None, dtype=None) -> None:
        super().__init__()
        dims = _check_dims("FusedMLP", "dims", dims, minimum=2)
        n = len(dims) - 1
        if isinstance(activations, str):
            activations = [activations] * n
        activations = list(activations)
        if len(activations) != n:
            raise ValueError(
                f"FusedMLP: activations has {len(activations)} entries {activations!r} but dims {list(dims)} "
                f"make {n} layers; give one activation per layer or one string for all"
            )
        for i, a in enumerate(activations):
            _check_activation("FusedMLP", f"activations[{i}]", a)
        self._backend = _check_backend("FusedMLP", backend)
        index = 0
        for i in range(n):
            layer = FusedLinear(dims[i], dims[i + 1], bias=bias, activation=activations[i], backend=backend,
                                device=device, dtype=dtype)
            self.add_module(str(index), layer)
            index += 1 if activations[i] == "none" else 2

    # ----------------------------------------------------------------- structure
    @property
    def layers(self) -> Tuple[FusedLinear, ...]:
        return tuple(self.children())

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def dims(self) -> Tuple[int, ...]:
        layers = self.layers
        return (layers[0].in_features,) + tuple(layer.out_features for layer in layers)

    @property
    def activations(self) -> Tuple[str, ...]:
        return tuple(layer.activation for layer in self.children())

    @property
    def backend(self) -> Optional[str]:
        return self._backend

    @backend.setter
    def backend(self, name: Optional[str]) -> None:
        self._backend = _check_backend("FusedMLP", name)
        for layer in self.children():
            layer.backend = name

    # ----------------------------------------------------------------- compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights: List[torch.Tensor] = []
        biases: List[Optional[torch.Tensor]] = []
        activations: List[str] = []
        for layer in self.children():
            weights.append(layer.weight)
            biases.append(layer.bias)
            activations.append(layer.activation)
        return ops.mlp(x, weights, biases, activations, backend=self._backend)

    def extra_repr(self) -> str:
        return f"dims={list(self.dims)}, activations={list(self.activations)}, backend={self._backend}"

    # ----------------------------------------------------------------- conversion
    @classmethod
    def from_sequential(cls, seq: nn.Sequential, backend: Optional[str] = None, share: bool = False) -> "FusedMLP":
        """Build a FusedMLP from ``Sequential(Linear, [ReLU|Sigmoid], Linear, ...)``.

        Each ``nn.Linear`` may be followed by one ``nn.ReLU`` or ``nn.Sigmoid``. A Sequential
        already rewritten by ``accelerate`` (``FusedLinear(activation=a)`` followed by the
        ``nn.Identity`` placeholder) is accepted too. Any other module raises ValueError
        naming its index and type. The state_dict keys of the result equal ``seq``'s, so
        ``fused.load_state_dict(seq.state_dict())`` works both ways. ``share=True`` reuses
        ``seq``'s Parameter objects; the default copies them.
        """
        if not isinstance(seq, nn.Sequential):
            raise TypeError(f"FusedMLP.from_sequential: expected an nn.Sequential, got {type(seq).__name__}")
        mods = list(seq)
        linears: List[nn.Linear] = []
        acts: List[str] = []
        i = 0
        while i < len(mods):
            m = mods[i]
            if not isinstance(m, nn.Linear) or (type(m) is not nn.Linear and not isinstance(m, FusedLinear)):
                raise ValueError(
                    f"FusedMLP.from_sequential: seq[{i}] is {type(m).__name__}; expected nn.Linear (optionally "
                    f"followed by nn.ReLU or nn.Sigmoid)"
                )
            act = m.activation if isinstance(m, FusedLinear) else "none"
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if act == "none" and nxt is not None and type(nxt) in (nn.ReLU, nn.Sigmoid):
                act = "relu" if type(nxt) is nn.ReLU else "sigmoid"
                i += 2
            elif act != "none":
                # accelerate()'s layout: the activation's slot holds an nn.Identity placeholder
                if type(nxt) is not nn.Identity:
                    found = type(nxt).__name__ if nxt is not None else "missing"
                    raise ValueError(
                        f"FusedMLP.from_sequential: seq[{i}] is a FusedLinear with activation={act!r} but "
                        f"seq[{i + 1}] is {found}; expected the nn.Identity placeholder that keeps the indices "
                        f"(and state_dict keys) of the equivalent Sequential"
                    )
                i += 2
            else:
                i += 1
            linears.append(m)
            acts.append(act)
        if not linears:
            raise ValueError("FusedMLP.from_sequential: the Sequential has no layers")
        for k in range(1, len(linears)):
            if linears[k].in_features != linears[k - 1].out_features:
                raise ValueError(
                    f"FusedMLP.from_sequential: layer {k} takes {linears[k].in_features} features but layer {k - 1} "
                    f"gives {linears[k - 1].out_features}"
                )
        biases = {lin.bias is not None for lin in linears}
        if len(biases) != 1:
            raise ValueError("FusedMLP.from_sequential: the Linear layers must all have a bias or all have none")
        dims = [linears[0].in_features] + [lin.out_features for lin in linears]
        out = cls(dims, acts, bias=biases.pop(), backend=backend, device="meta", dtype=linears[0].weight.dtype)
        for layer, lin in zip(out.layers, linears):
            layer.weight = lin.weight if share else _copy_param(lin.weight)
            if lin.bias is not None:
                layer.bias = lin.bias if share else _copy_param(lin.bias)
        out.train(seq.training)
        return out

    def to_sequential(self, share: bool = False) -> nn.Sequential:
        """The plain ``nn.Sequential(Linear, ReLU, Linear, ...)`` computing the same function.

        Same state_dict keys. Copies the parameters unless ``share=True``.
        """
        mods: List[nn.Module] = []
        for layer in self.children():
            mods.append(layer.to_linear(share=share))
            if layer.activation != "none":
                mods.append(_ACT_MODULES[layer.activation]())
        seq = nn.Sequential(*mods)
        seq.train(self.training)
        return seq


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


class FusedSequential(nn.Sequential):
    """An ``nn.Sequential`` that runs each maximal run of ``FusedLinear`` layers as ONE chain.

    What ``aecomp.accelerate`` turns a plain ``nn.Sequential`` into. The children are exactly
    the Sequential's, under the same indices (a ``FusedLinear`` where the Linear was, the
    ``nn.Identity`` placeholder where its fused activation was), so the state_dict keys,
    indexing (``seq[4]``), ``len``, iteration and ``isinstance(seq, nn.Sequential)`` are all
    unchanged. Only ``forward`` differs: consecutive ``FusedLinear`` layers (the ``nn.Identity``
    placeholders between them are no-ops) with the same ``backend`` go through one
    ``aecomp.ops.mlp`` call -- one autograd node and one fused backward for the run, the
    ``FusedMLP`` path -- and every other child is called as usual. A layer with hooks is
    called on its own, so its hooks fire. ``chain()`` gives the layers when the whole
    Sequential is one chain (what ``FusedMLP.from_sequential`` and ``FusedStep`` read).
    """

    def _runs(self):
        """[(module, None)] for a child called alone, [(None, [layers])] for a chain."""
        plan, run = [], []
        for m in self._modules.values():
            if m is None:
                continue
            if type(m) is nn.Identity and not _has_hooks(m):
                continue
            if isinstance(m, FusedLinear) and not _has_hooks(m) and (not run or (
                    run[-1].out_features == m.in_features and run[-1].backend == m.backend
                    and run[-1].precision == m.precision)):
                run.append(m)
                continue
            if run:
                plan.append((None, run))
                run = []
            if isinstance(m, FusedLinear) and not _has_hooks(m):
                run.append(m)
            else:
                plan.append((m, None))
        if run:
            plan.append((None, run))
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m, run in self._runs():
            if m is not None:
                x = m(x)
            elif len(run) == 1:
                x = run[0](x)
            else:
                ws = [layer.weight for layer in run]
                if run[0].precision == "bf16" and _bf16.applies(x, ws):
                    x = _bf16.mlp_bf16(x, ws, [layer.bias for layer in run], [layer.activation for layer in run])
                    continue
                x = ops.mlp(x, ws, [layer.bias for layer in run], [layer.activation for layer in run],
                            backend=run[0].backend)
        return x

    def chain(self) -> Tuple[FusedLinear, ...]:
        """The FusedLinear layers, if this whole Sequential is one chain; else ValueError."""
        plan = self._runs()
        if len(plan) != 1 or plan[0][1] is None:
            raise ValueError("FusedSequential.chain: not one chain of FusedLinear layers: " + ", ".join(
                type(m).__name__ if m is not None else f"chain of {len(run)}" for m, run in plan))
        return tuple(plan[0][1])


class FusedMSELoss(nn.MSELoss):
    """``nn.MSELoss`` computed by ``aecomp.ops.mse_loss`` in one pass.

    .. math:: \\ell = \\frac{1}{n} \\sum_i (x_i - t_i)^2 \\;(\\text{mean}), \\quad \\sum_i (x_i - t_i)^2
              \\;(\\text{sum}), \\quad (x_i - t_i)^2 \\;(\\text{none})

    Gradient: ``d input = 2 (input - target) g / n`` (``n`` = numel for mean, 1 otherwise).
    Input and target of different dtypes are promoted to ``torch.result_type`` first, as
    ``nn.MSELoss`` does (a float64 or integer target works). One difference from ``nn.MSELoss``: input and target must have the same shape (no
    broadcasting; a ``[B, 1]`` target against ``[B, D]`` raises instead of warning).
    """

    def __init__(self, reduction: str = "mean", backend: Optional[str] = None) -> None:
        if reduction not in ops.REDUCTIONS:
            raise ValueError(
                f"FusedMSELoss: unknown reduction {reduction!r}; expected one of "
                f"{', '.join(repr(r) for r in ops.REDUCTIONS)}"
            )
        super().__init__(reduction=reduction)
        self.backend = _check_backend("FusedMSELoss", backend)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor) and input.dtype != target.dtype:
            # type promotion as nn.MSELoss does it (float32 input, float64 or int target)
            dtype = torch.result_type(input, target)
            input, target = input.to(dtype), target.to(dtype)
        return ops.mse_loss(input, target, self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}, backend={self.backend}"


def _check_dims(where: str, arg: str, dims, minimum: int) -> Tuple[int, ...]:
    try:
        out = tuple(int(d) for d in dims)
        if any(o != d for o, d in zip(out, dims)):
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {arg} must be a sequence of positive ints, got {dims!r}") from None
    if len(out) < minimum:
        raise ValueError(f"{where}: {arg} needs at least {minimum} entries, got {list(out)}")
    if any(d <= 0 for d in out):
        raise ValueError(f"{where}: {arg} must all be positive, got {list(out)}")
    return out
