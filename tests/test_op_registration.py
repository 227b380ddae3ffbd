"""The C++ ops as torch ops: opcheck, and torch.compile(fullgraph=True) with no graph break."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aecomp import ops

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext


def _linear_samples():
    for act in ("none", "relu", "sigmoid"):
        for bias in (True, False):
            x = torch.randn(6, 5, requires_grad=True)
            w = torch.randn(4, 5, requires_grad=True)
            b = torch.randn(4, requires_grad=True) if bias else None
            yield (x, w, b, act)
    yield (torch.randn(2, 3, 5), torch.randn(4, 5, requires_grad=True), torch.randn(4), "relu")
    yield (torch.randn(0, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True), None, "sigmoid")


def test_opcheck_linear_act():
    for args in _linear_samples():
        torch.library.opcheck(torch.ops.aecomp.linear_act.default, args)


def test_opcheck_mse_loss():
    for red in ("mean", "sum", "none"):
        a = torch.randn(5, 3, requires_grad=True)
        t = torch.randn(5, 3, requires_grad=True)
        torch.library.opcheck(torch.ops.aecomp.mse_loss.default, (a, t, red))
        torch.library.opcheck(torch.ops.aecomp.mse_loss.default, (a, t.detach(), red))


def test_opcheck_backward_ops():
    x, w = torch.randn(6, 5), torch.randn(4, 5)
    y = torch.sigmoid(x @ w.t())
    g = torch.randn_like(y)
    for mask in [(True, True, True), (False, True, False), (True, False, True)]:
        torch.library.opcheck(torch.ops.aecomp.linear_act_backward.default, (g, x, w, y, "sigmoid", *mask))
    a, t = torch.randn(5, 3), torch.randn(5, 3)
    torch.library.opcheck(torch.ops.aecomp.mse_loss_backward.default, (torch.tensor(1.0), a, t, "mean", True, True))


class TinyAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(8, 16) / 4)
        self.b1 = torch.nn.Parameter(torch.zeros(8))
        self.w2 = torch.nn.Parameter(torch.randn(16, 8) / 3)
        self.b2 = torch.nn.Parameter(torch.zeros(16))

    def forward(self, x):
        z = ops.linear_act(x, self.w1, self.b1, "relu")
        return ops.mse_loss(ops.linear_act(z, self.w2, self.b2, "sigmoid"), x)

    def reference(self, x):
        z = torch.relu(F.linear(x, self.w1, self.b1))
        return F.mse_loss(torch.sigmoid(F.linear(z, self.w2, self.b2)), x)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_and_backward(compile_backend):
    torch._dynamo.reset()
    model = TinyAE()
    x = torch.rand(10, 16)
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    loss = compiled(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = model.reference(x)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_compiled_graph_calls_our_ops():
    torch._dynamo.reset()
    seen = []

    def spy(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch.compile(TinyAE(), fullgraph=True, backend=spy)(torch.rand(4, 16))
    assert any("aecomp.linear_act" in t for t in seen), seen
    assert any("aecomp.mse_loss" in t for t in seen), seen


def _run_fresh(code: str, *args: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported but what it imports itself)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_aecomp_registers_the_ops_and_a_traced_model_loads_in_a_new_process(tmp_path):
    """``import aecomp`` alone registers torch.ops.aecomp.* (no op call, no aecomp._C import)."""
    path = str(tmp_path / "traced.pt")
    _run_fresh(
        "import sys, torch, aecomp\n"
        "x = torch.randn(3, 5)\n"
        "w = torch.randn(4, 5)\n"
        "y = torch.ops.aecomp.linear_act(x, w, None, 'relu')\n"  # direct call, first thing
        "torch.testing.assert_close(y, torch.relu(x @ w.T))\n"
        "torch.library.opcheck(torch.ops.aecomp.mse_loss.default, (x, x.flip(0), 'mean'))\n"
        "m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.Sigmoid())\n"
        "fast = aecomp.accelerate(m)\n"
        "traced = torch.jit.trace(fast, x)\n"
        "assert 'aecomp::linear_act' in str(traced.graph), traced.graph\n"
        "traced.save(sys.argv[1])\n"
        "torch.save((x, m(x)), sys.argv[1] + '.io')\n", path)
    out = _run_fresh(
        "import sys, torch, aecomp\n"
        "loaded = torch.jit.load(sys.argv[1])\n"
        "x, want = torch.load(sys.argv[1] + '.io')\n"
        "torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-6)\n"
        "print('ok')\n", path)
    assert out.strip() == "ok"


def test_backend_module_does_not_import_ops():
    """Imports go one way: aecomp.ops -> aecomp._backend."""
    import inspect

    import aecomp._backend as backend

    src = inspect.getsource(backend)
    assert "from .ops" not in src and "import ops" not in src
