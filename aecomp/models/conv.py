"""``ConvAutoencoder``: strided convolutions down, a fused linear bottleneck, transposed convolutions up.

For ``channels = (c_1, ..., c_K)`` and an ``S x S`` image with ``C`` channels:

    encoder:  [C, S, S] -conv3x3/2, relu-> [c_1, S/2, S/2] -> ... -> [c_K, S/2^K, S/2^K]
              -flatten-> FusedLinear(c_K (S/2^K)^2 -> latent, none)
    decoder:  FusedLinear(latent -> c_K (S/2^K)^2, relu) -unflatten-> convT3x3/2, relu ... ->
              convT3x3/2 -> [C, S, S] -output->

    loss = mean over all elements of (x_hat - x)^2      (fused mse_loss)

Each stride-2 convolution (kernel 3, padding 1) halves the side exactly when it is even, and
each transposed one (kernel 3, padding 1, output_padding 1) doubles it, so the model takes any
``image_size`` divisible by ``2**len(channels)``: with the default two stages 28 (MNIST,
28 -> 14 -> 7) and 8 (sklearn digits, 8 -> 4 -> 2), also 32, 64, ...; 28 does not work with three
stages (28 / 8 is not whole). The constructor says so when the size does not fit.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import nn

from ..nn import FusedLinear, FusedMSELoss
from .base import AutoencoderBase, check_backend, check_int_seq, check_output, check_positive_int


class ConvAutoencoder(AutoencoderBase):
    TYPE = "conv"

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: Sequence[int] = (16, 32),
                 latent: int = 32, output: str = "sigmoid", backend: Optional[str] = None) -> None:
        super().__init__()
        where = "ConvAutoencoder"
        in_channels = check_positive_int(where, "in_channels", in_channels)
        image_size = check_positive_int(where, "image_size", image_size)
        channels = check_int_seq(where, "channels", channels, minimum=1)
        latent = check_positive_int(where, "latent", latent)
        check_output(where, output)
        check_backend(where, backend)
        stages = len(channels)
        if image_size % (2 ** stages) != 0:
            fits = [k for k in range(1, 6) if image_size % (2 ** k) == 0]
            raise ValueError(
                f"{where}: image_size={image_size} must be divisible by 2**len(channels) = {2 ** stages} "
                f"(each of the {stages} stride-2 stages halves it; channels={list(channels)}); "
                + (f"image_size={image_size} works with up to {max(fits)} stage(s)" if fits
                   else "use an even image_size")
            )
        self._set_config(in_channels=in_channels, image_size=image_size, channels=channels, latent=latent,
                         output=output, backend=backend)
        self.in_channels, self.image_size, self.channels, self.latent = in_channels, image_size, channels, latent
        side = image_size // (2 ** stages)
        flat = channels[-1] * side * side

        enc = []
        prev = in_channels
        for c in channels:
            enc += [nn.Conv2d(prev, c, kernel_size=3, stride=2, padding=1), nn.ReLU()]
            prev = c
        enc += [nn.Flatten(1), FusedLinear(flat, latent, activation="none", backend=backend)]
        self.encoder = nn.Sequential(*enc)

        dec = [FusedLinear(latent, flat, activation="relu", backend=backend),
               nn.Unflatten(1, (channels[-1], side, side))]
        outs = list(channels[::-1][1:]) + [in_channels]
        prev = channels[-1]
        for i, c in enumerate(outs):
            dec.append(nn.ConvTranspose2d(prev, c, kernel_size=3, stride=2, padding=1, output_padding=1))
            if i < len(outs) - 1:
                dec.append(nn.ReLU())
            prev = c
        dec.append(nn.Sigmoid() if output == "sigmoid" else nn.Identity())
        self.decoder = nn.Sequential(*dec)
        self.criterion = FusedMSELoss("mean", backend=backend)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def latent_dim(self) -> int:
        return self.latent

