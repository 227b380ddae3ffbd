"""Federated learning with autoencoder-compressed clients, on Flower (``pip install 'aecomp[fl]'``).

The federation is Flower's (``flwr``: ``ClientApp`` / ``ServerApp``, the message API, its
``FedAvg`` strategy and its simulation engine); this package adds what Flower does not have:

- ``aecomp.fl.apps``: the ``ClientApp`` and ``ServerApp`` of the three set-ups (``baseline``
  LeNet-300-100, ``compressed`` CompressedNet with a federated autoencoder's encoder,
  ``compressed+coded`` the same with packed updates), local training on the fused ops;
- ``aecomp.fl.coding``: int8-per-channel + entropy coding of model updates, as a client Mod
  (``coded_mod``) and the matching server ``CodedGrid``, usable by any Flower app;
- ``aecomp.fl.grid``: ``wire_bytes`` (the serialized size of a Flower message) and
  ``CountingGrid`` (bytes measured per round, both directions);
- ``aecomp.fl.partition``: IID and Dirichlet-over-labels splits, seeded;
- ``aecomp.fl.run``: one simulation for all set-ups, the report (JSON, Markdown, plot);
- ``aecomp.fl.cli``: ``aecomp fl``.

``settings`` and ``partition`` import without flwr; the others need it.
"""
from __future__ import annotations

from .settings import SETUPS, FLSettings

__all__ = ["SETUPS", "FLSettings"]
