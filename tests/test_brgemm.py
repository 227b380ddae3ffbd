"""The CPU's matrix engine (csrc/cpu/brgemm.{h,cpp}): the level chosen once per process, the bf16
packing helpers against plain-torch layouts, one bf16 GEMM through at::native::cpublas::brgemm,
and the caps (ONEDNN_MAX_CPU_ISA, AECOMP_CPU_ISA) in subprocesses (oneDNN reads its cap once).

Runs on any x86-64 CPU: the packing and GEMM checks skip where bf16 brgemm does not run, the
subprocess checks ask only for levels the CPU can reach (lscpu flags from /proc/cpuinfo).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aecomp import _ext

C = _ext.load()[0]
pytestmark = pytest.mark.skipif(C is None or not hasattr(C, "_brgemm_level"), reason="aecomp._C not built")
LEVELS = ("none", "avx512_vnni", "avx512_bf16", "amx")


def _flags() -> set:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _flags()
HAS_BF16 = C is not None and hasattr(C, "_brgemm_bf16") and C._brgemm_bf16()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="no bf16 brgemm on this CPU")


def _ref_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16)


def test_level_is_named_and_described():
    level = C._brgemm_level()
    assert level in LEVELS
    assert C._brgemm_describe().startswith(level + ":")
    if level != "none":  # the level never claims more than the CPU has
        assert "avx512_vnni" in FLAGS
    if level in ("avx512_bf16", "amx"):
        assert "avx512_bf16" in FLAGS
    if level == "amx":
        assert {"amx_bf16", "amx_int8", "amx_tile"} <= FLAGS


@needs_bf16
@pytest.mark.parametrize("m,k", [(1, 1), (7, 33), (37, 784), (16, 16)])
def test_rows_to_bf16_and_vnni(m, k):
    base = torch.randn(m, k + 5) * 3
    x = base[:, 2:2 + k]  # rows with a stride larger than k
    assert torch.equal(C._brgemm_rows_bf16(x).view(torch.int16), _ref_bf16(x).view(torch.int16))
    v = C._brgemm_rows_vnni(x)
    xp = torch.zeros(m + m % 2, k)
    xp[:m] = x
    want = _ref_bf16(xp).view(-1, 2, k).transpose(1, 2)  # [(m+1)/2][k][2]: rows i, i+1 side by side
    assert v.shape == want.shape
    assert torch.equal(v.view(torch.int16), want.contiguous().view(torch.int16))


@needs_bf16
@pytest.mark.parametrize("n,k", [(1, 1), (5, 3), (128, 784), (784, 128), (19, 37)])
def test_weight_t_to_vnni(n, k):
    w = torch.randn(n, k)
    v = C._brgemm_weight_t_vnni(w)
    wt = torch.zeros(k + k % 2, n)
    wt[:k] = w.t()
    want = _ref_bf16(wt).view(-1, 2, n).transpose(1, 2)
    assert torch.equal(v.view(torch.int16), want.contiguous().view(torch.int16))


@needs_bf16
@pytest.mark.parametrize("m,k", [(1, 1), (17, 33), (64, 784), (32, 16)])
def test_store_transposed(m, k):
    x = torch.randn(m, k)
    assert torch.equal(C._brgemm_store_t(x).view(torch.int16), _ref_bf16(x.t()).view(torch.int16))


@needs_bf16
def test_rounding_is_nearest_even_and_keeps_nan():
    x = torch.tensor([[1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -(1.0 + 2 ** -8), float("nan"), float("inf"), 3.0e38,
                       1e-40, -0.0]])
    out = C._brgemm_rows_bf16(x).float()
    assert out[0, 0] == 1.0 and out[0, 1] == 1.0 + 2 ** -6 and out[0, 2] == -1.0  # ties to even
    assert torch.isnan(out[0, 3]) and out[0, 4] == float("inf")
    assert out[0, 5] == _ref_bf16(x[0, 5:6]).float()[0]
    # VCVTNEPS2BF16 treats float32 denormals (|x| < 2^-126) as zero: an absolute error below 1.2e-38
    assert out[0, 6] == 0.0 and torch.equal(out[0, 7:].view(torch.int32), torch.tensor([-2 ** 31], dtype=torch.int32))


@needs_bf16
@pytest.mark.parametrize("m,k,n,nb", [(64, 784, 128, 32), (5, 2, 3, 64), (33, 130, 70, 64), (1, 64, 784, 32)])
def test_gemm_bf16_against_float64(m, k, n, nb):
    """Products of two bf16 are exact in float32; the sum is float32: |C - C64| <= K eps32 sum |ab|."""
    a = torch.randn(m, k).to(torch.bfloat16)
    w = torch.randn(n, k)
    b = C._brgemm_weight_t_vnni(w)
    c = C._brgemm_gemm_bf16(a, b, nb)
    a64, w64 = a.double(), _ref_bf16(w).double()
    want = a64 @ w64.t()
    bound = k * 2.0 ** -24 * (a64.abs() @ w64.abs().t())
    assert ((c.double() - want).abs() <= bound + 1e-30).all()


@pytest.mark.skipif(C is None or not hasattr(C, "_brgemm_level") or C._brgemm_level() != "amx",
                    reason="cpublas::pack runs only with AMX")
def test_own_vnni_layout_is_what_cpublas_pack_writes():
    w = torch.randn(96, 784)
    b = _ref_bf16(w.t().contiguous())  # B = W^T, [k, n] row-major
    ours = C._brgemm_weight_t_vnni(w).view(392, 3, 32, 2).permute(1, 0, 2, 3)  # 32-column blocks of ours
    assert torch.equal(C._brgemm_pack(b, 32).view(torch.int16), ours.contiguous().view(torch.int16))


def _level_in(env: dict) -> str:
    code = "import aecomp._C as C; print(C._brgemm_level())"
    full = {**os.environ, **env}
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("cap,want,needs", [
    ("AVX512_CORE_BF16", "avx512_bf16", {"avx512_bf16"}),
    ("AVX512_CORE_VNNI", "avx512_vnni", {"avx512_vnni"}),
    ("AVX2", "none", set()),
])
def test_onednn_cap_sets_the_level(cap, want, needs):
    if not needs <= FLAGS:
        pytest.skip(f"the CPU lacks {needs - FLAGS}")
    assert _level_in({"ONEDNN_MAX_CPU_ISA": cap, "AECOMP_CPU_ISA": None}) == want  # oneDNN's cap alone


@pytest.mark.parametrize("cap", ["avx2", "generic"])
def test_aecomp_cap_below_avx512_turns_brgemm_off(cap):
    assert _level_in({"AECOMP_CPU_ISA": cap, "ONEDNN_MAX_CPU_ISA": None}) == "none"


@pytest.mark.skipif(not {"amx_bf16", "amx_int8", "avx512_bf16"} <= FLAGS, reason="needs an AMX CPU")
def test_aecomp_cap_avx512_rules_out_amx_and_stays_consistent_with_onednn():
    # oneDNN would run AMX kernels: brgemm is off under aecomp's avx512 cap ...
    assert _level_in({"AECOMP_CPU_ISA": "avx512", "ONEDNN_MAX_CPU_ISA": None}) == "none"
    # ... unless oneDNN is capped below AMX too; and the amx cap (any case) allows AMX
    assert _level_in({"AECOMP_CPU_ISA": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == "avx512_bf16"
    assert _level_in({"AECOMP_CPU_ISA": "AMX", "ONEDNN_MAX_CPU_ISA": None}) == "amx"


def test_aecomp_info_shows_the_level_and_the_cap():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-m", "aecomp", "info"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("CPU matrix engine"))
    assert "none:" in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line
    out = subprocess.run([sys.executable, "-m", "aecomp", "info"], capture_output=True, text=True, timeout=120)
    line = next(l for l in out.stdout.splitlines() if l.startswith("CPU matrix engine"))
    assert C._brgemm_level() + ":" in line
