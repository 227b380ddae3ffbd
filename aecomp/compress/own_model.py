"""A user's own trained classifier, read into the project's classifier (a ``FusedMLP`` copy).

What can be compressed is what the packed path runs: a chain

.. math:: h_0 = x, \\quad h_{i+1} = \\mathrm{act}_i(h_i W_i^T + b_i), \\quad \\text{logits} = h_L,
          \\quad \\mathrm{act}_i \\in \\{\\mathrm{relu}, \\mathrm{sigmoid}, \\mathrm{none}\\}

:func:`read_classifier` takes it in any of these forms and returns :class:`OwnModel` (the chain
as a float32 CPU ``FusedMLP``, ``{"type": "classifier", "dims", "activations"}`` in
``classifier_config``, and notes on what was read):

* a ``torch.nn.Module``: an ``nn.Sequential`` (nested ones too, plain or as
  ``aecomp.accelerate`` leaves it), a ``FusedMLP``, a ``CompressedNet``, or any module whose
  ``forward`` ``torch.fx`` traces to a straight line of Linear / ReLU / Sigmoid calls
  (``torch.relu``, ``F.relu``, ``x.relu()`` and the sigmoid forms count too);
* a ``state_dict`` (a mapping of names to tensors), or a ``.safetensors`` / ``.pt`` / ``.pth``
  file holding one -- a state_dict holds no activations, so they are declared
  (``activations=["relu", "relu", "none"]``, on the command line ``--activations relu,relu,none``);
* a model file written by ``aecomp compress`` (its architecture is in the file).

Layers that change nothing at inference are accepted and named in the notes: ``nn.Identity``,
``nn.Flatten`` (the data is ``[n, features]`` already), ``nn.Dropout``, and a final
``nn.Softmax`` / ``nn.LogSoftmax`` over the classes (dropped: the argmax is that of the
logits, and retraining uses the cross-entropy on the logits, which is what LogSoftmax + NLL
computes). A layer without a bias gets a zero bias (exact). Everything else -- convolutions,
normalisation, other activations, a layer called twice, a forward that branches -- is refused
with one line (:class:`ModelError`) naming the layers. Weights are copied (float32, CPU): the
user's model is never modified.

:func:`declared_scaling` reads the input scaling a user declares for their model: the model was
trained on inputs scaled the user's way, so that way is taken as given, never refitted silently.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..data import SCALES, Preprocessing
from ..nn import FusedLinear, FusedMLP
from .net import CompressedNet

__all__ = ["ModelError", "OwnModel", "declared_scaling", "parse_activations", "read_classifier"]

ACTIVATIONS = ("relu", "sigmoid", "none")
SUPPORTED = "Linear, ReLU, Sigmoid (plus Identity, Flatten, Dropout and a final Softmax/LogSoftmax)"
_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Dropout)
_ACT_MODULES = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}
_SOFTMAX = (nn.Softmax, nn.LogSoftmax)
_ACT_FUNCTIONS = {torch.relu: "relu", torch.nn.functional.relu: "relu", torch.sigmoid: "sigmoid",
                  torch.nn.functional.sigmoid: "sigmoid"}


class ModelError(ValueError):
    """A model that cannot be read as a Linear/ReLU/Sigmoid chain; the message is one line."""


@dataclass
class OwnModel:
    """The user's classifier as the project's: ``model`` (a float32 CPU ``FusedMLP`` copy, eval
    mode), ``source`` (what it was read from), ``notes`` (layers dropped or added, dtype changes)."""

    model: FusedMLP
    source: str
    notes: List[str] = field(default_factory=list)
    scaling: Optional[Preprocessing] = None  # the input scaling an aecomp model file records
    labels: Optional[Tuple[int, ...]] = None  # its label map (None: classes 0..k-1)

    @property
    def dims(self) -> Tuple[int, ...]:
        return self.model.dims

    @property
    def activations(self) -> Tuple[str, ...]:
        return self.model.activations


def parse_activations(text: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    """``"relu,relu,none"`` (or a list) -> ``["relu", "relu", "none"]``; ModelError on a name
    outside relu / sigmoid / none."""
    if text is None:
        return None
    names = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    bad = [n for n in names if n not in ACTIVATIONS]
    if not names or bad:
        raise ModelError(f"--activations must be comma-separated names from {', '.join(ACTIVATIONS)}, one per Linear "
                         f"layer (e.g. relu,relu,none), got {text!r}")
    return names


# ---------------------------------------------------------------------------------------- modules
def _describe(name: str, m: nn.Module) -> str:
    return f"{name or '<model>'} ({type(m).__name__})"


def _leaf_ok(m: nn.Module) -> bool:
    return (type(m) is nn.Linear or isinstance(m, FusedLinear) or type(m) in _ACT_MODULES
            or isinstance(m, _PASS_THROUGH + _SOFTMAX))


def _container(m: nn.Module) -> bool:
    return isinstance(m, (nn.Sequential, FusedMLP, CompressedNet, nn.ModuleList, nn.ModuleDict))


def _refuse_unsupported(model: nn.Module) -> None:
    """One line naming every module that is neither a supported layer nor a container (a custom
    module's own forward is checked by tracing)."""
    bad = []
    for name, m in model.named_modules():
        if _leaf_ok(m) or _container(m):
            continue
        if isinstance(m, nn.Linear):  # LoRA, quantized, parametrized: forward need not be x W^T + b
            bad.append(_describe(name, m) + " a Linear subclass")
        elif not list(m.children()) and (list(m.parameters(recurse=False)) or type(m).__module__.startswith("torch.")):
            bad.append(_describe(name, m))
    if bad:
        shown = ", ".join(bad[:6]) + (f", and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise ModelError(f"the model has layers the packed path cannot run: {shown}; supported: {SUPPORTED}")


def _flatten_sequential(seq: nn.Module, prefix: str) -> List[Tuple[str, nn.Module]]:
    out: List[Tuple[str, nn.Module]] = []
    # _modules, not named_children(): that one yields a module held twice only once
    for name, m in seq._modules.items():
        if m is None:
            continue
        full = f"{prefix}.{name}" if prefix else name
        out += _module_ops(m, full)
    return out


def _module_ops(model: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """The modules ``model`` calls, in order, as ``(qualified name, module)``."""
    if isinstance(model, CompressedNet):
        return _module_ops(model.encoder, f"{prefix}.encoder" if prefix else "encoder") + \
            _module_ops(model.head, f"{prefix}.head" if prefix else "head")
    if isinstance(model, (nn.Sequential, FusedMLP)):  # FusedSequential too; FusedMLP's children are its layers
        return _flatten_sequential(model, prefix)
    if _leaf_ok(model):
        return [(prefix or type(model).__name__, model)]
    return _traced_ops(model)


def _traced_ops(model: nn.Module) -> List[Tuple[str, Any]]:
    """A custom module's forward, traced with ``torch.fx``; must be a straight line from the input."""
    import torch.fx

    where = type(model).__name__

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return _leaf_ok(m) or isinstance(m, (nn.Sequential, FusedMLP, CompressedNet)) \
                or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # a user's forward: fx raises many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{where}'s forward could not be traced by torch.fx ({type(exc).__name__}: {first}); pass "
                         f"an nn.Sequential of {SUPPORTED}, or its state_dict with --activations") from None
    ops: List[Tuple[str, Any]] = []
    prev = None
    called: Dict[str, int] = {}

    def not_chain(node, why: str) -> ModelError:
        return ModelError(f"{where}'s forward is not a straight chain of {SUPPORTED}: {why} (fx node "
                          f"{node.op} {node.target})")

    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise not_chain(node, "it takes more than one input")
            prev = node
            continue
        if node.op == "output":
            if node.args != (prev,) or prev is None or prev.op == "placeholder":
                raise not_chain(node, "the output is not the end of the chain")
            return ops
        first = node.args[0] if node.args else None
        if first is not prev:
            raise not_chain(node, "a step does not take the previous step's output")
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
            called[node.target] = called.get(node.target, 0) + 1
            if called[node.target] > 1:
                raise ModelError(f"{where}: layer {node.target!r} is called twice in forward (shared weights), which "
                                 f"a chain of separate layers cannot hold")
            sub = model.get_submodule(node.target)
            ops += _module_ops(sub, node.target)
        elif node.op == "call_function" and node.target in _ACT_FUNCTIONS and len(node.args) == 1:
            ops.append((str(node.name), _ACT_FUNCTIONS[node.target]))
        elif node.op == "call_method" and node.target in ("relu", "sigmoid") and len(node.args) == 1:
            ops.append((str(node.name), node.target))
        else:
            raise not_chain(node, "an operation outside the supported layers")
        prev = node
    raise ModelError(f"{where}'s forward has no output")


def _chain_from_ops(ops: List[Tuple[str, Any]], where: str,
                    notes: List[str]) -> Tuple[List[nn.Linear], List[str]]:
    """``(linears, activations)`` from the called modules / activation names, in order."""
    linears: List[nn.Linear] = []
    acts: List[str] = []
    seen: Dict[int, str] = {}
    for k, (name, op) in enumerate(ops):
        last = k == len(ops) - 1
        if isinstance(op, nn.Linear):
            if id(op) in seen:
                raise ModelError(f"{where}: layer {name!r} is the same Linear as {seen[id(op)]!r} (shared weights), "
                                 f"which a chain of separate layers cannot hold")
            seen[id(op)] = name
            linears.append(op)
            acts.append("none")
            if isinstance(op, FusedLinear) and op.activation != "none":
                acts[-1] = op.activation
            continue
        act = op if isinstance(op, str) else _ACT_MODULES.get(type(op))
        if act is not None:
            if not linears:
                raise ModelError(f"{where}: {name!r} ({act}) comes before the first Linear layer; the chain starts "
                                 f"with a Linear")
            if acts[-1] == "none":
                acts[-1] = act
            elif not (acts[-1] == act == "relu"):  # relu(relu(z)) = relu(z); any other pair is not one activation
                raise ModelError(f"{where}: {name!r} applies {act} after {acts[-1]}; one activation per Linear layer")
            continue
        if isinstance(op, _SOFTMAX):
            dim = getattr(op, "dim", None)
            if not last:
                raise ModelError(f"{where}: {name!r} ({type(op).__name__}) is not the last layer; a softmax is "
                                 f"accepted only at the end")
            if dim not in (1, -1):
                raise ModelError(f"{where}: {name!r} is {type(op).__name__}(dim={dim}); expected dim=1 or -1 (over "
                                 f"the classes)")
            notes.append(f"dropped the final {type(op).__name__}: the compressed model outputs logits (same argmax)")
            continue
        if isinstance(op, _PASS_THROUGH):
            if isinstance(op, nn.Dropout) and op.p > 0:
                notes.append(f"{name} (Dropout p={op.p:g}) is dropped: it does nothing at inference")
            elif isinstance(op, nn.Flatten) and op.start_dim not in (1, -1):
                raise ModelError(f"{where}: {name!r} is Flatten(start_dim={op.start_dim}); only start_dim=1 keeps the "
                                 f"batch dimension")
            continue
        raise ModelError(f"the model has layers the packed path cannot run: {name} ({type(op).__name__}); "
                         f"supported: {SUPPORTED}")
    if not linears:
        raise ModelError(f"{where}: no Linear layer; the packed path runs a chain of Linear layers")
    return linears, acts


def _to_fused(weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]], acts: Sequence[str],
              names: Sequence[str], where: str, notes: List[str]) -> FusedMLP:
    """A float32 CPU FusedMLP holding copies of the weights; checks shapes and chaining."""
    for name, w, b in zip(names, weights, biases):
        if w.dim() != 2:
            raise ModelError(f"{where}: {name} weight has shape {list(w.shape)}; a Linear weight is [out, in]")
        if b is not None and list(b.shape) != [w.shape[0]]:
            raise ModelError(f"{where}: {name} bias has shape {list(b.shape)}; expected [{w.shape[0]}]")
        for what, t in (("weight", w), ("bias", b)):
            if t is not None and not t.is_floating_point():
                raise ModelError(f"{where}: {name} {what} has dtype {t.dtype}; expected floating point (a trained "
                                 f"float model)")
            if t is not None and t.device.type == "meta":
                raise ModelError(f"{where}: {name} {what} is on the meta device (no values)")
            if t is not None and not bool(torch.isfinite(t.detach().float()).all()):
                raise ModelError(f"{where}: {name} {what} holds NaN or infinite values")
    for k in range(1, len(weights)):
        if weights[k].shape[1] != weights[k - 1].shape[0]:
            chain = " -> ".join(f"{n} [{w.shape[0]}, {w.shape[1]}]" for n, w in zip(names, weights))
            raise ModelError(f"{where}: {names[k]} takes {weights[k].shape[1]} features but {names[k - 1]} gives "
                             f"{weights[k - 1].shape[0]} (layers in order: {chain})")
    dtypes = sorted({str(w.dtype).replace('torch.', '') for w in weights} - {"float32"})
    if dtypes:
        notes.append(f"weights converted from {', '.join(dtypes)} to float32")
    missing = [n for n, b in zip(names, biases) if b is None]
    if missing:
        notes.append(f"zero bias added to {', '.join(missing)} (exact: the stored model keeps one bias per layer)")
    dims = [int(weights[0].shape[1])] + [int(w.shape[0]) for w in weights]
    mlp = FusedMLP(dims, list(acts))
    with torch.no_grad():
        for layer, w, b in zip(mlp.layers, weights, biases):
            layer.weight.copy_(w.detach().to("cpu", torch.float32))
            if b is None:
                layer.bias.zero_()
            else:
                layer.bias.copy_(b.detach().to("cpu", torch.float32))
    if acts[-1] != "none":  # legal, but a classifier's last layer usually gives logits
        notes.append(f"the last layer applies {acts[-1]}: classifiers usually end in logits (activation none); "
                     f"check the declared activations if that is not what the model does")
    return mlp.eval()


def _from_module(model: nn.Module, activations: Optional[List[str]]) -> OwnModel:
    where = type(model).__name__
    _refuse_unsupported(model)
    notes: List[str] = []
    ops = _module_ops(model)
    linears, acts = _chain_from_ops(ops, where, notes)
    if activations is not None and list(activations) != acts:
        raise ModelError(f"--activations {','.join(activations)} disagrees with the model's own layers "
                         f"({','.join(acts)}); leave --activations out for a module")
    names = [n for n, op in ops if isinstance(op, nn.Linear)]
    mlp = _to_fused([m.weight for m in linears], [m.bias for m in linears], acts, names, where, notes)
    return OwnModel(mlp, f"{where} (torch module)", notes)


# ---------------------------------------------------------------------------------------- state dicts
def _natural(key: str) -> Tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))


_NORM_NAMES = {"running_mean", "running_var", "num_batches_tracked"}


def _linear_groups(tensors: Mapping[str, torch.Tensor],
                   where: str) -> List[Tuple[str, torch.Tensor, Optional[torch.Tensor]]]:
    """``[(prefix, weight, bias)]`` in the mapping's order; one line naming whatever is not a Linear."""
    groups: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ModelError(f"{where}: entry {key!r} is a {type(t).__name__}, not a tensor (expected a state_dict)")
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = t
    bad, out = [], []
    for prefix, g in groups.items():
        shown = prefix or "<top>"
        w = g.get("weight")
        if set(g) & _NORM_NAMES or (w is not None and w.dim() == 1):
            bad.append(f"{shown} (normalisation: {', '.join(sorted(g))})")
        elif w is not None and w.dim() >= 3:
            bad.append(f"{shown} ({w.dim()}-D weight {list(w.shape)}: a convolution)")
        elif w is None or not set(g) <= {"weight", "bias"}:
            bad.append(f"{shown} ({', '.join(sorted(g))})")
        else:
            out.append((shown, w, g.get("bias")))
    if bad:
        shown = ", ".join(bad[:6]) + (f", and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise ModelError(f"{where} holds layers the packed path cannot run: {shown}; supported: Linear layers "
                         f"(weight [out, in], bias [out]) with --activations relu|sigmoid|none")
    if not out:
        raise ModelError(f"{where}: no Linear layer (no 'weight' tensors)")
    return out


def _chains(groups: List[Tuple[str, torch.Tensor, Optional[torch.Tensor]]]) -> bool:
    return all(groups[k][1].shape[1] == groups[k - 1][1].shape[0] for k in range(1, len(groups)))


def _from_state_dict(tensors: Mapping[str, torch.Tensor], activations: Optional[List[str]], where: str) -> OwnModel:
    groups = _linear_groups(tensors, where)
    # a state_dict keeps the modules' registration order; a safetensors file sorts its keys
    if not _chains(groups):
        by_name = sorted(groups, key=lambda g: _natural(g[0]))
        if _chains(by_name):
            groups = by_name
    names = [g[0] for g in groups]
    if activations is None:
        raise ModelError(f"{where} holds weights but no activations (a state_dict never does): declare one per "
                         f"Linear layer "
                         f"({len(groups)} here: {', '.join(names)}), e.g. --activations "
                         f"{','.join(['relu'] * (len(groups) - 1) + ['none'])}")
    if len(activations) != len(groups):
        raise ModelError(f"--activations has {len(activations)} entries ({','.join(activations)}) but {where} holds "
                         f"{len(groups)} Linear layers ({', '.join(names)}); give one per layer")
    notes: List[str] = []
    mlp = _to_fused([g[1] for g in groups], [g[2] for g in groups], activations, names, where, notes)
    return OwnModel(mlp, where, notes)


def _load_file(path: Path, activations: Optional[List[str]]) -> OwnModel:
    where = str(path)
    if path.is_dir():
        raise ModelError(f"{where} is a folder; --model takes a file (.safetensors, .pt or .pth); a pretrained "
                         f"autoencoder's run folder goes to --encoder")
    if not path.is_file():
        raise ModelError(f"{where}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, activations)
    if suffix == ".aecc":
        return _load_aecomp_file(path, activations)
    if suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            # torch's message is a paragraph; the line after "WeightsUnpickler error:" says what failed
            after = [lines[i + 1] for i, ln in enumerate(lines[:-1]) if ln.endswith("WeightsUnpickler error:")]
            text = (after or lines or [type(exc).__name__])[0]
            if "Unsupported global" in str(exc):
                raise ModelError(f"{where} holds a pickled Python object (a whole module?), which is not loaded (it "
                                 f"could run code); save model.state_dict() instead and give --activations, or call "
                                 f"aecomp.compress.compress_model(model, ...) from Python") from None
            raise ModelError(f"{where}: not a readable torch file ({text})") from None
        if isinstance(obj, Mapping):
            for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
                inner = obj.get(key)
                if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                    return _from_state_dict(inner, activations, f"{where} [{key!r}]")
            return _from_state_dict(obj, activations, where)
        raise ModelError(f"{where} holds a {type(obj).__name__}, not a state_dict")
    raise ModelError(f"{where}: unknown model file type {suffix or '(no extension)'}; expected .safetensors, .pt "
                     f"or .pth (a state_dict), or an aecomp model file (.safetensors, .aecc)")


def _load_aecomp_file(path: Path, activations: Optional[List[str]]) -> OwnModel:
    """A model file aecomp wrote (read by ``modelfile.read_model``, the one door): the
    architecture, input scaling and label map come from the file."""
    from .modelfile import ModelFileError, read_model
    from .storage import StoredTensors

    where = str(path)
    try:
        stored = read_model(path)
    except ModelFileError as exc:
        raise ModelError(str(exc)) from None
    if isinstance(stored, StoredTensors):
        kind = (stored.config or {}).get("type")
        hint = "pass it as --encoder" if kind in ("mlp", "conv", "rnn", "vae") else "not a chain of Linear layers"
        raise ModelError(f"{where} holds {'an autoencoder' if kind != 'pca' else 'the PCA baseline'} ({kind}), not a "
                         f"classifier; {hint}")
    own = _from_module(stored.to_model(), activations)
    own.source = f"{where} ({stored.meta.name})"
    own.scaling, own.labels = stored.meta.scaling, stored.meta.labels
    return own


def _aecomp_metadata(path: Path) -> bool:
    """Whether a safetensors file carries aecomp's header (then it is an aecomp model file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return "aecomp" in (fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{path}: not a readable safetensors file ({str(exc).strip().splitlines()[0]})") from None


def _load_safetensors(path: Path, activations: Optional[List[str]]) -> OwnModel:
    if _aecomp_metadata(path):
        return _load_aecomp_file(path, activations)
    from safetensors.torch import load_file

    return _from_state_dict(load_file(str(path)), activations, str(path))


def read_classifier(source: Union[nn.Module, Mapping[str, torch.Tensor], str, os.PathLike],
                    activations: Union[str, Sequence[str], None] = None) -> OwnModel:
    """Read a user's classifier as a chain of Linear layers (see the module docstring).

    ``source``: an ``nn.Module``, a state_dict, or a path to a ``.safetensors`` / ``.pt`` /
    ``.pth`` file. ``activations`` (``"relu,relu,none"`` or a list): required for a state_dict,
    checked against the layers for a module. The returned model is a copy (float32, CPU, eval).
    """
    acts = parse_activations(activations)
    if isinstance(source, nn.Module):
        return _from_module(source, acts)
    if isinstance(source, Mapping):
        return _from_state_dict(source, acts, "the state_dict")
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source), acts)
    raise ModelError(f"expected an nn.Module, a state_dict or a model file path, got {type(source).__name__}")


# ---------------------------------------------------------------------------------------- scaling
def declared_scaling(text: Union[str, Preprocessing, None]) -> Union[Preprocessing, str]:
    """The input scaling a user declares: ``x' = (x - shift) / scale``.

    ``"none"`` (inputs as stored), ``"K"`` (divide by ``K``, e.g. ``255``), ``"SHIFT,SCALE"``
    (e.g. ``0.1307,0.3081``), or a ``.npz`` file with arrays ``shift`` and ``scale`` (or
    ``mean`` and ``std``), one value or one per feature: returned as a fixed
    :class:`aecomp.data.Preprocessing`. A fitted kind (``auto``, ``global``, ``minmax``,
    ``standard``) is returned as its name: the caller fits it on the training split and says so.
    """
    if isinstance(text, Preprocessing):
        return text
    if text is None or str(text).strip().lower() == "none":
        one = torch.ones((), dtype=torch.float32)
        return Preprocessing("none", torch.zeros((), dtype=torch.float32), one, unit=False)
    s = str(text).strip()
    if s in SCALES:
        return s
    if s.lower().endswith(".npz"):
        return _scaling_file(s)
    parts = [p.strip() for p in s.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) for v in values):
        raise ModelError(f"--scale {s!r}: expected none, K (divide by K), SHIFT,SCALE, a .npz with shift/scale "
                         f"arrays, or a fitted kind ({', '.join(SCALES)})")
    shift, scale = (0.0, values[0]) if len(values) == 1 else tuple(values)
    if scale == 0:
        raise ModelError(f"--scale {s!r}: the scale must not be 0 (x' = (x - shift) / scale)")
    return Preprocessing("global", torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32),
                         unit=False)


def _scaling_file(path: str) -> Preprocessing:
    import numpy as np

    if not os.path.isfile(path):
        raise ModelError(f"--scale {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            pair = ("shift", "scale") if {"shift", "scale"} <= names else ("mean", "std") if {"mean", "std"} <= names \
                else None
            if pair is None:
                raise ModelError(f"--scale {path}: expected arrays 'shift' and 'scale' (or 'mean' and 'std'), it "
                                 f"holds {', '.join(sorted(names)) or 'nothing'}")
            shift, scale = (torch.from_numpy(np.asarray(z[k], dtype=np.float32)).reshape(-1) for k in pair)
    except ModelError:
        raise
    except Exception as exc:  # numpy / zipfile errors on a damaged file
        raise ModelError(f"--scale {path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    if not (torch.isfinite(shift).all() and torch.isfinite(scale).all()) or bool((scale == 0).any()):
        raise ModelError(f"--scale {path}: shift and scale must be finite and scale nonzero")
    if shift.numel() not in (1, scale.numel()) and scale.numel() != 1:
        raise ModelError(f"--scale {path}: shift has {shift.numel()} values and scale {scale.numel()}")
    squeeze = (lambda t: t.reshape(()) if t.numel() == 1 else t)
    return Preprocessing("standard" if pair == ("mean", "std") else "global", squeeze(shift), squeeze(scale),
                         unit=False)
