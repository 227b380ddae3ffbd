"""Checkpoints that are safe to load and never half-written.

A checkpoint is a folder ``<root>/ckpt-<step:09d>/`` holding

==========================  =====================================================================
``model.safetensors``       the model's ``state_dict`` (tensors only)
``optimizer.safetensors``   the optimizer's per-parameter tensors (Adam's ``exp_avg``,
                            ``exp_avg_sq``, ``step``), keyed ``state.<param index>.<name>``
``optimizer.json``          the optimizer's param groups (lr, betas, ...) and any non-tensor state
``state.json``              everything else: model config, epoch, step, loader state, RNG states
                            (base64), early-stopping state, the run's settings
``MANIFEST.json``           written LAST: format, step, and each file's size and SHA-256
==========================  =====================================================================

Nothing is pickled, so loading a checkpoint never runs code (safetensors and JSON only).

Writing: each file goes to a temporary file in the same folder, is flushed and ``fsync``-ed, then
``os.replace``-d onto its name, and the folder is ``fsync``-ed; the manifest goes last the same
way. A checkpoint without a manifest is incomplete (the writer was interrupted) and is never
taken as complete. Loading checks every file against the manifest (size, then SHA-256) before
parsing it, so a truncated or bit-flipped file gives :class:`CheckpointError` naming the file;
:func:`latest_checkpoint` then falls back to the previous one (``keep=2`` are kept).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FORMAT",
    "MANIFEST",
    "atomic_write",
    "checkpoint_dir",
    "default_file_mode",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "optimizer_from_files",
    "optimizer_to_files",
    "resolve_checkpoint",
    "save_checkpoint",
]

FORMAT = "aecomp-checkpoint/1"
MANIFEST = "MANIFEST.json"
_NAME = re.compile(r"^ckpt-(\d{9,})$")

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, truncated, corrupt or does not fit the run."""


# --------------------------------------------------------------------------------------------
# atomic files


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; nothing to sync then
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one.

    Temp file in the same folder -> write -> flush -> fsync -> ``os.replace`` -> fsync the folder.
    The file gets the mode any other file of the run gets (``0o666`` less the umask), not the
    ``0o600`` of ``mkstemp``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------
# tensors <-> safetensors bytes


def _tensors_to_bytes(tensors: Dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage (tied weights, views)
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def _tensors_from_bytes(data: bytes, where: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{where}: not a readable safetensors file ({exc})") from None


# --------------------------------------------------------------------------------------------
# optimizer state (torch's state_dict format) <-> safetensors + JSON


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    raise CheckpointError(f"{where}: cannot store a value of type {type(value).__name__} without pickling")


def optimizer_to_files(state_dict: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON."""
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for pid, st in state_dict["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = _jsonable(val, f"optimizer state {pid}.{key}")
    meta = {"param_groups": _jsonable(state_dict["param_groups"], "optimizer param_groups"),
            "state_scalars": scalars}
    return tensors, meta


def optimizer_from_files(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    """Inverse of :func:`optimizer_to_files`: a dict for ``optimizer.load_state_dict``."""
    state: Dict[int, Dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    for pid, st in meta.get("state_scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        # JSON has no tuples; torch's optimizers keep e.g. betas as tuples
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------------------
# save / load


@dataclass
class Checkpoint:
    """A verified checkpoint read into memory."""

    path: Path
    step: int
    model: Dict[str, torch.Tensor]
    optimizer: Optional[Dict[str, Any]]
    state: Dict[str, Any]


def checkpoint_dir(root: PathLike, step: int) -> Path:
    return Path(root) / f"ckpt-{int(step):09d}"


def list_checkpoints(root: PathLike) -> List[Tuple[int, Path]]:
    """``(step, folder)`` of every checkpoint folder under ``root``, complete or not, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def save_checkpoint(root: PathLike, step: int, *, model_state: Dict[str, torch.Tensor],
                    optimizer_state: Optional[Dict[str, Any]] = None, state: Optional[Dict[str, Any]] = None,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` (manifest last), then keep only the newest ``keep``.

    Checkpoints with a larger step than ``step`` are stale (a run resumed from an earlier one
    writes over that future) and are removed too.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder = checkpoint_dir(root, step)
    if folder.exists():  # a stale or interrupted one: never let its manifest describe new files
        shutil.rmtree(folder)
    folder.mkdir()
    _fsync_dir(root)

    files: Dict[str, bytes] = {"model.safetensors": _tensors_to_bytes(model_state)}
    if optimizer_state is not None:
        tensors, meta = optimizer_to_files(optimizer_state)
        files["optimizer.safetensors"] = _tensors_to_bytes(tensors)
        files["optimizer.json"] = _json_bytes(meta)
    files["state.json"] = _json_bytes(_jsonable(dict(state or {}), "checkpoint state"))
    entries = {}
    for name, data in files.items():
        atomic_write(folder / name, data)
        entries[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": FORMAT, "step": int(step), "files": entries, "written_at": time.time()}
    atomic_write(folder / MANIFEST, _json_bytes(manifest))

    older = []
    for s, p in list_checkpoints(root):
        if s > step:
            shutil.rmtree(p, ignore_errors=True)
        else:
            older.append(p)
    kept = set([p for p in older if (p / MANIFEST).is_file()][-keep:])
    for p in older:
        if p not in kept:
            shutil.rmtree(p, ignore_errors=True)
    _fsync_dir(root)
    return folder


def _read_verified(folder: Path, name: str, entry: Dict[str, Any]) -> bytes:
    path = folder / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {folder}: cannot read {name} ({exc.strerror or exc})") from None
    if len(data) != entry.get("bytes"):
        raise CheckpointError(f"checkpoint {folder} is corrupt: {name} has {len(data)} bytes, "
                              f"the manifest says {entry.get('bytes')} (truncated or overwritten)")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"checkpoint {folder} is corrupt: {name} does not match its SHA-256 in the manifest")
    return data


def _parse_json(data: bytes, where: str) -> Dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    return obj


def load_checkpoint(path: PathLike) -> Checkpoint:
    """Read and verify one checkpoint folder; :class:`CheckpointError` says what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder}: no such folder")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: no {MANIFEST} (its writer was interrupted)")
    try:
        manifest = _parse_json(mpath.read_bytes(), f"checkpoint {folder}: {MANIFEST}")
    except OSError as exc:
        raise CheckpointError(f"checkpoint {folder}: cannot read {MANIFEST} ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {folder}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files or "state.json" not in files:
        raise CheckpointError(f"checkpoint {folder}: the manifest lists no model.safetensors/state.json")
    raw = {name: _read_verified(folder, name, entry) for name, entry in files.items()}
    model = _tensors_from_bytes(raw["model.safetensors"], f"checkpoint {folder}: model.safetensors")
    state = _parse_json(raw["state.json"], f"checkpoint {folder}: state.json")
    optimizer = None
    if "optimizer.safetensors" in raw and "optimizer.json" in raw:
        optimizer = optimizer_from_files(
            _tensors_from_bytes(raw["optimizer.safetensors"], f"checkpoint {folder}: optimizer.safetensors"),
            _parse_json(raw["optimizer.json"], f"checkpoint {folder}: optimizer.json"))
    return Checkpoint(folder, int(manifest.get("step", -1)), model, optimizer, state)


def latest_checkpoint(root: PathLike, on_skip: Optional[Callable[[str], None]] = None) -> Optional[Checkpoint]:
    """The newest checkpoint under ``root`` that loads; each one skipped is reported to ``on_skip``."""
    for _, folder in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(folder)
        except CheckpointError as exc:
            if on_skip is not None:
                on_skip(f"skipping {exc}")
    return None


def resolve_checkpoint(path: PathLike, on_skip: Optional[Callable[[str], None]] = None) -> Checkpoint:
    """``path`` is a checkpoint folder, a checkpoints root, or a run's output folder."""
    p = Path(path)
    if (p / MANIFEST).exists() or _NAME.match(p.name):
        return load_checkpoint(p)
    for root in (p / "checkpoints", p):
        if list_checkpoints(root):
            ckpt = latest_checkpoint(root, on_skip)
            if ckpt is None:
                raise CheckpointError(f"no usable checkpoint under {root}: every one is incomplete or corrupt")
            return ckpt
    raise CheckpointError(f"no checkpoint under {p}")


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Rebuild the model of a checkpoint (``aecomp.models.build(config)``) with its weights."""
    ckpt = resolve_checkpoint(path)
    config = ckpt.state.get("model_config")
    if not config:
        raise CheckpointError(f"checkpoint {ckpt.path} has no model config, so it cannot rebuild the model")
    from .. import models

    model = models.build(config)
    model.load_state_dict(ckpt.model)
    return model.to(device)
