"""``aecomp export``: a checkpoint (or a packed model file) to ONNX, checked in onnxruntime.

Examples::

    aecomp export aecomp-demo/checkpoints/compressed-replace --format onnx --out net.onnx
    aecomp export runs/train --format onnx --out ae.onnx      # -> ae.encoder.onnx + ae.decoder.onnx
    aecomp export aecomp-demo/models/compressed-frozen-int8.safetensors --out net_int8.onnx
    aecomp export aecomp-demo --out onnx/            # every model of a compress run, into onnx/
    aecomp export aecomp-demo --model compressed-finetune --out onnx/

``CHECKPOINT`` is a checkpoint folder (``ckpt-*``), a folder of checkpoints, or a run's output
folder, as written by ``aecomp train`` or ``aecomp compress`` (the newest complete checkpoint is
used; its ``state.json`` names the model config), the output folder of ``aecomp compress`` (every
model under its ``checkpoints/``, or the one ``--model`` names, one file each into the folder
``--out``, default ``<run>-onnx/``), or a ``.safetensors`` model written by ``aecomp compress``
(``models/<name>.safetensors``: int8 and pruned files are decoded to float32 first; the
autoencoders' files too). ``--out`` ending in ``/`` or naming a folder writes inside it. A classifier
(CompressedNet or the baseline MLP) becomes one file; an autoencoder becomes the sender's
encoder file and the receiver's decoder file. Unless ``--no-check``, each file is run in
onnxruntime on random inputs and the largest absolute difference from torch is printed; above
``--tolerance`` the command fails (exit 1).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import List, Tuple

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
    a("--tolerance", type=float, default=1e-5, help="largest allowed |onnxruntime - torch| (default: 1e-5)")
    # packed-weight inference (issue 15): int8 ONNX that onnxruntime runs in int8
    a("--int8", action="store_true",
      help="CHECKPOINT is an int8 model file: write integer-operator ONNX (DynamicQuantizeLinear + MatMulInteger) "
           "and check it against the packed int8 kernel (aecomp.compress.packed)")


def compress_models(folder: Path) -> List[Tuple[str, Path]]:
    """``(name, checkpoints/<name>)`` of every model an ``aecomp compress`` run saved in ``folder``."""
    from ..train.checkpoint import list_checkpoints

    root = folder / "checkpoints"
    if not folder.is_dir() or not root.is_dir():
        return []
    return [(d.name, d) for d in sorted(root.iterdir()) if d.is_dir() and list_checkpoints(d)]


def _load_file(p: Path):
    """``(model, kind)`` of a model file of a compress run, read by its format's one reader: a packed
    classifier (``.safetensors``: float32 or int8, decoded to float32), a coded one (``.aecc``:
    shared weights decoded to float32), an autoencoder's or the PCA baseline's tensors."""
    from .modelfile import ModelFileError, read_model

    try:
        stored = read_model(p)
        model = stored.to_model()
    except ModelFileError as exc:
        raise UsageError(str(exc)) from None
    is_classifier = hasattr(stored, "packed_net") or (stored.config or {}).get("type") == "pca"
    return model, "classifier" if is_classifier else "autoencoder"


def load_any(path: str):
    """``(model, kind)`` from a checkpoint or a packed file; kind is ``classifier`` or ``autoencoder``."""
    from ..train.checkpoint import CheckpointError, resolve_checkpoint
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
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise UsageError(f"checkpoint {ckpt.path}: cannot rebuild the model ({exc})".splitlines()[0]) from None
    kind = "classifier" if isinstance(model, (CompressedNet, FusedMLP)) else "autoencoder"
    return model.eval(), kind


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


def _out_path(args: argparse.Namespace, name: str, into_folder: bool) -> Path:
    if into_folder:
        folder = Path(args.out) if args.out else Path(f"{Path(args.checkpoint).resolve().name}-onnx")
    elif args.out and (args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()):
        folder = Path(args.out)
    else:
        return Path(args.out) if args.out else Path(f"{name}.onnx")
    from ..train.output import OutputError, prepare_folder

    try:
        prepare_folder(folder)
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    return folder / f"{name}.onnx"


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import use_backend
    from .export import MissingDependencyError, check_onnx, export_autoencoder, export_onnx, require_onnx

    if args.format not in FORMATS:
        raise UsageError(f"unknown --format {args.format!r}; expected one of {', '.join(FORMATS)}")
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UsageError(f"--tolerance must be a number >= 0, got {args.tolerance:g}")
    try:
        require_onnx(runtime=not args.no_check)
    except MissingDependencyError as exc:
        raise UsageError(str(exc)) from None
    if getattr(args, "int8", False):
        return _run_int8(args)
    targets, into_folder = _targets(args)
    written: List[Tuple[Path, object, torch.Tensor]] = []
    for name, source in targets:
        model, kind = load_any(source)
        out = _out_path(args, name, into_folder)
        x = _example_input(model)
        try:
            if kind == "classifier":
                path = export_onnx(model, out, x[:2])
                written.append((path, model, x))
            else:
                enc, dec = export_autoencoder(model, out, x[:2])
                with torch.no_grad(), use_backend("reference"):
                    z = model.encode(x)
                written += [(enc, model.encode, x), (dec, model.decode, z)]
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
        except Exception as exc:  # the exporter's errors come in many types; keep it to one line
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"aecomp export: error: torch.onnx.export failed for {type(model).__name__} "
                  f"({type(exc).__name__}: {msg})", file=sys.stderr)
            return 1
    worst = 0.0
    for path, fn, inp in written:
        line = f"wrote {path} ({path.stat().st_size:,} bytes)"
        if not args.no_check:
            with use_backend("reference"):
                diff = check_onnx(path, fn, inp)
            worst = max(worst, diff)
            line += f"; onnxruntime max |diff| vs torch on {inp.shape[0]} random inputs: {diff:.3g}"
        print(line)
    if not args.no_check and worst > args.tolerance:
        print(f"aecomp export: error: the ONNX output differs from torch by {worst:.3g} > --tolerance "
              f"{args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


def _run_int8(args: argparse.Namespace) -> int:
    """``aecomp export FILE --int8``: integer-operator ONNX of an int8 model file, checked against
    the packed int8 kernel on random inputs (the same integer arithmetic: they agree to float
    rounding, ``--tolerance`` scaled by the largest output)."""
    import torch

    from .export import export_int8_onnx, run_onnx
    from .packed import load_packed_model

    p = Path(args.checkpoint)
    if not p.is_file():
        raise UsageError(f"{args.checkpoint}: --int8 takes an int8 model file (aecomp compress ... models/*-int8.*)")
    try:
        packed = load_packed_model(p)
        out = _out_path(args, p.name.split(".")[0] + ".int8", into_folder=False)
        path = export_int8_onnx(p, out)
    except ValueError as exc:  # StorageError / CodedFileError / a shared-weight layer
        raise UsageError(str(exc).splitlines()[0]) from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    line = f"wrote {path} ({path.stat().st_size:,} bytes, int8 operators)"
    if not args.no_check:
        x = torch.rand(64, packed.in_features, generator=torch.Generator().manual_seed(0))
        want = packed(x)
        diff = float((run_onnx(path, x) - want).abs().max())
        scale = 1.0 + float(want.abs().max())
        line += f"; onnxruntime max |diff| vs the packed int8 kernel on 64 random inputs: {diff:.3g}"
        print(line)
        if diff > args.tolerance * scale:
            print(f"aecomp export: error: the int8 ONNX output differs from the packed kernel by {diff:.3g} > "
                  f"--tolerance {args.tolerance:g} x (1 + max|y|)", file=sys.stderr)
            return 1
        return 0
    print(line)
    return 0
