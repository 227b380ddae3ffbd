"""Federated learning on Flower with compressed models and compressed messages (``pip install 'aecomp[fl]'``).

The federation is Flower's (``flwr``: ``ClientApp`` / ``ServerApp``, the message API, ``FedAvg``,
its simulation engine and its deployment runtime); this package adds what Flower does not have:

- :func:`compression_mod` / :class:`CompressionGrid` (``aecomp.fl.compression``): a client Mod and
  its server-side Grid that send every model as deltas against the last global model, top-k
  sparsified with error feedback, int8 or k-means coded and entropy-coded, both directions; for
  any Flower app and any torch model;
- ``aecomp.fl.grid``: ``wire_bytes`` (the serialized size of a Flower message), ``CountingGrid``
  (bytes per round, both directions) and ``OrderedGrid`` (replies in partition order);
- ``aecomp.fl.apps`` / ``aecomp.fl.server``: the ClientApp and ServerApp of ``aecomp fl`` (LeNet
  baseline, autoencoder-compressed net, right-sized net; each plain and through the Mod);
- ``aecomp.fl.engine``: the processes of either engine, started and stopped;
- ``aecomp.fl.run`` / ``aecomp.fl.cli``: ``aecomp fl`` and its report.

``settings``, ``partition`` and ``codec`` import without flwr; the others need it.
"""
from __future__ import annotations

from .settings import SETUPS, FLSettings

__all__ = ["SETUPS", "Codec", "CompressionGrid", "FLSettings", "compression_mod", "parse_codec"]


def __getattr__(name):  # flwr is imported only when the Mod or the Grid is asked for
    if name in ("compression_mod", "CompressionGrid"):
        from . import compression

        return getattr(compression, name)
    if name in ("Codec", "parse_codec"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(f"module 'aecomp.fl' has no attribute {name!r}")
