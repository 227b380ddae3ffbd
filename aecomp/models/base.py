"""What every model in ``aecomp.models`` has in common.

A model is an ``nn.Module`` with

- ``encode(x) -> z`` (a tensor ``[batch, latent]``), ``decode(z) -> x_hat``, ``forward(x) -> x_hat``;
- ``loss(batch) -> scalar tensor`` where ``batch`` is a tensor or a ``(x, ...)`` tuple/list as
  a ``DataLoader`` over a ``TensorDataset`` yields it (only ``x`` is used);
- ``config``: a JSON-able dict, ``{"type": ..., <constructor arguments>}``, and the classmethod
  ``from_config(cfg)`` that rebuilds the model from it (weights travel in the state_dict);
- ``input_shape``: the per-sample shape, e.g. ``(784,)`` or ``(1, 28, 28)``; ``None`` marks a
  dimension of any size (the time axis of a recurrent model without a fixed ``seq_len``);
- ``latent_dim``: the width of ``z``.
"""
from __future__ import annotations

import inspect
import numbers
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .._backend import BACKENDS

OUTPUTS = ("sigmoid", "none")


def shape_str(shape) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


class AutoencoderBase(nn.Module):
    TYPE: str = ""  # the "type" key of the config

    # ------------------------------------------------------------------ config
    def _set_config(self, **kwargs: Any) -> None:
        """Remember the constructor arguments, as JSON-able values (tuples become lists)."""
        self._config = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}

    @property
    def config(self) -> Dict[str, Any]:
        return {"type": self.TYPE, **{k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}}

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "AutoencoderBase":
        if not isinstance(cfg, dict):
            raise TypeError(f"{cls.__name__}.from_config: cfg must be a dict, got {type(cfg).__name__}")
        cfg = dict(cfg)
        kind = cfg.pop("type", cls.TYPE)
        if kind != cls.TYPE:
            raise ValueError(f"{cls.__name__}.from_config: config type is {kind!r} but {cls.__name__} is {cls.TYPE!r}; "
                             "use aecomp.models.build(config) to dispatch on the type")
        params = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(cfg) - set(params) - {"self"})
        if unknown:
            known = [p for p in params if p != "self"]
            raise TypeError(f"{cls.__name__}.from_config: unknown keys {unknown}; {cls.__name__} takes {known}")
        return cls(**cfg)

    # ------------------------------------------------------------------ shapes
    @property
    def input_shape(self) -> Tuple[Optional[int], ...]:
        raise NotImplementedError

    @property
    def latent_dim(self) -> int:
        raise NotImplementedError

    def _check_input(self, where: str, x, arg: str = "x") -> None:
        """``x`` must be ``[batch, *input_shape]``; ``None`` in ``input_shape`` matches any size."""
        name = f"{type(self).__name__}.{where}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(x).__name__}")
        want = self.input_shape
        ok = x.dim() == len(want) + 1 and all(w is None or w == s for w, s in zip(want, x.shape[1:]))
        if not ok:
            raise ValueError(f"{name}: {arg} must have shape [batch, {shape_str(want)[1:-1]}] "
                             f"(input_shape={shape_str(want)}), got {shape_str(x.shape)}")

    def _check_latent(self, where: str, z) -> None:
        name = f"{type(self).__name__}.{where}"
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name}: z must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"{name}: z must have shape [batch, {self.latent_dim}] (latent_dim={self.latent_dim}), "
                             f"got {shape_str(z.shape)}")

    @staticmethod
    def batch_input(batch) -> torch.Tensor:
        """The input tensor of a batch: the tensor itself, or the first item of a tuple/list."""
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise ValueError("loss: got an empty batch")
            batch = batch[0]
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"loss: batch must be a tensor or an (x, ...) tuple, got {type(batch).__name__}")
        return batch

    # The defaults below fit a model with ``encoder``, ``decoder`` and ``criterion`` modules;
    # the recurrent model and the VAE override what differs.
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input("encode", x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check_latent("decode", z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def loss(self, batch) -> torch.Tensor:
        """The reconstruction loss ``criterion(self(x), x)`` of the batch's input."""
        x = self.batch_input(batch)
        return self.criterion(self(x), x)


# ---------------------------------------------------------------------- argument checks
def check_output(where: str, output) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"{where}: unknown output {output!r}; expected one of {', '.join(repr(o) for o in OUTPUTS)}")
    return output


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(where: str, arg: str, value) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{where}: {arg} must be a positive int, got {value!r}")
    return int(value)


def check_int_seq(where: str, arg: str, values, minimum: int) -> Tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{where}: {arg} must be a sequence of positive ints, got {values!r}")
    values = tuple(values)
    if len(values) < minimum:
        raise ValueError(f"{where}: {arg} needs at least {minimum} entries, got {list(values)}")
    for i, v in enumerate(values):
        if not _is_int(v) or v <= 0:
            raise ValueError(f"{where}: {arg}[{i}] must be a positive int, got {v!r} ({arg}={list(values)})")
    return tuple(int(v) for v in values)


def check_backend(where: str, backend) -> Optional[str]:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {backend!r}; expected None or one of {', '.join(BACKENDS)}")
    return backend
