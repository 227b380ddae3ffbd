"""The training loop: :class:`Trainer` with ``fit``, ``evaluate`` and ``predict``.

One step on a batch ``x`` of ``n`` samples (the plain step, :class:`PlainStep`)::

    zero grads -> L = model.loss(x) (under bf16 autocast if asked) -> dL/dtheta -> Adam

Adam (``fused=True`` where torch has a fused kernel for the device) with
``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
``theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.

A step object with ``step(batch) -> loss`` can replace the plain step (``step_fn``): by default
the Trainer uses ``aecomp.train.FusedStep(model, optimizer)`` when that class exists and
supports the model (its ``supports(model)`` returns True and its constructor does not raise
``NotImplementedError``), else :class:`PlainStep`.

Precision: ``precision="fp32"`` (default) or ``"bf16"`` (``bf16=True`` is the same). On the CPU,
bf16 runs the fused step's GEMMs in bfloat16 on the matrix engine (``FusedStep(...,
precision="bf16")``: float32 master weights and Adam state, see aecomp/train/fused.py); a model
the fused step does not take trains under ``torch.autocast("cpu", bfloat16)``. On CUDA, bf16 is
autocast. ``trainer.compute_precision`` says what ran (``"fp32"`` where no bf16 engine is
available). Checkpoints hold the float32 weights either way, so a run resumes and exports the
same at any precision.

Data: the training split lives whole on the device; batches come from
:class:`aecomp.data.InMemoryLoader` (a seeded permutation per epoch, one ``index_select`` per
batch). Samples are reshaped once to the model's ``input_shape`` and cast once to the dtype of the
model's parameters (float64 data from numpy trains a float32 model; a ``model.double()`` takes
float64). A model with a sigmoid output (``config["output"] == "sigmoid"``) given targets outside
[0, 1] trains towards values it can never reach: ``fit`` warns once per split, with the range.

Metrics, per epoch, appended as one JSON line to ``<out_dir>/metrics.jsonl`` (rank 0):
``epoch`` (1-based), ``step``, ``train_loss`` (sample-weighted mean of the batch losses of the
epoch), ``val_loss`` (the model's loss on the validation split), ``val_mse``
(``sum (x_hat - x)^2 / numel``), ``val_psnr`` (``10 log10(1 / val_mse)``, for data in [0, 1],
else null), ``seconds`` (wall time of the epoch, evaluation included), ``train_seconds``,
``samples_per_s`` (training samples over all ranks / ``train_seconds``), ``lr``, ``time``.

Early stopping: after ``patience`` epochs in a row whose validation loss is not below the
best so far minus ``min_delta``, training stops; ``patience`` without validation data is an error.

Checkpoints (``aecomp.train.checkpoint``) go to ``<out_dir>/checkpoints`` at the end of every
epoch and, with ``checkpoint_every=K``, after every K-th optimizer step inside an epoch; the
newest ``keep_checkpoints`` (2) are kept. A checkpoint holds the weights, the optimizer state,
the loader position and generator state, every rank's RNG state, the early-stopping state and
the partial sums of the epoch's metrics, so ``fit(..., resume=True)`` continues exactly where the
checkpoint was taken: on the CPU with a fixed seed, a run killed at any point and resumed ends
with bit-identical weights to an uninterrupted run.

A NaN or infinite loss stops training with :class:`NonFiniteLossError`. The loss is checked
after every step on a single-process CPU run, every ``check_every`` steps otherwise (a
device-to-host sync), and always before a checkpoint is written, so no checkpoint ever holds
weights from after a non-finite loss.

Layout: the loop (this module), evaluation and prediction (``_evaluation.py``) and the checkpoint
glue, what a checkpoint holds and how a run is rebuilt from it (``_checkpointing.py``), each a
mixin of :class:`Trainer`.

Test hook: with the environment variable ``AECOMP_TEST_KILL_AFTER_STEP=N`` the process sends
itself SIGKILL right after optimizer step N (and after the checkpoint of that step, if one is
due), to test resuming from a hard kill.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn

from .. import data as data_mod
from . import checkpoint as ckpt_mod
from . import distributed as dist_mod
from ._checkpointing import STATE_FORMAT, CheckpointingMixin  # noqa: F401  (STATE_FORMAT: kept importable here)
from ._evaluation import DataLike, EvaluationMixin

__all__ = ["FitResult", "NonFiniteLossError", "PlainStep", "Trainer", "KILL_ENV"]

KILL_ENV = "AECOMP_TEST_KILL_AFTER_STEP"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped."""


@dataclass
class FitResult:
    history: List[Dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    epochs_completed: int = 0
    best_val_loss: Optional[float] = None
    best_epoch: Optional[int] = None
    stopped_early: bool = False
    checkpoint: Optional[Path] = None
    step_kind: str = "plain"


class PlainStep:
    """``zero_grad -> loss_fn(batch) [* weight] -> backward -> optimizer.step``; returns the detached loss.

    ``weight`` scales the loss before backward only (the returned loss is unscaled); the
    distributed path uses it to make shard gradients average to the global-batch gradient.
    """

    kind = "plain"

    def __init__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 autocast_dtype: Optional[torch.dtype] = None, device_type: str = "cpu") -> None:
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.autocast_dtype = autocast_dtype
        self.device_type = device_type

    def step(self, batch: torch.Tensor, weight: Optional[float] = None) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                loss = self.loss_fn(batch)
        else:
            loss = self.loss_fn(batch)
        (loss if weight is None else loss * weight).backward()
        self.optimizer.step()
        return loss.detach()


def _finite_or_none(v: Optional[float]) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else v


class Trainer(CheckpointingMixin, EvaluationMixin):
    """Trains an autoencoder (any ``nn.Module`` with ``loss(batch)`` and ``forward`` = reconstruction).

    Arguments: ``epochs``, ``batch_size`` (the global batch: split across processes under
    torchrun), ``lr``, ``weight_decay`` (Adam), ``seed`` (batch order, RNG), ``device``
    (``None``: CUDA if available), ``precision`` (``"fp32"`` | ``"bf16"``, see the module docstring;
    ``bf16=True`` is ``precision="bf16"``), ``patience`` / ``min_delta``
    (early stopping on validation loss), ``out_dir`` (metrics.jsonl and checkpoints; ``None``
    writes nothing), ``checkpoint_every`` (also checkpoint every K steps), ``keep_checkpoints``,
    ``progress`` (tqdm bar; ``None``: only when stderr is a terminal), ``step_fn`` (``"auto"``,
    ``"plain"``, or a factory ``(model, optimizer) -> object with step(batch)``),
    ``eval_batch_size``, ``run_config`` (JSON stored in checkpoints, e.g. the command line),
    ``log`` (callable for one-line messages; default: stderr on rank 0).

    The model is initialised by the caller: seed torch (``torch.manual_seed``) before building
    it for a reproducible run. Under torchrun, call ``aecomp.train.distributed.init()`` before
    making the Trainer: it takes its rank, world size and device from the process group.
    """

    def __init__(self, model: nn.Module, *, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
                 weight_decay: float = 0.0, seed: int = 0, device: Union[str, torch.device, None] = None,
                 bf16: bool = False, precision: str = "fp32", patience: Optional[int] = None,
                 min_delta: float = 0.0,
                 out_dir: Union[str, os.PathLike, None] = None, checkpoint_every: Optional[int] = None,
                 keep_checkpoints: int = 2, progress: Optional[bool] = None, step_fn: Any = "auto",
                 eval_batch_size: Optional[int] = None, check_every: Optional[int] = None,
                 run_config: Optional[Dict[str, Any]] = None,
                 log: Optional[Callable[[str], None]] = None) -> None:
        if not hasattr(model, "loss"):
            raise TypeError(f"Trainer: the model ({type(model).__name__}) has no loss(batch) method")
        for name, v, lo in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("keep_checkpoints", keep_checkpoints, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"Trainer: {name} must be an integer >= {lo}, got {v!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"Trainer: lr must be a positive number, got {lr!r}")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"Trainer: patience must be a positive integer or None, got {patience!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"Trainer: checkpoint_every must be a positive integer or None, got {checkpoint_every!r}")
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.dist = dist_mod.current()
        self.device = dist_mod.device_for(self.dist, device)
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"Trainer: precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = "bf16" if bf16 else precision
        self.bf16 = self.precision == "bf16"
        self.compute_precision = self.precision
        self.patience = patience
        self.min_delta = float(min_delta)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        if progress is None:
            progress = sys.stderr.isatty()
        self.progress = bool(progress) and self.dist.is_main
        self.step_fn = step_fn
        self.eval_batch_size = eval_batch_size or max(1024, batch_size)
        if check_every is None:
            check_every = 1 if (self.device.type == "cpu" and not self.dist.enabled) else 16
        self.check_every = int(check_every)
        self.run_config = dict(run_config or {})
        self._log = log
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.step_kind = "plain"
        self.last_checkpoint: Optional[Path] = None

    # ---------------------------------------------------------------------------------------
    # helpers

    def log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self._log is not None:
            self._log(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    @property
    def checkpoint_root(self) -> Optional[Path]:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    @property
    def metrics_path(self) -> Optional[Path]:
        return self.out_dir / "metrics.jsonl" if self.out_dir is not None else None

    def _samples(self, data: DataLike, what: str) -> torch.Tensor:
        """``data`` as a float tensor ``[n, *model.input_shape]`` (a view when possible)."""
        if isinstance(data, data_mod.Splits):
            raise TypeError(f"Trainer: {what} must be one split (e.g. splits.train), not the Splits of a load()")
        x = data.x if isinstance(data, data_mod.Dataset) else data
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        if x.dtype != dtype:
            x = x.to(dtype)  # float64 numpy data and a float32 model: train in the model's dtype
        shape = getattr(self.model, "input_shape", None)
        if shape is None:
            return x
        shape = tuple(-1 if s is None else int(s) for s in shape)  # None: any size (a time axis)
        known = math.prod(s for s in shape if s != -1)
        have = math.prod(x.shape[1:]) if x.dim() > 1 else 0
        fits = have > 0 and (have == known if -1 not in shape else have % known == 0)
        if not fits:
            want = "x".join("*" if s == -1 else str(s) for s in shape)
            raise ValueError(f"Trainer: the model takes samples of shape {want} ({known} values"
                             f"{' times any length' if -1 in shape else ''}) but the {what} data has {have} "
                             f"values per sample (shape {tuple(x.shape)})")
        return x.reshape(x.shape[0], *shape)

    def _warn_outside_sigmoid(self, x: torch.Tensor, what: str) -> None:
        config = getattr(self.model, "config", None)
        if not isinstance(config, dict) or config.get("output") != "sigmoid" or x.numel() == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            self.log(f"warning: the model's output is a sigmoid (values in (0, 1)) but the {what} targets are "
                     f"outside [0, 1] (min {lo:.4g}, max {hi:.4g}); those values can never be reconstructed. "
                     f"Scale the data into [0, 1] (aecomp.data.load(..., scale='auto'|'global')) or use a model "
                     f"with output='none'")

    def _unit_range(self, data: DataLike, x: torch.Tensor) -> bool:
        if isinstance(data, data_mod.Dataset):
            return data.unit_range
        return x.numel() > 0 and bool(x.min() >= 0) and bool(x.max() <= 1)

    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        kwargs = dict(lr=self.lr, weight_decay=self.weight_decay)
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype
            return torch.optim.Adam(params, **kwargs)

    def _make_step(self, loss_fn: Callable, optimizer: torch.optim.Optimizer) -> Any:
        autocast_dtype = torch.bfloat16 if self.bf16 else None
        plain = PlainStep(loss_fn, optimizer, autocast_dtype, self.device.type)
        if self.step_fn == "plain":
            return plain
        if self.step_fn != "auto":
            if hasattr(self.step_fn, "step"):
                return self.step_fn
            if callable(self.step_fn):
                return self.step_fn(self.model, optimizer)
            raise ValueError(f"Trainer: step_fn must be 'auto', 'plain', a factory or a step object, got {self.step_fn!r}")
        if self.dist.enabled:  # DDP needs its forward in the step; the plain step routes through it
            return plain
        cls = getattr(importlib.import_module("aecomp.train"), "FusedStep", None)
        if cls is None:
            return plain
        supports = getattr(cls, "supports", None)
        if supports is not None and not supports(self.model):
            return plain
        kwargs = {}
        if self.bf16:
            try:
                takes_precision = "precision" in inspect.signature(cls).parameters
            except (TypeError, ValueError):
                takes_precision = False
            if not takes_precision or self.device.type != "cpu":  # CUDA: bf16 is autocast
                return plain
            kwargs["precision"] = "bf16"
        try:
            return cls(self.model, optimizer, **kwargs)
        except NotImplementedError:
            return plain

    # ---------------------------------------------------------------------------------------
    # fit

    def fit(self, train: DataLike, val: Optional[DataLike] = None, *,
            resume: Union[bool, str, os.PathLike] = False) -> FitResult:
        """Train for ``epochs`` epochs (or until early stopping); ``resume`` continues a run
        from the newest usable checkpoint in ``out_dir`` (True) or from a given checkpoint."""
        info = self.dist
        model = self.model.to(self.device)
        model.train()
        x_train = self._samples(train, "training")
        if x_train.shape[0] == 0:
            raise ValueError("Trainer: the training data is empty")
        x_val = None
        if val is not None:
            x_val = self._samples(val, "validation")
            if x_val.shape[0] == 0:
                x_val = None
        if self.patience is not None and x_val is None:
            raise ValueError(f"Trainer: patience={self.patience} stops on the validation loss, but there is no "
                             f"validation data; pass fit(train, val) with a non-empty val, or patience=None")
        self._warn_outside_sigmoid(x_train, "training")
        if x_val is not None:
            self._warn_outside_sigmoid(x_val, "validation")
        val_unit = self._unit_range(val, x_val) if x_val is not None else False
        loader = data_mod.InMemoryLoader(x_train, batch_size=self.batch_size, seed=self.seed, device=self.device,
                                         rank=info.rank, world_size=info.world_size)
        optimizer = self._make_optimizer()
        self.optimizer = optimizer

        st = {"step": 0, "history": [], "best": None, "best_epoch": None, "bad": 0, "stopped": False,
              "acc_loss": 0.0, "acc_n": 0, "acc_seconds": 0.0}
        if resume:
            self._restore(resume, loader, optimizer, st)
        else:
            root = self.checkpoint_root
            if root is not None and ckpt_mod.list_checkpoints(root):
                raise ValueError(f"Trainer: {self.out_dir} already holds checkpoints of a run; resume it "
                                 f"(resume=True / --resume) or choose another output folder")
            torch.manual_seed(self.seed + info.rank)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(self.seed + info.rank)
            if info.is_main and self.metrics_path is not None:
                self.out_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
                ckpt_mod.atomic_write(self.metrics_path, b"")

        loss_fn = dist_mod.wrap(model, info, self.device) if info.enabled else model.loss
        stepper = self._make_step(loss_fn, optimizer)
        self.step_kind = getattr(stepper, "kind", type(stepper).__name__)
        what = getattr(stepper, "compute_precision", None)
        self.compute_precision = what() if callable(what) else self.precision
        takes_weight = isinstance(stepper, PlainStep)
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

        step = st["step"]
        history: List[Dict[str, Any]] = st["history"]
        while not st["stopped"] and loader.epoch < self.epochs:
            epoch = loader.epoch + 1  # 1-based in logs
            acc = torch.tensor(st["acc_loss"] if info.is_main else 0.0, dtype=torch.float64, device=self.device)
            seen = int(st["acc_n"]) if info.is_main else 0
            seconds_before = st["acc_seconds"]
            st["acc_loss"], st["acc_n"], st["acc_seconds"] = 0.0, 0, 0.0
            bar = self._bar(loader, epoch)
            t0 = time.perf_counter()
            for batch in loader:
                n_local = loader.last_local_size
                weight = None
                if info.enabled and n_local * info.world_size != loader.last_global_size:
                    weight = n_local * info.world_size / loader.last_global_size
                loss = stepper.step(batch, weight) if takes_weight else stepper.step(batch)
                step += 1
                acc += loss.double() * n_local
                seen += n_local
                ckpt_due = (self.checkpoint_every is not None and step % self.checkpoint_every == 0
                            and loader.position < len(loader) and self.out_dir is not None)
                if ckpt_due or step % self.check_every == 0:
                    total = self._check_finite(acc, epoch, step)
                    if bar is not None:
                        self._postfix(bar, total, seen, time.perf_counter() - t0, refresh=False)
                if bar is not None:
                    bar.update(1)
                if ckpt_due:
                    g_acc, g_seen = self._global_sums(acc, seen)
                    st.update(step=step, acc_loss=g_acc, acc_n=g_seen,
                              acc_seconds=seconds_before + time.perf_counter() - t0)
                    self._save(loader, optimizer, st, history)
                if kill_after and step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            train_seconds = seconds_before + time.perf_counter() - t0
            total = self._check_finite(acc, epoch, step)
            if bar is not None:
                self._postfix(bar, total, seen, time.perf_counter() - t0, refresh=True)
                bar.close()
            g_acc, g_seen = self._global_sums(acc, seen)
            record: Dict[str, Any] = {"epoch": epoch, "step": step, "train_loss": g_acc / max(g_seen, 1)}
            if x_val is not None:
                ev = self._evaluate_tensor(x_val, val_unit)
                record.update(val_loss=ev["loss"], val_mse=ev["mse"], val_psnr=ev["psnr"])
            else:
                record.update(val_loss=None, val_mse=None, val_psnr=None)
            seconds = seconds_before + time.perf_counter() - t0
            record.update(seconds=seconds, train_seconds=train_seconds,
                          samples_per_s=g_seen / train_seconds if train_seconds > 0 else None,
                          lr=optimizer.param_groups[0]["lr"], time=time.time())
            history.append(record)
            self._append_metrics(record)
            if x_val is not None and record["val_loss"] is not None:
                v = record["val_loss"]
                if st["best"] is None or v < st["best"] - self.min_delta:
                    st["best"], st["best_epoch"], st["bad"] = v, epoch, 0
                else:
                    st["bad"] += 1
                    if self.patience is not None and st["bad"] >= self.patience:
                        st["stopped"] = True
                        self.log(f"early stopping after epoch {epoch}: validation loss has not improved "
                                 f"for {st['bad']} epochs (best {st['best']:.6g} at epoch {st['best_epoch']})")
            st.update(step=step, acc_loss=0.0, acc_n=0, acc_seconds=0.0)
            if self.out_dir is not None:
                self._save(loader, optimizer, st, history)
            self.log(_epoch_line(record, self.epochs))
        st["step"] = step
        dist_mod.barrier(info)
        return FitResult(history=history, steps=step, epochs_completed=loader.epoch,
                         best_val_loss=st["best"], best_epoch=st["best_epoch"], stopped_early=st["stopped"],
                         checkpoint=self.last_checkpoint, step_kind=self.step_kind)

    def _bar(self, loader: data_mod.InMemoryLoader, epoch: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=len(loader), initial=loader.position, desc=f"epoch {epoch}/{self.epochs}",
                    leave=False, dynamic_ncols=True, file=sys.stderr, unit="step")

    def _postfix(self, bar, total: float, seen: int, seconds: float, refresh: bool) -> None:
        """Running mean loss of the epoch and samples/s, over all ranks (``total`` is the summed
        ``loss * n`` of every rank; the shards differ by at most one sample, so ``seen * world``
        is the sample count up to a few)."""
        n_all = seen * self.dist.world_size
        bar.set_postfix(loss=f"{total / max(n_all, 1):.4g}", samples_s=f"{n_all / max(seconds, 1e-9):.0f}",
                        refresh=refresh)

    def _global_sums(self, acc: torch.Tensor, seen: int):
        if not self.dist.enabled:
            return float(acc), seen
        t = torch.stack([acc, torch.tensor(float(seen), dtype=torch.float64, device=acc.device)])
        t = dist_mod.all_reduce_sum(t, self.dist)
        return float(t[0]), int(round(float(t[1])))

    def _check_finite(self, acc: torch.Tensor, epoch: int, step: int) -> float:
        """Raise :class:`NonFiniteLossError` if any loss so far this epoch was NaN/inf (any rank)."""
        total = acc if not self.dist.enabled else dist_mod.all_reduce_sum(acc, self.dist)
        value = float(total)
        if not math.isfinite(value):
            where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint is not None
                     else "no checkpoint was written" if self.out_dir is not None else "no out_dir was given")
            raise NonFiniteLossError(
                f"the training loss became {'NaN' if math.isnan(value) else 'infinite'} in epoch {epoch} "
                f"(by step {step}); training stopped ({where}). Try a lower learning rate or check the data.")
        return value

    def _append_metrics(self, record: Dict[str, Any]) -> None:
        if not self.dist.is_main or self.metrics_path is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _epoch_line(r: Dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}", f"train_loss {r['train_loss']:.6g}"]
    if r.get("val_loss") is not None:
        parts.append(f"val_loss {r['val_loss']:.6g}")
    if r.get("val_psnr") is not None:
        parts.append(f"val_psnr {r['val_psnr']:.2f} dB")
    parts.append(f"{r['seconds']:.2f} s")
    if r.get("samples_per_s"):
        parts.append(f"{r['samples_per_s']:.0f} samples/s")
    return ", ".join(parts)
