"""The baselines a compressed network is measured against, on the same data and splits.

* **Uncompressed classifier**: LeNet-300-100, the fully connected ``in-300-100-C`` network
  (ReLU after both hidden layers), as a ``FusedMLP``. :data:`DEEP_COMPRESSION_LENET_300_100` is
  the published row for it from Deep Compression (Han, Mao, Dally, ICLR 2016, Table 1 and
  Table 2): 267K weights, 1070 KB -> 27 KB (40x) with pruning + trained quantization + Huffman
  coding, top-1 error 1.64% -> 1.58% on MNIST.
* **PCA** with the same number of components ``K`` as the autoencoder's code (scikit-learn):
  ``z = (x - mu) V^T`` with ``V`` the top-``K`` principal directions (``[K, d]``), the
  reconstruction ``x_hat = z V + mu``, and a multinomial logistic regression
  ``softmax(z W^T + b)`` on the components. PCA is the optimal linear autoencoder: among all
  rank-``K`` affine maps it minimises the squared reconstruction error on the data it is fitted
  to, so a purely linear autoencoder (no activations) trained to convergence matches it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..nn import FusedMLP

__all__ = [
    "DEEP_COMPRESSION_LENET_300_100",
    "PCABaseline",
    "PCAClassifier",
    "lenet_300_100",
    "linear_autoencoder",
]

# Han, Mao, Dally. "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
# Quantization and Huffman Coding." ICLR 2016 (Tables 1 and 2, LeNet-300-100 on MNIST).
DEEP_COMPRESSION_LENET_300_100: Dict[str, Any] = {
    "source": "Han et al., Deep Compression, ICLR 2016 (Table 1)",
    "network": "LeNet-300-100",
    "dataset": "MNIST",
    "params": 267_000,
    "bytes_before": 1070 * 1024,
    "bytes_after": 27 * 1024,
    "ratio": 40,
    "error_before_pct": 1.64,
    "error_after_pct": 1.58,
    "weights_kept_pct": 8,
    "method": "pruning + trained quantization (6 bits) + Huffman coding",
}


def lenet_300_100(in_features: int, num_classes: int, hidden: Sequence[int] = (300, 100),
                  backend: Optional[str] = None) -> FusedMLP:
    """The uncompressed baseline ``in -relu-> 300 -relu-> 100 -> num_classes`` (logits)."""
    dims = [int(in_features), *[int(h) for h in hidden], int(num_classes)]
    return FusedMLP(dims, ["relu"] * len(hidden) + ["none"], backend=backend)


def linear_autoencoder(in_features: int, latent: int, backend: Optional[str] = None):
    """The purely linear autoencoder ``x -> z = x A^T + a -> x_hat = z B^T + b`` (no
    activations, linear output): what PCA computes in closed form."""
    from ..models import Autoencoder

    return Autoencoder((int(in_features), int(latent)), output="none", backend=backend)


class PCAClassifier(nn.Module):
    """PCA projection then a linear classifier, as plain tensors (for latency and storage).

    ``logits = ((x - mean) @ components.T) @ weight.T + bias``.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().contiguous())
        self.register_buffer("components", components.float().contiguous())
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", bias.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) @ self.components.T
        return torch.addmm(self.bias, z, self.weight.T)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.components + self.mean

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.buffers())

    @property
    def macs(self) -> int:
        """Multiply-adds per sample: projection ``d*K`` plus classifier ``K*C``."""
        k, d = self.components.shape
        return d * k + k * self.weight.shape[0]


@dataclass
class PCABaseline:
    """``fit(x, y, K)``: scikit-learn PCA with ``K`` components + logistic regression on them."""

    pca: Any
    classifier: Optional[Any]
    latent: int

    @classmethod
    def fit(cls, x: torch.Tensor, y: Optional[torch.Tensor], latent: int, seed: int = 0,
            max_iter: int = 1000, x_fit: Optional[torch.Tensor] = None) -> "PCABaseline":
        """``x_fit``: the (unlabelled) samples the components are fitted on (default ``x``); the
        classifier is fitted on ``x``, ``y``."""
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        xn = x.detach().cpu().double().numpy()
        fit_on = xn if x_fit is None else x_fit.detach().cpu().double().numpy()
        pca = PCA(n_components=int(latent), random_state=seed).fit(fit_on)
        clf = None
        if y is not None:
            z = pca.transform(xn)
            clf = LogisticRegression(max_iter=max_iter).fit(z, y.cpu().numpy())
        return cls(pca, clf, int(latent))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        xn = x.detach().cpu().double().numpy()
        return torch.from_numpy(self.pca.inverse_transform(self.pca.transform(xn))).float()

    def recon_mse(self, x: torch.Tensor) -> float:
        """``sum (x_hat - x)^2 / numel``, the same per-element MSE the autoencoders report."""
        return float(((self.reconstruct(x).double() - x.double()) ** 2).mean())

    def to_module(self, num_classes: Optional[int] = None) -> PCAClassifier:
        """The fitted PCA + classifier as a :class:`PCAClassifier` whose logit ``c`` is class ``c``
        (classes missing from the training labels get a bias of -1e9, so they never win)."""
        if self.classifier is None:
            raise ValueError("PCABaseline.to_module: fitted without labels, so there is no classifier")
        classes = np.asarray(self.classifier.classes_).astype(np.int64)
        coef = np.asarray(self.classifier.coef_, dtype=np.float64)
        intercept = np.asarray(self.classifier.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # binary: sklearn keeps one row, the logit of classes[1] against classes[0]
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros_like(intercept), intercept])
        c = int(num_classes) if num_classes is not None else int(classes.max()) + 1
        weight = np.zeros((c, coef.shape[1]))
        bias = np.full(c, -1e9)
        weight[classes] = coef
        bias[classes] = intercept
        return PCAClassifier(torch.from_numpy(np.asarray(self.pca.mean_)), torch.from_numpy(self.pca.components_),
                             torch.from_numpy(weight), torch.from_numpy(bias))
