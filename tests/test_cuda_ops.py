"""The ``cuda`` backend (csrc/cuda) on a GPU: every op against the float64 reference and against
the ``triton`` backend, all dtypes, odd shapes, strided and misaligned inputs, all activations,
with and without bias, forward and gradients; bitwise-reproducible gradients; both GEMM paths
(tensor cores and the SIMT fallback, forced with AECOMP_CUDA_GEMM=simt); errors; opcheck; and
``compute-sanitizer`` (memcheck, racecheck) on small cases in a subprocess.

Those tests are skipped without a GPU or without the CUDA kernels built into aecomp._C. One
test runs everywhere instead (``test_glue_on_cpu_emulator``): it builds the torch glue
ops_cuda.cpp against the installed CPU torch, registers it for the CPU dispatch key over
aecomp._C's kernels, and runs csrc/cuda/harness/glue_on_cpu_checks.py: torch.ops.aecomp.* on CPU
tensors through autograd, the glue, the launchers and the kernels on the CPU emulator, with
the checks of this file at small sizes and opcheck (about 20 s to build, 10 s to run). The
compile and kernel-emulator checks are in test_cuda_compile.py.

Tolerances (set in ``tol`` below). The reference is float64 from the same (rounded) inputs.
``L`` is the length of the sum behind a value (K for y, N for dx, M for dW and db); with
unit-variance data a value is about sqrt(L) in size, so atol grows like sqrt(L):
- float32 (exact fp32 FMAs, no TF32): rtol 1e-5, atol 2e-6 sqrt(L) - fp32 rounding of the sums;
- bfloat16: rtol 1.6e-2, atol 1e-2 sqrt(L) - one bf16 rounding of the output (2^-9) and of
  g * act'(y) (the tensor-core operand), fp32 accumulation;
- float16: rtol 4e-3, atol 2e-3 sqrt(L) - the same with fp16's 2^-11.
cuda against triton: twice the tolerance (each is within one of the truth).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aecomp
from aecomp import ops

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()
CUDA_OK, CUDA_WHY = aecomp.available_backends()["cuda"] if HAS_GPU else (False, "no GPU")
TRITON_OK = HAS_GPU and aecomp.available_backends().get("triton", (False, ""))[0]


def gpu(fn):
    """The GPU tests: skipped without a GPU or without the cuda backend."""
    fn = pytest.mark.skipif(HAS_GPU and not CUDA_OK, reason=f"the cuda backend is not available: {CUDA_WHY}")(fn)
    return pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")(fn)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_IDS = ["f32", "bf16", "f16"]
ACTS = ("none", "relu", "sigmoid")
_ACT = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}

# Every M in (1, 7, 1023, 65536), K in (3, 784) and N in (1, 10, 32, 64, 128, 784) appears,
# with the autoencoder's layer shapes among them; K = 3 and N = 1, 10 go to the SIMT kernel.
SHAPES = [
    (1, 3, 1), (1, 784, 128), (7, 3, 10), (7, 784, 784), (1023, 784, 32), (1023, 3, 64),
    (1023, 784, 10), (65536, 784, 128), (65536, 3, 64), (4096, 128, 784), (4096, 32, 64),
]


def tol(dtype, length=1, factor=1.0):
    rtol, atol = {torch.float32: (1e-5, 2e-6), torch.bfloat16: (1.6e-2, 1e-2), torch.float16: (4e-3, 2e-3)}[dtype]
    return dict(rtol=rtol * factor, atol=atol * factor * math.sqrt(max(length, 1)))


def _leaf(t):
    return t.detach().clone().requires_grad_(True) if t is not None else None


def run_linear(backend, x, w, b, act, g):
    """(y, dx, dW, db) of linear_act through autograd; inputs keep their strides."""
    xs, ws = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    bs = b.detach().requires_grad_(True) if b is not None else None
    if backend == "reference64":
        xs64, ws64 = _leaf(x.double()), _leaf(w.double())
        bs64 = _leaf(b.double()) if b is not None else None
        y = _ACT[act](F.linear(xs64, ws64, bs64))
        y.backward(g.double())
        return y.detach(), xs64.grad, ws64.grad, bs64.grad if b is not None else None
    y = ops.linear_act(xs, ws, bs, act, backend=backend)
    y.backward(g)
    return y.detach(), xs.grad, ws.grad, bs.grad if b is not None else None


def assert_linear_close(got, want, dtype, m, k, n, factor=1.0, what=""):
    names, lengths = ("y", "dx", "dW", "db"), (k, n, m, m)
    for name, a, e, length in zip(names, got, want, lengths):
        if e is None:
            assert a is None
            continue
        assert a.shape == e.shape, f"{what} {name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(a.double(), e.double(), **tol(dtype, length, factor),
                                   msg=lambda s, name=name: f"{what} {name}: {s}")


def make_inputs(m, k, n, dtype, bias=True, device="cuda"):
    x = torch.randn(m, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) / math.sqrt(k)).to(dtype)
    b = (torch.randn(n, device=device) * 0.5).to(dtype) if bias else None
    g = torch.randn(m, n, device=device).to(dtype)
    return x, w, b, g


# ------------------------------------------------------------------------ linear_act
@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("act", ACTS)
def test_linear_act_matches_reference_and_triton(dtype, act):
    for i, (m, k, n) in enumerate(SHAPES):
        x, w, b, g = make_inputs(m, k, n, dtype, bias=i % 2 == 0)
        what = f"{dtype} {act} M={m} K={k} N={n} bias={b is not None}"
        ours = run_linear("cuda", x, w, b, act, g)
        assert ours[0].dtype == dtype
        assert_linear_close(ours, run_linear("reference64", x, w, b, act, g), dtype, m, k, n, what=what)
        if TRITON_OK:
            theirs = run_linear("triton", x, w, b, act, g)
            assert_linear_close(ours, theirs, dtype, m, k, n, factor=2.0, what=what + " vs triton")


def _strided_views(m, k, n, dtype):
    """Operands that are not plain contiguous: padded rows, transposed, offset by one element."""
    dev = "cuda"
    x_pad = torch.randn(m, k + 3, device=dev).to(dtype)[:, :k]
    x_t = torch.randn(k, m, device=dev).to(dtype).t()
    x_off = torch.randn(m * k + 1, device=dev).to(dtype)[1:].view(m, k)
    w_t = (torch.randn(k, n, device=dev) / math.sqrt(k)).to(dtype).t()
    w_pad = (torch.randn(n, k + 8, device=dev) / math.sqrt(k)).to(dtype)[:, 8:]
    g_t = torch.randn(n, m, device=dev).to(dtype).t()
    g_off = torch.randn(m * n + 1, device=dev).to(dtype)[1:].view(m, n)
    b_strided = torch.randn(2 * n, device=dev).to(dtype)[::2]
    return [(x_pad, w_t, b_strided, g_t), (x_t, w_pad, None, g_off), (x_off, w_t, b_strided, g_t)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("m,k,n", [(7, 784, 10), (1023, 784, 128), (300, 3, 64), (257, 64, 32)])
def test_linear_act_noncontiguous_inputs(dtype, m, k, n):
    for j, (x, w, b, g) in enumerate(_strided_views(m, k, n, dtype)):
        assert not (x.is_contiguous() and w.is_contiguous() and g.is_contiguous())
        for act in ACTS:
            what = f"{dtype} view set {j} {act} M={m} K={k} N={n}"
            ours = run_linear("cuda", x, w, b, act, g)
            want = run_linear("reference64", x.contiguous(), w.contiguous(), b, act, g.contiguous())
            assert_linear_close(ours, want, dtype, m, k, n, what=what)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_tensor_core_and_simt_paths_agree(dtype, monkeypatch):
    """The same 16-bit problem on the tensor-core kernel and on the SIMT fallback."""
    for m, k, n in [(1023, 784, 128), (65536, 128, 64), (33, 64, 784)]:
        x, w, b, g = make_inputs(m, k, n, dtype)
        for act in ACTS:
            monkeypatch.delenv("AECOMP_CUDA_GEMM", raising=False)
            tc = run_linear("cuda", x, w, b, act, g)
            monkeypatch.setenv("AECOMP_CUDA_GEMM", "simt")
            simt = run_linear("cuda", x, w, b, act, g)
            monkeypatch.delenv("AECOMP_CUDA_GEMM")
            assert_linear_close(tc, simt, dtype, m, k, n, factor=2.0, what=f"tc vs simt {act} M={m} K={k} N={n}")
            want = run_linear("reference64", x, w, b, act, g)
            assert_linear_close(simt, want, dtype, m, k, n, what=f"simt {act} M={m} K={k} N={n}")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_linear_act_batch_dims_and_empty_batch(dtype):
    x = torch.randn(4, 5, 64, device="cuda").to(dtype)
    w = (torch.randn(32, 64, device="cuda") / 8).to(dtype)
    b = torch.randn(32, device="cuda").to(dtype)
    g = torch.randn(4, 5, 32, device="cuda").to(dtype)
    ours = run_linear("cuda", x, w, b, "relu", g)
    want = run_linear("reference64", x, w, b, "relu", g)
    assert ours[0].shape == (4, 5, 32) and ours[1].shape == x.shape
    assert_linear_close(ours, want, dtype, 20, 64, 32)
    # 1-D input
    y = ops.linear_act(x[0, 0], w, b, "sigmoid", backend="cuda")
    torch.testing.assert_close(y.double(), torch.sigmoid(F.linear(x[0, 0].double(), w.double(), b.double())),
                               **tol(dtype, 64))
    # empty batch: empty output, zero weight and bias gradients
    x0 = torch.randn(0, 64, device="cuda", dtype=dtype, requires_grad=True)
    w0, b0 = _leaf(w), _leaf(b)
    y0 = ops.linear_act(x0, w0, b0, "relu", backend="cuda")
    assert y0.shape == (0, 32)
    y0.sum().backward()
    assert x0.grad.shape == (0, 64)
    assert torch.equal(w0.grad, torch.zeros_like(w)) and torch.equal(b0.grad, torch.zeros_like(b))


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("m,k,n", [(65536, 64, 32), (65536, 784, 128), (4096, 128, 784)])
def test_gradients_are_bitwise_reproducible(dtype, m, k, n):
    """dW and db are reduced over the batch in a fixed order (split-K partials, no atomics)."""
    x, w, b, g = make_inputs(m, k, n, dtype)
    first = run_linear("cuda", x, w, b, "relu", g)
    for _ in range(2):
        again = run_linear("cuda", x, w, b, "relu", g)
        for name, a, c in zip(("y", "dx", "dW", "db"), first, again):
            assert torch.equal(a, c), f"{name} differs between identical runs"


@gpu
def test_bias_gradient_without_weight_gradient():
    """db alone (frozen weight) runs the column-sum kernel; it must match the fused one."""
    for dtype in DTYPES:
        x, w, b, g = make_inputs(65536, 64, 10, dtype)
        bs = _leaf(b)
        ops.linear_act(x, w, bs, "sigmoid", backend="cuda").backward(g)
        want = run_linear("reference64", x, w, b, "sigmoid", g)[3]
        torch.testing.assert_close(bs.grad.double(), want, **tol(dtype, 65536))


# ------------------------------------------------------------------------ mse_loss
MSE_SHAPES = [(1,), (7, 3), (1023, 784), (65536, 784), (5, 7, 9)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_matches_reference_and_triton(dtype, reduction):
    # a float16 sum of 51M squares of N(0, 2) overflows float16 (as in torch): scale it down
    scale = 0.01 if dtype == torch.float16 and reduction == "sum" else 1.0
    for shape in MSE_SHAPES:
        a = (torch.randn(shape, device="cuda") * scale).to(dtype)
        t = (torch.randn(shape, device="cuda") * scale).to(dtype)
        n = a.numel()
        backends = ["cuda"] + (["triton"] if TRITON_OK else [])
        results = {}
        for backend in backends:
            ai, ti = _leaf(a), _leaf(t)
            out = ops.mse_loss(ai, ti, reduction, backend=backend)
            g = torch.randn_like(out) if reduction == "none" else torch.tensor(0.75, device="cuda", dtype=dtype)
            out.backward(g)
            results[backend] = (out.detach(), ai.grad, ti.grad, g)
        out, ga, gt, g = results["cuda"]
        a64, t64 = _leaf(a.double()), _leaf(t.double())
        ref = F.mse_loss(a64, t64, reduction=reduction)
        ref.backward(g.double())
        what = f"{dtype} {reduction} {shape} (n={n})"
        assert out.dtype == dtype and out.shape == ref.shape
        # mean and sum: relative error of an fp32 sum of n positive terms, then one rounding
        torch.testing.assert_close(out.double(), ref, **tol(dtype, 1), msg=what)
        torch.testing.assert_close(ga.double(), a64.grad, **tol(dtype), msg=what + " d input")
        torch.testing.assert_close(gt.double(), t64.grad, **tol(dtype), msg=what + " d target")
        if "triton" in results:
            o2, ga2, gt2, _ = results["triton"]
            torch.testing.assert_close(out.double(), o2.double(), **tol(dtype, 1, 2.0), msg=what + " vs triton")
            torch.testing.assert_close(ga.double(), ga2.double(), **tol(dtype, 1, 2.0), msg=what + " vs triton")


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_mse_noncontiguous_misaligned_and_empty(dtype):
    s = 0.05 if dtype == torch.float16 else 1.0  # keeps the float16 sum finite
    a = (torch.randn(784, 1023, device="cuda") * s).to(dtype).t()  # transposed
    t = (torch.randn(1023 * 784 + 1, device="cuda") * s).to(dtype)[1:].view(1023, 784)  # 2 bytes off
    for reduction in ("mean", "sum", "none"):
        ai, ti = _leaf(a), _leaf(t)
        out = ops.mse_loss(ai, ti, reduction, backend="cuda")
        (out.sum() if reduction == "none" else out).backward()
        a64, t64 = _leaf(a.double()), _leaf(t.double())
        ref = F.mse_loss(a64, t64, reduction=reduction)
        (ref.sum() if reduction == "none" else ref).backward()
        torch.testing.assert_close(out.double(), ref, **tol(dtype, 1))
        torch.testing.assert_close(ai.grad.double(), a64.grad, **tol(dtype))
        torch.testing.assert_close(ti.grad.double(), t64.grad, **tol(dtype))
    e = torch.randn(0, 4, device="cuda", dtype=dtype)
    assert torch.isnan(ops.mse_loss(e, e, "mean", backend="cuda"))
    assert ops.mse_loss(e, e, "sum", backend="cuda").item() == 0
    assert ops.mse_loss(e, e, "none", backend="cuda").shape == (0, 4)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_mse_is_bitwise_reproducible(dtype):
    a = torch.randn(65536, 784, device="cuda").to(dtype)
    t = torch.randn(65536, 784, device="cuda").to(dtype)
    first = ops.mse_loss(a, t, "mean", backend="cuda")
    for _ in range(3):
        assert torch.equal(ops.mse_loss(a, t, "mean", backend="cuda"), first)


# ------------------------------------------------------------------------ errors, registration
@gpu
def test_errors_name_the_op_and_shapes():
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(TypeError, match=r"aecomp::linear_act: x has dtype .* but the CUDA kernels take"):
        torch.ops.aecomp.linear_act(x.double(), torch.randn(3, 8, device="cuda").double(), None, "relu")
    with pytest.raises(ValueError, match=r"aecomp::linear_act: x.shape\[-1\] = 8 does not match weight.shape\[1\] = 7"):
        torch.ops.aecomp.linear_act(x, torch.randn(3, 7, device="cuda"), None, "relu")
    with pytest.raises(ValueError, match=r"unknown activation 'tanh'"):
        torch.ops.aecomp.linear_act(x, torch.randn(3, 8, device="cuda"), None, "tanh")
    with pytest.raises(ValueError, match=r"aecomp::mse_loss: input and target must have the same shape"):
        torch.ops.aecomp.mse_loss(x, torch.randn(4, 1, device="cuda"), "mean")
    with pytest.raises(ValueError, match=r"aecomp::linear_act_backward: grad_y has shape \[4, 2\]"):
        torch.ops.aecomp.linear_act_backward(torch.randn(4, 2, device="cuda"), x, torch.randn(3, 8, device="cuda"),
                                             torch.randn(4, 3, device="cuda"), "relu", True, True, True)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_opcheck(dtype):
    x = torch.randn(7, 24, device="cuda").to(dtype).requires_grad_(True)
    w = torch.randn(16, 24, device="cuda").to(dtype).requires_grad_(True)
    b = torch.randn(16, device="cuda").to(dtype).requires_grad_(True)
    torch.library.opcheck(torch.ops.aecomp.linear_act.default, (x, w, b, "sigmoid"))
    a = torch.randn(7, 24, device="cuda").to(dtype).requires_grad_(True)
    torch.library.opcheck(torch.ops.aecomp.mse_loss.default, (a, torch.randn_like(a), "mean"))


# ------------------------------------------------------------------------ compute-sanitizer
_SANITIZE_SCRIPT = r"""
import torch
from aecomp import ops
torch.manual_seed(0)
for dt in (torch.bfloat16, torch.float16, torch.float32):
    for m, k, n in ((7, 784, 10), (130, 64, 32), (33, 13, 24), (300, 136, 136), (600, 24, 16)):
        x = torch.randn(m, k, device="cuda", dtype=dt, requires_grad=True)
        w = torch.randn(n, k, device="cuda", dtype=dt, requires_grad=True)
        b = torch.randn(n, device="cuda", dtype=dt, requires_grad=True)
        for act in ("relu", "sigmoid", "none"):
            ops.linear_act(x, w, b, act, backend="cuda").sum().backward()
        ops.linear_act(x[:, 1:], w[:, 1:], None, "relu", backend="cuda").sum().backward()
    a = torch.randn(1001, device="cuda", dtype=dt, requires_grad=True)
    for red in ("mean", "sum", "none"):
        ops.mse_loss(a, torch.randn_like(a), red, backend="cuda").sum().backward()
        ops.mse_loss(a[1:], a[:-1].detach(), red, backend="cuda").sum().backward()
torch.cuda.synchronize()
print("SANITIZE SCRIPT DONE")
"""


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "compute-sanitizer").exists():
            return str(Path(root) / "bin" / "compute-sanitizer")
    return None


@gpu
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool):
    exe = _sanitizer()
    if exe is None:
        pytest.skip("compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    # --report-api-errors=no: torch's own benign API errors (probing) are not ours to report
    cmd = [exe, f"--tool={tool}", "--error-exitcode=3", "--report-api-errors=no", sys.executable, "-c",
           _SANITIZE_SCRIPT]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    out = proc.stdout
    assert "SANITIZE SCRIPT DONE" in out, out[-4000:]
    assert proc.returncode == 0, out[-4000:]
    summary = "ERROR SUMMARY: 0 errors" if tool == "memcheck" else "RACECHECK SUMMARY: 0 hazards displayed"
    assert summary in out, out[-4000:]


# ------------------------------------------------------------------------ the glue without a GPU
def _glue_build_flags():
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    return includes, [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"], [f"-L{torch_lib}", "-ltorch", "-ltorch_cpu", "-lc10",
                                                          f"-Wl,-rpath,{torch_lib}"]


def _cuda_include():
    roots = [Path(p).parent.parent for p in (shutil.which("nvcc"),) if p] + [Path("/usr/local/cuda")]
    for root in roots:
        for inc in (root / "include", root / "targets" / "x86_64-linux" / "include"):
            if (inc / "cuda_runtime_api.h").exists():
                return inc
    return None


def test_glue_on_cpu_emulator(tmp_path, _fresh_seed):
    """ops_cuda.cpp on CPU tensors over the emulated kernels (see the module docstring)."""
    gxx, cuda_inc = shutil.which("g++"), _cuda_include()
    if gxx is None or cuda_inc is None:
        pytest.skip("needs g++ and the CUDA toolkit headers (cuda_runtime_api.h, cuda_bf16.h)")
    if not aecomp.available_backends()["cpu"][0]:
        pytest.skip("aecomp._C is not built: pip install --no-build-isolation -e .")
    harness = ROOT / "csrc" / "cuda" / "harness"
    includes, defines, libs = _glue_build_flags()
    lib = tmp_path / "glue_emu.so"
    build = subprocess.run(
        ["nice", "-n", "5", gxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-w", *defines,
         f"-I{harness / 'fake_cuda_torch'}", *includes, f"-I{cuda_inc}", str(harness / "glue_on_cpu.cpp"),
         *libs, "-o", str(lib)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-6000:]
    env = dict(os.environ, AECOMP_TEST_SEED=str(_fresh_seed),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("AECOMP_CUDA_GEMM", None)
    run = subprocess.run([sys.executable, str(harness / "glue_on_cpu_checks.py"), str(lib)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert run.returncode == 0 and "ALL GLUE CHECKS PASSED" in run.stdout, run.stdout[-6000:]


# ------------------------------------------------------------------ missing kernel image (CPU)
class _FakeExt:
    """An aecomp._C built with CUDA kernels for sm_90a only, on a GPU it has no image for."""

    def __init__(self, image_error):
        self._err = image_error

    def build_info(self):
        return {"cuda": True, "cuda_archs": "9.0a", "torch": torch.__version__}

    def cuda_kernel_image_error(self):
        return self._err


def test_missing_kernel_image_disables_cuda_with_the_reason(monkeypatch):
    from aecomp import _backend, _ext
    from aecomp.ops import _cpp

    err = "no kernel image is available for execution on the device (cudaError 209)"
    monkeypatch.setattr(_ext, "load", lambda: (_FakeExt(err), None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA RTX A6000")
    ok, reason = _cpp._probe_cuda()
    assert not ok
    assert "built for 9.0a" in reason and "8.6" in reason and "no kernel image" in reason and "triton" in reason
    # automatic selection passes over a backend whose probe says no
    backend = _backend.Backend(name="cuda", probe=_cpp._probe_cuda, devices=lambda: frozenset({"cuda"}),
                               ops={"linear_act": _cpp.linear_act})
    assert backend.status() == (False, reason)
    # with an image the backend is available
    monkeypatch.setattr(_ext, "load", lambda: (_FakeExt(""), None))
    assert _cpp._probe_cuda()[0] is True
