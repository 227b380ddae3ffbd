"""Every registered op checks its arguments before touching memory, with one clear error naming
the op and the argument: each ``torch.ops.aecomp.*`` entry (the ops are enumerated from the
dispatcher's registry, so an op added without cases here fails ``test_every_op_has_cases``)
and each tensor-taking entry point of ``aecomp._C`` / ``aecomp._packed``, called with each kind
of inconsistency: shapes (the sizes of one argument against another's: a target smaller than
the output, a saved output narrower than the weights, a grad of the wrong length), list
lengths, dtypes, devices (``meta`` tensors beside CPU ones: the dispatcher sends those to the
fake implementation, which runs the same checks), names, and index ranges (packed codes past
the codebook). These calls used to read past the end of buffers (found under AddressSanitizer;
scripts/asan_kernels.sh runs this file under ASan + UBSan).
"""
from __future__ import annotations

import re

import pytest
import torch

from aecomp import _ext

from .conftest import requires_cpu_ext

pytestmark = requires_cpu_ext

A = torch.ops.aecomp
META = torch.device("meta")


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def _lin():
    return _x(4, 5), _x(3, 5), _x(3)


def _chain():
    """x [2, 3, 6] (leading dims), weights 6 -> 4 -> 6, biases, the saved outputs [6, d]."""
    x = _x(2, 3, 6)
    ws = [_x(4, 6), _x(6, 4)]
    bs = [_x(4), _x(6)]
    outs = [_x(6, 4).sigmoid(), _x(6, 6).sigmoid()]
    return x, ws, bs, outs


def _packed(bits=5):
    from aecomp.ops import PackedChain, codebook_layer, int8_layer

    q = torch.randint(-127, 128, (3, 5), dtype=torch.int8)
    codes = torch.randint(0, 2 ** bits, (2, 3), dtype=torch.uint8)
    return PackedChain([int8_layer(q, torch.rand(3), torch.rand(3), "relu"),
                        codebook_layer(codes, torch.randn(2 ** bits), None, torch.rand(2), "none")])


def _packed_args(chain, **change):
    data = list(chain.data)
    for i, t in change.items():
        data[int(i[1:])] = t
    return data, list(chain.meta), chain.activations, chain.compute


def _bad_codes(chain):
    w = chain.data[4].clone()
    w[-1] = 31 + 7  # a code past the 32-entry table
    return w


# op name -> [(what, call, exception, message regex)]
def _cases():
    x, w, b = _lin()
    y = torch.relu(x @ w.t() + b)
    cx, cws, cbs, outs = _chain()
    ct = _x(2, 3, 6)
    chain = _packed()
    return {
        "linear_act": [
            ("x width", lambda: A.linear_act(x[:, :4], w, b, "relu"), ValueError,
             r"aecomp::linear_act: x.shape\[-1\] = 4 does not match weight.shape\[1\] = 5"),
            ("weight rank", lambda: A.linear_act(x, w[0], b, "relu"), ValueError, r"weight must be 2-D"),
            ("bias length", lambda: A.linear_act(x, w, b[:2], "relu"), ValueError, r"bias must have shape \[3\]"),
            ("x dtype", lambda: A.linear_act(x.int(), w.int(), None, "relu"), TypeError, r"x has dtype torch.int32"),
            ("weight dtype", lambda: A.linear_act(x, w.double(), b, "relu"), TypeError,
             r"weight has dtype torch.float64 but x has dtype torch.float32"),
            ("activation", lambda: A.linear_act(x, w, b, "tanh"), ValueError, r"unknown activation 'tanh'"),
            ("weight device", lambda: A.linear_act(x, w.to(META), b, "relu"), ValueError,
             r"weight is on meta but x is on cpu"),
        ],
        "linear_act_backward": [
            ("grad_y shape", lambda: A.linear_act_backward(y[:3], x, w, y, "relu", True, True, True), ValueError,
             r"aecomp::linear_act_backward: grad_y has shape \[3, 3\] but y has shape \[4, 3\]"),
            ("y shape", lambda: A.linear_act_backward(y[:, :2], x, w, y[:, :2], "relu", True, True, True),
             ValueError, r"y has shape \[4, 2\] but x \[4, 5\] and weight \[3, 5\] give outputs of shape \[4, 3\]"),
            ("x width", lambda: A.linear_act_backward(y, x[:, :2], w, y, "relu", True, True, True), ValueError,
             r"x.shape\[-1\] = 2 does not match weight.shape\[1\] = 5"),
            ("grad dtype", lambda: A.linear_act_backward(y.double(), x, w, y, "relu", True, True, True), TypeError,
             r"grad_y \(torch.float64\) and y \(torch.float32\) must have x's dtype"),
            ("nothing needed, still checked",
             lambda: A.linear_act_backward(y[:1], x, w, y, "relu", False, False, False), ValueError, r"grad_y has shape"),
            ("activation", lambda: A.linear_act_backward(y, x, w, y, "gelu", True, True, True), ValueError,
             r"unknown activation 'gelu'"),
            ("y device", lambda: A.linear_act_backward(y, x, w, y.to(META), "relu", True, True, True), ValueError,
             r"y is on meta"),
        ],
        "mse_loss": [
            ("target shape", lambda: A.mse_loss(_x(4, 3), _x(4, 1), "mean"), ValueError,
             r"aecomp::mse_loss: input and target must have the same shape, got input \[4, 3\] and target \[4, 1\]"),
            ("target dtype", lambda: A.mse_loss(_x(3), _x(3).double(), "mean"), TypeError,
             r"target has dtype torch.float64 but input has dtype torch.float32"),
            ("reduction", lambda: A.mse_loss(_x(3), _x(3), "avg"), ValueError, r"unknown reduction 'avg'"),
            ("target device", lambda: A.mse_loss(_x(3), _x(3).to(META), "sum"), ValueError,
             r"target is on meta but input is on cpu"),
        ],
        "mse_loss_backward": [
            ("the reviewer's call: target smaller than input",
             lambda: A.mse_loss_backward(torch.ones(()), _x(1000), _x(10), "mean", True, False), ValueError,
             r"aecomp::mse_loss_backward: input and target must have the same shape, got input \[1000\] and target \[10\]"),
            ("grad shape, reduction none", lambda: A.mse_loss_backward(_x(3), _x(4), _x(4), "none", True, True),
             ValueError, r"grad has shape \[3\] but input has shape \[4\]"),
            ("grad of a reduced loss", lambda: A.mse_loss_backward(_x(2), _x(4), _x(4), "sum", True, True), ValueError,
             r"grad of a reduced loss must hold one value, got shape \[2\]"),
            ("grad dtype", lambda: A.mse_loss_backward(torch.ones((), dtype=torch.float64), _x(4), _x(4), "mean", True,
                                                       False), TypeError, r"grad has dtype torch.float64"),
            ("nothing needed, still checked", lambda: A.mse_loss_backward(torch.ones(()), _x(9), _x(4), "mean", False,
                                                                          False), ValueError, r"same shape"),
            ("reduction", lambda: A.mse_loss_backward(torch.ones(()), _x(4), _x(4), "avg", True, True), ValueError,
             r"unknown reduction 'avg'"),
            ("grad device", lambda: A.mse_loss_backward(torch.ones((), device=META), _x(4), _x(4), "mean", True, True),
             ValueError, r"grad is on meta but input is on cpu"),
        ],
        "mlp": [
            ("no weights", lambda: A.mlp(cx, [], [], ""), ValueError, r"aecomp::mlp: weights must be a non-empty list"),
            ("bias count", lambda: A.mlp(cx, cws, cbs[:1], "relu,none"), ValueError, r"got 2 weights but 1 biases"),
            ("widths", lambda: A.mlp(cx, [cws[0], cws[0]], cbs, "relu,none"), ValueError,
             r"weights\[1\].shape\[1\] = 6 does not match weights\[0\].shape\[0\] = 4"),
            ("bias length", lambda: A.mlp(cx, cws, [cbs[0][:3], cbs[1]], "relu,none"), ValueError,
             r"biases\[0\] must have shape \[4\]"),
            ("activation count", lambda: A.mlp(cx, cws, cbs, "relu"), ValueError, r"got 2 weights but 1 activations"),
            ("weight dtype", lambda: A.mlp(cx, [cws[0].double(), cws[1]], cbs, "relu,none"), TypeError,
             r"weights\[0\] has dtype torch.float64"),
            ("bias device", lambda: A.mlp(cx, cws, [cbs[0], cbs[1].to(META)], "relu,none"), ValueError,
             r"biases\[1\] is on meta but x is on cpu"),
        ],
        "mlp_forward": [
            ("widths", lambda: A.mlp_forward(cx, [cws[1], cws[0]], cbs, "relu,none"), ValueError,
             r"aecomp::mlp: weights\[0\].shape\[1\] = 4 does not match x.shape\[-1\] = 6"),
            ("activation", lambda: A.mlp_forward(cx, cws, cbs, "relu,swish"), ValueError, r"unknown activation 'swish'"),
        ],
        "mlp_backward": [
            ("the reviewer's call: a saved output narrower than the weights",
             lambda: A.mlp_backward(_x(6, 6), cx, cws, [outs[0][:, :2], outs[1]], "relu,sigmoid", True, [1, 1]),
             ValueError, r"aecomp::mlp_backward: outputs\[0\] has shape \[6, 2\] but x \[2, 3, 6\] and weights\[0\] "
                         r"\[4, 6\] give \[6, 4\]"),
            ("outputs rows", lambda: A.mlp_backward(_x(6, 6), cx, cws, [outs[0], outs[1][:5]], "relu,sigmoid", True,
                                                    [1, 1]), ValueError, r"outputs\[1\] has shape \[5, 6\]"),
            ("grad shape", lambda: A.mlp_backward(_x(6, 5), cx, cws, outs, "relu,sigmoid", True, [1, 1]), ValueError,
             r"grad has shape \[6, 5\] but the chain's output is \[2, 3, 6\]"),
            ("list lengths", lambda: A.mlp_backward(_x(6, 6), cx, cws, outs[:1], "relu,sigmoid", True, [1, 1]),
             ValueError, r"got 2 weights, 1 saved outputs and 2 need_bias flags"),
            ("need_bias length", lambda: A.mlp_backward(_x(6, 6), cx, cws, outs, "relu,sigmoid", True, [1]),
             ValueError, r"2 need_bias flags|1 need_bias flags"),
            ("output dtype", lambda: A.mlp_backward(_x(6, 6), cx, cws, [outs[0].double(), outs[1]], "relu,sigmoid",
                                                    True, [1, 1]), TypeError, r"outputs\[0\] has dtype torch.float64"),
            ("grad device", lambda: A.mlp_backward(_x(6, 6).to(META), cx, cws, outs, "relu,sigmoid", True, [1, 1]),
             ValueError, r"grad is on meta but x is on cpu"),
        ],
        "mlp_mse_loss": [
            ("target shape", lambda: A.mlp_mse_loss(cx, cws, cbs, "relu,sigmoid", _x(2, 3, 5), "mean"), ValueError,
             r"aecomp::mlp_mse_loss: target .*\[2, 3, 5\].*\[2, 3, 6\]"),
            ("target dtype", lambda: A.mlp_mse_loss(cx, cws, cbs, "relu,sigmoid", ct.double(), "mean"), TypeError,
             r"target has dtype torch.float64"),
            ("reduction", lambda: A.mlp_mse_loss(cx, cws, cbs, "relu,sigmoid", ct, "max"), ValueError,
             r"unknown reduction 'max'"),
            ("target device", lambda: A.mlp_mse_loss(cx, cws, cbs, "relu,sigmoid", ct.to(META), "mean"), ValueError,
             r"target is on meta but x is on cpu"),
        ],
        "mlp_mse_backward": [
            ("the reviewer's call: a target smaller than the output",
             lambda: A.mlp_mse_backward(torch.ones(()), cx, cws, outs, "relu,sigmoid", _x(2, 3, 2), "mean", True,
                                        [1, 1]), ValueError,
             r"aecomp::mlp_mse_backward: target has shape \[2, 3, 2\] but the chain's output is \[2, 3, 6\]"),
            ("a saved output narrower than the weights",
             lambda: A.mlp_mse_backward(torch.ones(()), cx, cws, [outs[0][:, :1], outs[1]], "relu,sigmoid", ct, "mean",
                                        True, [1, 1]), ValueError, r"outputs\[0\] has shape \[6, 1\]"),
            ("grad, reduction none", lambda: A.mlp_mse_backward(_x(6, 6), cx, cws, outs, "relu,sigmoid", ct, "none",
                                                                True, [1, 1]), ValueError,
             r"grad has shape \[6, 6\] but reduction='none' needs target's shape \[2, 3, 6\]"),
            ("grad of a reduced loss", lambda: A.mlp_mse_backward(_x(2), cx, cws, outs, "relu,sigmoid", ct, "sum",
                                                                  True, [1, 1]), ValueError, r"must hold one value"),
            ("reduction", lambda: A.mlp_mse_backward(torch.ones(()), cx, cws, outs, "relu,sigmoid", ct, "avg", True,
                                                     [1, 1]), ValueError, r"unknown reduction 'avg'"),
            ("target device", lambda: A.mlp_mse_backward(torch.ones(()), cx, cws, outs, "relu,sigmoid", ct.to(META),
                                                         "mean", True, [1, 1]), ValueError,
             r"target is on meta but x is on cpu"),
        ],
        "packed_mlp": [
            ("codes past the codebook", lambda: A.packed_mlp(_x(2, 5), *_packed_args(chain, d4=_bad_codes(chain))),
             ValueError, r"aecomp::packed_mlp: layer 1's codes reach 38 but its codebook table has 32 entries"),
            ("x width", lambda: A.packed_mlp(_x(2, 4), *_packed_args(chain)), ValueError,
             r"aecomp::packed_mlp: x must be \[\.\.\., 5\], got \[2, 4\]"),
            ("x dtype", lambda: A.packed_mlp(_x(2, 5).double(), *_packed_args(chain)), TypeError, r"x must be float32"),
            ("packed weight bytes", lambda: A.packed_mlp(_x(2, 5), *_packed_args(chain, d0=chain.data[0][:-1])),
             ValueError, r"layer 0 packed weights must be a contiguous CPU uint8 tensor of 128 bytes"),
            ("colsum dtype", lambda: A.packed_mlp(_x(2, 5), *_packed_args(chain, d3=chain.data[3].long())), ValueError,
             r"layer 0 colsum must be int32 \[3\]"),
            ("bias length", lambda: A.packed_mlp(_x(2, 5), *_packed_args(chain, d2=_x(2))), ValueError,
             r"layer 0 bias must be float32 \[3\]"),
            ("meta ints", lambda: A.packed_mlp(_x(2, 5), chain.data, chain.meta[:-1], chain.activations, "auto"),
             ValueError, r"expected 4 tensors and 4 meta ints per layer"),
            ("table size", lambda: A.packed_mlp(_x(2, 5), chain.data, chain.meta[:-1] + [64], chain.activations,
                                                "auto"), ValueError, r"table size must be 16, 32 or 256, got 64"),
            ("activation", lambda: A.packed_mlp(_x(2, 5), chain.data, chain.meta, "relu,tanh", "auto"), ValueError,
             r"unknown activation 'tanh'"),
            ("bias device", lambda: A.packed_mlp(_x(2, 5), *_packed_args(chain, d2=chain.data[2].to(META))),
             ValueError, r"layer 0 bias is on meta"),
        ],
    }


def _registered_ops():
    return sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("aecomp::"))


def test_every_op_has_cases():
    assert _registered_ops() == sorted(_cases())


@pytest.mark.parametrize("op", sorted(_cases()))
def test_every_inconsistency_is_refused_with_one_clear_error(op):
    for what, call, exc, pattern in _cases()[op]:
        with pytest.raises(exc) as info:
            call()
        msg = str(info.value).splitlines()[0]
        assert re.search(pattern, msg), f"{op} ({what}): {msg!r} does not match {pattern!r}"
        assert "aecomp::" in msg, f"{op} ({what}): the message does not name the op: {msg!r}"


# ------------------------------------------------------------------ the pybind11 entry points
_NOT_TENSOR_ENTRIES = {"build_info", "cuda_kernel_image_error", "_set_cpu_gemm", "_get_cpu_gemm", "_cpu_isa",
                       "_cpu_isa_info", "_cpu_isa_level", "_cpu_isa_runs", "_cpu_isa_reset", "_cpu_isa_parse",
                       "_brgemm_bf16", "_brgemm_describe", "_brgemm_level"}


def _bf16(pattern):
    """The bf16 entries check the engine first: where this CPU has none, that is the error."""
    return pattern if _ext.load()[0]._brgemm_bf16() else r"no bf16 matrix engine|" + pattern


def _brg(entry, pattern):
    """The brgemm helpers refuse first where brgemm is off (and pack where it is not AMX)."""
    C = _ext.load()[0]
    off = not C._brgemm_bf16() or (entry == "_brgemm_pack" and C._brgemm_level() != "amx")
    return f"{entry}: " + (r"(no bf16 brgemm here|cpublas::pack needs AMX)" if off else pattern)


def _bf16_saved():
    """x [3, 6], weights 6 -> 4 -> 6 and what mlp_bf16_forward saved for them (or Nones where no engine)."""
    C = _ext.load()[0]
    x, ws = _x(3, 6), [_x(4, 6), _x(6, 4)]
    if not C._brgemm_bf16():
        return x, ws, _x(3, 6), [torch.zeros(0, dtype=torch.bfloat16)] * 5
    out = C.mlp_bf16_forward(x, ws, [None, None], "relu,sigmoid", [True] * 2, [False] * 2, True)
    return x, ws, out[0], list(out[1:])


def _train_step_args(**change):
    w0, w1 = _x(4, 6), _x(6, 4)
    args = dict(x=_x(3, 6), weights=[w0, w1], biases=[_x(4), None], activations="relu,sigmoid", target=_x(3, 6),
                reduction="mean", hyper=[2.0, 0.1, 0, 0, 0, 0, 0, 0.9, 0, 0], group_of=[0, 0, 0, -1],
                state1=[torch.zeros(4, 6), torch.zeros(6, 4), torch.zeros(4), None], state2=[None] * 4,
                steps=[None] * 4, first=[True] * 4)
    args.update(change)
    return args


def _entry_cases():
    C = _ext.load()[0]
    x, w, b = _lin()
    cx, cws, cbs, _ = _chain()
    return {
        "linear_act": [(lambda: C.linear_act(x, w[:, :2], b, "relu"), r"aecomp::linear_act: x.shape\[-1\]")],
        "mse_loss": [(lambda: C.mse_loss(_x(3), _x(4), "mean"), r"aecomp::mse_loss: input and target")],
        "mlp": [(lambda: C.mlp(cx, cws, cbs[:1], "relu,none"), r"aecomp::mlp: got 2 weights but 1 biases")],
        "mlp_mse_loss": [(lambda: C.mlp_mse_loss(cx, cws, cbs, "relu,none", _x(2, 3, 4), "mean"),
                          r"aecomp::mlp_mse_loss: target")],
        "mlp_mse_value_and_grad": [(lambda: C.mlp_mse_value_and_grad(cx, cws, cbs, "relu,none", _x(2, 3, 4), "mean"),
                                    r"target")],
        "mlp_mse_train_step": [
            (lambda: C.mlp_mse_train_step(**_train_step_args(target=_x(3, 5))), r"aecomp::mlp_mse_train_step: target"),
            (lambda: C.mlp_mse_train_step(**_train_step_args(state1=[torch.zeros(4, 6), torch.zeros(6, 3),
                                                                     torch.zeros(4), None])),
             r"momentum_buffer\[1\] has shape \[6, 3\]"),
            (lambda: C.mlp_mse_train_step(**_train_step_args(group_of=[0, 3, 0, -1])), r"group index 3 out of range"),
            (lambda: C.mlp_mse_train_step(**_train_step_args(group_of=[0, 0])), r"expected 2 \* 2 entries"),
            (lambda: C.mlp_mse_train_step(**_train_step_args(x=_x(3, 6).double())), r"float32"),
        ],
        "mlp_mse_train_step_bf16": [
            (lambda: C.mlp_mse_train_step_bf16(**_train_step_args(target=_x(3, 5))),
             _bf16(r"aecomp::mlp_mse_train_step_bf16: target")),
            (lambda: C.mlp_mse_train_step_bf16(**_train_step_args(group_of=[0, 3, 0, -1])),
             _bf16(r"group index 3 out of range")),
            (lambda: C.mlp_mse_train_step_bf16(**_train_step_args(x=_x(3, 6).double())), _bf16(r"float32")),
        ],
        "mlp_bf16_forward": [
            (lambda: C.mlp_bf16_forward(_x(3, 6), [_x(4, 7), _x(6, 4)], [None, None], "relu,sigmoid", [True] * 2,
                                        [False] * 2, True), _bf16(r"mlp_bf16_forward: x has 6 features but weights\[0\] takes 7")),
            (lambda: C.mlp_bf16_forward(_x(3, 6), [_x(4, 6), _x(6, 4)], [_x(3), None], "relu,sigmoid", [True] * 2,
                                        [False] * 2, True), _bf16(r"mlp_bf16_forward: biases\[0\] must be")),
            (lambda: C.mlp_bf16_forward(_x(3, 6), [_x(4, 6), _x(6, 4)], [torch.zeros(4, device=META), None], "relu,sigmoid",
                                        [True] * 2, [False] * 2, True),
             _bf16(r"mlp_bf16_forward: biases\[0\] must be a contiguous float32 CPU")),
            (lambda: C.mlp_bf16_forward(_x(3, 6), [_x(4, 6), _x(6, 4)], [None, None], "relu,sigmoid", [True],
                                        [False], True), _bf16(r"need_w / need_b: one flag per layer")),
        ],
        "mlp_bf16_backward": [
            (lambda: C.mlp_bf16_backward(_x(2, 6), *_bf16_saved()[:1], _bf16_saved()[2], _bf16_saved()[1],
                                         [None, None], "relu,sigmoid", _bf16_saved()[3], [True] * 2, [False] * 2,
                                         True), _bf16(r"mlp_bf16_backward: grad \[2, 6\]")),
            # a saved hidden output from a smaller batch: was read past its end
            (lambda: (lambda x, ws, y, sv: C.mlp_bf16_backward(
                _x(3, 6), x, y, ws, [None, None], "relu,sigmoid", [sv[0][:1]] + sv[1:], [True] * 2, [False] * 2,
                True))(*_bf16_saved()), _bf16(r"mlp_bf16_backward: saved H\[1\] must be")),
            (lambda: (lambda x, ws, y, sv: C.mlp_bf16_backward(
                _x(3, 6), x, y, ws, [None, None], "relu,sigmoid", sv[:2], [True] * 2, [False] * 2, True))(
                *_bf16_saved()), _bf16(r"mlp_bf16_backward: the saved tensors")),
        ],
        "_brgemm_pack": [(lambda: C._brgemm_pack(_x(8, 16), 16), _brg("_brgemm_pack", r"expected a contiguous bfloat16"))],
        "_brgemm_gemm_bf16": [(lambda: C._brgemm_gemm_bf16(_x(4, 8).bfloat16(), _x(3, 16, 2).bfloat16(), 16),
                               _brg("_brgemm_gemm_bf16", r"expected a \[m, k\]"))],
        "_brgemm_rows_bf16": [(lambda: C._brgemm_rows_bf16(_x(8)), _brg("_brgemm_rows_bf16", r"expected a 2-D float32"))],
        "_brgemm_rows_vnni": [(lambda: C._brgemm_rows_vnni(_x(8, 4).double()),
                               _brg("_brgemm_rows_vnni", r"expected a 2-D float32"))],
        "_brgemm_store_t": [(lambda: C._brgemm_store_t(_x(8)), _brg("_brgemm_store_t", r"expected a 2-D float32"))],
        "_brgemm_weight_t_vnni": [(lambda: C._brgemm_weight_t_vnni(torch.ones(4, 4, dtype=torch.int32)),
                                   _brg("_brgemm_weight_t_vnni", r"expected a 2-D float32"))],
        "_mk_linear_fwd": [(lambda: C._mk_linear_fwd(x, w[:, :3], None, "relu"), r"aecomp::_mk_linear_fwd: x.shape")],
        "_mk_dgrad": [(lambda: C._mk_dgrad(_x(4, 3), _x(2, 5), None, "none"), r"aecomp::_mk_dgrad: w must be 2-D \[3, \*\]"),
                      (lambda: C._mk_dgrad(_x(4, 3), _x(3, 5), _x(4, 2), "relu"), r"y_below must be 2-D \[4, 5\]")],
        "_mk_wgrad": [(lambda: C._mk_wgrad(_x(4, 3), _x(2, 5)), r"aecomp::_mk_wgrad: h must be 2-D \[4, \*\]"),
                      (lambda: C._mk_wgrad(_x(4, 3).double(), _x(4, 5)), r"gz must be float32")],
    }


def test_every_extension_entry_point_has_cases():
    C = _ext.load()[0]
    entries = {n for n in dir(C) if not n.startswith("__") and callable(getattr(C, n))} - _NOT_TENSOR_ENTRIES
    assert entries == set(_entry_cases())


@pytest.mark.parametrize("entry", sorted(_entry_cases()))
def test_extension_entry_points_refuse_inconsistent_arguments(entry):
    for call, pattern in _entry_cases()[entry]:
        with pytest.raises((ValueError, TypeError, RuntimeError)) as info:  # RuntimeError: no bf16 engine
            call()
        msg = str(info.value).splitlines()[0]
        assert re.search(pattern, msg), f"{entry}: {msg!r} does not match {pattern!r}"


def test_packed_chain_handle_checks_devices_codes_and_colsum():
    """aecomp._packed.Chain (the eager path): devices and codes as the op, and once per chain the
    int8 weights against their column sums and the int8 range."""
    from aecomp.ops._packed import load_module

    Chain = load_module().Chain
    chain = _packed()
    data, meta, acts, compute = _packed_args(chain, d3=chain.data[3].to(META))
    with pytest.raises(ValueError, match=r"aecomp::packed_mlp: layer 0 bias is on cpu and colsum on meta"):
        Chain(data, meta, acts, compute)
    with pytest.raises(ValueError, match=r"layer 1's codes reach 38"):
        Chain(*_packed_args(chain, d4=_bad_codes(chain)))
    colsum = chain.data[3].clone()
    colsum[1] += 1
    with pytest.raises(ValueError, match=r"layer 0's colsum\[1\] = .* but its weights sum to"):
        Chain(*_packed_args(chain, d3=colsum))
    w = chain.data[0].clone()
    w[0] = 128  # the byte of int8 -128
    with pytest.raises(ValueError, match=r"layer 0 holds -128"):
        Chain(*_packed_args(chain, d0=w))
