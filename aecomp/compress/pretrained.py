"""A pretrained autoencoder reused as the feature extractor, instead of training one.

:func:`load_encoder` reads the autoencoder that an earlier run trained, with the two things a
CompressedNet needs from it: the architecture (the encoder ``d_0 -relu-> ... -> K``) and the
input scaling its training data had, ``x' = (x - shift) / scale``. An encoder fed data scaled
another way computes features it never saw, so the scaling travels with the encoder and the new
data is scaled the encoder's way (never refitted on the new data).

Sources:

==================================  ===============================================================
source                              architecture / input scaling
==================================  ===============================================================
``aecomp train --out RUN`` folder   newest verified checkpoint's ``model_config`` / the run's data
(or one ``ckpt-*`` folder)          settings (spec, split seed, fractions, ``--scale``): the
                                    statistics are refitted on that run's training split exactly
                                    as the run fitted them, and the data's SHA-256 must match the
                                    one the run recorded
``aecomp compress --out RUN``       its ``checkpoints/autoencoder`` checkpoint, the same way
a ``.safetensors`` file             the ``aecomp`` metadata's ``config``; the scaling from the
                                    metadata when the file carries it, else it must be declared
an ``aecomp.models.Autoencoder``    the object itself (copied); the scaling must be declared
==================================  ===============================================================

A declared scaling (``scale=``, ``--scale``) takes precedence and is noted. Only MLP
autoencoders (``aecomp.models.Autoencoder``) feed a CompressedNet; every other case -- a folder
without an encoder, a conv/rnn/vae run, a file without an architecture, data whose width is not
the encoder's input (:func:`check_width`) -- is :class:`EncoderError`, one line.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from .. import data as data_mod
from ..data import Preprocessing

__all__ = ["EncoderError", "PretrainedEncoder", "check_width", "load_encoder"]


class EncoderError(ValueError):
    """A pretrained encoder that cannot be used here; the message is one line."""


@dataclass
class PretrainedEncoder:
    """``autoencoder`` (an ``aecomp.models.Autoencoder``, eval mode, its own copy), the input
    ``preprocessing`` its encoder expects, ``source`` (what was read), ``data`` (the run's data
    settings, when known) and ``notes``."""

    autoencoder: nn.Module
    preprocessing: Preprocessing
    source: str
    data: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)

    @property
    def dims(self):
        return tuple(self.autoencoder.encoder.dims)

    @property
    def in_features(self) -> int:
        return int(self.dims[0])

    @property
    def latent(self) -> int:
        return int(self.dims[-1])

    def seen_images(self) -> Optional[torch.Tensor]:
        """The unscaled training images of the run that pretrained this encoder (its data
        settings re-read), or None when the run did not record them or they cannot be read: to
        keep them out of a test split."""
        cfg = self.data
        if not isinstance(cfg, dict) or "spec" not in cfg:
            return None
        try:
            return data_mod.load(cfg["spec"], **dict(_load_kwargs(cfg), scale="none")).train.x
        except data_mod.DataError:
            return None


def check_width(encoder: PretrainedEncoder, features: int, data_name: str) -> None:
    """One line when the data's width is not the encoder's input width."""
    if int(features) != encoder.in_features:
        raise EncoderError(f"the encoder from {encoder.source} takes {encoder.in_features} inputs "
                           f"({'-'.join(map(str, encoder.dims))}) but {data_name} has {features} features per sample; "
                           f"pretrain on data of the same width (e.g. digits28 or MNIST for 784)")


def _mlp_autoencoder(config: Any, where: str) -> nn.Module:
    from .. import models

    kind = config.get("type") if isinstance(config, dict) else None
    if kind is None:
        raise EncoderError(f"{where} holds no model config, so its architecture is unknown")
    if kind != "mlp":
        raise EncoderError(f"{where} holds a {kind!r} autoencoder; a CompressedNet takes the encoder of an MLP "
                           f"autoencoder (aecomp train --model mlp)")
    try:
        return models.build(config)
    except (TypeError, ValueError) as exc:
        raise EncoderError(f"{where}: its model config {config} does not build ({exc})") from None


def _load_weights(ae: nn.Module, state: Dict[str, torch.Tensor], where: str) -> nn.Module:
    try:
        ae.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise EncoderError(f"{where}: the weights do not fit its model config ({first})") from None
    return ae.eval()


def _load_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The ``aecomp.data.load`` arguments a run recorded (``Splits.config``), but for the spec."""
    import inspect

    known = set(inspect.signature(data_mod.load).parameters) - {"spec"}
    return {k: v for k, v in cfg.items() if k in known}


def _run_scaling(run: Dict[str, Any], where: str) -> Preprocessing:
    """The scaling the run fitted on its training split, refitted from the same data and settings."""
    saved = run.get("preprocessing")
    if isinstance(saved, dict):  # a run that stores its fitted statistics
        return Preprocessing.from_dict(saved)
    cfg = run.get("data")
    if not isinstance(cfg, dict) or "spec" not in cfg:
        raise EncoderError(f"{where} does not record its data settings, so the encoder's input scaling is unknown; "
                           f"declare it with --scale")
    try:
        splits = data_mod.load(cfg["spec"], **_load_kwargs(cfg))
    except data_mod.DataError as exc:
        raise EncoderError(f"{where}: the encoder's input scaling was fitted on its training data {cfg['spec']}, which "
                           f"cannot be read here ({exc}); declare the scaling with --scale") from None
    recorded = (run.get("source") or {}).get("sha256")
    if recorded and splits.source.get("sha256") != recorded:
        raise EncoderError(f"{where}: its training data {cfg['spec']} changed since the run (SHA-256 differs), so "
                           f"its input scaling cannot be refitted; declare it with --scale")
    return splits.train.preprocessing


def _from_checkpoint(ckpt, where: str) -> PretrainedEncoder:
    ae = _load_weights(_mlp_autoencoder(ckpt.state.get("model_config"), where), ckpt.model, where)
    run = ckpt.state.get("run") or {}
    return PretrainedEncoder(ae, _run_scaling(run, where), where, data=run.get("data"))


def _from_folder(folder: Path) -> PretrainedEncoder:
    from ..train.checkpoint import CheckpointError, list_checkpoints, resolve_checkpoint

    where = str(folder)
    compress_ae = folder / "checkpoints" / "autoencoder"
    target = compress_ae if list_checkpoints(compress_ae) else folder
    try:
        ckpt = resolve_checkpoint(target)
    except CheckpointError as exc:
        if "no checkpoint under" in str(exc):
            raise EncoderError(f"{where} holds no encoder: no checkpoint there (aecomp train --out RUN writes "
                               f"RUN/checkpoints/ckpt-*/, aecomp compress writes RUN/checkpoints/autoencoder/)"
                               ) from None
        raise EncoderError(f"{where}: {exc}") from None
    return _from_checkpoint(ckpt, f"{where} ({ckpt.path.name})")


def _from_safetensors(path: Path) -> PretrainedEncoder:
    from .modelfile import ModelFileError, read_model
    from .storage import StoredTensors

    where = str(path)
    if (path.parent / "MANIFEST.json").is_file() and (path.parent / "state.json").is_file():
        return _from_folder(path.parent)  # a checkpoint's model.safetensors: the folder has the rest
    try:
        stored = read_model(path)
    except ModelFileError as exc:
        if "no 'aecomp' metadata" in str(exc):
            raise EncoderError(f"{where} holds tensors but no aecomp model config, so the encoder's architecture is "
                               f"unknown; pass the run folder that wrote it (aecomp train --out RUN)") from None
        raise EncoderError(str(exc)) from None
    if not isinstance(stored, StoredTensors):
        raise EncoderError(f"{where} holds a classifier ({stored.meta.name}), not an autoencoder; pass it as --model")
    ae = _mlp_autoencoder(stored.config, where)
    ae = _load_weights(ae, stored.tensors, where)
    return PretrainedEncoder(ae, stored.meta.scaling, f"{where} ({stored.meta.name})")  # type: ignore[arg-type]


def load_encoder(source: Union[str, os.PathLike, nn.Module], scale: Union[str, Preprocessing, None] = None
                 ) -> PretrainedEncoder:
    """The pretrained autoencoder of ``source`` and its input scaling (see the module docstring).

    ``scale``: a declared scaling (``aecomp.compress.own_model.declared_scaling`` forms) that
    replaces the run's; required where the source does not carry one.
    """
    from .own_model import ModelError, declared_scaling

    declared = None
    if scale is not None:
        try:
            declared = declared_scaling(scale)
        except ModelError as exc:
            raise EncoderError(str(exc)) from None
        if isinstance(declared, str):
            raise EncoderError(f"--scale {declared} would fit a new scaling on this data; the encoder expects the "
                               f"scaling of its own training data: leave --scale out (taken from the run) or declare "
                               f"fixed values (K, SHIFT,SCALE, or a .npz)")
    if isinstance(source, nn.Module):
        enc = PretrainedEncoder(copy.deepcopy(source).eval(), None, type(source).__name__)  # type: ignore[arg-type]
        _mlp_autoencoder(getattr(source, "config", None), enc.source)
    else:
        path = Path(source)
        if path.is_dir():
            enc = _from_folder(path)
        elif path.is_file():
            if path.suffix.lower() != ".safetensors":
                raise EncoderError(f"{path}: expected a run folder (aecomp train --out) or its .safetensors file")
            enc = _from_safetensors(path)
        else:
            raise EncoderError(f"{path}: no such run folder or file")
    if declared is not None:
        if enc.preprocessing is not None:
            enc.notes.append(f"input scaling declared ({declared.kind}) instead of the run's "
                             f"({enc.preprocessing.kind})")
        enc.preprocessing = declared
    if enc.preprocessing is None:
        raise EncoderError(f"{enc.source} does not carry the encoder's input scaling; declare it with --scale (e.g. "
                           f"none, 255, or SHIFT,SCALE), or pass the run folder")
    return enc
