"""The compression pipeline behind ``aecomp compress`` and ``aecomp demo``, on the evaluation protocol.

**Repeats.** The whole job runs ``repeats`` times (``aecomp.compress.protocol``): repeat ``r``
draws a new stratified train / validation / test split and new initialisations with the seed
``seed + r`` (a fixed test set, MNIST's, stays). Every model is trained in every repeat, written
to its file, loaded back the way a user runs it (int8 and shared-weight files on the packed
path, float32 files in float) and scored once on the validation split and once on the test
split. Repeat 0 writes the shipped files (``models/``, ``checkpoints/``, ``onnx/``) and times
them; the other repeats write into a temporary folder that is removed.

**Choices use validation only**: the frontier, the recommendation (the smallest file whose
mean validation accuracy over the repeats is within ``points`` of the baseline's, see
``protocol.smallest_within``), which mode and which distillation setting is best, the row beside
the published point. The validation split is never used to fit a model or pick its epochs: each
classifier fits on the training split less a stratified ``early_stopping`` share of it, which
picks the best epoch (so validation accuracy is not inflated by that pick). Test accuracy is
only reported: per row its mean and spread over repeats and its gap to the baseline with a
paired interval. A baseline near chance gets a warning and no recommendation.

**Families** (each a trained classifier that then goes through the same steps):

==========================  ===================================================================
family                      what is trained
==========================  ===================================================================
``baseline``                LeNet-300-100 (``in-300-100-C``), from random initialisation
``logreg``                  logistic regression on the raw (scaled) inputs: one linear layer
                            ``in -> C``, from random initialisation (right-sized baseline)
``scratch``                 the exact CompressedNet architecture of ``frozen``/``finetune``
                            (encoder ``in-...-K`` + head ``K -> C``), every weight trained from
                            random initialisation -- no autoencoder (right-sized baseline)
``compressed-replace``      the autoencoder's encoder + head ``K-100-C``, all trained
``compressed-frozen``       the autoencoder's encoder, never trained on labels (pruning and
                            weight sharing change it only by the fixed prune/cluster steps);
                            only the head ``K -> C`` trains, in every step
``compressed-finetune``     the frozen net, then encoder and head trained together
``<family>-kd``             the same, trained on the distillation loss (teacher: the baseline)
``pca-K``                   PCA + logistic regression (a float file, no further steps)
==========================  ===================================================================

**Steps** (:func:`compression_steps`), each a row ``<family><suffix>``: float32 file;
``-int8`` (per-channel int8); ``-int8-coded`` and ``-shared8`` (post-training 8-bit codes,
entropy-coded: equal bits); ``-pruned<S>`` (with ``fold_inputs``, the first layer first keeps
only the input columns that span the training inputs, the others' weights folded into them:
``aecomp.compress.prune.fold_inputs``; then magnitude pruning to sparsity ``S``, retraining
what the family trains under the mask; sparse file), ``-pruned<S>-int8``,
``-pruned<S>-int8-coded``, and ``-pruned<S>-shared<b>`` for each ``b`` in ``bits`` (k-means
codebooks over the surviving weights, fine-tuned with the masks kept, entropy-coded ``.aecc``),
and ``-pruned<S>-sharedmix`` (per layer the fewest bits, 2..8, whose sharing alone costs at most
``bits_tolerance`` points of accuracy on the training split: ``share.choose_bits``).
The autoencoders themselves (``autoencoder``, ``autoencoder-linear``) get reconstruction rows.

Reuse on another classifier (a user's model, a pretrained encoder): :func:`run_repeats` runs
any per-repeat function with a :class:`Recorder`, and :func:`compression_steps` takes any
``CompressedNet`` / ``FusedMLP`` through the steps, so the report, the repeats and the choices
are the same as for ``aecomp compress``::

    def one_repeat(rec):                      # rec.splits: this repeat's train / val / test
        model = train_or_copy_my_model(rec.splits.train)
        compression_steps(rec, "mine", model, description="my model", sparsity=0.9)
    result = run_repeats(CompressSettings(data="digits", out="runs/mine"), one_repeat)

Layout of the output folder::

    report.json  report.md  accuracy_vs_bytes.png
    models/<name>.safetensors         the file behind each float32 / int8 row's ``bytes`` (repeat 0)
    models/<name>.aecc                (coded rows) the entropy-coded file behind ``bytes``
    checkpoints/<name>/ckpt-*/        trained float32 models (``aecomp export`` reads these)
    onnx/<name>.onnx, onnx/autoencoder.encoder.onnx, onnx/autoencoder.decoder.onnx
    outputs.json                      every file above (relative paths), written last
    .aecomp.lock                      the run's folder lock (``aecomp.train.output.FolderLock``)

The folder holds exactly one run's outputs: a run refuses a folder that is not empty unless
``overwrite`` is set, and then removes exactly the previous run's outputs (those its
``outputs.json`` lists, or the layout above for a folder written before that file existed)
and refuses a folder that holds anything else. So ``aecomp export`` never picks up a stale file.

Labels are checked on every split of every repeat: integers >= 0, every validation and test
label seen in training, and at most ``max_classes`` classes (``max + 1``; a stray label of
1,000,000 would otherwise build a head of a million outputs).
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import data as data_mod
from . import protocol, storage
from .baselines import DEEP_COMPRESSION_LENET_300_100, PCABaseline, lenet_300_100, linear_autoencoder
from .net import MODES, CompressedNet, classifier_config, fit_classifier, linear_layers, train_compressed
from .prune import prune_and_retrain
from .report import compress_report, measure_latency

__all__ = ["CompressError", "CompressSettings", "Recorder", "compression_steps", "fit_autoencoder",
           "run_compression", "run_repeats"]


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
    epochs: int = 30  # classifier epochs (baseline, replace, frozen head, finetune, logreg; scratch: twice)
    lr: float = 1e-3  # baseline, replace and scratch
    head_lr: float = 1e-2  # the head on a frozen encoder, and logistic regression
    finetune_lr: float = 1e-3  # encoder + head together, after the frozen head
    batch_size: int = 64
    sparsity: float = 0.9  # pruning of the baseline
    sparsity_compressed: float = 0.7  # pruning of the (already small) nets: compressed, scratch, logreg
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
    # issue 24: the protocol
    repeats: int = 3  # each a new split and new seeds (protocol.repeat_seed)
    early_stopping: float = 0.1  # share of the training split that picks each classifier's best epoch
    fold_inputs: bool = True  # pruning keeps only the input columns that span the training inputs (prune.py)
    mixed_bits: bool = True  # also a -sharedmix row: per-layer bit widths (share.choose_bits)
    bits_tolerance: float = 0.5  # points of training-split accuracy a layer's sharing may cost (-sharedmix)
    points: float = 1.0  # the recommendation: the smallest file within this many points (validation)
    baselines: bool = True  # the right-sized baselines: logreg and scratch

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
    if not isinstance(s.repeats, int) or isinstance(s.repeats, bool) or s.repeats < 1:
        raise CompressError(f"--repeats must be an integer >= 1, got {s.repeats!r}")
    if not (isinstance(s.points, (int, float)) and math.isfinite(s.points) and s.points >= 0):
        raise CompressError(f"--points must be a number >= 0, got {s.points!r}")
    if not (isinstance(s.early_stopping, (int, float)) and 0 <= s.early_stopping < 0.5):
        raise CompressError(f"--early-stopping must be in [0, 0.5), got {s.early_stopping!r}")


def load_labeled(s: CompressSettings, repeat: int = 0) -> data_mod.Splits:
    """The splits of ``s.data`` in repeat ``repeat`` (``protocol.load_repeat``), checked for what
    the pipeline needs (labels, latent < features)."""
    try:
        splits = protocol.load_repeat(s.data, repeat, seed=s.seed, val_fraction=s.val_fraction,
                                      test_fraction=s.test_fraction, scale=s.scale)
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


def _warn_rare_classes(s: CompressSettings, splits: data_mod.Splits) -> None:
    """A class with one training sample where the median class has many is most likely a stray label
    (sparse labels are remapped to 0..k-1 by the loader, so a stray 1,000,000 is a class of its own):
    say so, naming the original label, but train (a rare class can be real)."""
    counts = torch.bincount(splits.train.y)
    present = counts[counts > 0]
    if present.numel() < 2:
        return
    median = int(present.median())
    labels = splits.label_map
    for c in torch.nonzero((counts > 0) & (counts <= 1)).flatten().tolist():
        if median >= 10:
            original = labels[c] if labels is not None else c
            warnings.warn(f"{s.data}: label {original} has {int(counts[c])} training sample(s) where the median "
                          f"class has {median}: a mistake in the labels?", stacklevel=3)


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
    _warn_rare_classes(s, splits)
    if classes < 2:
        raise CompressError(f"{s.data}: the labels hold only one class; a classifier needs two or more")
    if classes > s.max_classes:
        raise CompressError(f"{s.data}: the largest label is {classes - 1}, so {classes:,} classes for "
                            f"{len(splits.train)} training samples ({seen.numel()} distinct labels); more than "
                            f"--max-classes {s.max_classes} is taken for a mistake in the labels (pass "
                            f"--max-classes {classes} if it is right)")
    return classes


from ..train.output import OUTPUTS_FILE  # noqa: E402  (the folder rules live in aecomp.train.output)

# what a run writes at the top of its folder (a folder written before outputs.json existed)
LAYOUT = ("report.json", "report.md", "accuracy_vs_bytes.png", "models", "checkpoints", "onnx", OUTPUTS_FILE)


def output_folder(out, overwrite: bool):
    """``aecomp.train.output.run_folder`` with this pipeline's layout; a folder that cannot be used
    is a :class:`CompressError` (one line, before anything runs)."""
    from ..train.output import run_folder

    return run_folder(out, overwrite, LAYOUT, "aecomp compress", "report.json", error=CompressError)


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


# ---------------------------------------------------------------------------------------- one repeat
def early_stopping_split(train: data_mod.Dataset, fraction: float,
                         seed: int) -> Tuple[data_mod.Dataset, Optional[data_mod.Dataset]]:
    """``(fit, stop)``: a stratified ``fraction`` of the training split held out to pick each
    classifier's best epoch (``protocol.holdout``), the rest to fit on; ``fraction = 0``: fit on
    all of it and keep the last epoch. The validation split is never used to fit or stop a model,
    so its accuracies rank models without the optimism of a best-epoch pick."""
    import dataclasses

    if fraction <= 0 or train.y is None:
        return train, None
    keep, held = protocol.holdout(train.y, len(train), fraction, seed)
    if len(held) == 0 or len(keep) == 0:
        return train, None
    part = lambda idx, name: dataclasses.replace(train, x=train.x[idx], y=train.y[idx], split=name)  # noqa: E731
    return part(keep, "train-fit"), part(held, "train-stop")


def _predict(runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """The predicted class of every row of ``x`` (``argmax`` of the logits), in batches."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(runner(x[i:i + batch]).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class Recorder:
    """One repeat: its splits, the folder its files go to, and what it measured.

    Every classifier row goes through :meth:`classifier_file` / :meth:`coded_file`: the model is
    written to its file, loaded back the way a user runs that file (int8 and shared-weight files
    on the packed path, ``aecomp.compress.packed``; float32 files in float), and scored once on
    the validation split and once on the test split. The per-image results become a
    ``protocol.Evaluation`` (``evaluations``), the row a dict (``rows``). ``detailed`` (repeat 0)
    also times each file, writes checkpoints, and keeps the files where the report names them.
    """

    def __init__(self, settings: CompressSettings, splits: data_mod.Splits, repeat: int, folder: Path, *,
                 classes: int, detailed: bool, progress: Callable[[str], None] = lambda name: None) -> None:
        self.s = settings
        self.splits = splits
        self.fit_data, self.stop_data = early_stopping_split(splits.train, settings.early_stopping,
                                                             protocol.repeat_seed(settings.seed, repeat))
        self.repeat = repeat
        self.folder = Path(folder)
        self.classes = classes
        self.detailed = detailed
        self.progress = progress
        self.rows: List[Dict[str, Any]] = []
        self.evaluations: List[protocol.Evaluation] = []
        self.timings: Dict[str, float] = {}
        self.exports: Dict[str, nn.Module] = {}  # trained classifiers to export as ONNX (repeat 0)
        self.autoencoder: Optional[nn.Module] = None
        self.onnx: List[Dict[str, Any]] = []
        self.onnx_note: Optional[str] = None
        # what a user brings in place of what default_families trains (aecomp.compress.bring_your_own):
        self.base: Optional[nn.Module] = None  # a trained classifier: the baseline, not retrained
        self.pretrained: Optional[nn.Module] = None  # a pretrained autoencoder: not trained here
        self.pretrain_x: Optional[torch.Tensor] = None  # images for PCA and the autoencoders (default: train's)
        self.notes: List[str] = []  # lines for the report

    @property
    def seed(self) -> int:
        return protocol.repeat_seed(self.s.seed, self.repeat)

    @property
    def fit_kw(self) -> Dict[str, Any]:
        """``fit_classifier``'s shared options: the early-stopping part of the training split
        (best epoch; never the validation split), batch, seed. Classifiers fit on ``fit_data``."""
        st = self.stop_data
        return dict(x_val=st.x if st is not None else None, y_val=st.y if st is not None else None,
                    batch_size=self.s.batch_size, seed=self.seed)

    def timed(self, key: str, t: float) -> None:
        self.timings[key] = round(time.perf_counter() - t, 3)

    # ------------------------------------------------------------------ measuring
    def _record(self, row: Dict[str, Any], runner: Callable[[torch.Tensor], torch.Tensor]) -> Dict[str, Any]:
        va, te = self.splits.val, self.splits.test
        val = (_predict(runner, va.x) == va.y).numpy()
        test = (_predict(runner, te.x) == te.y).numpy()  # the one time this model meets the test split
        row["val_accuracy"] = 100.0 * float(val.mean())
        row["accuracy"] = 100.0 * float(test.mean())
        row["repeat"] = self.repeat
        self.evaluations.append(protocol.Evaluation(row["name"], self.repeat, int(row["bytes"]), val, test))
        self.rows.append(row)
        self.progress(row["name"])
        return row

    def _latency(self, fn) -> Tuple[Optional[float], Optional[float]]:
        if not self.detailed:
            return None, None
        x = self.splits.test.x
        x256 = x[torch.arange(256) % x.shape[0]].contiguous()
        reps = self.s.latency_repeats
        return (measure_latency(fn, x[:1].contiguous(), repeats=reps),
                measure_latency(fn, x256, repeats=max(reps // 4, 1)))

    def _runner(self, path: Path, float_model: Callable[[], nn.Module]):
        """What a user runs from ``path``: the packed model (int8 / shared-weight files), or the
        float32 model when the packed path does not hold the file's layout."""
        from .packed import load_packed_model

        try:
            packed = load_packed_model(path)  # its model(x) takes raw inputs; the splits are already scaled
            return packed.forward_scaled, "packed", packed.resident_bytes
        except ValueError:  # float32 files, and layouts the packed kernels do not hold
            return float_model(), "float32", None

    def classifier_file(self, name: str, model: nn.Module, *, family: str, description: str,
                        values: str = "float32", sparse: bool = False) -> Dict[str, Any]:
        """``model`` as a safetensors file (``storage.save_packed``), loaded back and scored."""
        path = self.folder / "models" / f"{name}.safetensors"
        nbytes = storage.save_packed(model, path, values=values, sparse=sparse, **_file_meta(self.splits))
        runner, runs_on, resident = (self._runner(path, lambda: storage.load_packed(path, backend=self.s.backend))
                                     if values == "int8" else (storage.load_packed(path, backend=self.s.backend),
                                                               "float32", None))
        # a dense file stores every parameter; a sparse one the nonzero weights (and all biases)
        layers = linear_layers(model)
        nonzero = sum((int((m.weight != 0).sum()) if sparse else m.weight.numel())
                      + (m.bias.numel() if m.bias is not None else 0) for m in layers)
        b1, b256 = self._latency(runner)
        row = {"name": name, "family": family, "description": description, "params": nonzero, "bytes": nbytes,
               "recon_mse": None, "latency_ms_b1": b1, "latency_ms_b256": b256,
               "macs": storage.macs(model, sparse=sparse), "float32_bytes": storage.payload_bytes(model, "float32", sparse),
               "int8_bytes": storage.payload_bytes(model, "int8", sparse), "values": values,
               "storage": "sparse" if sparse else "dense", "runs_on": runs_on, "resident_bytes": resident,
               "file": str(path)}
        return self._record(row, runner)

    def coded_file(self, name: str, packed, model: nn.Module, *, family: str, description: str) -> Dict[str, Any]:
        """``packed`` (a ``share.PackedNet``) as an entropy-coded ``.aecc`` file, loaded back and scored."""
        from . import coding

        path = self.folder / "models" / f"{name}.aecc"
        nbytes = coding.save_coded(packed, path, **_file_meta(self.splits))
        runner, runs_on, resident = self._runner(path, lambda: coding.load_coded(path).to_model(backend=self.s.backend))
        sparse = any(layer.mask is not None for layer in packed.layers)
        bits = sorted({getattr(layer, "bits", 8) for layer in packed.layers})
        b1, b256 = self._latency(runner)
        row = {"name": name, "family": family, "description": description,
               "params": packed.nnz() + sum(la.bias.numel() for la in packed.layers if la.bias is not None),
               "bytes": nbytes, "recon_mse": None, "latency_ms_b1": b1, "latency_ms_b256": b256,
               "macs": packed.nnz() if sparse else sum(la.shape[0] * la.shape[1] for la in packed.layers),
               "float32_bytes": storage.payload_bytes(model, "float32", sparse),
               "int8_bytes": storage.payload_bytes(model, "int8", sparse),
               "values": "shared" if hasattr(packed.layers[0], "codebook") else "int8", "bits": bits,
               "storage": "coded-sparse" if sparse else "coded-dense", "runs_on": runs_on,
               "resident_bytes": resident, "file": str(path)}
        return self._record(row, runner)

    def float_file(self, name: str, module: nn.Module, tensors: Dict[str, torch.Tensor], *, family: str,
                   description: str, params: int, macs: int) -> Dict[str, Any]:
        """A float32 classifier stored as plain tensors (PCA + logistic regression)."""
        path = self.folder / "models" / f"{name}.safetensors"
        nbytes = storage.save_float32(tensors, path, **_file_meta(self.splits))
        b1, b256 = self._latency(module)
        row = {"name": name, "family": family, "description": description, "params": params, "bytes": nbytes,
               "recon_mse": None, "latency_ms_b1": b1, "latency_ms_b256": b256, "macs": macs,
               "float32_bytes": 4 * params, "int8_bytes": None, "values": "float32", "storage": "dense",
               "runs_on": "float32", "resident_bytes": None, "file": str(path)}
        return self._record(row, module)

    def autoencoder_row(self, name: str, description: str, ae: nn.Module) -> Dict[str, Any]:
        """A reconstruction row (no accuracy, so no evaluation): test reconstruction MSE."""
        path = self.folder / "models" / f"{name}.safetensors"
        nbytes = storage.save_float32(ae.state_dict(), path, config=ae.config, scaling=self.splits.preprocessing)
        b1, b256 = self._latency(ae)
        params = sum(p.numel() for p in ae.parameters())
        row = {"name": name, "family": "autoencoder", "description": description, "params": params,
               "bytes": nbytes, "accuracy": None, "val_accuracy": None, "repeat": self.repeat,
               "recon_mse": recon_mse(ae, self.splits.test.x), "val_recon_mse": recon_mse(ae, self.splits.val.x),
               "latency_ms_b1": b1, "latency_ms_b256": b256,
               "macs": sum(layer.weight.numel() for layer in ae.encoder.layers + ae.decoder.layers),
               "float32_bytes": 4 * params,
               "int8_bytes": storage.payload_bytes(ae.encoder, "int8") + storage.payload_bytes(ae.decoder, "int8"),
               "values": "float32", "storage": "dense", "runs_on": "float32", "file": str(path)}
        self.rows.append(row)
        self.progress(name)
        return row

    def checkpoint(self, name: str, model: nn.Module, step: int, metrics: Dict[str, Any]) -> Optional[Path]:
        """A training checkpoint (repeat 0 only: ``aecomp export`` reads these)."""
        from ..train.checkpoint import save_checkpoint

        if not self.detailed:
            return None
        state = {"model_config": classifier_config(model),
                 "run": {"settings": asdict(self.s), "data": self.splits.config, "repeat": self.repeat},
                 "metrics": metrics, "written_by": "aecomp compress", **_file_meta(self.splits, json_ready=True)}
        return save_checkpoint(self.folder / "checkpoints" / name, step, model_state=model.state_dict(), state=state,
                               keep=1)


def _what_trains(model: nn.Module) -> str:
    if isinstance(model, CompressedNet) and model.mode == "frozen":
        return "the head only (the encoder stays frozen)"
    return "every weight"


def compression_steps(rec: Recorder, family: str, model: nn.Module, *, description: str, sparsity: float,
                      distill=None) -> nn.Module:
    """Take a trained classifier (``CompressedNet`` or ``FusedMLP``) through the steps (module
    docstring), one row each, named ``<family><suffix>``; returns the pruned model. ``model`` is
    not modified. What retrains after pruning and in codebook fine-tuning is what ``model``
    trains (``requires_grad``): a frozen encoder never changes but for the prune/cluster steps."""
    from .share import choose_bits, finalize, finetune_codebooks, int8_model, share_model, trainable_layers

    s, tr = rec.s, rec.fit_data
    what = _what_trains(model)
    rec.classifier_file(family, model, family=family, description=f"{description}; float32 file")
    rec.classifier_file(f"{family}-int8", model, family=family, description=f"{description}; int8 per channel",
                        values="int8")
    rec.coded_file(f"{family}-int8-coded", finalize(int8_model(model)), model, family=family,
                   description=f"{description}; int8 per channel, entropy-coded")
    rec.coded_file(f"{family}-shared8", finalize(share_model(model, 8, pruned=False)), model, family=family,
                   description=f"{description}; 8-bit shared weights (k-means, not fine-tuned), entropy-coded")
    tag = f"pruned{int(round(sparsity * 100))}"
    t = time.perf_counter()
    pruned = prune_and_retrain(model, sparsity, tr.x, tr.y, epochs=s.prune_epochs, lr=s.prune_lr, distill=distill,
                               fold=s.fold_inputs, **rec.fit_kw)
    rec.timed(f"{family}-{tag}", t)
    first = linear_layers(pruned)[0].weight
    inputs = (f"the {int((first != 0).any(0).sum())} of {first.shape[1]} input columns that span the training "
              f"inputs kept, the others folded into them; " if s.fold_inputs else "")
    layers = linear_layers(pruned)
    kept = sum(int((m.weight != 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    pdesc = (f"{description}; {inputs}each layer pruned by magnitude to at least {sparsity:.0%} sparsity "
             f"({kept:,} of {total:,} weights kept), {what} retrained")
    rec.classifier_file(f"{family}-{tag}", pruned, family=family, description=f"{pdesc}; sparse float32",
                        sparse=True)
    rec.classifier_file(f"{family}-{tag}-int8", pruned, family=family, description=f"{pdesc}; sparse int8",
                        values="int8", sparse=True)
    rec.coded_file(f"{family}-{tag}-int8-coded", finalize(int8_model(pruned)), pruned, family=family,
                   description=f"{pdesc}; int8, entropy-coded")
    trainable = trainable_layers(model)
    for b in s.bits:
        t = time.perf_counter()
        tuned = finetune_codebooks(share_model(pruned, b, pruned=True), tr.x, tr.y, epochs=s.share_epochs,
                                   lr=s.share_lr, backend=s.backend, distill=distill, trainable=trainable,
                                   **rec.fit_kw)
        rec.timed(f"{family}-{tag}-shared{b}", t)
        rec.coded_file(f"{family}-{tag}-shared{b}", tuned, pruned, family=family,
                       description=f"{pdesc}; {b}-bit shared weights, codebooks of {what} fine-tuned, entropy-coded")
    if s.mixed_bits:
        # per-layer widths: each layer's fewest bits that cost <= bits_tolerance points on the training split
        t = time.perf_counter()
        widths = choose_bits(pruned, rec.splits.train.x, rec.splits.train.y, s.bits_tolerance, pruned=True)
        tuned = finetune_codebooks(share_model(pruned, widths, pruned=True), tr.x, tr.y, epochs=s.share_epochs,
                                   lr=s.share_lr, backend=s.backend, distill=distill, trainable=trainable,
                                   **rec.fit_kw)
        rec.timed(f"{family}-{tag}-sharedmix", t)
        row = rec.coded_file(f"{family}-{tag}-sharedmix", tuned, pruned, family=family,
                             description=f"{pdesc}; per-layer shared weights of {'/'.join(map(str, widths))} bits "
                                         f"(each layer's fewest bits within {s.bits_tolerance:g} points of the "
                                         f"float32 net on the training split), codebooks of {what} fine-tuned, "
                                         f"entropy-coded")
        row["bits"] = widths
    return pruned


def steps_per_family(s: CompressSettings) -> int:
    """Rows :func:`compression_steps` adds for one family."""
    return 7 + len(s.bits) + int(s.mixed_bits)


# ---------------------------------------------------------------------------------------- the families
def _train_mode(s: CompressSettings, seed: int, mode: str, ae: nn.Module, base: nn.Module, classes: int,
                frozen: Optional[CompressedNet], tr: data_mod.Dataset,
                fit_kw: Dict[str, Any]) -> Tuple[CompressedNet, Dict[str, Any]]:
    """A CompressedNet trained in ``mode`` (``finetune`` starts from ``frozen`` when given)."""
    torch.manual_seed(seed + 1)
    if mode == "replace":
        net = CompressedNet.from_autoencoder(ae, classes, mode="replace", head_hidden=tuple(base.dims[2:-1]),
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


MODE_TRAINS = {"replace": "encoder and head K-100-C trained together from the autoencoder's encoder",
               "frozen": "the autoencoder's encoder frozen, only the head K -> C trained",
               "finetune": "the frozen net's head, then encoder and head trained together"}


def default_families(rec: Recorder) -> None:
    """Everything ``aecomp compress`` trains in one repeat (module docstring)."""
    s, (tr, va, te), classes = rec.s, rec.splits, rec.classes
    features = tr.features
    fit_kw = rec.fit_kw
    ft = rec.fit_data  # what the classifiers fit on (the training split less its early-stopping part)

    # the uncompressed baseline (or the user's own classifier, rec.base) ------------------------------
    t = time.perf_counter()
    torch.manual_seed(rec.seed)
    if rec.base is not None:
        base, fit = rec.base, {"epochs": 0, "note": "the user's model, not retrained"}
        what = f"your model ({'-'.join(map(str, base.dims))}), as given"
    else:
        base = lenet_300_100(features, classes, backend=s.backend)
        fit = fit_classifier(base, ft.x, ft.y, epochs=s.epochs, lr=s.lr, **fit_kw)
        what = f"LeNet-300-100 ({'-'.join(map(str, base.dims))}), trained from random initialisation"
    rec.timed("baseline", t)
    rec.checkpoint("baseline", base, s.epochs, fit)
    compression_steps(rec, "baseline", base, sparsity=s.sparsity, description=what)
    unlabeled = rec.pretrain_x if rec.pretrain_x is not None else tr.x  # what the unsupervised steps see

    # PCA + logistic regression ---------------------------------------------------------------
    t = time.perf_counter()
    pca = PCABaseline.fit(tr.x, tr.y, s.latent, seed=rec.seed, x_fit=unlabeled)
    pca_mod = pca.to_module(classes)
    rec.timed("pca", t)
    k = s.latent
    row = rec.float_file(f"pca-{k}", pca_mod, dict(pca_mod.named_buffers()), family="pca",
                         description=f"PCA, {k} components + logistic regression (scikit-learn); float32 file",
                         params=pca_mod.num_params, macs=pca_mod.macs)
    row["recon_mse"] = pca.recon_mse(te.x)

    # the autoencoders ------------------------------------------------------------------------
    ae_kw = dict(epochs=s.ae_epochs, lr=s.ae_lr, batch_size=s.batch_size, seed=rec.seed)
    t = time.perf_counter()
    torch.manual_seed(rec.seed)
    lin = linear_autoencoder(features, s.latent, backend=s.backend)
    fit_autoencoder(lin, unlabeled, va, **ae_kw)
    rec.timed("autoencoder_linear", t)
    rec.autoencoder_row("autoencoder-linear", f"linear autoencoder {features}-{s.latent}-{features} "
                                              f"(no activations)", lin)
    from ..models import Autoencoder

    t = time.perf_counter()
    torch.manual_seed(rec.seed)
    if rec.pretrained is not None:
        ae, steps = rec.pretrained, 0
        dims = list(ae.encoder.dims)
    else:
        dims = encoder_dims(s, features)
        ae = Autoencoder(dims, output="sigmoid" if tr.unit_range else "none", backend=s.backend)
        steps = fit_autoencoder(ae, unlabeled, va, **ae_kw)
    rec.timed("autoencoder", t)
    rec.checkpoint("autoencoder", ae, steps, {"test_recon_mse": recon_mse(ae, te.x)})
    rec.autoencoder_row("autoencoder", f"autoencoder {'-'.join(map(str, dims))}-...-{features}"
                        + (" (pretrained, not trained here)" if rec.pretrained is not None else ""), ae)
    rec.autoencoder = ae
    arch = f"encoder {'-'.join(map(str, dims))} + head {s.latent}-{classes}"

    # right-sized baseline: logistic regression on the inputs -----------------------------------
    if s.baselines:
        from ..nn import FusedMLP

        t = time.perf_counter()
        torch.manual_seed(rec.seed + 2)
        logreg = FusedMLP([features, classes], ["none"], backend=s.backend)
        fit = fit_classifier(logreg, ft.x, ft.y, epochs=s.epochs, lr=s.head_lr, **fit_kw)
        rec.timed("logreg", t)
        rec.checkpoint("logreg", logreg, s.epochs, fit)
        compression_steps(rec, "logreg", logreg, sparsity=s.sparsity_compressed,
                          description=f"logistic regression on the {features} inputs ({features}-{classes}), "
                                      f"trained from random initialisation")

    # the compressed nets, and the same distilled from the baseline ------------------------------
    from .distill import Distill

    kd = Distill(base, temperature=s.temperature, alpha=s.alpha) if s.distill else None
    for teacher in ([None, kd] if kd is not None else [None]):
        frozen: Optional[CompressedNet] = None
        for mode in sorted(s.modes(), key=("frozen", "finetune", "replace").index):
            name = f"compressed-{mode}" + ("-kd" if teacher is not None else "")
            t = time.perf_counter()
            net, fit = _train_mode(s, rec.seed, mode, ae, base, classes, frozen, ft, dict(fit_kw, distill=teacher))
            frozen = net if mode == "frozen" else frozen
            rec.timed(name, t)
            rec.checkpoint(name, net, s.epochs, fit)
            if teacher is None:
                rec.exports[name] = net
            how = MODE_TRAINS[mode] + (f", distilled from the baseline (T={s.temperature:g}, alpha={s.alpha:g})"
                                       if teacher is not None else "")
            compression_steps(rec, name, net, sparsity=s.sparsity_compressed, distill=teacher,
                              description=f"CompressedNet {'-'.join(map(str, net.encoder.dims))} + head "
                                          f"{'-'.join(map(str, net.head.dims))}: {how}")

    # right-sized baseline: the CompressedNet architecture from random initialisation ------------
    if s.baselines:
        from ..nn import FusedMLP

        t = time.perf_counter()
        torch.manual_seed(rec.seed + 3)
        enc = FusedMLP(dims, ["relu"] * (len(dims) - 2) + ["none"], backend=s.backend)
        scratch = CompressedNet(enc, num_classes=classes, mode="finetune", backend=s.backend)
        fit = fit_classifier(scratch, ft.x, ft.y, epochs=2 * s.epochs, lr=s.lr, **fit_kw)
        rec.timed("scratch", t)
        rec.checkpoint("scratch", scratch, 2 * s.epochs, fit)
        compression_steps(rec, "scratch", scratch, sparsity=s.sparsity_compressed,
                          description=f"{arch}, every weight trained from random initialisation ({2 * s.epochs} "
                                      f"epochs at lr {s.lr:g}; no autoencoder)")

    # ONNX (the shipped files only) ------------------------------------------------------------
    if s.export and rec.detailed:
        t = time.perf_counter()
        rec.onnx, rec.onnx_note = export_all(rec.folder / "onnx", rec.exports, ae, te.x, **_file_meta(rec.splits))
        rec.timed("onnx", t)


def default_rows(s: CompressSettings) -> int:
    """Rows :func:`default_families` adds per repeat."""
    nets = 1 + len(s.modes()) * (2 if s.distill else 1) + (2 if s.baselines else 0)
    return nets * steps_per_family(s) + 1 + 2


# ---------------------------------------------------------------------------------------- the run
def run_repeats(settings: CompressSettings, one_repeat: Callable[[Recorder], None],
                log: Optional[Callable[[str], None]] = None, *, baseline: str = "baseline",
                rows_per_repeat: Optional[int] = None) -> Dict[str, Any]:
    """Run ``one_repeat(recorder)`` once per repeat (module docstring), then write the report.

    ``one_repeat`` trains and records the models of one repeat through the :class:`Recorder`
    (``rec.splits``, ``rec.seed``, :func:`compression_steps`); one of its rows must be named
    ``baseline`` (every gap is to it). ``log`` gets one line per finished step (default: none; a
    progress bar on a terminal). Returns ``{"rows", "stats", "recommendation", "paths", "report",
    "files", "seconds"}``.
    """
    s = settings
    _check(s)
    log = log or (lambda msg: None)
    splits = load_labeled(s)
    classes = check_labels(s, splits)
    _check_sizes(s, splits.train.features, classes)
    with output_folder(s.out, s.overwrite) as out:
        result = _run(s, out, splits, classes, one_repeat, log, baseline, rows_per_repeat)
    result["files"] = sorted(p for p in out.rglob("*") if p.is_file() and p.name != ".aecomp.lock")
    return result


def run_compression(settings: CompressSettings, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """The whole job of ``aecomp compress``: :func:`default_families` in every repeat, then the report."""
    return run_repeats(settings, default_families, log, rows_per_repeat=default_rows(settings))


def _progress_bar(total: Optional[int]):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="aecomp compress", unit="model", disable=None, leave=False, file=sys.stderr)


def _run(s: CompressSettings, out: Path, splits: data_mod.Splits, classes: int, one_repeat: Callable[[Recorder], None],
         log: Callable[[str], None], baseline: str, rows_per_repeat: Optional[int]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    tr, va, te = splits
    log(f"data {splits.spec}: {len(tr)} train / {len(va)} val / {len(te)} test, {tr.features} features, "
        f"{classes} classes; {s.repeats} repeat(s)")
    log(f"input scaling {splits.preprocessing.describe()}" + ("" if splits.label_map is None else
        f"; labels {', '.join(map(str, splits.label_map))} are classes 0..{classes - 1}"))
    bar = _progress_bar(rows_per_repeat * s.repeats if rows_per_repeat else None)
    recs: List[Recorder] = []
    try:
        for r in range(s.repeats):
            sp = splits if r == 0 else load_labeled(s, r)
            if r > 0 and check_labels(s, sp) != classes:
                raise CompressError(f"{s.data}: repeat {r} sees a different number of classes; the labels are too "
                                    f"few per class for {s.repeats} repeats")
            folder = out if r == 0 else Path(tempfile.mkdtemp(prefix=f"aecomp-repeat{r}-"))

            def progress(name: str, r: int = r) -> None:
                bar.set_postfix_str(f"repeat {r + 1}/{s.repeats}: {name}", refresh=False)
                bar.update()
                log(f"[{time.perf_counter() - t0:6.1f}s] repeat {r + 1}/{s.repeats}: {name}")

            rec = Recorder(s, sp, r, folder, classes=classes, detailed=r == 0, progress=progress)
            try:
                one_repeat(rec)
            finally:
                if r > 0:
                    shutil.rmtree(folder, ignore_errors=True)
            recs.append(rec)
    finally:
        bar.close()
    evaluations = [e for rec in recs for e in rec.evaluations]
    stats = protocol.summarize(evaluations, baseline)
    report = _write_report(s, out, recs, stats, evaluations, baseline, classes, time.perf_counter() - t0)
    return {"rows": report["doc"]["models"], "stats": stats, "recommendation": report["recommendation"],
            "paths": report["paths"], "report": report["doc"], "answer": report["answer"],
            "seconds": time.perf_counter() - t0}


def _write_report(s: CompressSettings, out: Path, recs: List[Recorder], stats: Dict[str, protocol.RowStats],
                  evaluations: List[protocol.Evaluation], baseline: str, classes: int,
                  seconds: float) -> Dict[str, Any]:
    """Choose on validation (protocol), then write report.json / report.md / the plot."""
    from .report import answer_lines

    first = recs[0]
    tr, va, te = first.splits
    family = {row["name"]: row.get("family", row["name"]) for row in first.rows}
    rows = []
    for row in first.rows:
        row = dict(row)
        if row["name"] in stats:
            row["over_repeats"] = stats[row["name"]].to_dict()
        elif row.get("recon_mse") is not None:
            vals = [r2["recon_mse"] for rec in recs for r2 in rec.rows if r2["name"] == row["name"]]
            row["over_repeats"] = {"recon_mse": protocol.spread(vals).to_dict()}
        rows.append(row)
    chance = protocol.chance_accuracy(tr.y)
    rec = protocol.smallest_within(stats.values(), baseline, s.points, chance=chance, n_val=len(va))
    front = protocol.frontier(stats.values(), lambda n: family.get(n, n))
    # which mode / distillation setting is best, on validation (float32 nets of each CompressedNet family)
    nets = [stats[f] for f in dict.fromkeys(family.values()) if f.startswith("compressed-") and f in stats]
    best_net = protocol.best_on_validation(nets).name if nets else None
    comparisons = _ae_vs_random(evaluations, stats)
    is_mnist = data_mod.resolve_spec(s.data).startswith("mnist")
    published = [DEEP_COMPRESSION_LENET_300_100] if is_mnist else []
    published_note = None if is_mnist else (
        f"The published Deep Compression point (LeNet-300-100 on MNIST, 40x) is not drawn: this run's data is "
        f"{tr.spec}, not MNIST, so neither its accuracies nor its sizes compare with it.")
    dup = protocol.shared_rows(tr.x, te.x)
    notes = [
        f"Protocol: {s.repeats} repeat(s), seeds {', '.join(str(protocol.repeat_seed(s.seed, r)) for r in range(s.repeats))};"
        f" each a new stratified split of {tr.spec} ({len(tr)} train / {len(va)} validation / {len(te)} test samples"
        f"{'; the test set is the data set' + chr(39) + 's own and stays' if tr.spec.startswith('mnist') else ''}) "
        f"and new initialisations. Every choice (mode, distillation, frontier, recommendation) uses validation "
        f"accuracy only; test accuracy is measured once per model and only reported. Classifiers fit on the "
        f"training split less {s.early_stopping:.0%} of it (stratified), which picks each one's best epoch: the "
        f"validation split never fits or stops a model.",
        f"{len(stats)} models were compared (one validation image = {100 / len(va):.2f} points, one test image = "
        f"{100 / len(te):.2f} points); chance (always the most frequent training class) is {chance:.1f}%.",
        "Gaps to the baseline: paired over the same images within a repeat, combined over the repeats; the 95% "
        "interval is mean +- t(R-1) * sqrt(max(between-repeat variance, mean within-repeat paired variance) / R) "
        "(aecomp.compress.protocol).",
        "Accuracy is that of what each file runs: int8 and shared-weight files on the packed path "
        "(aecomp.compress.packed: int8 layers with dynamic int8 activations), float32 files in float32 "
        "(`runs_on`).",
        "bytes = size of the file that holds the model (models/<name>.safetensors or .aecc, repeat 0); ratio = the "
        "baseline's bytes / the model's; int8 files hold int8 weights + per-channel float32 scales; sparse files "
        "the nonzero weights (CSR or bitmask); .aecc files entropy-code codes and kept positions per stream "
        "(smallest of fixed-width, Huffman, lzma, deflate), biases float16, CRC-32.",
        f"Test images that equal a training image exactly (repeat 0): {dup} of {len(te)}.",
        "Latency (repeat 0): median of single-threaded forward passes (torch.set_num_threads(1)) at batch 1 and 256.",
        f"Input scaling (repeat 0, fitted on its training split, recorded with the label map in every model file, "
        f"checkpoint and this report; load_packed_model and the ONNX files apply it to raw inputs): "
        f"{tr.preprocessing.describe()}" + ("" if tr.label_map is None else
                                            f"; labels {', '.join(map(str, tr.label_map))} are classes 0..k-1") + ".",
    ]
    if first.onnx_note:
        notes.append(first.onnx_note)
    notes += first.notes
    extra = {"settings": asdict(s), "classes": classes, "features": tr.features,
             "samples": {"train": len(tr), "val": len(va), "test": len(te)}, "onnx": first.onnx,
             "timings_s": first.timings, "torch_threads": torch.get_num_threads(), "seconds": round(seconds, 1),
             "chance_accuracy": chance, "test_images_equal_to_training": dup,
             "best_compressed_on_validation": best_net, **_file_meta(first.splits, json_ready=True)}
    paths, doc = compress_report(rows, stats, out, dataset=tr.spec, latent=s.latent, baseline=baseline,
                                 recommendation=rec, frontier=front, comparisons=comparisons,
                                 published=published, published_note=published_note, notes=notes, extra=extra)
    return {"paths": paths, "doc": doc, "recommendation": rec, "answer": answer_lines(doc)}


def _ae_vs_random(evaluations: List[protocol.Evaluation], stats: Dict[str, protocol.RowStats]) -> List[Dict[str, Any]]:
    """The autoencoder's contribution at equal architecture and step: ``compressed-finetune<X>``
    (autoencoder-initialised; ``compressed-frozen<X>`` when finetune was not run) minus
    ``scratch<X>`` (random initialisation), paired per repeat."""
    fam = next((f"compressed-{m}" for m in ("finetune", "frozen") if f"compressed-{m}" in stats), None)
    out: List[Dict[str, Any]] = []
    for name in stats if fam else ():
        if not name.startswith("scratch"):
            continue
        suffix = name[len("scratch"):]
        ae = f"{fam}{suffix}"
        if ae not in stats:
            continue
        val, test = protocol.paired_comparison(evaluations, ae, name)
        out.append({"step": suffix or "(float32)", "autoencoder": ae, "random_init": name,
                    "bytes_autoencoder": stats[ae].bytes.mean, "bytes_random_init": stats[name].bytes.mean,
                    "val_gap": val.to_dict(), "test_gap": test.to_dict()})
    return out


def _file_meta(splits: data_mod.Splits, json_ready: bool = False) -> Dict[str, Any]:
    """The input scaling and label map every model file, checkpoint and report records (issue 23)."""
    if json_ready:
        labels = None if splits.label_map is None else list(splits.label_map)
        return {"input_scaling": splits.preprocessing.to_dict(), "labels": labels}
    return {"scaling": splits.preprocessing, "labels": splits.label_map}


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
