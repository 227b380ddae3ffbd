"""``CompressedNet``: an autoencoder's encoder (decoder dropped) plus a small classification head.

The network is one chain of fused layers::

    x --encoder (FusedMLP, from a trained autoencoder)--> z --head (FusedMLP)--> logits

and runs as ONE ``aecomp.ops.mlp`` call over the concatenated layers of both halves (the
encoder ends with a linear code ``z``, so the chain is ``in -relu-> ... -none-> K -...-> C``).

The three ways an autoencoder compresses a network (``mode``):

==========  ====================================================================================
mode        what trains
==========  ====================================================================================
replace     the encoder takes the place of a baseline network's front layers: for the baseline
            ``in-300-100-C`` (LeNet-300-100) the layer ``in -> 300`` is replaced by the encoder
            ``in -> ... -> K`` and the rest of the baseline, re-sized to take ``K`` inputs, is
            the head ``K -relu-> 100 -> C``; everything trains end-to-end, starting from the
            pretrained encoder, at the normal learning rate.
frozen      the encoder is frozen (``requires_grad=False``); only the head (default: one linear
            layer ``K -> C``) trains -- few trainable parameters.
finetune    encoder and head train together at a small learning rate (``lr * finetune_factor``),
            starting from a trained ``frozen`` head (a head trained from scratch at a small
            learning rate would barely move).
==========  ====================================================================================

Training (:func:`fit_classifier`): Adam on the cross-entropy
``L = -1/n sum_i log softmax(f(x_i))_{y_i}``, mini-batches from ``aecomp.data.InMemoryLoader``,
and the weights of the epoch with the best validation accuracy are kept (ties: the later
epoch). Masks (pruning) are re-applied after every optimizer step, so pruned weights stay zero.

``classifier_config`` / ``build_model`` describe and rebuild a CompressedNet, a plain MLP
classifier (the baselines) or any ``aecomp.models`` autoencoder from a JSON-able config, which
is what checkpoints store.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..nn import FusedLinear, FusedMLP

__all__ = [
    "MODES",
    "CompressedNet",
    "accuracy",
    "build_model",
    "classifier_config",
    "fit_classifier",
    "linear_layers",
    "mlp_from_layers",
    "train_compressed",
]

MODES = ("replace", "frozen", "finetune")


def _check_mode(where: str, mode) -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: unknown mode {mode!r}; expected one of {', '.join(repr(m) for m in MODES)}")
    return mode


class CompressedNet(nn.Module):
    """``head(encoder(x))``: a pretrained encoder as a small feature extractor, and a head.

    ``encoder`` and ``head`` are ``FusedMLP`` modules (``head=None`` makes the default head, one
    linear layer ``latent -> num_classes``). ``mode`` (replace / frozen / finetune, see the
    module docstring) decides which parameters train: in ``frozen`` mode the encoder's
    parameters have ``requires_grad=False``.

    state_dict keys: ``encoder.<i>.weight/bias`` and ``head.<i>.weight/bias``, the layout of the
    equivalent ``nn.Sequential`` halves (see ``FusedMLP``).
    """

    def __init__(self, encoder: FusedMLP, head: Optional[FusedMLP] = None, num_classes: Optional[int] = None,
                 mode: str = "frozen", backend: Optional[str] = None) -> None:
        super().__init__()
        if not isinstance(encoder, FusedMLP):
            raise TypeError(f"CompressedNet: encoder must be a FusedMLP (an autoencoder's .encoder), "
                            f"got {type(encoder).__name__}")
        _check_mode("CompressedNet", mode)
        latent = encoder.dims[-1]
        if head is None:
            if num_classes is None or int(num_classes) < 1:
                raise ValueError(f"CompressedNet: give a head or num_classes >= 1 (got num_classes={num_classes!r})")
            head = FusedMLP([latent, int(num_classes)], "none", backend=backend)
        if not isinstance(head, FusedMLP):
            raise TypeError(f"CompressedNet: head must be a FusedMLP, got {type(head).__name__}")
        if head.dims[0] != latent:
            raise ValueError(f"CompressedNet: the head takes {head.dims[0]} features but the encoder gives {latent}")
        if num_classes is not None and head.dims[-1] != int(num_classes):
            raise ValueError(f"CompressedNet: the head gives {head.dims[-1]} outputs but num_classes={num_classes}")
        self.encoder = encoder
        self.head = head
        self.backend = backend if backend is not None else encoder.backend
        self.mode = mode
        self.set_mode(mode)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_autoencoder(cls, autoencoder: nn.Module, num_classes: int, mode: str = "frozen",
                         head_hidden: Sequence[int] = (), backend: Optional[str] = None) -> "CompressedNet":
        """Take ``autoencoder.encoder`` (copied; the decoder is dropped) and add a head.

        The head is ``K -relu-> h_1 -relu-> ... -> num_classes`` for ``head_hidden = (h_1, ...)``;
        ``()`` (default) is one linear layer ``K -> num_classes``.
        """
        _check_mode("CompressedNet.from_autoencoder", mode)
        encoder = as_chain(getattr(autoencoder, "encoder", None))
        if not isinstance(encoder, FusedMLP):
            raise TypeError(f"CompressedNet.from_autoencoder: expected an autoencoder whose .encoder is a FusedMLP "
                            f"(aecomp.models.Autoencoder) or an nn.Sequential of Linear/ReLU/Sigmoid (plain or "
                            f"accelerated), got {type(autoencoder).__name__}")
        encoder = copy.deepcopy(encoder)
        dims = [encoder.dims[-1], *[int(h) for h in head_hidden], int(num_classes)]
        head = FusedMLP(dims, ["relu"] * (len(dims) - 2) + ["none"], backend=backend)
        return cls(encoder, head, mode=mode, backend=backend)

    def set_mode(self, mode: str) -> "CompressedNet":
        """Freeze the encoder (``frozen``) or let it train (``replace``, ``finetune``)."""
        self.mode = _check_mode("CompressedNet.set_mode", mode)
        self.encoder.requires_grad_(mode != "frozen")
        return self

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> Tuple[FusedLinear, ...]:
        return self.encoder.layers + self.head.layers

    @property
    def latent_dim(self) -> int:
        return self.encoder.dims[-1]

    @property
    def in_features(self) -> int:
        return self.encoder.dims[0]

    @property
    def num_classes(self) -> int:
        return self.head.dims[-1]

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def config(self) -> Dict[str, Any]:
        return classifier_config(self)

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.layers
        return ops.mlp(x, [m.weight for m in layers], [m.bias for m in layers], [m.activation for m in layers],
                       backend=self.backend)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The code ``z = encoder(x)``."""
        return self.encoder(x)

    def to_sequential(self) -> nn.Sequential:
        """A plain-torch copy (``nn.Sequential`` of Linear/ReLU/Sigmoid) computing the same function."""
        return nn.Sequential(*self.encoder.to_sequential(), *self.head.to_sequential()).train(self.training)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, params={self.num_params()}, trainable={self.num_params(True)}"


# ---------------------------------------------------------------------- layers <-> models
def as_chain(model):
    """A FusedMLP view (shared parameters) of an ``nn.Sequential`` of Linear/ReLU/Sigmoid, plain or
    as ``aecomp.accelerate`` leaves it (same state_dict keys); anything else is returned as is."""
    if isinstance(model, nn.Sequential):
        try:
            return FusedMLP.from_sequential(model, share=True)
        except ValueError:
            return model
    return model


def linear_layers(model: nn.Module) -> Tuple[FusedLinear, ...]:
    """The chain of ``FusedLinear`` layers of a CompressedNet or a FusedMLP classifier."""
    if isinstance(model, (CompressedNet, FusedMLP)):
        return model.layers
    raise TypeError(f"expected a CompressedNet or a FusedMLP, got {type(model).__name__}")


def mlp_from_layers(weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
                    activations: Sequence[str], backend: Optional[str] = None) -> FusedMLP:
    """A FusedMLP holding the given weights (``[out, in]``) and biases."""
    dims = [int(weights[0].shape[1])] + [int(w.shape[0]) for w in weights]
    has_bias = [b is not None for b in biases]
    if len(set(has_bias)) > 1:
        raise ValueError("mlp_from_layers: give a bias for every layer or for none")
    mlp = FusedMLP(dims, list(activations), bias=has_bias[0], backend=backend)
    with torch.no_grad():
        for layer, w, b in zip(mlp.layers, weights, biases):
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
    return mlp


def _mlp_config(mlp: FusedMLP) -> Dict[str, Any]:
    return {"dims": list(mlp.dims), "activations": list(mlp.activations)}


def classifier_config(model: nn.Module) -> Dict[str, Any]:
    """JSON-able description: ``{"type": "compressed", "encoder": ..., "head": ..., "mode": ...}``
    or ``{"type": "classifier", "dims": ..., "activations": ...}``."""
    if isinstance(model, CompressedNet):
        return {"type": "compressed", "encoder": _mlp_config(model.encoder), "head": _mlp_config(model.head),
                "mode": model.mode}
    if isinstance(model, FusedMLP):
        return {"type": "classifier", **_mlp_config(model)}
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        return config
    raise TypeError(f"no config for a {type(model).__name__}")


def build_model(config: Dict[str, Any], backend: Optional[str] = None) -> nn.Module:
    """Rebuild (untrained) the model a config describes: ``compressed``, ``classifier``, or an
    ``aecomp.models`` autoencoder type (``mlp``, ``conv``, ``rnn``, ``vae``)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"build_model: config must be a dict with a 'type' key, got {config!r}")
    kind = config["type"]
    if kind == "compressed":
        enc, head = config["encoder"], config["head"]
        return CompressedNet(FusedMLP(enc["dims"], enc["activations"], backend=backend),
                             FusedMLP(head["dims"], head["activations"], backend=backend),
                             mode=config.get("mode", "frozen"), backend=backend)
    if kind == "classifier":
        return FusedMLP(config["dims"], config["activations"], backend=backend)
    from .. import models

    return models.build(config)


# ---------------------------------------------------------------------- training
@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy in percent: ``100 * mean(argmax f(x_i) == y_i)``."""
    if x.shape[0] == 0:
        return float("nan")
    was = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    finally:
        model.train(was)
    return 100.0 * correct / x.shape[0]


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, x_val: Optional[torch.Tensor] = None,
                   y_val: Optional[torch.Tensor] = None, epochs: int = 30, lr: float = 1e-3, batch_size: int = 64,
                   weight_decay: float = 0.0, seed: int = 0,
                   param_groups: Optional[List[Dict[str, Any]]] = None,
                   masks: Optional[Dict[nn.Parameter, torch.Tensor]] = None) -> Dict[str, Any]:
    """Train ``model`` (logits out) with Adam on the cross-entropy; keep the best-validation weights.

    ``param_groups`` overrides the optimizer's groups (default: every parameter with
    ``requires_grad``, at ``lr``). ``masks`` maps a parameter to a 0/1 tensor of its shape;
    after each step ``p <- p * mask`` (pruned weights stay exactly zero). Returns
    ``{"epochs", "best_epoch", "val_accuracy", "train_loss"}``.
    """
    from ..data import InMemoryLoader

    if epochs < 0:
        raise ValueError(f"fit_classifier: epochs must be >= 0, got {epochs}")
    groups = param_groups if param_groups is not None else [
        {"params": [p for p in model.parameters() if p.requires_grad]}]
    groups = [g for g in groups if list(g["params"])]
    result: Dict[str, Any] = {"epochs": epochs, "best_epoch": 0, "val_accuracy": None, "train_loss": None}
    has_val = x_val is not None and y_val is not None and x_val.shape[0] > 0
    best_acc = accuracy(model, x_val, y_val) if has_val else -math.inf
    best_state = copy.deepcopy(model.state_dict()) if has_val else None
    if not groups or epochs == 0:
        result["val_accuracy"] = best_acc if has_val else None
        return result
    optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    loader = InMemoryLoader(x, y, batch_size=batch_size, seed=seed)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    for epoch in range(1, epochs + 1):
        loss_sum.zero_()
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for p, m in masks.items():
                        p.mul_(m)
            loss_sum += loss.detach().double() * xb.shape[0]
        result["train_loss"] = float(loss_sum) / x.shape[0]
        if not math.isfinite(result["train_loss"]):
            raise FloatingPointError(f"fit_classifier: the training loss became {result['train_loss']} in epoch "
                                     f"{epoch}; lower the learning rate")
        if has_val:
            acc = accuracy(model, x_val, y_val)
            if acc >= best_acc:
                best_acc, result["best_epoch"] = acc, epoch
                best_state = copy.deepcopy(model.state_dict())
    if has_val:
        model.load_state_dict(best_state)
        result["val_accuracy"] = best_acc
    model.eval()
    return result


def train_compressed(net: CompressedNet, x: torch.Tensor, y: torch.Tensor, *, x_val=None, y_val=None,
                     mode: Optional[str] = None, epochs: int = 30, lr: float = 1e-3, finetune_factor: float = 0.1,
                     head_ready: bool = False, batch_size: int = 64, seed: int = 0) -> Dict[str, Any]:
    """Train ``net`` the way ``mode`` (default ``net.mode``) says (see the module docstring).

    ``finetune``: unless ``head_ready`` (the head was already trained with the encoder frozen),
    the head is first trained for ``epochs`` with the encoder frozen; then all parameters train
    for ``epochs`` at ``lr * finetune_factor``.
    """
    mode = _check_mode("train_compressed", mode or net.mode)
    kw = dict(x_val=x_val, y_val=y_val, batch_size=batch_size, seed=seed)
    if mode == "finetune":
        if not head_ready:
            net.set_mode("frozen")
            fit_classifier(net, x, y, epochs=epochs, lr=lr, **kw)
        net.set_mode("finetune")
        return fit_classifier(net, x, y, epochs=epochs, lr=lr * finetune_factor, **kw)
    net.set_mode(mode)
    return fit_classifier(net, x, y, epochs=epochs, lr=lr, **kw)
