"""``aecomp train``: train an autoencoder on built-in or user data.

Examples::

    python -m aecomp train --data digits --model mlp --dims 64,32,16 --epochs 20 --out runs/digits
    python -m aecomp train --data digits28 --model conv --epochs 5 --out runs/conv
    python -m aecomp train --data mnist:/data/mnist --model vae --dims 784,256,32 --out runs/vae
    python -m aecomp train --out runs/digits --resume               # continue a stopped run
    python -m aecomp train --data digits --out runs/job --resume    # the same command again and again
                                                                    # (a preemptible job): fresh the first time
    torchrun --nproc_per_node=2 -m aecomp train --data digits --out runs/ddp

Writes into ``--out``: ``checkpoints/ckpt-<step>/`` (the newest two), ``metrics.jsonl`` (one
JSON line per epoch), ``reconstructions.png`` (test inputs above their reconstructions),
``loss.png`` (loss per epoch) and ``summary.json`` (test-split metrics).

``--dims``, by model (the last number is always the width of the code ``z``):

* ``mlp``, ``vae``: layer widths from the input to the code; the first is the number of values
  per sample (64 for digits, 784 for digits28 and MNIST), e.g. ``64,32,16``;
* ``conv``: the channels of each stride-2 stage, then the code width, e.g. ``16,32,32``;
* ``rnn``: the hidden units, then the code width, e.g. ``64,16`` (images are read row by row: a
  sequence of H steps of W values; a table is a sequence of its features, one value a step).

``--resume`` takes every setting that shapes the run from the checkpoint; giving a different
value for one of them is an error. ``--epochs``, ``--patience``, ``--device``,
``--checkpoint-every`` and ``--no-progress`` may change. With nothing to resume (no checkpoint
in ``--out``) the run starts fresh and says so. The data path is stored resolved (absolute), so
a run resumes from any directory; the data's SHA-256 is stored too, and a run whose data file
changed is not resumed unless ``--allow-data-change`` (then with a warning).

``--out`` is locked for the run (``--out/.aecomp.lock``, an OS file lock): a second run on the
same folder stops at once with one line naming the first one's pid.

``--scale`` (default ``auto``): pixels stay pixels -- uint8 data is divided by 255, data already
in [0, 1] is left alone, other images (flat ones too: a square width >= 64 of non-negative
integers or values in [0, 255]) get one global min-max, and only tables are scaled per feature
(see ``aecomp.data``). The scaling chosen is printed, recorded in every checkpoint
(``run.input_scaling``) and in ``summary.json``; ``--resume`` applies the recorded one (a run
recorded before the scaling was, with ``auto``, gets the rule it was started with). The model
gets a sigmoid output when the training data is in [0, 1] after scaling.

Mistakes (bad arguments, unreadable data, an unusable --out, a model too large for memory)
print one line and exit with 2;
a loss that turns NaN/inf prints one line and exits with 1 (the last good checkpoint stays).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

try:
    from ..cli import UsageError  # the lead's CLI catches this one and prints ``aecomp: error: ...``
except ImportError:  # pragma: no cover - the top-level CLI not present

    class UsageError(Exception):  # type: ignore[no-redef]
        """A mistake in the command line or its inputs: one line, exit code 2."""


from ..data import SCALES

__all__ = ["UsageError", "add_arguments", "run", "build_model", "DEFAULTS"]

MODEL_TYPES = ("mlp", "conv", "rnn", "vae")

# Settings that shape a run: fixed by the checkpoint on --resume.
STRUCTURAL = ("data", "model", "dims", "batch_size", "lr", "seed", "scale", "val_fraction", "test_fraction",
              "beta", "cell", "backend")
DEFAULTS: Dict[str, Any] = {
    "data": "digits", "model": "mlp", "dims": None, "epochs": 10, "batch_size": 64, "lr": 1e-3,
    "backend": None, "seed": 0, "out": "runs/train", "device": "auto", "patience": None,
    "checkpoint_every": None, "scale": "auto", "val_fraction": 0.1, "test_fraction": 0.1,
    "beta": 1.0, "cell": "gru", "bf16": False, "precision": "fp32",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``aecomp train`` options (defaults are filled in by :func:`run`, so that ``--resume``
    can tell an option given on the command line from one left out)."""
    a = parser.add_argument
    a("--data", help="digits (8x8, default) | digits28 | mnist:DIR | mnist | FILE.npy/.npz/.csv")
    a("--model", choices=MODEL_TYPES, help="autoencoder family (default: mlp)")
    a("--dims", help="comma-separated, the last is the code width. mlp/vae: widths from the input to the code, "
                     "e.g. 64,32,16; conv: channels per stage then the code, e.g. 16,32,32; rnn: hidden units "
                     "then the code, e.g. 64,16")
    a("--epochs", type=int, help="epochs to train (default: 10); with --resume, the new total")
    a("--batch-size", type=int, dest="batch_size", help="global batch size (default: 64)")
    a("--lr", type=float, help="Adam learning rate (default: 1e-3)")
    a("--backend", help="op backend: reference | cpu | triton | cuda (default: automatic)")
    a("--seed", type=int, help="seed for initialisation, split and batch order (default: 0)")
    a("--out", help="output folder (default: runs/train)")
    a("--resume", action="store_true",
      help="continue the run in --out from its newest good checkpoint (none there: start fresh)")
    a("--allow-data-change", action="store_true", dest="allow_data_change",
      help="with --resume: continue even though the data file's content changed (a warning, not an error)")
    a("--device", help="auto (default: cuda if available) | cpu | cuda")
    a("--precision", choices=("fp32", "bf16"),
      help="fp32 (default) | bf16: on the CPU the fused step's GEMMs in bfloat16 on the matrix engine (AMX or "
           "AVX512-BF16; float32 master weights), on CUDA autocast; float32 where the CPU has no bf16 engine")
    a("--bf16", action="store_true", default=None, help="the same as --precision bf16")
    a("--patience", type=int, help="stop after this many epochs without a better validation loss")
    a("--checkpoint-every", type=int, dest="checkpoint_every", metavar="STEPS",
      help="also checkpoint every STEPS optimizer steps (default: at the end of each epoch only)")
    a("--scale", choices=SCALES,
      help="preprocessing fitted on the training split (default: auto: uint8 /255, [0, 1] data as is, "
           "other images one global min-max, tables per-feature min-max)")
    a("--val-fraction", type=float, dest="val_fraction", help="validation share (default: 0.1)")
    a("--test-fraction", type=float, dest="test_fraction", help="test share (default: 0.1)")
    a("--beta", type=float, help="vae: weight of the KL term (default: 1.0)")
    a("--cell", choices=("gru", "lstm"), help="rnn: recurrent cell (default: gru)")
    a("--no-progress", action="store_true", dest="no_progress", help="no progress bar")


def _parse_dims(text: Any) -> Optional[List[int]]:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    parts = str(text).replace(" ", "").split(",")
    if text and str(text).replace(" ", "").endswith(",") and "" not in parts[:-1]:
        parts = parts[:-1]  # one trailing comma is harmless
    if "" in parts:
        raise UsageError(f"--dims has an empty entry in {text!r}; give comma-separated integers like 64,32,16")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--dims must be comma-separated integers like 64,32,16, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"--dims must be positive integers like 64,32,16, got {text!r}")
    return dims


def _settings(args: argparse.Namespace) -> Dict[str, Any]:
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    if "dims" in given:
        given["dims"] = _parse_dims(given["dims"])
    return given


def _fill(given: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(DEFAULTS)
    out.update(given)
    return out


def _check_settings(s: Dict[str, Any]) -> None:
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size")):
        if s[key] < (0 if key == "epochs" else 1):
            raise UsageError(f"{flag} must be {'>= 0' if key == 'epochs' else 'positive'}, got {s[key]}")
    if not (math.isfinite(s["lr"]) and s["lr"] > 0):
        raise UsageError(f"--lr must be a positive number, got {s['lr']}")
    if s["patience"] is not None and s["patience"] < 1:
        raise UsageError(f"--patience must be positive, got {s['patience']}")
    if s["checkpoint_every"] is not None and s["checkpoint_every"] < 1:
        raise UsageError(f"--checkpoint-every must be positive, got {s['checkpoint_every']}")
    for key, flag in (("val_fraction", "--val-fraction"), ("test_fraction", "--test-fraction")):
        if not 0.0 <= s[key] < 1.0:
            raise UsageError(f"{flag} must be in [0, 1), got {s[key]}")
    if s["device"] not in ("auto", "cpu", "cuda") and not str(s["device"]).startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {s['device']!r}")
    if s["backend"] is not None:
        import aecomp

        if s["backend"] not in aecomp.BACKENDS:
            raise UsageError(f"unknown --backend {s['backend']!r}; expected one of {', '.join(aecomp.BACKENDS)}")
        ok, reason = aecomp.available_backends()[s["backend"]]
        if not ok:
            raise UsageError(f"--backend {s['backend']} is not available here: {reason}")


def build_model(settings: Dict[str, Any], sample_shape: Tuple[int, ...], unit_range: Optional[bool] = None):
    """The model for ``settings`` (model, dims, scale, beta, cell, backend) and data samples of
    ``sample_shape``; a sigmoid output when the (scaled) training data is in [0, 1] (``unit_range``;
    None: guessed from ``scale``, min-max kinds only)."""
    from .. import models

    kind = settings["model"]
    dims = settings["dims"]
    features = math.prod(sample_shape)
    if unit_range is None:
        unit_range = settings["scale"] in ("minmax", "global")
    output = "sigmoid" if unit_range else "none"
    backend = settings["backend"]
    if kind in ("mlp", "vae"):
        if dims is None:
            dims = [784, 128, 64, 32] if features == 784 else [features, max(features // 2, 1), max(features // 4, 1)]
            if kind == "vae" and features == 784:
                dims = [784, 256, 32]
        if dims[0] != features:
            raise UsageError(f"--dims {','.join(map(str, dims))} starts with {dims[0]} but each sample of "
                             f"{settings['data']!r} has {features} values; start --dims with {features}")
        if kind == "mlp":
            if len(dims) < 2:
                raise UsageError("--dims for mlp needs at least two widths (input and code), e.g. 64,16")
            return models.Autoencoder(dims=dims, output=output, backend=backend)
        if len(dims) < 3:
            raise UsageError("--dims for vae needs at least three widths (input, hidden, code), e.g. 64,32,8")
        return models.VAE(dims=dims, output=output, beta=float(settings["beta"]), backend=backend)
    if kind == "conv":
        if len(sample_shape) != 2 or sample_shape[0] != sample_shape[1]:
            raise UsageError(f"--model conv needs square images; {settings['data']!r} has samples of shape "
                             f"{tuple(sample_shape)}")
        dims = dims or [16, 32, 32 if sample_shape[0] >= 16 else 16]
        if len(dims) < 2:
            raise UsageError("--dims for conv is the channels of each stage then the code width, e.g. 16,32,32")
        return models.ConvAutoencoder(in_channels=1, image_size=int(sample_shape[0]), channels=dims[:-1],
                                      latent=dims[-1], output=output, backend=backend)
    if kind == "rnn":
        steps, width = (sample_shape if len(sample_shape) == 2 else (features, 1))
        dims = dims or [64, 16]
        if len(dims) != 2:
            raise UsageError("--dims for rnn is the hidden units then the code width, e.g. 64,16")
        return models.RecurrentAutoencoder(features=int(width), hidden=dims[0], latent=dims[1],
                                           cell=settings["cell"], seq_len=int(steps), output=output, backend=backend)
    raise UsageError(f"unknown --model {kind!r}; expected one of {', '.join(MODEL_TYPES)}")


def _same_data(a: Any, b: Any) -> bool:
    from ..data import DataError, resolve_spec

    try:
        return resolve_spec(a) == resolve_spec(b)
    except DataError:
        return a == b


def _resume_settings(out: Path, given: Dict[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """``(settings, the checkpoint's run record)`` to continue the run in ``out``, or None when
    there is no checkpoint at all (a fresh start)."""
    from . import checkpoint as ckpt_mod

    root = out / "checkpoints"
    if not ckpt_mod.list_checkpoints(root):
        return None
    notes: List[str] = []
    ckpt = ckpt_mod.latest_checkpoint(root, on_skip=notes.append)
    for n in notes:
        print(f"aecomp train: warning: {n}", file=sys.stderr)
    if ckpt is None:
        raise UsageError(f"--resume: every checkpoint in {root} is incomplete or corrupt")
    saved = (ckpt.state.get("run") or {}).get("settings")
    if not isinstance(saved, dict):
        raise UsageError(f"--resume: {ckpt.path} was not written by `aecomp train` (no saved settings)")
    def show(v: Any) -> str:
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    for key in STRUCTURAL:
        if key == "data" and key in given and _same_data(given[key], saved.get(key)):
            continue
        if key in given and given[key] != saved.get(key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {show(given[key])} differs from the run being resumed ({show(saved.get(key))}); "
                             f"leave it out or start a new run in another --out")
    merged = _fill(saved)
    for key in ("epochs", "patience", "device", "checkpoint_every", "bf16", "precision"):
        if key in given:
            merged[key] = given[key]
    return merged, dict(ckpt.state.get("run") or {})


def _check_data_unchanged(saved_run: Dict[str, Any], source: Dict[str, Any], allow: bool) -> None:
    """Refuse (or with ``allow``, warn) when the data's SHA-256 differs from the one the run started with."""
    before = (saved_run.get("source") or {}).get("sha256")
    now = source.get("sha256")
    if before is None or now is None or before == now:
        return
    what = (f"the data {source.get('spec')} changed since the run was checkpointed "
            f"(SHA-256 {now[:12]}..., the run was trained on {before[:12]}...)")
    if not allow:
        raise UsageError(f"{what}; resuming would mix two datasets: pass --allow-data-change to resume anyway, "
                         f"or start a new run in another --out")
    print(f"aecomp train: warning: {what}; resuming anyway (--allow-data-change)", file=sys.stderr)


def _model_size_ok(s: Dict[str, Any], sample_shape: Tuple[int, ...], unit_range: bool) -> None:
    """Build the model on the meta device (no memory) and refuse it if it cannot fit for real."""
    import torch

    from .output import OutputError, check_memory

    with torch.device("meta"):
        meta = build_model(s, sample_shape, unit_range)
    try:
        check_memory(sum(p.numel() for p in meta.parameters()), f"the model ({s['model']}, --dims "
                     f"{','.join(map(str, s['dims'])) if s['dims'] else 'default'})")
    except OutputError as exc:
        raise UsageError(str(exc)) from None


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("alloc" in text or "out of memory" in text)


def run(args: argparse.Namespace) -> int:
    """Run ``aecomp train`` with parsed ``args``; returns the exit code."""
    from .. import data as data_mod
    from .output import FolderLock, OutputError, prepare_folder

    given = _settings(args)
    out = Path(given.get("out", DEFAULTS["out"]))
    if "data" in given:
        try:
            given["data"] = data_mod.resolve_spec(given["data"])  # stored resolved: resume from anywhere
        except data_mod.DataError as exc:
            raise UsageError(str(exc)) from None
    lock = None
    try:
        prepare_folder(out)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 speaks for the run
            lock = FolderLock(out).acquire()
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    try:
        return _run_locked(args, given, out)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args: argparse.Namespace, given: Dict[str, Any], out: Path) -> int:
    import torch

    from .. import data as data_mod
    from . import checkpoint as ckpt_mod
    from . import distributed as dist_mod
    from . import plots
    from .trainer import NonFiniteLossError, Trainer

    resume = bool(args.resume)
    saved_run: Dict[str, Any] = {}
    if resume:
        found = _resume_settings(out, given)
        if found is None:
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"aecomp train: --resume: nothing to resume in {out} (no checkpoint yet); starting a new run",
                      file=sys.stderr)
            resume = False
            s = _fill(given)
        else:
            s, saved_run = found
    else:
        from .checkpoint import list_checkpoints

        if list_checkpoints(out / "checkpoints"):
            raise UsageError(f"--out {out} already holds the checkpoints of a run; add --resume to continue it "
                             f"or choose another --out")
        s = _fill(given)
    s["out"] = str(out)
    _check_settings(s)

    info = dist_mod.init(None if s["device"] == "auto" else s["device"])
    try:
        recorded = saved_run.get("input_scaling") if resume else None
        scale: Any = recorded if recorded is not None else s["scale"]
        try:  # a run recorded before its scaling was (issue 23) keeps the auto rule it started with
            splits = data_mod.load(s["data"], val_fraction=s["val_fraction"], test_fraction=s["test_fraction"],
                                   seed=s["seed"], scale=scale, auto_rule=1 if resume and recorded is None else 2)
        except data_mod.DataError as exc:
            raise UsageError(str(exc)) from None
        s["data"] = splits.source.get("spec", s["data"])
        if resume:
            _check_data_unchanged(saved_run, splits.source, bool(getattr(args, "allow_data_change", False)))
        if s["patience"] is not None and len(splits.val) == 0:
            raise UsageError(f"--patience {s['patience']} stops on the validation loss, but the validation split "
                             f"is empty (--val-fraction {s['val_fraction']:g}); give --val-fraction > 0 or leave "
                             f"--patience out")
        unit = splits.train.unit_range
        _model_size_ok(s, splits.train.sample_shape, unit)
        torch.manual_seed(s["seed"])
        try:
            model = build_model(s, splits.train.sample_shape, unit)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from None
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            raise UsageError(f"not enough memory to build the model ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no details'}); "
                             f"use smaller --dims") from None
        if s["batch_size"] < info.world_size:
            raise UsageError(f"--batch-size {s['batch_size']} is smaller than the {info.world_size} processes")
        try:
            trainer = Trainer(model, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], seed=s["seed"],
                              device=None if s["device"] == "auto" else s["device"],
                              precision="bf16" if s["bf16"] else s.get("precision", "fp32"),
                              patience=s["patience"], out_dir=out, checkpoint_every=s["checkpoint_every"],
                              progress=False if getattr(args, "no_progress", False) else None,
                              run_config={"settings": s, "data": splits.config, "source": splits.source,
                                          "input_scaling": splits.preprocessing.to_dict()})
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if info.is_main:
            print(f"aecomp train: {type(model).__name__} {json.dumps(model.config)} on {splits.spec} "
                  f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test), "
                  f"device {trainer.device}, {info.world_size} process(es); input scaling "
                  f"{splits.preprocessing.describe()}", file=sys.stderr)
        import aecomp

        with aecomp.use_backend(s["backend"]):
            try:
                result = trainer.fit(splits.train, splits.val, resume=resume)
            except ckpt_mod.CheckpointError as exc:
                raise UsageError(str(exc)) from None
            except NonFiniteLossError as exc:
                if info.is_main:
                    print(f"aecomp train: error: {exc}", file=sys.stderr)
                return 1
            except ValueError as exc:  # e.g. the folder already holds another run
                raise UsageError(str(exc)) from None
            except (MemoryError, RuntimeError) as exc:
                if not _out_of_memory(exc):
                    raise
                raise UsageError(f"ran out of memory while training ({type(exc).__name__}); "
                                 f"use smaller --dims or --batch-size") from None
            test = trainer.evaluate(splits.test) if len(splits.test) else None
            if info.is_main and trainer.precision != "fp32":
                print(f"aecomp train: precision {trainer.precision} asked, the {trainer.step_kind} step ran "
                      f"{trainer.compute_precision}", file=sys.stderr)
            if info.is_main:
                _write_outputs(out, trainer, splits, result, test, plots)
        return 0
    finally:
        dist_mod.shutdown()


def _write_outputs(out: Path, trainer, splits, result, test, plots) -> None:
    from .checkpoint import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    show = splits.test if len(splits.test) else splits.train
    x = show.x[:8]
    recon = trainer.predict(x)
    title = f"{trainer.model.config.get('type', type(trainer.model).__name__)} on {splits.spec}"
    plots.save_reconstructions(x, recon, out / "reconstructions.png", sample_shape=show.sample_shape, title=title)
    plots.save_loss_curve(result.history, out / "loss.png", title=title)
    summary = {"epochs_completed": result.epochs_completed, "steps": result.steps,
               "stopped_early": result.stopped_early, "best_val_loss": result.best_val_loss,
               "best_epoch": result.best_epoch, "test": test, "checkpoint": str(result.checkpoint),
               "step_kind": result.step_kind, "model": trainer.model.config, "data": splits.config,
               "input_scaling": splits.preprocessing.to_dict()}
    atomic_write(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    msg = f"aecomp train: done, {result.epochs_completed} epochs"
    if test is not None:
        msg += f"; test mse {test['mse']:.6g}"
        if test.get("psnr") is not None:
            msg += f", psnr {test['psnr']:.2f} dB"
    print(msg + f"; wrote {out}/ (checkpoints, metrics.jsonl, reconstructions.png, loss.png, summary.json)",
          file=sys.stderr)
