"""``VAE``: a variational autoencoder with fully connected (fused) encoder and decoder.

For ``dims = (d_0, ..., d_{L-1}, k)`` (``k`` the latent width):

    encoder:  x -> FusedMLP(d_0 -relu-> ... -relu-> d_{L-1}) -> FusedLinear(d_{L-1} -> 2k) = (mu, logvar)
    sample:   z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)           (reparameterisation)
    decoder:  FusedMLP(k -relu-> d_{L-1} -relu-> ... -output-> d_0)

Loss (``loss(batch)``), per sample then averaged over the batch ``B``:

    recon = (1/B) sum_b sum_j (x_hat_bj - x_bj)^2                      (fused mse_loss, reduction="sum")
    KL    = (1/B) sum_b sum_i -1/2 (1 + logvar_bi - mu_bi^2 - exp(logvar_bi))
    loss  = recon + beta * KL

``recon`` is the negative log-likelihood of a Gaussian decoder with variance 1/2, up to a
constant, so with ``beta = 1`` the loss is the negative ELBO (summed over features, not averaged:
averaging would weaken the reconstruction term by a factor ``d_0`` against the KL term).

``encode(x)`` returns ``mu`` (the deterministic code, the same contract as the other models'
``encode``); ``posterior(x)`` returns ``(mu, logvar)``. ``forward(x)`` is the deterministic
reconstruction ``decode(mu)``; only ``loss`` samples. ``sample(n)`` decodes ``z ~ N(0, I)``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from .. import ops
from ..nn import FusedLinear, FusedMLP
from .base import AutoencoderBase, check_backend, check_int_seq, check_output


class VAE(AutoencoderBase):
    TYPE = "vae"

    def __init__(self, dims: Sequence[int] = (784, 256, 32), output: str = "sigmoid", beta: float = 1.0,
                 backend: Optional[str] = None) -> None:
        super().__init__()
        dims = check_int_seq("VAE", "dims", dims, minimum=3)
        check_output("VAE", output)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ValueError(f"VAE: beta must be a non-negative number, got {beta!r}")
        check_backend("VAE", backend)
        self._set_config(dims=dims, output=output, beta=float(beta), backend=backend)
        self.dims, self.beta, self.backend = dims, float(beta), backend
        hidden = dims[:-1]
        self.encoder = FusedMLP(hidden, "relu", backend=backend)
        self.head = FusedLinear(hidden[-1], 2 * dims[-1], activation="none", backend=backend)  # -> (mu, logvar)
        n = len(dims) - 1
        self.decoder = FusedMLP(dims[::-1], ["relu"] * (n - 1) + [output], backend=backend)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (self.dims[0],)

    @property
    def latent_dim(self) -> int:
        return self.dims[-1]

    def posterior(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z | x), each ``[batch, latent]``."""
        self._check_input("posterior", x)
        mu, logvar = self.head(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean ``mu`` (deterministic)."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check_latent("decode", z)
        return self.decoder(z)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``z = mu + exp(logvar / 2) * eps``; gradients flow to mu and logvar, not through eps."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def loss_terms(self, batch) -> Dict[str, torch.Tensor]:
        """``{"loss", "recon", "kl"}``, each a scalar averaged over the batch (see the module docstring)."""
        x = self.batch_input(batch)
        mu, logvar = self.posterior(x)
        z = self.reparameterize(mu, logvar)
        x_hat = self.decoder(z)
        b = max(x.shape[0], 1)
        recon = ops.mse_loss(x_hat, x, "sum", backend=self.backend) / b
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / b
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}

    def loss(self, batch) -> torch.Tensor:
        return self.loss_terms(batch)["loss"]

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` samples ``decode(z)``, ``z ~ N(0, I)``, on the model's device and dtype (no grad)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"VAE.sample: n must be a non-negative int, got {n!r}")
        w = self.head.weight
        z = torch.randn(n, self.latent_dim, generator=generator, device=w.device, dtype=w.dtype)
        return self.decoder(z)
