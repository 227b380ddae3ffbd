"""AECOMP_CPU_ISA and the CPU kernels' instruction-set dispatch (csrc/cpu/isa.h).

- names are accepted case-insensitively; anything else is refused with one line naming the
  variable (not silently ignored, as "AVX2" or "avx2 " once were);
- the cap reaches every ISA-dispatched function: under each cap, a workload that runs every
  CPU kernel family (forward/backward on both GEMM paths, the element-wise passes, MSE, the fused
  training step, packed int8 and codebook chains) moves only that level's run counter;
- no function picks its own variant behind the dispatch's back (no target_clones or
  __builtin_cpu_supports outside isa.cpp);
- `aecomp info` shows the level, what capped it and the CPU's own.
The cap is read once per process, so each cap runs in a subprocess (one per level, plus one
for a refused value).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("generic", "avx2", "avx512", "amx")


def _run(code: str, isa, timeout=180):
    env = dict(os.environ)
    env.pop("AECOMP_CPU_ISA", None)
    if isa is not None:
        env["AECOMP_CPU_ISA"] = isa
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def _hardware():
    from aecomp import _ext

    return _ext.load()[0]._cpu_isa_info()["hardware"]


def test_names_are_parsed_case_insensitively_and_nothing_else_is_accepted():
    from aecomp import _ext

    parse = _ext.load()[0]._cpu_isa_parse
    for value, want in [("generic", "generic"), ("AVX2", "avx2"), ("Avx512", "avx512"), ("AMX", "amx")]:
        assert parse(value) == want
    for value in ["AVX2x", "", "avx2 ", " avx2", "sse4", "avx-512", "native"]:
        assert parse(value) is None, value


def test_an_unknown_value_is_refused_by_every_kernel_call_with_one_line():
    code = ("import torch, aecomp\n"
            "for call in (lambda: aecomp.ops.linear_act(torch.rand(2, 3), torch.rand(4, 3), None, 'relu', backend='cpu'),\n"
            "             lambda: aecomp.ops.mse_loss(torch.rand(3), torch.rand(3), backend='cpu')):\n"
            "    try:\n"
            "        call()\n"
            "    except ValueError as e:\n"
            "        print('REFUSED', len(str(e).strip().splitlines()), str(e).splitlines()[0])\n")
    out = _run(code, "avx2 ")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("REFUSED")]
    assert len(lines) == 2, out.stdout
    for ln in lines:
        assert ln.startswith("REFUSED 1 AECOMP_CPU_ISA='avx2 ' is not an instruction-set level; use one of generic, "
                             "avx2, avx512, amx (any case), or unset it"), ln


# Every kernel family of the CPU backend, once each; then the counters.
_WORKLOAD = r"""
import json, torch, copy
import aecomp
from aecomp import _ext, ops
from aecomp.ops import PackedChain, codebook_layer, int8_layer
C = _ext.load()[0]
C._cpu_isa_reset()
torch.manual_seed(0)
for path in ("mk", "aten"):  # the microkernels, and ATen's GEMM + our element-wise passes
    C._set_cpu_gemm(path)
    for act in ("none", "relu", "sigmoid"):
        x = torch.rand(9, 13, requires_grad=True)
        w = torch.randn(7, 13, requires_grad=True); b = torch.randn(7, requires_grad=True)
        ops.linear_act(x, w, b, act, backend="cpu").sum().backward()
        ws = [torch.randn(5, 13, requires_grad=True), torch.randn(13, 5, requires_grad=True)]
        bs = [torch.randn(5, requires_grad=True), torch.randn(13, requires_grad=True)]
        ops.mlp_mse_loss(x, ws, bs, [act, "sigmoid"], backend="cpu").backward()
        ops.mlp(x, ws, bs, [act, act], backend="cpu").sum().backward()
C._set_cpu_gemm("auto")
a, t = torch.rand(40000, requires_grad=True), torch.rand(40000)
for red in ("mean", "sum", "none"):
    ops.mse_loss(a, t, red, backend="cpu").sum().backward()
from aecomp.models import Autoencoder
from aecomp.train import FusedStep
m = Autoencoder((20, 9, 4))
for opt in (torch.optim.Adam(m.parameters(), lr=1e-3), torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9)):
    step = FusedStep(m, opt)
    assert step.uses_fused_optimizer(torch.rand(3, 20))
    step.step(torch.rand(6, 20))
q = torch.randint(-127, 128, (19, 21), dtype=torch.int8)
s = torch.rand(19)
for compute in ("auto", "float"):
    PackedChain([int8_layer(q, s, torch.rand(19), "sigmoid"), int8_layer(q[:, :19], s, None, "relu")], compute)(torch.rand(5, 21))
for bits in (4, 5, 8):
    codes = torch.randint(0, 2 ** bits, (18, 11), dtype=torch.uint8)
    PackedChain([codebook_layer(codes, torch.randn(2 ** bits), None, None, "relu")])(torch.rand(3, 11))
print("RUNS", json.dumps(C._cpu_isa_runs()), C._cpu_isa_level())
import argparse, contextlib, io
from aecomp import _info
print("INFO", json.dumps(_info.collect()["cpu_isa"]))
text = io.StringIO()
with contextlib.redirect_stdout(text):
    _info.run(argparse.Namespace(json=False))
print("TEXT", next(ln for ln in text.getvalue().splitlines() if ln.startswith("CPU kernels:")))
"""


def test_each_cap_runs_only_code_of_its_level():
    """And `aecomp info` names the level and the cap (given in upper case once: names are
    case-insensitive end to end)."""
    hw = _hardware()
    for cap in LEVELS[:LEVELS.index(hw) + 1]:
        given = cap.upper() if cap == "avx2" else cap
        out = _run(_WORKLOAD, given)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in out.stdout.splitlines() if " " in ln}
        runs_text, level = lines["RUNS"].rsplit(" ", 1)
        runs = json.loads(runs_text)
        assert level == cap
        # amx: nothing in this workload has AMX code yet, so it runs the avx512 kernels
        ran = "avx512" if cap == "amx" else cap
        assert runs[ran] > 0, (cap, runs)
        assert all(n == 0 for lv, n in runs.items() if lv != ran), (cap, runs)
        info = json.loads(lines["INFO"])
        assert info["level"] == cap and info["hardware"] == hw and info["capped_by"] == f"AECOMP_CPU_ISA={given}"
        assert lines["TEXT"].startswith(f"CPU kernels: {cap} (AECOMP_CPU_ISA={given}; this CPU: {hw}"), lines["TEXT"]


def test_no_function_picks_its_own_isa():
    """Every ISA choice goes through isa.h: target_clones and __builtin_cpu_supports pick a
    variant from the CPU at load time, where no AECOMP_CPU_ISA can cap them."""
    offenders = []
    for path in sorted((ROOT / "csrc" / "cpu").glob("*")):
        if path.name == "isa.cpp" or path.suffix not in (".cpp", ".h", ".inc"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0]
            if re.search(r"target_clones|__builtin_cpu_supports|__builtin_cpu_init", code):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders
