"""The chain op in bfloat16 on the CPU's matrix engine, for a user's own training loop.

``mlp_bf16(x, weights, biases, activations)`` computes what ``aecomp.ops.mlp`` computes, with
every GEMM in bf16 on the matrix engine (``aecomp._C.mlp_bf16_forward`` / ``mlp_bf16_backward``,
csrc/cpu/mlp_bf16.cpp on bf16_chain.h: oneDNN's brgemm through PyTorch, AMX tiles or
AVX512-BF16): float32 in, float32 out, float32 gradients of float32 parameters (the master
weights stay float32: an optimizer steps them as usual). The error model is the bf16 step's
(csrc/cpu/train_step_bf16.cpp): each GEMM operand rounded to bf16 once.

It is what ``aecomp.accelerate(model, precision="bf16")`` runs (an opt-in, like autocast):
:func:`applies` says when -- float32 CPU tensors, a non-empty batch, the matrix engine running
bf16 here (``aecomp info``) -- and the modules fall back to the float32 op otherwise. The
backward is first-order only (``create_graph=True`` raises).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from .. import _ext


def engine() -> bool:
    """Whether bf16 GEMMs run on the matrix engine now (``aecomp._C._brgemm_bf16()``)."""
    mod = _ext.load()[0]
    return mod is not None and hasattr(mod, "_brgemm_bf16") and mod._brgemm_bf16()


def applies(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> bool:
    """True when :func:`mlp_bf16` runs these tensors (else the caller takes the float32 op)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() < 1 or x.numel() == 0:
        return False
    if any(w.device.type != "cpu" or w.dtype != torch.float32 for w in weights):
        return False
    return engine()


class _MlpBf16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, activations: str, n: int, *params):
        weights = [p.contiguous() for p in params[:n]]
        biases = [None if b is None else b.contiguous() for b in params[n:]]
        need_w = [ctx.needs_input_grad[3 + i] for i in range(n)]
        need_b = [ctx.needs_input_grad[3 + n + i] for i in range(n)]
        need_x = ctx.needs_input_grad[0]
        x2 = x.reshape(-1, x.shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out = _ext._C.mlp_bf16_forward(x2, weights, biases, activations, need_w, need_b, need_x)
        y = out[0]
        ctx.save_for_backward(x2, y)
        ctx.saved = out[1:]
        ctx.weights, ctx.biases = weights, biases
        ctx.need = (need_w, need_b, need_x)
        ctx.activations = activations
        ctx.x_shape = x.shape
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x2, y = ctx.saved_tensors
        need_w, need_b, need_x = ctx.need
        g = grad.reshape(y.shape)
        grads = _ext._C.mlp_bf16_backward(g, x2, y, ctx.weights, ctx.biases, ctx.activations, ctx.saved, need_w,
                                          need_b, need_x)
        gx = grads[0].reshape(ctx.x_shape) if grads[0] is not None else None
        return (gx, None, None, *grads[1:])


def mlp_bf16(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]],
             activations: Sequence[str]) -> torch.Tensor:
    """``mlp(x, weights, biases, activations)`` with bf16 GEMMs on the matrix engine (see the module)."""
    acts = activations if isinstance(activations, str) else ",".join(activations)
    return _MlpBf16.apply(x, acts, len(weights), *weights, *biases)


__all__: List[str] = ["applies", "engine", "mlp_bf16"]
