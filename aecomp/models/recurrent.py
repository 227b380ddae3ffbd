"""``RecurrentAutoencoder``: a sequence autoencoder for ``[batch, time, features]`` input.

    encoder:  x -> RNN (GRU or LSTM, hidden units) -> last hidden state h_T -> FusedLinear(hidden -> latent)
    decoder:  z repeated at every time step -> RNN (hidden units) -> FusedLinear(hidden -> features, output)
              applied to every step's hidden state

    loss = mean over all elements of (x_hat - x)^2      (fused mse_loss)

The decoder is *repeat-latent*, not autoregressive: every step sees the same code ``z`` and the
recurrence carries the position. Why: one RNN call per sequence instead of one per step (it
runs as one cuDNN/MKL call and compiles without a Python loop over time), no teacher forcing
and no gap between training and inference, and the code has to hold the whole sequence
because the decoder never sees the input. The price is a weaker model for very long
sequences, which is not what this library targets.

``seq_len=None`` takes sequences of any length (``input_shape`` is ``(None, features)``; ``decode``
then needs ``seq_len=``); an int fixes it and ``forward`` checks it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..nn import FusedLinear, FusedMSELoss
from .base import AutoencoderBase, check_backend, check_output, check_positive_int

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentAutoencoder(AutoencoderBase):
    TYPE = "rnn"

    def __init__(self, features: int, hidden: int = 64, latent: int = 16, cell: str = "gru",
                 seq_len: Optional[int] = None, output: str = "none", backend: Optional[str] = None) -> None:
        super().__init__()
        where = "RecurrentAutoencoder"
        features = check_positive_int(where, "features", features)
        hidden = check_positive_int(where, "hidden", hidden)
        latent = check_positive_int(where, "latent", latent)
        if cell not in CELLS:
            raise ValueError(f"{where}: unknown cell {cell!r}; expected one of {', '.join(repr(c) for c in CELLS)}")
        if seq_len is not None:
            seq_len = check_positive_int(where, "seq_len", seq_len)
        check_output(where, output)
        check_backend(where, backend)
        self._set_config(features=features, hidden=hidden, latent=latent, cell=cell, seq_len=seq_len,
                         output=output, backend=backend)
        self.features, self.hidden, self.latent, self.cell, self.seq_len = features, hidden, latent, cell, seq_len
        rnn = CELLS[cell]
        self.encoder_rnn = rnn(features, hidden, batch_first=True)
        self.to_latent = FusedLinear(hidden, latent, activation="none", backend=backend)
        self.decoder_rnn = rnn(latent, hidden, batch_first=True)
        self.to_output = FusedLinear(hidden, features, activation=output, backend=backend)
        self.criterion = FusedMSELoss("mean", backend=backend)

    @property
    def input_shape(self) -> Tuple[Optional[int], int]:
        return (self.seq_len, self.features)

    @property
    def latent_dim(self) -> int:
        return self.latent

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, time, features] -> [batch, latent]`` from the encoder's last hidden state."""
        self._check_input("encode", x)
        _, state = self.encoder_rnn(x)
        h = state[0] if self.cell == "lstm" else state  # LSTM state is (h, c)
        return self.to_latent(h[-1])

    def decode(self, z: torch.Tensor, seq_len: Optional[int] = None) -> torch.Tensor:
        """``[batch, latent] -> [batch, seq_len, features]``; ``seq_len`` defaults to the configured one."""
        self._check_latent("decode", z)
        steps = seq_len if seq_len is not None else self.seq_len
        if steps is None:
            raise ValueError("RecurrentAutoencoder.decode: seq_len is needed (the model was built with seq_len=None)")
        z_seq = z.unsqueeze(1).expand(z.shape[0], steps, z.shape[1]).contiguous()
        h, _ = self.decoder_rnn(z_seq)
        return self.to_output(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), seq_len=x.shape[1])

    def loss(self, batch) -> torch.Tensor:
        x = self.batch_input(batch)
        return self.criterion(self(x), x)
