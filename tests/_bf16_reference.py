"""The float64 reference of a chain and per-element error bounds for its bf16 computation.

Used by tests/test_train_bf16.py (the fused step) and tests/test_mlp_bf16.py (the chain op of a
user's own loop). The bounds follow the error model of csrc/cpu/train_step_bf16.cpp: a GEMM
whose operands are rounded to bf16 once (u = 2^-8) is within (2u + u^2) of its sum of |terms|.
Each element gets c u of the sum of |terms| of the GEMM that made it, with c = 8: the errors a
layer receives from the layers around it are of the same relative size (a worst-case
propagation through |W| grows like the product of the row sums of |W| -- 10^6 over this
six-layer chain -- and says nothing), and c = 8 leaves room for them. Two effects of the
forward's error are not relative to the terms, and are carried separately (F):

  forward   z = h W^T + b, its error dz = c u (|h| |W|^T + |b|)
            relu: the mask [z > 0] may flip where |z| <= dz;  sigmoid: y and act' = y (1 - y)
            move by up to dz / 4 (+ u y: y is stored in bf16);  none: exact act'
  backward  G bounds |gz| (act' plus its error), F the error of gz from those two effects (at
            the top also the output's error through the loss), carried down through |W| and act'
  bounds    dW: c u G^T |h| + G^T e_h + F^T (|h| + e_h);  db: c u sum G + sum F;
            dx: c u G |W| + F |W|   (e_h: the error of the layer's input, dz of the layer below)
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

U = 2.0 ** -8
# The kernels against bf16_emulation (relative, in norm): float32 sums differ from float64 by
# ~1e-7, and where that puts a value on the other side of a bf16 rounding boundary (about 2.5e-5
# of the rounded values) that one operand differs by a bf16 ulp (2^-8); a few such elements
# among thousands move a result by up to ~1e-3 of its norm. A wrong layout or a missed term is O(1).
EMU = 3e-3


def _act(z, a):
    return torch.relu(z) if a == "relu" else torch.sigmoid(z) if a == "sigmoid" else z


def chain_reference(weights: List[torch.Tensor], biases: List[Optional[torch.Tensor]], acts: List[str],
                    x: torch.Tensor, grad: Optional[torch.Tensor] = None, c: float = 8.0) -> Dict[str, object]:
    """Float64 forward/backward of the chain and bounds. ``grad`` None: the loss is
    ``mean((y - x)^2)`` (the autoencoder step); else the upstream gradient of ``y``."""
    ws = [w.detach().double().requires_grad_() for w in weights]
    bs = [None if b is None else b.detach().double().requires_grad_() for b in biases]
    x64 = x.detach().double().requires_grad_()
    h = x64
    for w, b, a in zip(ws, bs, acts):
        h = _act(h @ w.t() + (b if b is not None else 0.0), a)
    y64 = h
    if grad is None:
        loss = ((y64 - x64.detach()) ** 2).mean()
        loss.backward()
    else:
        loss = None
        y64.backward(grad.double())
    cu = c * U
    with torch.no_grad():
        h = x64.detach()
        hs, errs, dact, derr = [h.abs()], [torch.zeros_like(h)], [], []
        for w, b, a in zip(ws, bs, acts):
            bb = b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            z = h @ w.t() + bb
            dz = cu * (hs[-1] @ w.abs().t() + bb.abs())
            h = _act(z, a)
            if a == "relu":
                errs.append(dz)
                dact.append((z > 0).double())
                derr.append((z.abs() <= dz).double())
            elif a == "sigmoid":
                errs.append(dz / 4)
                dact.append(h * (1 - h))
                derr.append(dz / 4 + U * h)
            else:
                errs.append(dz)
                dact.append(torch.ones_like(z))
                derr.append(torch.zeros_like(z))
            hs.append(h.abs())
        top = len(ws) - 1
        if grad is None:
            s = 2.0 / h.numel()
            d = (h - x64.detach()).abs()
            G = s * (d + errs[-1]) * (dact[top] + derr[top])
            F = s * (errs[-1] * (dact[top] + derr[top]) + d * derr[top])
        else:
            g = grad.double().abs()
            G = g * (dact[top] + derr[top])
            F = g * derr[top]
        bounds = [None] * len(ws)
        bx = None
        for k in range(top, -1, -1):
            hm = hs[k] + errs[k]
            bounds[k] = (cu * (G.t() @ hm) + G.t() @ errs[k] + F.t() @ hm, cu * G.sum(0) + F.sum(0))
            back, backF = G @ ws[k].abs(), F @ ws[k].abs()
            if k:
                m = dact[k - 1] + derr[k - 1]
                F = backF * m + back * derr[k - 1]
                G = back * m
            else:
                bx = cu * back + backF
    return {"y": y64.detach(), "loss": None if loss is None else loss.item(),
            "gw": [w.grad for w in ws], "gb": [None if b is None else b.grad for b in bs], "gx": x64.grad,
            "bounds": bounds, "bound_x": bx, "bound_y": errs[-1]}


def bf16_emulation(weights: List[torch.Tensor], biases: List[Optional[torch.Tensor]], acts: List[str],
                   x: torch.Tensor, grad: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """The bf16 algorithm of csrc/cpu/bf16_chain.h in float64: every GEMM operand rounded to bf16
    where the kernels round it (x, W, the stored hidden outputs, gz), everything else exact. The
    kernels differ from this only by float32 sums (see EMU)."""
    def bf(t):
        return t.to(torch.bfloat16).double()

    def dact(y, a):
        return (y > 0).double() if a == "relu" else y * (1 - y) if a == "sigmoid" else torch.ones_like(y)

    L = len(weights)
    hs, ys = [bf(x.detach().double())], []
    for i, (w, b, a) in enumerate(zip(weights, biases, acts)):
        z = hs[-1] @ bf(w.detach().double()).t() + (b.detach().double() if b is not None else 0.0)
        y = _act(z, a)
        ys.append(y)
        hs.append(bf(y) if i + 1 < L else y)  # hidden outputs are stored in bf16, the top one in float32
    y = ys[-1]
    t = x.detach().double()
    if grad is None:
        loss = ((y - t) ** 2).mean().item()
        gz = (2.0 / y.numel()) * (y - t) * dact(y, acts[-1])
    else:
        loss = None
        gz = grad.double() * dact(y, acts[-1])
    gw, gb = [None] * L, [None] * L
    gx = None
    for k in range(L - 1, -1, -1):
        gw[k] = bf(gz).t() @ hs[k]
        gb[k] = gz.sum(0)
        g = bf(gz) @ bf(weights[k].detach().double())
        if k:
            gz = g * dact(hs[k], acts[k - 1])
        else:
            gx = g
    return {"y": y, "loss": loss, "gw": gw, "gb": gb, "gx": gx}
