"""``aecomp export``: a checkpoint or any model file of a run to ONNX, checked in onnxruntime.

Examples::

    aecomp export aecomp-demo/checkpoints/compressed-replace --format onnx --out net.onnx
    aecomp export runs/train --format onnx --out ae.onnx      # -> ae.encoder.onnx + ae.decoder.onnx
    aecomp export aecomp-demo/models/compressed-frozen-int8.safetensors --out net_int8.onnx
    aecomp export aecomp-demo/models/compressed-frozen-pruned70-shared4.aecc --out net.onnx
    aecomp export aecomp-demo/models/compressed-frozen-pruned70-shared4.aecc --int8 --out small.onnx
    aecomp export aecomp-demo --out onnx/            # every model of a compress run, into onnx/
    aecomp export aecomp-demo --model compressed-finetune --out onnx/

``CHECKPOINT`` is a checkpoint folder (``ckpt-*``), a folder of checkpoints, or a run's output
folder, as written by ``aecomp train`` or ``aecomp compress`` (the newest complete checkpoint is
used; its ``state.json`` names the model config), the output folder of ``aecomp compress`` (every
model under its ``checkpoints/``, or the one ``--model`` names, one file each into the folder
``--out``, default ``<run>-onnx/``), or any model file ``aecomp compress`` writes
(``models/<name>.safetensors`` -- float32, int8, pruned; the autoencoders' and the PCA baseline's
files -- and ``models/<name>.aecc``), read by its format's one reader
(``aecomp.compress.modelfile.read_model``) and decoded to float32. ``--int8`` keeps an int8 or
shared-weight file's weights as the file holds them (``export.export_packed_onnx``: int8 layers as
integer operators, shared-weight layers as a gather of the codebook). ``--out`` ending in ``/``
or naming a folder writes inside it. A classifier becomes one file; an autoencoder becomes the
sender's encoder file and the receiver's decoder file.

The exported graph takes **raw inputs**: the input scaling the file or checkpoint recorded
(``aecomp.data.Preprocessing``) is its first two nodes, and with a label map it also outputs the
original ``label`` (``aecomp.compress.export``). Unless ``--no-check``, each file is run in
onnxruntime on random raw inputs and compared with torch: by default every output must lie
within the float32 error bound of the network (``export.float32_error_bound``, which grows with
the fan-in); ``--tolerance T`` checks ``max |diff| <= T`` instead. A failed export or check exits
1 and leaves no file behind (nor a folder it made).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

try:
    from ..cli import UsageError
except ImportError:  # pragma: no cover

    class UsageError(Exception):  # type: ignore[no-redef]
        """A mistake in the command line or its inputs: one line, exit code 2."""


__all__ = ["add_arguments", "load_any", "run"]

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("checkpoint", metavar="CHECKPOINT",
      help="checkpoint folder or run folder (aecomp train / aecomp compress), or a packed .safetensors model")
    a("--format", default="onnx", help="output format: onnx (the only one)")
    a("--out", default=None, metavar="FILE",
      help="output file (default: <checkpoint name>.onnx), or a folder (an existing one, or a path ending in /) "
           "to write <checkpoint name>.onnx into; an autoencoder writes FILE's .encoder.onnx and .decoder.onnx")
    a("--model", default=None, metavar="NAME",
      help="with an aecomp compress output folder: export only this model (default: all of them)")
    a("--no-check", action="store_true", dest="no_check", help="do not run the exported files in onnxruntime")
    a("--tolerance", type=float, default=None,
      help="largest allowed |onnxruntime - torch| (default: the float32 error bound of the network, per output)")
    # packed-weight inference (issue 15): int8 ONNX that onnxruntime runs in int8
    a("--int8", action="store_true",
      help="CHECKPOINT is an int8 or shared-weight model file: keep its weights as the file holds them (int8 "
           "layers as DynamicQuantizeLinear + MatMulInteger, shared ones as a gather of the codebook) and check "
           "it against the packed kernels (aecomp.compress.packed)")


def compress_models(folder: Path) -> List[Tuple[str, Path]]:
    """``(name, checkpoints/<name>)`` of every model an ``aecomp compress`` run saved in ``folder``."""
    from ..train.checkpoint import list_checkpoints

    root = folder / "checkpoints"
    if not folder.is_dir() or not root.is_dir():
        return []
    return [(d.name, d) for d in sorted(root.iterdir()) if d.is_dir() and list_checkpoints(d)]


@dataclass
class Loaded:
    """A model to export, with what its file or checkpoint recorded about its inputs and labels."""

    model: Any
    kind: str  # "classifier" | "autoencoder"
    scaling: Any = None  # aecomp.data.Preprocessing or None
    labels: Optional[Tuple[int, ...]] = None


def _load_file(p: Path) -> Loaded:
    """A model file of a run, read by its format's one reader: a packed classifier (``.safetensors``:
    float32 or int8, decoded to float32), a coded one (``.aecc``: decoded to float32), an
    autoencoder's or the PCA baseline's tensors."""
    from .modelfile import ModelFileError, read_model

    try:
        stored = read_model(p)
        model = stored.to_model()
    except ModelFileError as exc:
        raise UsageError(str(exc)) from None
    is_classifier = hasattr(stored, "packed_net") or (stored.config or {}).get("type") == "pca"
    return Loaded(model, "classifier" if is_classifier else "autoencoder", stored.meta.scaling, stored.meta.labels)


def load_any(path: str) -> Loaded:
    """The model of a checkpoint or a model file, with its recorded input scaling and labels."""
    from ..train.checkpoint import CheckpointError, resolve_checkpoint
    from .modelfile import as_labels, as_scaling
    from .net import CompressedNet, build_model
    from ..nn import FusedMLP

    p = Path(path)
    if p.is_file():
        return _load_file(p)
    if not p.exists():
        raise UsageError(f"{path}: no such checkpoint folder or file")
    try:
        ckpt = resolve_checkpoint(p)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    config = ckpt.state.get("model_config")
    if not isinstance(config, dict) or "type" not in config:
        raise UsageError(f"checkpoint {ckpt.path} has no model config (state.json 'model_config'), so the model "
                         f"cannot be rebuilt")
    try:
        model = build_model(config)
        model.load_state_dict(ckpt.model)
        run = ckpt.state.get("run") if isinstance(ckpt.state.get("run"), dict) else {}
        scaling = as_scaling(ckpt.state.get("input_scaling", run.get("input_scaling")))
        labels = as_labels(ckpt.state.get("labels"))
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise UsageError(f"checkpoint {ckpt.path}: cannot rebuild the model ({exc})".splitlines()[0]) from None
    kind = "classifier" if isinstance(model, (CompressedNet, FusedMLP)) else "autoencoder"
    return Loaded(model.eval(), kind, scaling, labels)


def _example_input(model):
    import torch

    from ..nn import FusedMLP
    from .net import CompressedNet

    from .baselines import PCAClassifier

    g = torch.Generator().manual_seed(0)
    if isinstance(model, CompressedNet):
        shape: Tuple[int, ...] = (model.in_features,)
    elif isinstance(model, FusedMLP):
        shape = (model.dims[0],)
    elif isinstance(model, PCAClassifier):
        shape = (model.mean.numel(),)
    else:
        shape = tuple(8 if s is None else int(s) for s in model.input_shape)  # a free time axis: 8 steps
    return torch.rand(64, *shape, generator=g)


def _targets(args: argparse.Namespace) -> Tuple[List[Tuple[str, str]], bool]:
    """``([(name, source path)], into_folder)``: one model, or each model of a compress folder."""
    src = Path(args.checkpoint)
    found = compress_models(src)
    if found:
        names = [n for n, _ in found]
        if args.model is not None:
            if args.model not in names:
                raise UsageError(f"--model {args.model!r} is not in {src} (it holds {', '.join(names)})")
            found = [(n, d) for n, d in found if n == args.model]
        return [(n, str(d)) for n, d in found], True
    if args.model is not None:
        raise UsageError(f"--model is for the output folder of aecomp compress; {src} is not one")
    return [(src.resolve().name.split(".")[0] or "model", str(src))], False


def _out_path(args: argparse.Namespace, name: str, into_folder: bool, made: Optional[List[Path]] = None) -> Path:
    """Where ``name`` goes; a folder this creates is appended to ``made`` (removed if the export fails)."""
    if into_folder:
        folder = Path(args.out) if args.out else Path(f"{Path(args.checkpoint).resolve().name}-onnx")
    elif args.out and (args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()):
        folder = Path(args.out)
    else:
        return Path(args.out) if args.out else Path(f"{name}.onnx")
    from ..train.output import OutputError, prepare_folder

    missing = [d for d in [folder, *folder.parents] if not d.exists()]
    try:
        prepare_folder(folder)
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    if made is not None:
        made += [d for d in missing if d not in made]
    return folder / f"{name}.onnx"


@dataclass
class _Written:
    path: Path
    fn: Callable  # raw inputs -> what the file computes, in torch
    x: Any  # the raw inputs it is checked on
    bound: Any  # per-output float32 error bound, or None (no error model for this architecture)


def _raw_inputs(scaled, scaling):
    """Raw inputs whose scaled values are ``scaled`` (what a user holds: e.g. 0..255 pixels)."""
    return scaling.invert(scaled) if scaling is not None and scaling.kind != "none" else scaled


def _export_one(loaded: Loaded, out: Path, created: List[Path]) -> List[_Written]:
    import torch

    from .. import use_backend
    from .export import chain_of, export_autoencoder, export_onnx, float32_error_bound, raw_input_fn

    model, scaling = loaded.model, loaded.scaling
    xs = _example_input(model)
    x = _raw_inputs(xs, scaling)
    if loaded.kind == "classifier":
        path = export_onnx(model, out, xs[:2], scaling=scaling, labels=loaded.labels)
        created.append(path)
        chain = chain_of(model)
        bound = float32_error_bound(chain, x, scaling, scale_input=True) if chain is not None else None
        return [_Written(path, raw_input_fn(model, scaling), x, bound)]
    enc, dec = export_autoencoder(model, out, xs[:2], scaling=scaling)
    created += [enc, dec]
    with torch.no_grad(), use_backend("reference"):
        z = model.encode(xs)
    halves = [chain_of(getattr(model, "encoder", None)), chain_of(getattr(model, "decoder", None))] \
        if type(model).__name__ == "Autoencoder" else [None, None]
    return [_Written(enc, raw_input_fn(model.encode, scaling), x,
                     None if halves[0] is None else float32_error_bound(halves[0], x, scaling, scale_input=True)),
            _Written(dec, raw_input_fn(model.decode, scaling, scale_input=False, unscale_output=True), z,
                     None if halves[1] is None else float32_error_bound(halves[1], z, scaling, unscale_output=True))]


def _remove(created: List[Path]) -> None:
    """Undo a failed export: its files, then the folders it made (deepest first, only if empty)."""
    for p in created:
        if p.is_file():
            p.unlink()
    for d in sorted((p for p in created if p.is_dir()), key=lambda q: len(q.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def _check_line(w: _Written, tolerance: Optional[float], reference: bool = True) -> Tuple[str, Optional[str]]:
    """``(what to print, an error or None)`` of one written file run in onnxruntime, against torch
    (its plain reference ops, or with ``reference=False`` the default backend: the packed kernels)."""
    import contextlib

    import torch

    from .. import use_backend
    from .export import run_onnx

    with torch.no_grad(), (use_backend("reference") if reference else contextlib.nullcontext()):
        want = w.fn(w.x).float()
    got = run_onnx(w.path, w.x)
    diff = (got - want).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if tolerance is None and w.bound is not None:
        bound = w.bound.float().reshape(diff.shape)
        text = f"; float32 error bound of the network up to {float(bound.max()):.3g}"
        bad = diff > bound
        error = (f"the ONNX output differs from torch by {float(diff[bad].max()):.3g}, beyond the float32 error "
                 f"bound {float(bound[bad].min()):.3g} of that output" if bool(bad.any()) else None)
    else:
        limit = 1e-5 if tolerance is None else tolerance
        text = "" if tolerance is not None else "; no float32 error model for this architecture: tolerance 1e-05"
        error = (f"the ONNX output differs from torch by {worst:.3g} > --tolerance {limit:g}" if worst > limit
                 else None)
    return text + f"; onnxruntime max |diff| vs torch on {w.x.shape[0]} random inputs: {worst:.3g}", error


def _inputs_note(loaded: Loaded) -> str:
    s = loaded.scaling
    what = "" if s is None or s.kind == "none" else f"; raw inputs, scaled inside ({s.describe()})"
    return what + ("" if loaded.labels is None else "; outputs y (logits) and label (the original labels)")


def run(args: argparse.Namespace) -> int:
    from .export import MissingDependencyError, require_onnx

    if args.format not in FORMATS:
        raise UsageError(f"unknown --format {args.format!r}; expected one of {', '.join(FORMATS)}")
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UsageError(f"--tolerance must be a number >= 0, got {args.tolerance:g}")
    try:
        require_onnx(runtime=not args.no_check)
    except MissingDependencyError as exc:
        raise UsageError(str(exc)) from None
    created: List[Path] = []
    ok = False
    try:
        code = _run_int8(args, created) if getattr(args, "int8", False) else _run_float(args, created)
        ok = code == 0
        return code
    finally:
        if not ok:
            _remove(created)


def _run_float(args: argparse.Namespace, created: List[Path]) -> int:
    targets, into_folder = _targets(args)
    written: List[Tuple[_Written, Loaded]] = []
    for name, source in targets:
        loaded = load_any(source)
        out = _out_path(args, name, into_folder, created)
        try:
            written += [(w, loaded) for w in _export_one(loaded, out, created)]
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
        except UsageError:
            raise
        except Exception as exc:  # the exporter's errors come in many types; keep it to one line
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"aecomp export: error: torch.onnx.export failed for {type(loaded.model).__name__} "
                  f"({type(exc).__name__}: {msg})", file=sys.stderr)
            return 1
    errors = []
    for w, loaded in written:
        line = f"wrote {w.path} ({w.path.stat().st_size:,} bytes{_inputs_note(loaded)})"
        if not args.no_check:
            text, error = _check_line(w, args.tolerance)
            line += text
            if error:
                errors.append(f"{w.path.name}: {error}")
        print(line)
    if errors:
        print(f"aecomp export: error: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
              + "; no file is left", file=sys.stderr)
        return 1
    return 0


def _run_int8(args: argparse.Namespace, created: List[Path]) -> int:
    """``aecomp export FILE --int8``: ONNX that keeps an int8 / shared-weight file's weights as the file
    holds them, checked against the packed kernels on random raw inputs. Shared-weight layers are the
    same arithmetic as the float path (dequantize, then GEMM): checked against the float32 error
    bound; int8 layers run on integers like the packed kernel's int8 path: they agree to float
    rounding, ``--tolerance`` (default 1e-5) scaled by ``1 + max |y|``."""
    import torch

    from .export import export_packed_onnx, float32_error_bound
    from .packed import load_packed_model
    from .share import Int8Linear

    p = Path(args.checkpoint)
    if not p.is_file():
        raise UsageError(f"{args.checkpoint}: --int8 takes an int8 or shared-weight model file (aecomp compress ... "
                         f"models/*-int8.safetensors or models/*.aecc)")
    try:
        packed = load_packed_model(p)
        out = _out_path(args, p.name.split(".")[0] + ".int8", False, created)
        path = export_packed_onnx(p, out)
    except ValueError as exc:  # a model file error, a layout the packed kernels do not hold
        raise UsageError(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    created.append(path)
    from .modelfile import read_model

    net = read_model(p).packed_net()
    has_int8 = any(isinstance(layer, Int8Linear) for layer in net.layers)
    loaded = Loaded(None, "classifier", packed.input_scaling, packed.labels)
    line = (f"wrote {path} ({path.stat().st_size:,} bytes, {'int8 operators' if has_int8 else 'codebook gathers'}"
            f"{_inputs_note(loaded)})")
    if args.no_check:
        print(line)
        return 0
    xs = torch.rand(64, packed.in_features, generator=torch.Generator().manual_seed(0))
    x = _raw_inputs(xs, packed.input_scaling)
    if has_int8:
        fn = packed
        tol = 1e-5 if args.tolerance is None else args.tolerance
        want = fn(x)
        bound = torch.full_like(want, tol * (1.0 + float(want.abs().max())))
        what = "the packed int8 kernel"
    else:
        fn = packed.with_compute("float")
        layers = [(layer.dense_weight(), layer.bias, layer.activation) for layer in net.layers]
        bound = float32_error_bound(layers, x, packed.input_scaling, scale_input=True).float()
        if args.tolerance is not None:
            bound = torch.full_like(bound, args.tolerance)
        what = "the packed kernels"
    text, error = _check_line(_Written(path, fn, x, bound), None, reference=False)
    print(line + text.replace("vs torch", f"vs {what}"))
    if error:
        print(f"aecomp export: error: {error.replace('from torch', f'from {what}')}; no file is left",
              file=sys.stderr)
        return 1
    return 0
