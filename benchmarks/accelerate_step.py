"""The seed's model (encoder/decoder Sequentials + nn.MSELoss) trained with its usual loop
(zero_grad, loss.backward, step), plain against ``aecomp.accelerate``d, same optimizer, 1 thread.

    python -m benchmarks.accelerate_step 64 30 --perlayer --fusedstep

One step of each variant in turn (ABAB...), medians per step of the thread's CPU time and of
wall time (on an oversubscribed machine wall time includes waiting to be scheduled, so the CPU
time ratio is the one to quote there). ``--perlayer``: accelerate with one op per layer (the
Sequentials left plain); ``--fusedstep``: ``FusedStep(aecomp.accelerate(model), opt)``.
Issue 12's target: accelerated >= 1.25x plain with the same optimizer at batch 64.
"""
import copy
import statistics
import sys
import time

import torch
import torch.nn as nn

import aecomp

from benchmarks._layers import EagerAutoencoder

torch.set_num_threads(1)


class Seed(EagerAutoencoder):
    """The seed's model code: the encoder/decoder Sequentials and its own nn.MSELoss."""

    def __init__(self):
        super().__init__()
        self.criterion = nn.MSELoss()


def make(model, batch, opt_kind):
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-3), "sgd": lambda p: torch.optim.SGD(p, lr=1e-2)}[opt_kind](
        model.parameters())
    data = torch.rand(batch * 64, 784)
    it = [0]

    def step():
        i = it[0] = (it[0] + 1) % 64
        x = data[i * batch:(i + 1) * batch]
        opt.zero_grad()
        loss = model.criterion(model(x), x)
        loss.backward()
        opt.step()
    return step


def main():
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    for opt_kind in ("adam", "sgd"):
        torch.manual_seed(0)
        plain = Seed()
        fast = aecomp.accelerate(copy.deepcopy(plain))
        steps = {"plain": make(plain, batch, opt_kind), "accelerated": make(fast, batch, opt_kind)}
        if "--perlayer" in sys.argv:  # accelerate as before this change: one op per layer
            per = aecomp.accelerate(copy.deepcopy(plain))
            per.encoder.__class__ = nn.Sequential
            per.decoder.__class__ = nn.Sequential
            steps["perlayer"] = make(per, batch, opt_kind)
        if "--fusedstep" in sys.argv:
            from aecomp.train import FusedStep
            fs_model = aecomp.accelerate(copy.deepcopy(plain))
            fs_opt = {"adam": lambda p: torch.optim.Adam(p, lr=1e-3), "sgd": lambda p: torch.optim.SGD(p, lr=1e-2)}[opt_kind](
                fs_model.parameters())
            fs = FusedStep(fs_model, fs_opt)
            fs_data = torch.rand(batch * 64, 784)
            fs_it = [0]

            def fs_step():
                i = fs_it[0] = (fs_it[0] + 1) % 64
                fs.step(fs_data[i * batch:(i + 1) * batch])
            steps["fusedstep"] = fs_step
        for s in steps.values():
            for _ in range(20):
                s()
        # one step each in turn (ABAB...), per-step medians; CPU time of this thread as well as
        # wall time: on an oversubscribed machine wall time includes waiting to be scheduled
        times = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        for _ in range(rounds * 10):
            for k, s in steps.items():
                c0, t0 = time.thread_time(), time.perf_counter()
                s()
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.thread_time() - c0)
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"  cpu time: plain {cmed['plain']*1e3:.3f} ms, accelerated {cmed['accelerated']*1e3:.3f} ms, "
              f"ratio {cmed['plain']/cmed['accelerated']:.2f}x"
              + (f"; per-layer {cmed['perlayer']*1e3:.3f} ms, ratio {cmed['plain']/cmed['perlayer']:.2f}x"
                 if "perlayer" in cmed else "")
              + (f"; FusedStep(accelerate(model)) {cmed['fusedstep']*1e3:.3f} ms, ratio "
                 f"{cmed['plain']/cmed['fusedstep']:.2f}x" if "fusedstep" in cmed else ""))
        med = {k: statistics.median(v) for k, v in times.items()}  # wall time
        print(f"batch {batch} {opt_kind}: plain {med['plain']*1e3:.3f} ms, accelerated {med['accelerated']*1e3:.3f} ms, "
              f"ratio {med['plain']/med['accelerated']:.2f}x")


if __name__ == "__main__":
    main()
