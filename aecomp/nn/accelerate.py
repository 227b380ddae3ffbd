"""``accelerate(model)``: swap the plain layers of any ``nn.Module`` for the fused ones.

Rewrites, in this order of preference:

1. inside an ``nn.Sequential`` (exactly that class), ``Linear`` at index ``i`` followed by
   ``ReLU`` or ``Sigmoid`` at ``i + 1`` becomes ``FusedLinear(activation="relu"|"sigmoid")`` at
   ``i`` and ``nn.Identity()`` at ``i + 1``;
2. any other ``nn.Linear`` becomes ``FusedLinear(activation="none")``;
3. ``nn.MSELoss`` becomes ``FusedMSELoss`` with the same reduction;
4. a plain ``nn.Sequential`` that now holds fused layers becomes a ``FusedSequential``: the same
   children under the same indices, whose forward runs each maximal run of fused layers
   (Linear/ReLU/Sigmoid in the original) as ONE ``aecomp.ops.mlp`` call -- one autograd node
   and one fused backward per run instead of one per layer.

``accelerate`` returns the model, like ``torch.compile``; the report of what it did is
``model.aecomp_report`` (also ``aecomp.accelerate_report(model)``). Code written for the old
``model, report = accelerate(m)`` now fails at the unpacking (a Module is not a pair).

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

Weights are shared, as ``torch.compile`` shares them: the returned model holds the very same
Parameter (and buffer) objects as ``model``, so an optimizer built before the call trains the
returned model, and the two always hold the same values::

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model = aecomp.accelerate(model)      # opt still steps model's weights

By default the module tree is copied (the new modules are new objects holding the old
parameters) and ``model``'s own structure is left as it was (its Linear layers stay Linear);
``inplace=True`` rewrites ``model`` itself; ``share_parameters=False`` deep-copies the
parameters too (an independent model). Device, dtype, requires_grad and the training flag are
kept. Applying ``accelerate`` to its own result changes nothing.
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from torch import nn

from .modules import FusedLinear, FusedMLP, FusedMSELoss, FusedSequential, _check_backend, _check_precision, _has_hooks

__all__ = ["accelerate", "accelerate_report", "accelerated_chain", "AccelerateReport", "Replaced", "LeftAlone"]

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


def _lin_str(m: nn.Linear) -> str:
    return f"{m.in_features}->{m.out_features}{'' if m.bias is not None else ', no bias'}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Rewriter:
    def __init__(self, backend: Optional[str], uses: Counter, precision: str = "fp32"):
        self.backend = backend
        self.precision = precision
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
        new = FusedLinear.from_linear(m, activation=activation, backend=self.backend, share=True,
                                      precision=self.precision)
        before = f"Linear({_lin_str(m)})" + (f" + {act_name}" if act_name else "")
        bf16 = ", bf16" if self.precision == "bf16" else ""
        self.report.replaced.append(Replaced(path, before, f"FusedLinear({_lin_str(m)}, {activation}{bf16})"))
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
        if type(m) is nn.Sequential and not _has_hooks(m) and any(
                isinstance(c, FusedLinear) for c in m._modules.values()):
            return self._mark(m, self._chain_sequential(m, path))
        return self._mark(m, m)

    def _chain_sequential(self, seq: nn.Sequential, path: str) -> FusedSequential:
        new = FusedSequential(OrderedDict(seq._modules))  # the same children under the same names
        new.train(seq.training)
        runs = [run for m, run in new._runs() if run is not None and len(run) > 1]
        index = {id(c): k for k, c in seq._modules.items()}
        what = ", ".join(f"layers {index[id(r[0])]}-{index[id(r[-1])]} ({len(r)}) as one mlp op" for r in runs)
        self.report.replaced.append(Replaced(path, "Sequential", f"FusedSequential({what or 'no chains'})"))
        return new

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


def accelerate(model: nn.Module, backend: Optional[str] = None, inplace: bool = False,
               share_parameters: bool = True, precision: str = "fp32") -> nn.Module:
    """Swap ``nn.Linear`` (+ ``ReLU``/``Sigmoid``) and ``nn.MSELoss`` for fused modules, and run
    each Sequential's runs of them as one chain op.

    Returns the model (``model = aecomp.accelerate(model)``, like ``torch.compile``);
    ``print(model.aecomp_report)`` lists what was replaced and what was left alone and why.
    ``backend`` pins the new modules to a backend (``None``: automatic). The result shares
    ``model``'s parameters and buffers (an optimizer built before the call trains it); with
    ``inplace=False`` (default) ``model``'s module tree is copied and left unchanged, with
    ``share_parameters=False`` the parameters are copied too. See the module docstring for the
    exact rules. Warns once if it skipped Linear subclasses it does not know.

    ``precision="bf16"`` (an opt-in, like ``torch.autocast``; fp32 is the default): the fused
    layers run their GEMMs in bfloat16 on the CPU's matrix engine (AMX or AVX512-BF16) for float32
    CPU inputs, keeping float32 parameters, outputs and gradients, so the user's own optimizer and
    loop are unchanged (``aecomp.ops._bf16``); where that engine does not run bf16 (``aecomp
    info``), the float32 ops run.
    """
    _check_backend("accelerate", backend)
    _check_precision("accelerate", precision)
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        # deepcopy's memo: every parameter and buffer maps to itself, so only the modules are new
        memo = {} if not share_parameters else {id(t): t for t in (*model.parameters(), *model.buffers())}
        model = copy.deepcopy(model, memo)
    uses: Counter = Counter()
    for parent in model.modules():  # each module once; count every slot that holds a child
        for child in parent._modules.values():
            if child is not None:
                uses[id(child)] += 1
    rw = _Rewriter(backend, uses, precision)
    model = rw.rewrite(model, "")
    model.aecomp_report = rw.report  # an attribute, not a buffer: not in the state_dict
    unknown = [s for s in rw.report.left_alone if "does not know" in s.reason]
    if unknown:
        warnings.warn(
            "aecomp.accelerate left alone " + ", ".join(f"{s.path or '<root>'} ({s.module})" for s in unknown)
            + ": subclasses it does not know are not rewritten",
            stacklevel=2,
        )
    return model


def accelerate_report(model: nn.Module) -> AccelerateReport:
    """The report of the last ``accelerate`` call that returned ``model``."""
    report = getattr(model, "aecomp_report", None)
    if not isinstance(report, AccelerateReport):
        raise ValueError(f"accelerate_report: this {type(model).__name__} did not come from aecomp.accelerate")
    return report


def accelerated_chain(model: nn.Module) -> Tuple[List[FusedLinear], Optional[str]]:
    """``(layers, backend)`` when ``model(x)`` is provably one chain of fused layers.

    For a user's model after ``accelerate`` (e.g. ``forward = decoder(encoder(x))`` over two
    Sequentials of Linear/ReLU/Sigmoid): the forward is traced with ``torch.fx`` (the fused
    modules as leaves) and must be a straight line of FusedSequential / FusedMLP / FusedLinear
    calls from the input to the output. A model with its own ``loss`` method is refused: its
    loss need not be ``mse(model(x), x)``. Raises NotImplementedError saying why otherwise.
    """
    import torch.fx

    where = f"{type(model).__name__}"
    if callable(getattr(model, "loss", None)):
        raise NotImplementedError(f"{where} defines its own loss(), which need not be mse(model(x), x)")

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (FusedLinear, FusedMLP, FusedSequential)) or super().is_leaf_module(m, qualname)

    if isinstance(model, (FusedLinear, FusedMLP, FusedSequential)):  # the model is the chain itself
        return _one_backend(where, _chain_layers(model, where))
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # any user forward: fx raises many kinds
        raise NotImplementedError(f"{where}'s forward could not be traced ({type(exc).__name__}: {exc})") from None
    layers: List[FusedLinear] = []
    prev = None
    for node in graph.nodes:
        if node.op == "placeholder" and prev is None:
            prev = node
        elif node.op == "call_module" and node.args == (prev,) and not node.kwargs:
            layers.extend(_chain_layers(model.get_submodule(node.target), f"{where}.{node.target}"))
            prev = node
        elif node.op == "output" and node.args == (prev,) and prev is not None and prev.op != "placeholder":
            return _one_backend(where, layers)
        else:
            raise NotImplementedError(f"{where}'s forward is not one chain of fused layers (at {node.op} {node.target})")
    raise NotImplementedError(f"{where}'s forward is not one chain of fused layers")



def _chain_layers(sub: nn.Module, where: str) -> List[FusedLinear]:
    if isinstance(sub, FusedLinear):
        return [sub]
    if isinstance(sub, FusedMLP):
        return list(sub.layers)
    if isinstance(sub, FusedSequential):
        try:
            return list(sub.chain())
        except ValueError as exc:
            raise NotImplementedError(f"{where}: {exc}") from None
    if isinstance(sub, nn.Identity):
        return []
    raise NotImplementedError(f"{where} ({type(sub).__name__}) is not a fused layer")


def _one_backend(where: str, layers: List[FusedLinear]) -> Tuple[List[FusedLinear], Optional[str]]:
    backends = {layer.backend for layer in layers}
    if len(backends) != 1:
        raise NotImplementedError(f"{where}: the layers are pinned to different backends {sorted(map(str, backends))}")
    return layers, backends.pop()
