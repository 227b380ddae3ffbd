"""The checkpoint glue of :class:`aecomp.train.Trainer`: what a training checkpoint holds and how a
run is rebuilt from one (mixed into the Trainer; the files themselves are ``aecomp.train.checkpoint``).

A checkpoint's ``state.json`` (``STATE_FORMAT``) holds the step, the epochs done, the model
config and class, the Trainer's settings, the world size and device, the loader state (epoch,
position, generator state), every rank's CPU (and CUDA) RNG state (base64, gathered from all
ranks), the early-stopping state, the partial sums of the epoch in progress, the metrics
history and the caller's ``run_config``. Restoring puts every one of them back, so a run killed
at any point continues on exactly the batches and random numbers it would have seen.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Union

import torch

from .. import data as data_mod
from . import checkpoint as ckpt_mod
from . import distributed as dist_mod

__all__ = ["STATE_FORMAT", "CheckpointingMixin"]

STATE_FORMAT = 1


def _b64(t: torch.Tensor) -> str:
    return data_mod._encode_state(t)


def _unb64(s: str) -> torch.Tensor:
    return data_mod._decode_state(s)


class CheckpointingMixin:
    """``_save`` / ``_restore`` of the Trainer's whole state (uses the Trainer's attributes)."""

    def _rng_states(self) -> Dict[str, Any]:
        info = self.dist
        cpu = dist_mod.all_gather(torch.get_rng_state(), info, self.device if info.backend == "nccl" else torch.device("cpu"))
        out: Dict[str, Any] = {"cpu": [_b64(t) for t in cpu], "cuda": None}
        if self.device.type == "cuda":
            cuda = dist_mod.all_gather(torch.cuda.get_rng_state(self.device), info, self.device)
            out["cuda"] = [_b64(t) for t in cuda]
        return out

    def _save(self, loader: data_mod.InMemoryLoader, optimizer: torch.optim.Optimizer, st: Dict[str, Any],
              history: List[Dict[str, Any]]) -> None:
        rng = self._rng_states()  # a collective: every rank takes part
        if not self.dist.is_main:
            return
        state = {
            "format": STATE_FORMAT,
            "step": st["step"],
            "epochs_completed": loader.epoch,
            "epoch_in_progress": loader.position > 0,
            "model_config": getattr(self.model, "config", None),
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "trainer": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                        "weight_decay": self.weight_decay, "seed": self.seed, "bf16": self.bf16,
                        "precision": self.precision,
                        "patience": self.patience, "min_delta": self.min_delta,
                        "checkpoint_every": self.checkpoint_every},
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "loader": loader.state_dict(),
            "rng": rng,
            "early_stopping": {"best_val_loss": st["best"], "best_epoch": st["best_epoch"],
                               "bad_epochs": st["bad"], "stopped": st["stopped"]},
            "epoch_accumulators": {"loss_sum": st["acc_loss"], "samples": st["acc_n"],
                                   "seconds": st["acc_seconds"]},
            "history": history,
            "run": self.run_config,
            "versions": {"torch": torch.__version__, "aecomp": _aecomp_version()},
        }
        self.last_checkpoint = ckpt_mod.save_checkpoint(
            self.checkpoint_root, st["step"], model_state=self.model.state_dict(),  # type: ignore[arg-type]
            optimizer_state=optimizer.state_dict(), state=state, keep=self.keep_checkpoints)

    def _restore(self, resume: Union[bool, str, os.PathLike], loader: data_mod.InMemoryLoader,
                 optimizer: torch.optim.Optimizer, st: Dict[str, Any]) -> None:
        if resume is True:
            if self.out_dir is None:
                raise ValueError("Trainer: resume=True needs out_dir (where the checkpoints are)")
            root = self.checkpoint_root
            if not ckpt_mod.list_checkpoints(root):  # type: ignore[arg-type]
                raise ckpt_mod.CheckpointError(f"nothing to resume: no checkpoint in {root}")
            ckpt = ckpt_mod.latest_checkpoint(root, on_skip=lambda m: self.log(f"warning: {m}"))  # type: ignore[arg-type]
            if ckpt is None:
                raise ckpt_mod.CheckpointError(f"nothing to resume: every checkpoint in {root} is incomplete or corrupt")
        else:
            ckpt = ckpt_mod.resolve_checkpoint(resume, on_skip=lambda m: self.log(f"warning: {m}"))
        s = ckpt.state
        mine = getattr(self.model, "config", None)
        theirs = s.get("model_config")
        if mine is not None and theirs is not None and json.loads(json.dumps(mine)) != theirs:
            raise ckpt_mod.CheckpointError(f"checkpoint {ckpt.path} was written for model {theirs}, "
                                           f"but this model is {mine}")
        saved_bs = s.get("trainer", {}).get("batch_size")
        if saved_bs is not None and saved_bs != self.batch_size:
            raise ckpt_mod.CheckpointError(f"checkpoint {ckpt.path} was written with batch size {saved_bs}; "
                                           f"resume with the same batch size (got {self.batch_size})")
        try:
            self.model.load_state_dict({k: v.to(self.device) for k, v in ckpt.model.items()})
            if ckpt.optimizer is not None:
                optimizer.load_state_dict(ckpt.optimizer)
            loader.load_state_dict(s["loader"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ckpt_mod.CheckpointError(f"checkpoint {ckpt.path} does not fit this run: {exc}") from None
        rank = self.dist.rank
        rng = s.get("rng") or {}
        cpu_states = rng.get("cpu") or []
        if rank < len(cpu_states):
            torch.set_rng_state(_unb64(cpu_states[rank]))
        else:
            torch.manual_seed(self.seed + rank + 7919 * int(s["step"]))
        cuda_states = rng.get("cuda") or []
        if self.device.type == "cuda":
            if rank < len(cuda_states):
                torch.cuda.set_rng_state(_unb64(cuda_states[rank]), self.device)
            else:
                torch.cuda.manual_seed(self.seed + rank + 7919 * int(s["step"]))
        es = s.get("early_stopping", {})
        acc = s.get("epoch_accumulators", {})
        st.update(step=int(s["step"]), history=list(s.get("history", [])), best=es.get("best_val_loss"),
                  best_epoch=es.get("best_epoch"), bad=int(es.get("bad_epochs", 0)), stopped=bool(es.get("stopped")),
                  acc_loss=float(acc.get("loss_sum", 0.0)), acc_n=int(acc.get("samples", 0)),
                  acc_seconds=float(acc.get("seconds", 0.0)))
        self.last_checkpoint = ckpt.path
        if self.dist.is_main and self.metrics_path is not None:
            # the log says exactly what the checkpoint knows: epochs logged after it are redone
            lines = "".join(json.dumps(r) + "\n" for r in st["history"])
            ckpt_mod.atomic_write(self.metrics_path, lines.encode())
        self.log(f"resuming from {ckpt.path} (epoch {s['loader']['epoch'] + 1}, "
                 f"batch {s['loader']['position']} of the epoch, step {s['step']})")


def _aecomp_version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"
