"""The compression pipeline behind ``aecomp compress`` and ``aecomp demo``.

On one dataset and one seeded train / val / test split:

1. **baseline**: LeNet-300-100 (``in-300-100-C``) trained with Adam on the cross-entropy;
2. **pca-K**: PCA with ``K`` components (reconstruction MSE) + logistic regression on them;
3. **autoencoder-linear**: the purely linear autoencoder ``in -> K -> in`` (should match PCA's
   reconstruction error), and **autoencoder**: the nonlinear one ``in -relu-> h -> K -relu-> h -> in``
   (sigmoid output for data in [0, 1]) whose encoder is reused below;
4. **compressed-<mode>** for each mode (replace / frozen / finetune, see
   ``aecomp.compress.net``): the encoder plus a head;
5. for the baseline and each compressed net: **-int8** (post-training per-channel int8
   weights), **-pruned<S>** (magnitude pruning to sparsity ``S`` and a few epochs of retraining
   under the mask, stored sparse) and **-pruned<S>-int8** (both);
4b. with ``distill`` (default on), **compressed-<mode>-kd**: each mode trained on the
   distillation loss with the baseline as teacher (``aecomp.compress.distill``); its pruning
   and codebook steps train distilled too;
5b. (trained weight sharing and entropy coding, ``aecomp.compress.share`` / ``coding``) for the
   baseline and each compressed net: **-int8-coded** and **-shared8** (per-channel int8 vs an
   8-bit k-means codebook per layer, both post-training, both entropy-coded: equal bits),
   **-pruned<S>-int8-coded**, and **-pruned<S>-shared<b>** for each ``b`` in ``bits`` (k-means
   over the surviving weights, codebooks fine-tuned with the masks kept, entropy-coded);
6. the report (``aecomp.compress.report``) and, when onnx is installed, ONNX files of the
   compressed nets and of the autoencoder's encoder and decoder, each checked in onnxruntime.

Every classifier's accuracy is measured on the model loaded back from the file that holds it,
so ``bytes`` and ``accuracy`` describe the same thing. Autoencoders train with
``aecomp.train.Trainer`` (Adam, then a tenth of the learning rate for a third as many epochs).

Layout of the output folder::

    report.json  report.md  accuracy_vs_bytes.png
    models/<name>.safetensors         the file behind each row's ``bytes``
    models/<name>.aecc                (coded rows) the entropy-coded file behind ``bytes``
    checkpoints/<name>/ckpt-*/        trained float32 models (``aecomp export`` reads these)
    onnx/<name>.onnx, onnx/autoencoder.encoder.onnx, onnx/autoencoder.decoder.onnx
    outputs.json                      every file above (relative paths), written last
    .aecomp.lock                      the run's folder lock (``aecomp.train.output.FolderLock``)

The folder holds exactly one run's outputs: a run refuses a folder that is not empty unless
``overwrite`` is set, and then removes exactly the previous run's outputs (those its
``outputs.json`` lists, or the layout above for a folder written before that file existed)
and refuses a folder that holds anything else. So ``aecomp export`` never picks up a stale file.

Labels are checked on every split: integers >= 0, every validation and test label seen in
training, and at most ``max_classes`` classes (``max + 1``; a stray label of 1,000,000 would
otherwise build a head of a million outputs).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import data as data_mod
from . import storage
from .baselines import DEEP_COMPRESSION_LENET_300_100, PCABaseline, lenet_300_100, linear_autoencoder
from .net import MODES, CompressedNet, accuracy, classifier_config, fit_classifier, linear_layers, train_compressed
from .prune import prune_and_retrain
from .report import compress_report, format_table, measure_latency

__all__ = ["CompressError", "CompressSettings", "fit_autoencoder", "run_compression"]


class CompressError(ValueError):
    """A setting or dataset the pipeline cannot work with; the message is one line."""


@dataclass
class CompressSettings:
    """Everything that shapes a compression run (defaults suit the digits data)."""

    data: str = "digits"
    latent: int = 16
    mode: str = "all"  # replace | frozen | finetune | all
    out: str = "aecomp-compress"
    hidden: Optional[List[int]] = None  # encoder hidden widths; None: (2 * latent,) when that is < the input
    ae_epochs: int = 60
    ae_lr: float = 1e-2
    epochs: int = 30  # classifier epochs (baseline, replace, frozen head, finetune)
    lr: float = 1e-3  # baseline and replace
    head_lr: float = 1e-2  # the head on a frozen encoder
    finetune_lr: float = 1e-3  # encoder + head together, after the frozen head
    batch_size: int = 64
    sparsity: float = 0.9  # pruning of the baseline
    sparsity_compressed: float = 0.7  # pruning of the (already small) compressed nets
    prune_epochs: int = 30
    prune_lr: float = 3e-3  # retraining after pruning
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    latency_repeats: int = 100
    export: bool = True
    backend: Optional[str] = None
    # issue 14: trained weight sharing, entropy-coded files, distillation
    bits: List[int] = field(default_factory=lambda: [3, 4, 5])  # shared bits of the pruned nets
    share_epochs: int = 10  # codebook fine-tuning epochs
    share_lr: float = 1e-3
    distill: bool = True  # also train each compressed net distilled from the baseline (-kd rows)
    temperature: float = 4.0
    alpha: float = 0.7
    scale: str = "auto"  # aecomp.data.SCALES
    overwrite: bool = False  # replace an earlier run's outputs in `out`
    max_classes: int = 1000  # more classes than this is taken for a mistake in the labels

    def modes(self) -> Tuple[str, ...]:
        return MODES if self.mode == "all" else (self.mode,)


def _check(s: CompressSettings) -> None:
    if s.mode != "all" and s.mode not in MODES:
        raise CompressError(f"unknown --mode {s.mode!r}; expected one of {', '.join(MODES)} or all")
    if not isinstance(s.latent, int) or s.latent < 1:
        raise CompressError(f"--latent must be a positive integer, got {s.latent!r}")
    for name in ("ae_epochs", "epochs", "prune_epochs"):
        if getattr(s, name) < 0:
            raise CompressError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(s, name)}")
    if s.batch_size < 1:
        raise CompressError(f"--batch-size must be positive, got {s.batch_size}")
    for name in ("sparsity", "sparsity_compressed"):
        v = getattr(s, name)
        if not 0.0 <= v < 1.0:
            raise CompressError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
    for name in ("ae_lr", "lr", "head_lr", "finetune_lr", "prune_lr"):
        v = getattr(s, name)
        if not (math.isfinite(v) and v > 0):
            raise CompressError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if s.hidden is not None and any(h < 1 for h in s.hidden):
        raise CompressError(f"--hidden widths must be positive, got {s.hidden}")
    if any(not isinstance(b, int) or not 2 <= b <= 8 for b in s.bits):
        raise CompressError(f"--bits must be integers in 2..8, got {s.bits}")
    if s.share_epochs < 0:
        raise CompressError(f"--share-epochs must be >= 0, got {s.share_epochs}")
    if not (math.isfinite(s.temperature) and s.temperature > 0):
        raise CompressError(f"--temperature must be a positive number, got {s.temperature}")
    if not 0.0 <= s.alpha <= 1.0:
        raise CompressError(f"--alpha must be in [0, 1], got {s.alpha}")
    if s.scale not in data_mod.SCALES:
        raise CompressError(f"unknown --scale {s.scale!r}; expected one of {', '.join(data_mod.SCALES)}")
    if not isinstance(s.max_classes, int) or s.max_classes < 2:
        raise CompressError(f"--max-classes must be an integer >= 2, got {s.max_classes!r}")


def load_labeled(s: CompressSettings) -> data_mod.Splits:
    """The splits of ``s.data``, checked for what the pipeline needs (labels, latent < features)."""
    try:
        splits = data_mod.load(s.data, val_fraction=s.val_fraction, test_fraction=s.test_fraction, seed=s.seed,
                               scale=s.scale)
    except data_mod.DataError as exc:
        raise CompressError(str(exc)) from None
    features = splits.train.features
    if splits.train.y is None:
        raise CompressError(f"{s.data} has no labels; compress trains classifiers and needs them (digits, "
                            f"mnist:DIR, a .npz with an array 'y', or a .csv with a 'label' column)")
    if s.latent >= features:
        raise CompressError(f"--latent {s.latent} is not smaller than the {features} input features of {s.data}; "
                            f"an autoencoder compresses only with a latent below {features}")
    if len(splits.test) == 0 or len(splits.val) == 0:
        raise CompressError(f"{s.data}: the validation or test split is empty ({len(splits.train)} / "
                            f"{len(splits.val)} / {len(splits.test)} samples); use more data or larger fractions")
    check_labels(s, splits)
    return splits


def check_labels(s: CompressSettings, splits: data_mod.Splits) -> int:
    """The number of classes (training ``max + 1``) after checking every split's labels."""
    seen = torch.unique(splits.train.y)
    for d in splits:
        if d.y is None or len(d) == 0:
            continue
        low = int(d.y.min())
        if low < 0:
            raise CompressError(f"{s.data}: labels must be 0, 1, 2, ...; the {d.split} split has label {low}")
        unseen = d.y[~torch.isin(d.y, seen)]
        if unseen.numel():
            values = sorted(set(unseen.tolist()))
            shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
            raise CompressError(f"{s.data}: the {d.split} split has label(s) {shown} that the training split never "
                                f"has ({unseen.numel()} sample(s)); a classifier cannot learn a class it never sees")
    classes = int(seen.max()) + 1
    if classes < 2:
        raise CompressError(f"{s.data}: the labels hold only one class; a classifier needs two or more")
    if classes > s.max_classes:
        raise CompressError(f"{s.data}: the largest label is {classes - 1}, so {classes:,} classes for "
                            f"{len(splits.train)} training samples ({seen.numel()} distinct labels); more than "
                            f"--max-classes {s.max_classes} is taken for a mistake in the labels (pass "
                            f"--max-classes {classes} if it is right)")
    return classes


OUTPUTS_FILE = "outputs.json"
# what a run writes at the top of its folder (a folder written before outputs.json existed)
LAYOUT = ("report.json", "report.md", "accuracy_vs_bytes.png", "models", "checkpoints", "onnx", OUTPUTS_FILE)


def _files_under(out: Path, names: Sequence[str]) -> List[Path]:
    found: List[Path] = []
    for n in names:
        p = out / n
        if p.is_dir() and not p.is_symlink():
            found += [q for q in p.rglob("*") if not q.is_dir() or q.is_symlink()]
        elif p.exists() or p.is_symlink():
            found.append(p)
    return found


def _previous_outputs(out: Path) -> Optional[List[Path]]:
    """The files of the earlier run in ``out``: those its ``outputs.json`` lists; the layout's when
    that run did not finish (or predates outputs.json, but wrote a report.json); None when the
    folder does not look like a compress output folder at all."""
    listing = out / OUTPUTS_FILE
    if listing.is_file():
        try:
            doc = json.loads(listing.read_text())
        except (OSError, ValueError):
            doc = {}
        if isinstance(doc, dict) and doc.get("complete") and isinstance(doc.get("files"), list):
            return [out / n for n in doc["files"] if isinstance(n, str) and ".." not in Path(n).parts]
        return _files_under(out, LAYOUT)
    if (out / "report.json").is_file():
        return _files_under(out, LAYOUT)
    return None


def clear_folder(out: Path, overwrite: bool) -> None:
    """Leave ``out`` empty (but for the lock), or refuse: see the module docstring. Nothing is
    removed unless everything in the folder is the earlier run's."""
    from ..train.output import LOCK_NAME

    top = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if not top:
        return
    names = ", ".join(top[:4]) + (", ..." if len(top) > 4 else "")
    present = [p for p in out.rglob("*") if (not p.is_dir() or p.is_symlink()) and p != out / LOCK_NAME]
    if not overwrite:
        raise CompressError(f"--out {out} is not empty ({names}); add --overwrite to replace the outputs of an "
                            f"earlier run there, or choose another --out")
    previous = _previous_outputs(out)
    if previous is None:
        raise CompressError(f"--overwrite: --out {out} holds {names} but no earlier aecomp compress run (no "
                            f"{OUTPUTS_FILE} or report.json); nothing is removed: choose another --out")
    ours = {p.resolve() if not p.is_symlink() else p for p in previous}
    foreign = sorted(str(p.relative_to(out)) for p in present
                     if (p.resolve() if not p.is_symlink() else p) not in ours)
    if foreign:
        raise CompressError(f"--overwrite: --out {out} also holds {', '.join(foreign[:4])}"
                            f"{', ...' if len(foreign) > 4 else ''}, which the earlier run did not write; "
                            f"nothing is removed: move it or choose another --out")
    for p in present:
        p.unlink()
    for d in sorted((q for q in out.rglob("*") if q.is_dir() and not q.is_symlink()),
                    key=lambda q: len(q.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def _write_outputs_list(out: Path, complete: bool) -> None:
    """``outputs.json``: at the start ``complete: false`` (a crash leaves a folder ``--overwrite``
    may clear), at the end every file the run wrote."""
    from ..train.checkpoint import atomic_write, default_file_mode
    from ..train.output import LOCK_NAME

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                   if p.is_file() and p.name != LOCK_NAME and p.name != OUTPUTS_FILE) if complete else []
    mode = default_file_mode()
    for f in files:  # safetensors' writer creates its files 0600; every other file gets 0666 less the umask
        os.chmod(out / f, mode)
    doc = {"written_by": "aecomp compress", "complete": complete, "files": sorted(files + [OUTPUTS_FILE])}
    atomic_write(out / OUTPUTS_FILE, (json.dumps(doc, indent=1) + "\n").encode())


def _check_sizes(s: CompressSettings, features: int, classes: int) -> None:
    """Refuse widths whose models cannot fit in memory, before anything is allocated."""
    from ..train.output import OutputError, check_memory

    dims = encoder_dims(s, features)
    enc = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    try:
        check_memory(2 * enc + s.latent * classes, f"the autoencoder ({'-'.join(map(str, dims))}, --hidden/--latent)")
    except OutputError as exc:
        raise CompressError(str(exc)) from None


def encoder_dims(s: CompressSettings, features: int) -> List[int]:
    hidden = s.hidden if s.hidden is not None else ([2 * s.latent] if 2 * s.latent < features else [])
    return [features, *hidden, s.latent]


def fit_autoencoder(model: nn.Module, train: data_mod.Dataset, val: data_mod.Dataset, *, epochs: int, lr: float,
                    batch_size: int, seed: int) -> int:
    """Train with ``aecomp.train.Trainer``: ``epochs`` at ``lr``, then ``epochs // 3`` at ``lr / 10``
    (a step decay: Adam at a fixed rate stalls a little above the minimum). Returns the steps."""
    from ..train import Trainer

    steps = 0
    for e, rate in ((epochs, lr), (epochs // 3, lr / 10)):
        if e == 0:
            continue
        trainer = Trainer(model, epochs=e, batch_size=batch_size, lr=rate, seed=seed, device="cpu",
                          progress=False, log=lambda msg: None)
        steps += trainer.fit(train, val).steps
    return steps


def recon_mse(model: nn.Module, x: torch.Tensor) -> float:
    """``sum (model(x) - x)^2 / numel`` (model = an autoencoder, output = reconstruction)."""
    with torch.no_grad():
        model.eval()
        return float(((model(x).double() - x.double()) ** 2).mean())


class _Run:
    def __init__(self, s: CompressSettings, log: Callable[[str], None]) -> None:
        self.s = s
        self.out = Path(s.out)
        self.log_fn = log
        self.t0 = time.perf_counter()
        self.rows: List[Dict[str, Any]] = []
        self.timings: Dict[str, float] = {}

    def log(self, msg: str) -> None:
        self.log_fn(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}")

    def timed(self, key: str, t: float) -> None:
        self.timings[key] = round(time.perf_counter() - t, 3)

    # --------------------------------------------------------------------- files
    def checkpoint(self, name: str, model: nn.Module, step: int, metrics: Dict[str, Any],
                   splits: data_mod.Splits) -> Path:
        from ..train.checkpoint import save_checkpoint

        state = {"model_config": classifier_config(model), "run": {"settings": asdict(self.s), "data": splits.config},
                 "metrics": metrics, "written_by": "aecomp compress", **_file_meta(splits, json_ready=True)}
        return save_checkpoint(self.out / "checkpoints" / name, step, model_state=model.state_dict(), state=state,
                               keep=1)

    def latency(self, fn, x_test: torch.Tensor) -> Tuple[float, float]:
        n = x_test.shape[0]
        x256 = x_test[torch.arange(256) % n].contiguous()
        reps = self.s.latency_repeats
        return (measure_latency(fn, x_test[:1].contiguous(), repeats=reps),
                measure_latency(fn, x256, repeats=max(reps // 4, 1)))

    def packed_latency(self, row: Dict[str, Any], path: Path, te) -> None:
        """Issue 15: an int8 / shared-weight file's latency from the packed path (the file loaded
        packed, one packed_mlp call), its resident bytes, and its accuracy on that path."""
        from .packed import load_packed_model

        try:
            packed = load_packed_model(path)
        except ValueError as exc:  # a layout the packed kernels do not hold (8-bit shared + pruned)
            row["latency_path"] = "float32"
            self.log(f"{row['name']}: timed in float32 ({exc})")
            return
        row["latency_ms_b1"], row["latency_ms_b256"] = self.latency(packed.forward_scaled, te.x)
        row["resident_bytes"] = packed.resident_bytes
        row["latency_path"] = "packed"
        with torch.no_grad():
            row["accuracy_packed"] = 100.0 * float((packed.forward_scaled(te.x).argmax(1) == te.y).float().mean())

    # --------------------------------------------------------------------- rows
    def classifier_row(self, name: str, description: str, model: nn.Module, splits: data_mod.Splits,
                       values: str = "float32", sparse: bool = False) -> Dict[str, Any]:
        """Write ``model`` packed, load it back, and measure what was loaded."""
        path = self.out / "models" / f"{name}.safetensors"
        nbytes = storage.save_packed(model, path, values=values, sparse=sparse, **_file_meta(splits))
        loaded = storage.load_packed(path, backend=self.s.backend)
        te = splits.test
        b1, b256 = self.latency(loaded, te.x)
        # a dense file stores every parameter; a sparse one the nonzero weights (and all biases)
        nonzero = sum((int((layer.weight != 0).sum()) if sparse else layer.weight.numel())
                      + (layer.bias.numel() if layer.bias is not None else 0) for layer in linear_layers(loaded))
        row = {"name": name, "description": description, "params": nonzero, "bytes": nbytes,
               "accuracy": accuracy(loaded, te.x, te.y), "recon_mse": None, "latency_ms_b1": b1,
               "latency_ms_b256": b256, "macs": storage.macs(loaded, sparse=sparse),
               "float32_bytes": storage.payload_bytes(model, "float32", sparse),
               "int8_bytes": storage.payload_bytes(model, "int8", sparse), "values": values,
               "storage": "sparse" if sparse else "dense", "file": str(path)}
        if isinstance(model, CompressedNet):
            row["trainable_params"] = model.num_params(trainable_only=True) if not sparse and values == "float32" else None
        if values == "int8":
            self.packed_latency(row, path, te)
        self.rows.append(row)
        self.log(f"{name}: accuracy {row['accuracy']:.2f}%, {nbytes:,} bytes, {nonzero:,} params")
        return row

    def coded_row(self, name: str, description: str, packed, model: nn.Module,
                  splits: data_mod.Splits) -> Dict[str, Any]:
        """Write ``packed`` (a ``share.PackedNet``) entropy-coded, load it back, measure what was loaded."""
        from . import coding

        path = self.out / "models" / f"{name}.aecc"
        nbytes = coding.save_coded(packed, path, **_file_meta(splits))
        loaded = coding.load_coded(path).to_model(backend=self.s.backend)
        te = splits.test
        b1, b256 = self.latency(loaded, te.x)
        sparse = any(layer.mask is not None for layer in packed.layers)
        nonzero = packed.nnz() + sum(layer.bias.numel() for layer in packed.layers if layer.bias is not None)
        bits = sorted({getattr(layer, "bits", 8) for layer in packed.layers})
        row = {"name": name, "description": description, "params": nonzero, "bytes": nbytes,
               "accuracy": accuracy(loaded, te.x, te.y), "recon_mse": None, "latency_ms_b1": b1,
               "latency_ms_b256": b256, "macs": storage.macs(loaded, sparse=sparse),
               "float32_bytes": storage.payload_bytes(model, "float32", sparse),
               "int8_bytes": storage.payload_bytes(model, "int8", sparse),
               "values": "shared" if hasattr(packed.layers[0], "codebook") else "int8", "bits": bits[-1],
               "storage": "coded-sparse" if sparse else "coded-dense", "file": str(path)}
        self.packed_latency(row, path, te)
        self.rows.append(row)
        self.log(f"{name}: accuracy {row['accuracy']:.2f}%, {nbytes:,} bytes, {nonzero:,} params")
        return row

    def autoencoder_row(self, name: str, description: str, ae: nn.Module, splits: data_mod.Splits) -> Dict[str, Any]:
        path = self.out / "models" / f"{name}.safetensors"
        nbytes = storage.save_float32(ae.state_dict(), path, config=ae.config, scaling=splits.preprocessing)
        te = splits.test
        b1, b256 = self.latency(ae, te.x)
        params = sum(p.numel() for p in ae.parameters())
        row = {"name": name, "description": description, "params": params, "bytes": nbytes, "accuracy": None,
               "recon_mse": recon_mse(ae, te.x), "latency_ms_b1": b1, "latency_ms_b256": b256,
               "macs": sum(layer.weight.numel() for layer in ae.encoder.layers + ae.decoder.layers),
               "float32_bytes": 4 * params,
               "int8_bytes": storage.payload_bytes(ae.encoder, "int8") + storage.payload_bytes(ae.decoder, "int8"),
               "values": "float32", "storage": "dense", "file": str(path)}
        self.rows.append(row)
        self.log(f"{name}: test reconstruction MSE {row['recon_mse']:.5f}, {nbytes:,} bytes")
        return row


def run_compression(settings: CompressSettings, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Run the whole pipeline; returns ``{"rows", "paths", "report", "table", "files", "seconds"}``."""
    from ..train.output import FolderLock, OutputError, prepare_folder

    s = settings
    _check(s)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    splits = load_labeled(s)
    classes = check_labels(s, splits)
    _check_sizes(s, splits.train.features, classes)
    try:
        out = prepare_folder(s.out)
        lock = FolderLock(out).acquire()
    except OutputError as exc:
        raise CompressError(str(exc)) from None
    try:
        clear_folder(out, s.overwrite)
        _write_outputs_list(out, complete=False)
        result = _run_pipeline(s, splits, classes, log)
        _write_outputs_list(out, complete=True)
        return result
    finally:
        lock.release()


def _run_pipeline(s: CompressSettings, splits: data_mod.Splits, classes: int,
                  log: Callable[[str], None]) -> Dict[str, Any]:
    run = _Run(s, log)
    tr, va, te = splits
    features = tr.features
    run.log(f"data {splits.spec}: {len(tr)} train / {len(va)} val / {len(te)} test, {features} features, "
            f"{classes} classes; latent {s.latent}; modes {', '.join(s.modes())}")
    run.log(f"input scaling {splits.preprocessing.describe()}" + ("" if splits.label_map is None else
            f"; labels {', '.join(map(str, splits.label_map))} are classes 0..{classes - 1}"))
    fit_kw = dict(x_val=va.x, y_val=va.y, batch_size=s.batch_size, seed=s.seed)
    models: Dict[str, nn.Module] = {}

    # 1. baseline ----------------------------------------------------------------------------
    t = time.perf_counter()
    torch.manual_seed(s.seed)
    base = lenet_300_100(features, classes, backend=s.backend)
    fit = fit_classifier(base, tr.x, tr.y, epochs=s.epochs, lr=s.lr, **fit_kw)
    run.timed("baseline", t)
    run.checkpoint("baseline", base, s.epochs, fit, splits)
    models["baseline"] = base
    run.classifier_row("baseline", f"uncompressed classifier LeNet-300-100 ({'-'.join(map(str, base.dims))})",
                       base, splits)

    # 2. PCA ---------------------------------------------------------------------------------
    t = time.perf_counter()
    pca = PCABaseline.fit(tr.x, tr.y, s.latent, seed=s.seed)
    pca_mod = pca.to_module(classes)
    run.timed("pca", t)
    path = run.out / "models" / f"pca-{s.latent}.safetensors"
    nbytes = storage.save_float32(dict(pca_mod.named_buffers()), path, config={"type": "pca"}, **_file_meta(splits))
    b1, b256 = run.latency(pca_mod, te.x)
    k = s.latent
    pca_row = {"name": f"pca-{k}", "description": f"PCA, {k} components + logistic regression",
               "params": pca_mod.num_params, "bytes": nbytes, "accuracy": accuracy(pca_mod, te.x, te.y),
               "recon_mse": pca.recon_mse(te.x), "latency_ms_b1": b1, "latency_ms_b256": b256,
               "macs": pca_mod.macs, "float32_bytes": 4 * pca_mod.num_params,
               "int8_bytes": (k * features + classes * k) + 4 * (k + classes) + 4 * (features + classes),
               "values": "float32", "storage": "dense", "file": str(path)}
    run.rows.append(pca_row)
    run.log(f"pca-{k}: accuracy {pca_row['accuracy']:.2f}%, test reconstruction MSE {pca_row['recon_mse']:.5f}")

    # 3. autoencoders -------------------------------------------------------------------------
    ae_kw = dict(epochs=s.ae_epochs, lr=s.ae_lr, batch_size=s.batch_size, seed=s.seed)
    t = time.perf_counter()
    torch.manual_seed(s.seed)
    lin = linear_autoencoder(features, s.latent, backend=s.backend)
    fit_autoencoder(lin, tr, va, **ae_kw)
    run.timed("autoencoder_linear", t)
    run.autoencoder_row("autoencoder-linear", f"linear autoencoder {features}-{s.latent}-{features} (no activations)",
                        lin, splits)
    from ..models import Autoencoder

    t = time.perf_counter()
    torch.manual_seed(s.seed)
    dims = encoder_dims(s, features)
    ae = Autoencoder(dims, output="sigmoid" if tr.unit_range else "none", backend=s.backend)
    steps = fit_autoencoder(ae, tr, va, **ae_kw)
    run.timed("autoencoder", t)
    run.checkpoint("autoencoder", ae, steps, {"test_recon_mse": recon_mse(ae, te.x)}, splits)
    run.autoencoder_row("autoencoder", f"autoencoder {'-'.join(map(str, dims))}-...-{features}", ae, splits)

    # 4. compressed nets -----------------------------------------------------------------------
    frozen: Optional[CompressedNet] = None
    for mode in sorted(s.modes(), key=("frozen", "finetune", "replace").index):
        t = time.perf_counter()
        net, fit = _train_mode(s, mode, ae, base, classes, frozen, tr, fit_kw)
        frozen = net if mode == "frozen" else frozen
        name = f"compressed-{mode}"
        run.timed(name, t)
        run.checkpoint(name, net, s.epochs, fit, splits)
        models[name] = net
        run.classifier_row(name, f"encoder {'-'.join(map(str, net.encoder.dims))} + head "
                                 f"{'-'.join(map(str, net.head.dims))}, {mode}", net, splits)

    # 4b. (issue 14) the same compressed nets trained distilled from the baseline: -kd ------------
    distill_of: Dict[str, Any] = {}
    if s.distill:
        distill_of = _distilled_nets(run, s, models, base, ae, splits, classes, fit_kw)

    # 5. pruning and int8 ----------------------------------------------------------------------
    for name, model in models.items():
        sp = s.sparsity if name == "baseline" else s.sparsity_compressed
        tag = f"pruned{int(round(sp * 100))}"
        run.classifier_row(f"{name}-int8", f"{name}, int8 per-channel weights", model, splits, values="int8")
        t = time.perf_counter()
        pruned = prune_and_retrain(model, sp, tr.x, tr.y, epochs=s.prune_epochs, lr=s.prune_lr,
                                   distill=distill_of.get(name), progress=f"{name}-{tag}", **fit_kw)
        run.timed(f"{name}-{tag}", t)
        run.classifier_row(f"{name}-{tag}", f"{name}, {sp:.0%} of weights pruned, sparse float32", pruned, splits,
                           sparse=True)
        run.classifier_row(f"{name}-{tag}-int8", f"{name}, {sp:.0%} pruned, sparse int8", pruned, splits,
                           values="int8", sparse=True)
        # 5b. (issue 14) shared weights and entropy-coded files
        _shared_rows(run, s, name, tag, model, pruned, splits, distill_of.get(name), fit_kw)

    # 6. ONNX ----------------------------------------------------------------------------------
    onnx_info: List[Dict[str, Any]] = []
    notes: List[str] = []
    if s.export:
        t = time.perf_counter()
        # the -kd nets have the architecture of their mode's net: one ONNX file per mode is enough
        onnx_info, note = export_all(run.out / "onnx", {k: v for k, v in models.items() if not k.endswith("-kd")},
                                     ae, te.x, **_file_meta(splits))
        if note:
            notes.append(note)
            run.log(note)
        run.timed("onnx", t)

    # 7. report --------------------------------------------------------------------------------
    notes += [
        f"Data: {splits.spec}, split seed {s.seed}: {len(tr)} train / {len(va)} val / {len(te)} test samples; "
        f"accuracy is top-1 on the test split in percent (one test sample = {100 / len(te):.2f} points).",
        "bytes = size of the safetensors file that holds the model (models/<name>.safetensors); ratio = baseline "
        "bytes / model bytes; int8 files hold int8 weights + per-channel float32 scales; pruned files hold only "
        "the nonzero weights (CSR or bitmask, whichever is smaller); biases stay float32.",
        "Every classifier row is measured on the model loaded back from its file: accuracy on the dequantized "
        "float32 weights; latency of int8 and shared-weight files from the packed path (weights kept packed in "
        "memory, aecomp.compress.packed: resident bytes; accuracy_packed = the same file on that path, int8 "
        "layers with dynamic int8 activations); float32 files through the fused float ops; pruned models run dense.",
        "Latency: median of repeated single-threaded forward passes (torch.set_num_threads(1)) at batch 1 and 256.",
        "recon MSE: mean over all test elements of (x_hat - x)^2 for the autoencoders and PCA.",
        f"-shared<b> files: per layer a k-means codebook of 2^b values (float16) over the surviving weights, "
        f"b-bit codes, codebooks fine-tuned {s.share_epochs} epochs with the pruning masks kept; *-coded and "
        f"-shared files (.aecc) entropy-code the codes and the kept positions (per stream the smallest of "
        f"fixed-width, Huffman, lzma, deflate), biases float16, CRC-32; loaded back bit-identical.",
        f"-kd: trained on the distillation loss, teacher = the baseline, T = {s.temperature:g}, alpha = "
        f"{s.alpha:g} on the soft targets (1 - alpha on the labels); their pruning and codebook steps too.",
        "Pruning retrains every parameter, so -pruned rows of the frozen family have a fine-tuned encoder.",
        f"Modes: replace = encoder in place of the baseline's first layer, head = the baseline's back layers "
        f"(latent-100-classes) trained end-to-end at lr {s.lr:g}; frozen = encoder frozen, linear head only (lr "
        f"{s.head_lr:g}); finetune = the frozen net, then encoder and head together at lr "
        f"{s.finetune_lr:g}.",
    ]
    report_rows = _order(run.rows)
    extra = {"settings": asdict(s), "classes": classes, "features": features, "samples": {
        "train": len(tr), "val": len(va), "test": len(te)}, "onnx": onnx_info, "timings_s": run.timings,
        "torch_threads": torch.get_num_threads(), **_file_meta(splits, json_ready=True)}
    paths = compress_report(report_rows, run.out, dataset=splits.spec, latent=s.latent,
                            published=[DEEP_COMPRESSION_LENET_300_100], notes=notes, extra=extra)
    report = json.loads(paths["json"].read_text())
    best = next((m for m in report["models"] if m["name"] == report.get("smallest_within_1pt")), None)
    if best is not None:  # issue 14: the headline of the frontier
        run.log(f"smallest file within 1 point of the baseline: {best['name']}, {best['bytes']:,} bytes "
                f"({best['ratio']:.1f}x), accuracy {best['accuracy']:.2f}%")
    seconds = time.perf_counter() - run.t0
    run.log(f"done in {seconds:.1f} s")
    files = [paths["json"], paths["md"], paths["png"]] + sorted((run.out / "models").glob("*.safetensors")) \
        + sorted((run.out / "checkpoints").iterdir()) + [Path(o["file"]) for o in onnx_info] \
        + [run.out / OUTPUTS_FILE]
    return {"rows": report["models"], "paths": paths, "report": report, "table": format_table(report["models"]),
            "files": files, "seconds": seconds}


def _file_meta(splits: data_mod.Splits, json_ready: bool = False) -> Dict[str, Any]:
    """The input scaling and label map every model file, checkpoint and report records (issue 23)."""
    if json_ready:
        labels = None if splits.label_map is None else list(splits.label_map)
        return {"input_scaling": splits.preprocessing.to_dict(), "labels": labels}
    return {"scaling": splits.preprocessing, "labels": splits.label_map}


def _train_mode(s: CompressSettings, mode: str, ae: nn.Module, base: nn.Module, classes: int,
                frozen: Optional[CompressedNet], tr: data_mod.Dataset,
                fit_kw: Dict[str, Any]) -> Tuple[CompressedNet, Dict[str, Any]]:
    """A CompressedNet trained in ``mode`` (``finetune`` starts from ``frozen`` when given)."""
    import copy

    torch.manual_seed(s.seed + 1)
    if mode == "replace":
        net = CompressedNet.from_autoencoder(ae, classes, mode="replace", head_hidden=(base.dims[2],),
                                             backend=s.backend)
        return net, train_compressed(net, tr.x, tr.y, epochs=s.epochs, lr=s.lr, **fit_kw)
    if mode == "frozen":
        net = CompressedNet.from_autoencoder(ae, classes, mode="frozen", backend=s.backend)
        return net, train_compressed(net, tr.x, tr.y, epochs=s.epochs, lr=s.head_lr, **fit_kw)
    ready = frozen is not None
    net = copy.deepcopy(frozen) if ready else CompressedNet.from_autoencoder(ae, classes, mode="frozen",
                                                                            backend=s.backend)
    return net, train_compressed(net, tr.x, tr.y, mode="finetune", epochs=s.epochs, lr=s.head_lr,
                                 finetune_factor=s.finetune_lr / s.head_lr, head_ready=ready, **fit_kw)


def _distilled_nets(run: "_Run", s: CompressSettings, models: Dict[str, nn.Module], base: nn.Module,
                    ae: nn.Module, splits: data_mod.Splits, classes: int, fit_kw: Dict[str, Any]) -> Dict[str, Any]:
    """``compressed-<mode>-kd`` for each mode: trained as ``compressed-<mode>`` but on the
    distillation loss (teacher: the baseline); adds them to ``models``; returns ``{name: Distill}``
    for every model whose later steps (pruning, codebooks) train distilled."""
    from .distill import Distill

    tr = splits.train
    kd = Distill(base, temperature=s.temperature, alpha=s.alpha)
    out: Dict[str, Any] = {}
    frozen_kd: Optional[CompressedNet] = None
    for mode in sorted(s.modes(), key=("frozen", "finetune", "replace").index):
        t = time.perf_counter()
        name = f"compressed-{mode}-kd"
        net, fit = _train_mode(s, mode, ae, base, classes, frozen_kd, tr, dict(fit_kw, distill=kd, progress=name))
        frozen_kd = net if mode == "frozen" else frozen_kd
        run.timed(name, t)
        run.checkpoint(name, net, s.epochs, fit, splits)
        models[name] = net
        out[name] = kd
        run.classifier_row(name, f"compressed-{mode} distilled from the baseline (T={s.temperature:g}, "
                                 f"alpha={s.alpha:g})", net, splits)
    return out


def _shared_rows(run: "_Run", s: CompressSettings, name: str, tag: str, model: nn.Module, pruned: nn.Module,
                 splits: data_mod.Splits, distill, fit_kw: Dict[str, Any]) -> None:
    """``<name>-int8-coded`` and ``<name>-shared8`` (equal bits: per-channel int8 vs a 256-value
    k-means codebook per layer, both post-training, both entropy-coded), then
    ``<name>-<tag>-int8-coded`` and ``<name>-<tag>-shared<b>`` for each ``b`` in ``s.bits``
    (k-means over the surviving weights, codebooks fine-tuned with the masks kept)."""
    from .share import finalize, finetune_codebooks, int8_model, share_model

    tr = splits.train
    run.coded_row(f"{name}-int8-coded", f"{name}, int8 per-channel, entropy-coded", finalize(int8_model(model)),
                  model, splits)
    run.coded_row(f"{name}-shared8", f"{name}, 8-bit shared weights (k-means, no fine-tuning), entropy-coded",
                  finalize(share_model(model, 8, pruned=False)), model, splits)
    run.coded_row(f"{name}-{tag}-int8-coded", f"{name}, {tag}, int8 per-channel, entropy-coded",
                  finalize(int8_model(pruned)), pruned, splits)
    for b in s.bits:
        t = time.perf_counter()
        packed = share_model(pruned, b, pruned=True)
        tuned = finetune_codebooks(packed, tr.x, tr.y, epochs=s.share_epochs, lr=s.share_lr, backend=s.backend,
                                   distill=distill, progress=f"{name}-{tag}-shared{b}", **fit_kw)
        run.timed(f"{name}-{tag}-shared{b}", t)
        run.coded_row(f"{name}-{tag}-shared{b}", f"{name}, {tag}, {b}-bit shared weights (codebooks fine-tuned), "
                      f"entropy-coded", tuned, pruned, splits)


def _order(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """baseline family, PCA, autoencoders, then each compressed family (replace, frozen, finetune);
    within a family: float32, int8, pruned, pruned + int8."""
    def key(r):
        n = r["name"]
        fam = 0 if n.startswith("baseline") else 1 if n.startswith("pca") else 2 if n.startswith("autoencoder") else 3
        mode = next((i for i, m in enumerate(MODES) if n.startswith(f"compressed-{m}")), len(MODES))
        return (fam, mode, "-kd" in n, "pruned" in n, n.endswith("int8"), n)
    return sorted(rows, key=key)


def export_all(folder: Path, models: Dict[str, nn.Module], ae: nn.Module, x_test: torch.Tensor, scaling=None,
               labels=None) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """ONNX files of the compressed nets and of the autoencoder's two halves, each checked in
    onnxruntime on the test split; returns (one dict per file, a note when skipped). With the
    input ``scaling`` (and ``labels``) the files take raw inputs (``aecomp.compress.export``)."""
    from .export import MissingDependencyError, check_onnx, export_autoencoder, export_onnx, raw_input_fn, require_onnx

    try:
        require_onnx(runtime=True)
    except MissingDependencyError as exc:
        return [], f"ONNX export skipped: {exc}"
    info = []
    raw = x_test if scaling is None or scaling.kind == "none" else scaling.invert(x_test)  # what users hold
    for name, model in models.items():
        if not name.startswith("compressed"):
            continue
        path = export_onnx(model, folder / f"{name}.onnx", x_test[:2], scaling=scaling, labels=labels)
        info.append({"name": name, "file": str(path),
                     "max_abs_diff": check_onnx(path, raw_input_fn(model, scaling), raw)})
    enc, dec = export_autoencoder(ae, folder / "autoencoder.onnx", x_test[:2], scaling=scaling)
    with torch.no_grad():
        z = ae.encode(x_test)
    info.append({"name": "autoencoder.encoder", "file": str(enc),
                 "max_abs_diff": check_onnx(enc, raw_input_fn(ae.encode, scaling), raw)})
    info.append({"name": "autoencoder.decoder", "file": str(dec), "max_abs_diff": check_onnx(
        dec, raw_input_fn(ae.decode, scaling, scale_input=False, unscale_output=True), z)})
    return info, None
