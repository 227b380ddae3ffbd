"""A whole training job: the usual PyTorch loop vs ``aecomp.train.Trainer``, in one process.

Both train the 784-128-64-32 autoencoder (sigmoid output) from the same initial weights on the
training split of ``digits28`` (1,437 real digits resized to 28x28, in [0, 1]) with batch 64,
shuffling, Adam(lr=1e-3) and the mean squared error, for the same number of epochs.

* usual loop: ``DataLoader(TensorDataset(x), batch_size=64, shuffle=True)`` (one Python
  ``__getitem__`` per sample and a collate per batch), an eager ``nn.Sequential`` model,
  ``nn.MSELoss``, ``torch.optim.Adam`` with its defaults, ``loss.item()`` per step for the log;
* aecomp: ``Trainer`` -- the data whole on the device, one ``index_select`` per batch, the fused
  ops of ``aecomp.models.Autoencoder`` (automatic backend), fused Adam, no per-step host sync
  beyond the NaN check.

Timing: single thread (``torch.set_num_threads(1)``), wall time of the training only (data
loading, model building and one warm-up epoch of each excluded), ``--repeats`` alternating runs,
median reported. The ratio is usual / aecomp (higher is better for aecomp). The final losses
are the mean training loss of the last epoch of each run.

Run: ``python -m benchmarks.bench_train_job [--epochs 10] [--repeats 3] [--json results.jsonl]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ._layers import EagerAutoencoder

DIMS = (784, 128, 64, 32)




def usual_loop(x: torch.Tensor, init: Dict[str, torch.Tensor], epochs: int, seed: int,
               device: torch.device) -> Tuple[float, float]:
    """(seconds, mean loss of the last epoch)."""
    model = EagerAutoencoder().to(device)
    model.load_state_dict(init)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(x), batch_size=64, shuffle=True, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.MSELoss()
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    last = float("nan")
    for _ in range(epochs):
        total, n = 0.0, 0
        for (xb,) in loader:
            xb = xb.to(device, non_blocking=True)
            opt.zero_grad()
            loss = criterion(model(xb), xb)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
            n += xb.shape[0]
        last = total / n
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, last


def aecomp_trainer(x: torch.Tensor, init: Dict[str, torch.Tensor], epochs: int, seed: int,
                   device: torch.device, backend) -> Tuple[float, float, str]:
    """(seconds, mean loss of the last epoch, step kind)."""
    from aecomp.models import Autoencoder
    from aecomp.train import Trainer

    model = Autoencoder(DIMS, output="sigmoid", backend=backend)
    model.load_state_dict(init)
    trainer = Trainer(model, epochs=epochs, batch_size=64, lr=1e-3, seed=seed, device=device,
                      progress=False, log=lambda m: None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = trainer.fit(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, result.history[-1]["train_loss"], result.step_kind


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, help="aecomp op backend (default: automatic)")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    device = torch.device(args.device)
    from aecomp import data

    x = data.load("digits28", seed=args.seed).train.x
    torch.manual_seed(args.seed)
    init = {k: v.clone() for k, v in EagerAutoencoder().state_dict().items()}

    # warm-up: imports (the first optimizer imports torch._dynamo), allocator, kernels
    usual_loop(x, init, 1, args.seed, device)
    aecomp_trainer(x, init, 1, args.seed, device, args.backend)

    t_usual, t_aecomp, l_usual, l_aecomp = [], [], [], []
    kind = "plain"
    for _ in range(args.repeats):
        s, loss = usual_loop(x, init, args.epochs, args.seed, device)
        t_usual.append(s)
        l_usual.append(loss)
        s, loss, kind = aecomp_trainer(x, init, args.epochs, args.seed, device, args.backend)
        t_aecomp.append(s)
        l_aecomp.append(loss)
    mu, ma = statistics.median(t_usual), statistics.median(t_aecomp)
    ratio = mu / ma
    loss_gap = abs(l_aecomp[-1] - l_usual[-1]) / l_usual[-1]
    steps = args.epochs * -(-x.shape[0] // 64)
    import aecomp

    backend = args.backend or aecomp.auto_backend_name(device.type)
    print(f"training job: 784-128-64-32 autoencoder, digits28 train split ({x.shape[0]} samples), batch 64, "
          f"Adam 1e-3, {args.epochs} epochs ({steps} steps), {device}, 1 thread, median of {args.repeats}")
    print(f"  usual loop (DataLoader, eager)   {mu:8.3f} s  {1e3 * mu / steps:6.2f} ms/step  "
          f"final train loss {l_usual[-1]:.6f}")
    print(f"  aecomp Trainer ({backend}, {kind} step) {ma:8.3f} s  {1e3 * ma / steps:6.2f} ms/step  "
          f"final train loss {l_aecomp[-1]:.6f}")
    print(f"  wall-time ratio usual/aecomp: {ratio:.2f}x   final-loss difference: {100 * loss_gap:.1f}% "
          f"(target: >= 2.5x, within 10%)")
    if args.json:
        rec = {"bench": "train_job", "time": time.time(), "device": str(device), "backend": backend,
               "step_kind": kind, "epochs": args.epochs, "steps": steps, "repeats": args.repeats,
               "usual_s": t_usual, "aecomp_s": t_aecomp, "ratio": ratio, "usual_final_loss": l_usual[-1],
               "aecomp_final_loss": l_aecomp[-1], "loss_gap": loss_gap, "torch": torch.__version__,
               "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0]}
        with open(args.json, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
