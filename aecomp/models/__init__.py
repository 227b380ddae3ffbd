"""The autoencoder family, each built from the fused modules of ``aecomp.nn``.

==========================  ======  ===========================================================
class                       type    input (per sample)
==========================  ======  ===========================================================
``Autoencoder``             mlp     ``(dims[0],)``
``ConvAutoencoder``         conv    ``(in_channels, image_size, image_size)``
``RecurrentAutoencoder``    rnn     ``(seq_len or None, features)``
``VAE``                     vae     ``(dims[0],)``
==========================  ======  ===========================================================

Every model has ``encode``, ``decode``, ``forward`` (reconstruction), ``loss(batch)``,
``config`` / ``from_config``, ``input_shape`` and ``latent_dim`` (see ``aecomp.models.base``).
``build(config)`` makes a model from a config dict, dispatching on ``config["type"]``.
"""
from __future__ import annotations

from typing import Any, Dict, Type

from .base import AutoencoderBase
from .conv import ConvAutoencoder
from .mlp import Autoencoder
from .recurrent import RecurrentAutoencoder
from .vae import VAE

MODELS: Dict[str, Type[AutoencoderBase]] = {
    cls.TYPE: cls for cls in (Autoencoder, ConvAutoencoder, RecurrentAutoencoder, VAE)
}


def build(config: Dict[str, Any]) -> AutoencoderBase:
    """The model described by ``config`` (``{"type": "mlp" | "conv" | "rnn" | "vae", ...}``)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"aecomp.models.build: config must be a dict with a 'type' key, got {config!r}")
    kind = config["type"]
    if kind not in MODELS:
        raise ValueError(f"aecomp.models.build: unknown model type {kind!r}; expected one of "
                         f"{', '.join(repr(k) for k in MODELS)}")
    return MODELS[kind].from_config(config)


__all__ = ["AutoencoderBase", "Autoencoder", "ConvAutoencoder", "RecurrentAutoencoder", "VAE", "MODELS", "build"]
