"""The settings of a federated run (no flwr import here: the CLI checks them before Flower loads)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["SETUPS", "FLSettings"]

SETUPS = ("baseline", "compressed", "compressed+coded")


@dataclass(frozen=True)
class FLSettings:
    """Everything that shapes a federated run (defaults suit the digits data)."""

    data: str = "digits"
    clients: int = 10
    rounds: int = 20
    partition: str = "iid"  # iid | dirichlet:ALPHA
    setups: Tuple[str, ...] = SETUPS
    ae_rounds: Optional[int] = None  # of the rounds, how many train the autoencoder; None: rounds // 4
    local_epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-2  # Adam, the classifiers
    ae_lr: float = 1e-2  # Adam, the autoencoder
    latent: int = 24
    hidden: int = 0  # encoder/decoder hidden width; 0: none (in -> latent -> in)
    head_hidden: int = 64  # the CompressedNet head: latent -relu-> head_hidden -> classes
    seed: int = 0
    test_fraction: float = 0.2
    round_timeout: float = 600.0  # seconds a round waits for replies
    drop: Tuple[Tuple[int, int], ...] = ()  # (round, partition id): that client drops out mid-round
    backend: Optional[str] = None  # aecomp kernel backend (None: automatic)
    num_cpus: Optional[int] = None  # Ray CPUs (None: all); each client actor takes one

    def ae_rounds_for(self, setup: str) -> int:
        if setup == "baseline":
            return 0
        return self.ae_rounds if self.ae_rounds is not None else max(1, self.rounds // 4)
