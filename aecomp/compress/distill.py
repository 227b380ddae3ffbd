"""Knowledge distillation: train a (compressed) student on a teacher's softened outputs and the labels.

Hinton, Vinyals, Dean (2015): with teacher logits ``t``, student logits ``s``, temperature ``T``
and mixing weight ``alpha``, the loss of a batch is

    L = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, y)

where ``KL(p || q) = 1/n sum_i sum_c p_ic (log p_ic - log q_ic)`` (batch mean). The ``T^2``
keeps the soft term's gradient on the scale of the hard term's as ``T`` grows (the soft
gradient ``(q - p) / T`` is computed on logits divided by ``T``). ``alpha = 0`` is plain
cross-entropy; ``alpha = 1`` ignores the labels.

The teacher runs in eval mode without gradients, on the same mini-batch as the student; pass a
:class:`Distill` as ``fit_classifier(..., distill=...)`` (``aecomp.compress.net``), which every
training step of the compression pipeline accepts (CompressedNet in any mode, retraining after
pruning, codebook fine-tuning).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Distill", "distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.7) -> torch.Tensor:
    """The loss above (a scalar)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: student logits {list(student_logits.shape)} and teacher logits "
                         f"{list(teacher_logits.shape)} differ in shape")
    T = float(temperature)
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=1)
    soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (T * T)
    if alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


@dataclass
class Distill:
    """A teacher and the soft-target settings (see the module docstring)."""

    teacher: nn.Module
    temperature: float = 4.0
    alpha: float = 0.7

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"Distill: temperature must be a positive number, got {self.temperature!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"Distill: alpha must be in [0, 1], got {self.alpha!r}")
        self.teacher.eval()

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.teacher(x)
        return distillation_loss(student_logits, t, y, self.temperature, self.alpha)
