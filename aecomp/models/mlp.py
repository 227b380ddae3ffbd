"""``Autoencoder``: the fully connected autoencoder, both halves a ``FusedMLP``.

For ``dims = (d_0, d_1, ..., d_L)``:

    encoder:  d_0 -relu-> d_1 -relu-> ... -relu-> d_{L-1} -none-> d_L      (z is linear)
    decoder:  d_L -relu-> d_{L-1} -relu-> ... -relu-> d_1 -output-> d_0

    loss = mean over all elements of (decoder(encoder(x)) - x)^2      (one fused mse_loss)

``output="sigmoid"`` suits data in [0, 1] (pixels); ``"none"`` anything else. ``model.encoder``
and ``model.decoder`` are ``FusedMLP`` modules, so a compression step can keep the encoder as a
feature extractor; their state_dicts equal those of the plain ``nn.Sequential`` equivalents.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple


from ..nn import FusedMLP, FusedMSELoss
from .base import AutoencoderBase, check_backend, check_int_seq, check_output


class Autoencoder(AutoencoderBase):
    TYPE = "mlp"

    def __init__(self, dims: Sequence[int] = (784, 128, 64, 32), output: str = "sigmoid",
                 backend: Optional[str] = None) -> None:
        super().__init__()
        dims = check_int_seq("Autoencoder", "dims", dims, minimum=2)
        check_output("Autoencoder", output)
        check_backend("Autoencoder", backend)
        self._set_config(dims=dims, output=output, backend=backend)
        n = len(dims) - 1
        self.encoder = FusedMLP(dims, ["relu"] * (n - 1) + ["none"], backend=backend)
        self.decoder = FusedMLP(dims[::-1], ["relu"] * (n - 1) + [output], backend=backend)
        self.criterion = FusedMSELoss("mean", backend=backend)
        self.dims = dims

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (self.dims[0],)

    @property
    def latent_dim(self) -> int:
        return self.dims[-1]


    def fused_chain(self):
        """``(layers, backend)``: the loss is ``mse(chain(x), x)`` over these layers, which is
        what ``aecomp.train.FusedStep`` needs to run a training step as one fused call."""
        cls = type(self)
        if cls.loss is not AutoencoderBase.loss or cls.forward is not AutoencoderBase.forward:
            raise NotImplementedError(f"FusedStep: {cls.__name__} overrides loss or forward")
        if self.criterion.reduction != "mean":
            raise NotImplementedError("FusedStep: the fused chain step takes reduction='mean'")
        return list(self.encoder.layers) + list(self.decoder.layers), self.encoder.backend
