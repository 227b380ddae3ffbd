"""``accelerate(model)``: swap the plain layers of any ``nn.Module`` for the fused ones.

Rewrites, in this order of preference:

1. inside an ``nn.Sequential`` (exactly that class), ``Linear`` at index ``i`` followed by
   ``ReLU`` or ``Sigmoid`` at ``i + 1`` becomes ``FusedLinear(activation="relu"|"sigmoid")`` at
   ``i`` and ``nn.Identity()`` at ``i + 1``;
2. any other ``nn.Linear`` becomes ``FusedLinear(activation="none")``;
3. ``nn.MSELoss`` becomes ``FusedMSELoss`` with the same reduction.

**Why the Identity placeholder.** An activation module holds no parameters, so leaving an
``nn.Identity`` in its slot keeps every index -- ``seq[4]``, ``seq[-1]`` -- and every state_dict
key (``encoder.4.weight``) exactly what they were: checkpoints load both ways, code that indexes
the Sequential keeps working, and ``FusedMLP.from_sequential`` reads the layout back. Deleting
the slot instead would renumber every later layer and break all of those. The one visible
change: a slice that ends between a Linear and its activation (``seq[:1]``) now includes the
activation, because the two are one op.

**What is left alone, and reported:** subclasses of ``nn.Linear`` other than FusedLinear
(quantized, LoRA, ``NonDynamicallyQuantizableLinear`` inside ``nn.MultiheadAttention``,
``torch.nn.utils.parametrize``-d layers, an uninitialised ``LazyLinear``), whose forward may not
be ``x @ W.T + b``; modules with forward/backward hooks (a hook would silently stop firing or
see a different tensor); layers that are already fused. A Linear held in several places is
still replaced (by one FusedLinear, so the sharing survives) but not fused with an activation,
which would be wrong at its other uses.

Weights: with ``inplace=True`` the new modules hold the very same Parameter objects (an
optimizer built before the call keeps working); otherwise the model is deep-copied first and
the copy is rewritten (the original is untouched). Device, dtype, requires_grad and the
training flag are kept. Applying ``accelerate`` to its own result changes nothing.
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from torch import nn

from .modules import FusedLinear, FusedMLP, FusedMSELoss, _check_backend

__all__ = ["accelerate", "AccelerateReport", "Replaced", "LeftAlone"]

_FUSABLE_ACTS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}


@dataclass
class Replaced:
    path: str        # dotted module path, "" for the root
    before: str      # e.g. "Linear(784->128) + ReLU"
    after: str       # e.g. "FusedLinear(784->128, relu)"


@dataclass
class LeftAlone:
    path: str
    module: str      # type name
    reason: str


@dataclass
class AccelerateReport:
    """What ``accelerate`` replaced and what it left alone, and why."""

    backend: Optional[str] = None
    replaced: List[Replaced] = field(default_factory=list)
    left_alone: List[LeftAlone] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.replaced)

    def __str__(self) -> str:
        lines = [f"accelerate (backend={self.backend or 'auto'}): {len(self.replaced)} replaced, "
                 f"{len(self.left_alone)} left alone"]
        for r in self.replaced:
            lines.append(f"  replaced    {r.path or '<root>'}: {r.before} -> {r.after}")
        for s in self.left_alone:
            lines.append(f"  left alone  {s.path or '<root>'}: {s.module} -- {s.reason}")
        return "\n".join(lines)


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _lin_str(m: nn.Linear) -> str:
    return f"{m.in_features}->{m.out_features}{'' if m.bias is not None else ', no bias'}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Rewriter:
    def __init__(self, backend: Optional[str], uses: Counter):
        self.backend = backend
        self.uses = uses  # id(module) -> number of slots (in all parents) holding it
        # id(module) -> (module, its replacement): a shared module gets one replacement, so the
        # sharing survives; the module is kept alive so its id cannot be reused meanwhile
        self.done: Dict[int, Tuple[nn.Module, nn.Module]] = {}
        self.report = AccelerateReport(backend=backend)

    def _mark(self, old: nn.Module, new: nn.Module) -> nn.Module:
        self.done[id(old)] = (old, new)
        self.done[id(new)] = (new, new)
        return new

    def _skip(self, m: nn.Module, path: str, reason: str) -> nn.Module:
        self.report.left_alone.append(LeftAlone(path, type(m).__name__, reason))
        return self._mark(m, m)

    def _replace_linear(self, m: nn.Linear, path: str, activation: str, act_name: str = "") -> FusedLinear:
        new = FusedLinear.from_linear(m, activation=activation, backend=self.backend, share=True)
        before = f"Linear({_lin_str(m)})" + (f" + {act_name}" if act_name else "")
        self.report.replaced.append(Replaced(path, before, f"FusedLinear({_lin_str(m)}, {activation})"))
        return self._mark(m, new)

    def rewrite(self, m: nn.Module, path: str) -> nn.Module:
        """Return the replacement for ``m`` (``m`` itself if kept); rewrites its children in place."""
        if id(m) in self.done:
            return self.done[id(m)][1]
        if isinstance(m, (FusedLinear, FusedMLP, FusedMSELoss)):
            what = f"activation={m.activation}, " if isinstance(m, FusedLinear) else ""
            return self._skip(m, path, f"already fused ({what}backend={m.backend or 'auto'})")
        if isinstance(m, nn.Linear):
            if isinstance(m, nn.LazyLinear):
                return self._skip(m, path, "uninitialised LazyLinear: run one forward pass first")
            if type(m) is not nn.Linear:
                return self._skip(m, path, "a subclass of nn.Linear that accelerate does not know (its forward "
                                           "may not be x @ W.T + b: quantized, LoRA, parametrized, ...)")
            if _has_hooks(m):
                return self._skip(m, path, "has hooks registered, which would stop firing")
            return self._replace_linear(m, path, "none")
        if isinstance(m, nn.MSELoss):
            if type(m) is not nn.MSELoss:
                return self._skip(m, path, "a subclass of nn.MSELoss that accelerate does not know")
            if _has_hooks(m):
                return self._skip(m, path, "has hooks registered, which would stop firing")
            new = FusedMSELoss(reduction=m.reduction, backend=self.backend)
            new.train(m.training)
            self.report.replaced.append(Replaced(path, f"MSELoss({m.reduction})", f"FusedMSELoss({m.reduction})"))
            return self._mark(m, new)
        if type(m) is nn.Sequential:
            self._fuse_sequential(m, path)
        # every slot, not named_children(): that one skips a module held twice by one parent
        for name, child in list(m._modules.items()):
            if child is None:
                continue
            new = self.rewrite(child, _join(path, name))
            if new is not child:
                m._modules[name] = new
        return self._mark(m, m)

    def _fuse_sequential(self, seq: nn.Sequential, path: str) -> None:
        keys = list(seq._modules.keys())
        i = 0
        while i + 1 < len(keys):
            lin, act = seq._modules[keys[i]], seq._modules[keys[i + 1]]
            act_kind = _FUSABLE_ACTS.get(type(act))
            if type(lin) is not nn.Linear or act_kind is None:
                i += 1
                continue
            lpath = _join(path, keys[i])
            # an activation module is stateless, so one shared between slots is fine to drop
            # from this slot; a shared Linear is not (its other uses have no activation)
            if self.uses[id(lin)] > 1:
                why = "the Linear is shared with another slot, so fusing would change its other uses"
            elif _has_hooks(lin) or _has_hooks(act):
                why = "hooks are registered on the Linear or the activation"
            else:
                seq._modules[keys[i]] = self._replace_linear(lin, lpath, act_kind, type(act).__name__)
                placeholder = nn.Identity()
                placeholder.train(act.training)
                seq._modules[keys[i + 1]] = self._mark(placeholder, placeholder)
                i += 2
                continue
            self.report.left_alone.append(LeftAlone(_join(path, keys[i + 1]), type(act).__name__,
                                                    f"not fused into {lpath}: {why}"))
            i += 1


def accelerate(model: nn.Module, backend: Optional[str] = None, inplace: bool = False
               ) -> Tuple[nn.Module, AccelerateReport]:
    """Swap ``nn.Linear`` (+ ``ReLU``/``Sigmoid``) and ``nn.MSELoss`` for fused modules.

    Returns ``(model, report)``; ``print(report)`` lists what was replaced and what was left
    alone and why. ``backend`` pins the new modules to a backend (``None``: automatic). With
    ``inplace=False`` (default) ``model`` is deep-copied first and left unchanged. See the
    module docstring for the exact rules. Warns once if it skipped Linear subclasses it does
    not know.
    """
    _check_backend("accelerate", backend)
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    uses: Counter = Counter()
    for parent in model.modules():  # each module once; count every slot that holds a child
        for child in parent._modules.values():
            if child is not None:
                uses[id(child)] += 1
    rw = _Rewriter(backend, uses)
    model = rw.rewrite(model, "")
    unknown = [s for s in rw.report.left_alone if "does not know" in s.reason]
    if unknown:
        warnings.warn(
            "aecomp.accelerate left alone " + ", ".join(f"{s.path or '<root>'} ({s.module})" for s in unknown)
            + ": subclasses it does not know are not rewritten",
            stacklevel=2,
        )
    return model, rw.report
