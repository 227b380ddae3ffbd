"""ONNX export: a CompressedNet (or MLP classifier) as one file, an autoencoder as two.

The fused ops (``aecomp::linear_act`` and friends) are custom torch ops that no ONNX runtime
knows, so they are not exported as they are. A ``CompressedNet`` / ``FusedMLP`` is exported
through its plain-torch twin (``to_sequential()``: ``nn.Linear`` + ``nn.ReLU``/``nn.Sigmoid``,
the same state_dict), which becomes the standard operators ``Gemm`` + ``Relu``/``Sigmoid``.
Any other autoencoder (conv, recurrent, VAE) is traced with ``aecomp.use_backend("reference")``,
under which every fused op is its plain-torch definition.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript, the default
since torch 2.9; it runs offline). The legacy TorchScript exporter also works in torch 2.13 but
is deprecated. The batch dimension is dynamic (input ``x``, output ``y``; batch size any >= 1);
opset 20 (the exporter's default in torch 2.13). One self-contained file
(``external_data=False``).

An autoencoder is split into what each side of a link runs: the sender's
``<stem>.encoder.onnx`` (``x -> z``) and the receiver's ``<stem>.decoder.onnx`` (``z -> x_hat``).

:func:`check_onnx` runs a file in onnxruntime and returns the largest absolute difference from
the torch model (float32). :func:`float32_error_bound` is what that difference may be for a chain
of linear layers: the probabilistic rounding-error model of Higham & Mary ("A new approach to
probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019): a dot product of length
``K`` plus a bias, summed in any order, is off by about ``sqrt(K + 1) u (|W| |h| + |b|)``
(``u = 2^-24``), and independent errors ``e`` of its inputs reach the output as
``sqrt(W^2 e^2)``; relu passes errors through, sigmoid shrinks them by 4 and adds a few ulps of
its own. Propagated layer by layer from the torch run's own activations, multiplied by
``lambda = 8`` (the bound then fails with probability below ``2 K exp(-32)``) and by 2 (torch and
onnxruntime each deviate from the exact result). It grows with the fan-in (``sqrt(K)``) and the
depth: ``aecomp export`` checks every output against it by default. (The deterministic bound,
``K u |W| |h|`` per layer with ``|W| e`` propagation, was 5 orders of magnitude above the
observed differences on a 784-300-100-10 network: too loose to catch anything.)

**Raw inputs, original labels.** ``scaling`` (an ``aecomp.data.Preprocessing``, what the model
file or checkpoint recorded) and ``labels`` (the label map) make the exported graph complete: the
input ``x`` (float32; cast uint8 pixels to float32, values unchanged) holds *raw* values and the
graph first computes ``(x - shift) / scale`` (``Sub``, ``Div``, float32: bit-identical to
``aecomp.data``'s scaling); with a label map a second output ``label`` (int64 ``[batch]``) holds
the original label of the most likely class (``ArgMax`` + ``Gather``); output ``y`` stays the
logits. An autoencoder's encoder file takes raw inputs and its decoder file returns
reconstructions in raw units (``y * scale + shift``). Both are added to the exported graph by
one helper (:func:`complete_graph`), for the float and the integer / codebook graphs alike.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..nn import FusedMLP
from .net import CompressedNet

__all__ = [
    "MissingDependencyError",
    "check_onnx",
    "complete_graph",
    "export_autoencoder",
    "export_int8_onnx",
    "export_onnx",
    "export_packed_onnx",
    "float32_error_bound",
    "raw_input_fn",
    "onnx_ops",
    "require_onnx",
    "run_onnx",
]

PathLike = Union[str, os.PathLike]
INSTALL_HINT = "pip install onnx onnxruntime"


class MissingDependencyError(ImportError):
    """A package that ONNX export or checking needs is not installed; the message says how to get it."""


def require_onnx(runtime: bool = False) -> None:
    """Raise :class:`MissingDependencyError` naming the package to install when onnx (and, with
    ``runtime=True``, onnxruntime) or onnxscript (the exporter's dependency) is missing."""
    missing = []
    for name in ("onnx", "onnxscript") + (("onnxruntime",) if runtime else ()):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"ONNX export needs {', '.join(missing)}, which is not installed: "
                                     f"pip install {' '.join(missing)}  (all of it: {INSTALL_HINT} onnxscript)")


class _Plain(nn.Module):
    """A plain-torch function ``x -> fn(x)`` with an argument named ``x`` (the ONNX input name)."""

    def __init__(self, body: nn.Module, method: Optional[str] = None) -> None:
        super().__init__()
        self.body = body
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.body, self.method)(x) if self.method else self.body(x)


def _twin(model: nn.Module) -> Tuple[nn.Module, bool]:
    """(plain-torch module, needs the reference backend while tracing)."""
    if isinstance(model, (CompressedNet, FusedMLP)):
        return _Plain(model.to_sequential().eval()), False
    return _Plain(model.eval()), True


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs torchvision notes and prints progress; keep the terminal clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                              "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export(module: nn.Module, example: torch.Tensor, path: PathLike, reference_backend: bool,
            scaling=None, labels=None, scale_input: bool = True, unscale_output: bool = False) -> Path:
    require_onnx()
    from .. import use_backend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if example.shape[0] < 2:  # a batch of 1 would be specialised to 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    ctx = use_backend("reference") if reference_backend else contextlib.nullcontext()
    with ctx, _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(module, (example,), None, dynamo=True, verbose=False, external_data=False,
                                    input_names=["x"], output_names=["y"], dynamic_shapes={"x": {0: batch}})
    model = complete_graph(program.model_proto, scaling, labels, scale_input, unscale_output)
    _save_atomic(model, path)
    return path


def _save_atomic(model, path: Path) -> None:
    """``onnx.save`` to a temporary name, then rename: no half-written file under ``path``."""
    import onnx

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def complete_graph(model, scaling=None, labels=None, scale_input: bool = True, unscale_output: bool = False):
    """The ONNX ``model`` with raw inputs and original labels (see the module docstring): with
    ``scale_input`` input ``x`` goes through ``(x - shift) / scale`` before the graph's first use of
    it; with ``labels`` an output ``label`` = ``labels[argmax(y)]``; with ``unscale_output`` output
    ``y`` is turned back into raw units, ``y * scale + shift``. Returns ``model`` itself when there
    is nothing to add."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .modelfile import as_labels, as_scaling

    scaling = as_scaling(scaling)
    labels = as_labels(labels)
    scaled = scaling is not None and scaling.kind != "none" and (scale_input or unscale_output)
    if not scaled and labels is None:
        return model
    graph = model.graph
    first: list = []
    if scaled:
        shift = scaling.shift.float().numpy().astype(np.float32)
        scale = scaling.scale.float().numpy().astype(np.float32)
        graph.initializer.extend([numpy_helper.from_array(shift, "input_shift"),
                                  numpy_helper.from_array(scale, "input_scale")])
        if scale_input:
            for node in graph.node:
                node.input[:] = ["x_scaled" if n == "x" else n for n in node.input]
            first = [helper.make_node("Sub", ["x", "input_shift"], ["x_shifted"]),
                     helper.make_node("Div", ["x_shifted", "input_scale"], ["x_scaled"])]
        if unscale_output:
            for node in graph.node:
                node.output[:] = ["y_scaled" if n == "y" else n for n in node.output]
                node.input[:] = ["y_scaled" if n == "y" else n for n in node.input]
            graph.node.extend([helper.make_node("Mul", ["y_scaled", "input_scale"], ["y_unscaled"]),
                               helper.make_node("Add", ["y_unscaled", "input_shift"], ["y"])])
    nodes = first + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    if labels is not None:
        graph.initializer.append(numpy_helper.from_array(np.asarray(labels, dtype=np.int64), "label_values"))
        graph.node.extend([helper.make_node("ArgMax", ["y"], ["y_argmax"], axis=-1, keepdims=0),
                           helper.make_node("Gather", ["label_values", "y_argmax"], ["label"], axis=0)])
        graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]))
    onnx.checker.check_model(model)
    return model


def _example(model: nn.Module, example: Optional[torch.Tensor]) -> torch.Tensor:
    if example is not None:
        return example.detach().float()
    if isinstance(model, CompressedNet):
        return torch.rand(2, model.in_features)
    if isinstance(model, FusedMLP):
        return torch.rand(2, model.dims[0])
    shape = getattr(model, "input_shape", None)
    if shape is None or any(s is None for s in shape):
        raise ValueError(f"export_onnx: give an example input for a {type(model).__name__} (its input shape is not fixed)")
    return torch.rand(2, *shape)


def export_onnx(model: nn.Module, path: PathLike, example: Optional[torch.Tensor] = None, *, scaling=None,
                labels=None) -> Path:
    """Export a classifier (``x -> logits``: CompressedNet / FusedMLP, or any plain-torch module such
    as the PCA baseline) to one ONNX file; ``example`` holds *scaled* inputs. With ``scaling`` the
    graph takes raw inputs, with ``labels`` it also outputs ``label`` (module docstring)."""
    plain, ref = _twin(model)
    return _export(plain, _example(model, example), path, ref, scaling, labels)


def encoder_decoder_paths(path: PathLike) -> Tuple[Path, Path]:
    """``model.onnx`` -> (``model.encoder.onnx``, ``model.decoder.onnx``)."""
    p = Path(path)
    stem = p.name[:-len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".encoder.onnx"), p.with_name(stem + ".decoder.onnx")


def export_autoencoder(autoencoder: nn.Module, path: PathLike, example: Optional[torch.Tensor] = None, *,
                       scaling=None) -> Tuple[Path, Path]:
    """Export the encoder (``x -> z``) and the decoder (``z -> x_hat``) as two ONNX files next
    to ``path`` (see :func:`encoder_decoder_paths`); returns their paths. With ``scaling`` the
    encoder takes raw inputs and the decoder returns raw units."""
    enc_path, dec_path = encoder_decoder_paths(path)
    x = _example(autoencoder, example)
    autoencoder = autoencoder.eval()
    if isinstance(getattr(autoencoder, "encoder", None), FusedMLP) and type(autoencoder).__name__ == "Autoencoder":
        enc, dec, ref = _Plain(autoencoder.encoder.to_sequential().eval()), \
            _Plain(autoencoder.decoder.to_sequential().eval()), False
    else:
        enc, dec, ref = _Plain(autoencoder, "encode"), _Plain(autoencoder, "decode"), True
    from .. import use_backend

    with torch.no_grad(), (use_backend("reference") if ref else contextlib.nullcontext()):
        z = enc(x)
    _export(enc, x, enc_path, ref, scaling)
    _export(dec, z, dec_path, ref, scaling, scale_input=False, unscale_output=True)
    return enc_path, dec_path


def raw_input_fn(fn: Callable[[torch.Tensor], torch.Tensor], scaling=None, scale_input: bool = True,
                 unscale_output: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` (on scaled values) as a function of raw ones: the torch twin of :func:`complete_graph`."""
    from .modelfile import as_scaling

    scaling = as_scaling(scaling)
    if scaling is None or scaling.kind == "none":
        return fn

    def raw(x: torch.Tensor) -> torch.Tensor:
        y = fn((x.float() - scaling.shift) / scaling.scale if scale_input else x)
        return y * scaling.scale + scaling.shift if unscale_output else y
    return raw


# ---------------------------------------------------------------------- the float32 error model
U32 = 2.0 ** -24  # unit roundoff of float32
#: Higham & Mary's lambda: a length-n dot product stays within lambda sqrt(n) u sum|w h| with
#: probability >= 1 - 2n exp(-lambda^2 / 2) (2e-11 for n = 785 at lambda = 8)
LAMBDA = 8.0


def chain_of(model: nn.Module):
    """``[(W, b, activation)]`` of a model whose forward is a chain of linear layers (CompressedNet,
    FusedMLP, the PCA classifier, an Autoencoder's encoder or decoder FusedMLP; ``("shift", v)``
    stands for ``h - v``); None otherwise."""
    from .baselines import PCAClassifier
    from .net import linear_layers

    if isinstance(model, (CompressedNet, FusedMLP)):
        return [(m.weight.detach(), None if m.bias is None else m.bias.detach(), m.activation)
                for m in linear_layers(model)]
    if isinstance(model, PCAClassifier):
        return [("shift", model.mean), (model.components, None, "none"), (model.weight, model.bias, "none")]
    return None


@torch.no_grad()
def float32_error_bound(layers, x: torch.Tensor, scaling=None, scale_input: bool = False,
                        unscale_output: bool = False, lam: float = LAMBDA) -> torch.Tensor:
    """Per output element, the largest ``|onnxruntime - torch|`` float32 arithmetic allows for the
    chain ``layers`` (``[(W, b, activation)]``) on ``x`` (raw when ``scale_input``): twice the
    probabilistic forward-error bound of one float32 evaluation (see the module docstring)."""
    from .modelfile import as_scaling

    scaling = as_scaling(scaling)
    h = x.double().reshape(x.shape[0], -1)
    e = torch.zeros_like(h)  # the error scale of each value (rms-like; lam is applied at the end)
    if scale_input and scaling is not None and scaling.kind != "none":
        h = (h - scaling.shift.double()) / scaling.scale.double()
        e = 2.01 * U32 * h.abs()  # (x - shift) / scale: two roundings
    for layer in layers:
        if isinstance(layer[0], str):  # ("shift", v): h - v, one rounding
            h = h - layer[1].double()
            e = (e ** 2 + (U32 * h.abs()) ** 2).sqrt()
            continue
        w, b, act = layer
        wd = w.double()
        ba = b.double().abs() if b is not None else 0.0
        pre = h @ wd.T + (b.double() if b is not None else 0.0)
        rounding = math.sqrt(w.shape[1] + 1) * U32 * ((h.abs() + lam * e) @ wd.abs().T + ba)
        e = ((e ** 2) @ (wd ** 2).T + rounding ** 2).sqrt()  # independent errors add in quadrature
        if act == "relu":
            h = pre.clamp_min(0.0)
        elif act == "sigmoid":  # 1/4-Lipschitz; its own evaluation: a few ulps (allowed: 8)
            h = torch.sigmoid(pre)
            e = e / 4 + (8 * U32 * h + 2 * U32) / lam
        else:
            h = pre
    if unscale_output and scaling is not None and scaling.kind != "none":
        h = h * scaling.scale.double() + scaling.shift.double()
        e = e * scaling.scale.double().abs() + 2.01 * U32 * h.abs() / lam
    return 2.0 * lam * e


def run_onnx(path: PathLike, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file in onnxruntime (CPU) on ``x``; float32 out."""
    require_onnx(runtime=True)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().float().cpu().numpy()})[0])


@torch.no_grad()
def check_onnx(path: PathLike, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """``max |onnxruntime(path)(x) - fn(x)|`` in float32."""
    got = run_onnx(path, x)
    want = fn(x.float()).float()
    if got.shape != want.shape:
        raise AssertionError(f"{path}: onnxruntime gave shape {list(got.shape)}, torch {list(want.shape)}")
    return float((got - want).abs().max()) if got.numel() else 0.0


def onnx_ops(path: PathLike) -> Sequence[str]:
    """The operator types in an ONNX file's graph, in order."""
    require_onnx()
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


# ---------------------------------------------------------------------- int8 ONNX (integer operators)
# An int8 classifier (per-channel int8 weights, see aecomp.compress.quantize) as ONNX that
# onnxruntime runs in int8. Per layer, with h the layer's float input:
#
#     hq, hs, hz = DynamicQuantizeLinear(h)          uint8, per tensor (scale, zero point)
#     acc        = MatMulInteger(hq, Q^T, hz, 0)      int32, exact: sum_k (hq - hz) q
#     y          = act(Cast<float>(acc) * (hs * s) + b)
#
# Why integer operators and not QDQ: a QDQ file needs a fixed activation scale per layer
# (calibration), or it runs DequantizeLinear on the weights and a float MatMul; dynamic
# quantization (DynamicQuantizeLinear + MatMulInteger) keeps the weights int8 in the file and
# in onnxruntime's memory, needs no calibration data, and onnxruntime fuses the chain into its
# DynamicQuantizeMatMul kernel (u8 x s8 GEMM). It is also exactly the integer arithmetic of our
# packed kernel's int8 path (csrc/cpu/packed_mlp.cpp), so the two agree to float rounding.
INT8_OPSET = 17



def _packed_source(source):
    """``(PackedNet, FileMeta or None)`` of a model file (read by its format's one reader,
    ``modelfile.read_model``) or a PackedNet."""
    from .share import PackedNet

    if isinstance(source, PackedNet):
        return source, None
    from .modelfile import read_model

    stored = read_model(source)
    if not hasattr(stored, "packed_net"):
        raise ValueError(f"{os.fspath(source)}: an {stored.meta.name} file, not a classifier")
    return stored.packed_net(), stored.meta


def _gemm_nodes(i: int, h: str, layer, nodes: list, inits: list) -> str:
    """Nodes of ``h @ W^T`` for layer ``i`` in the form the file holds it; returns the output name.
    int8: DynamicQuantizeLinear + MatMulInteger (comment above). Shared weights: a gather of the
    codebook, ``W^T = table[codes^T]`` (the codes stay one byte each in the file, like the packed
    kernel's table; a pruned weight is one more table entry, 0), then a float MatMul -- the same
    arithmetic as the packed path's float layers (dequantize, then GEMM)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from .share import Int8Linear

    if isinstance(layer, Int8Linear):
        inits.append(numpy_helper.from_array(layer.q.numpy().T.copy(), f"q{i}"))
        inits.append(numpy_helper.from_array(layer.scale.float().numpy(), f"s{i}"))
        nodes.append(helper.make_node("DynamicQuantizeLinear", [h], [f"h{i}_q", f"h{i}_s", f"h{i}_z"]))
        nodes.append(helper.make_node("MatMulInteger", [f"h{i}_q", f"q{i}", f"h{i}_z", "w_zero"], [f"acc{i}"]))
        nodes.append(helper.make_node("Cast", [f"acc{i}"], [f"accf{i}"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [f"h{i}_s", f"s{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Mul", [f"accf{i}", f"m{i}"], [f"lin{i}"]))
        return f"lin{i}"
    table = layer.codebook.float()
    codes = layer.codes.long()
    if layer.mask is not None:  # pruned: the zeros are one more table entry
        codes = torch.where(layer.mask, codes, torch.full_like(codes, table.numel()))
        table = torch.cat([table, table.new_zeros(1)])
    dtype = np.uint8 if table.numel() <= 256 else np.uint16
    inits.append(numpy_helper.from_array(codes.T.numpy().astype(dtype), f"codes{i}"))
    inits.append(numpy_helper.from_array(table.numpy().astype(np.float32), f"table{i}"))
    nodes.append(helper.make_node("Cast", [f"codes{i}"], [f"idx{i}"], to=TensorProto.INT32))
    nodes.append(helper.make_node("Gather", [f"table{i}", f"idx{i}"], [f"wt{i}"], axis=0))
    nodes.append(helper.make_node("MatMul", [h, f"wt{i}"], [f"lin{i}"]))
    return f"lin{i}"


def export_packed_onnx(source, path: PathLike, *, scaling=None, labels=None) -> Path:
    """Write a packed classifier (an int8 / shared-weight model file, or a ``share.PackedNet``) as
    ONNX that keeps its weights as the file holds them: int8 layers as integer operators,
    shared-weight layers as a gather of the codebook (:func:`_gemm_nodes`); input ``x``, output
    ``y``, dynamic batch. A file's own scaling and label map are applied (:func:`complete_graph`);
    for a PackedNet pass ``scaling`` / ``labels``."""
    require_onnx()
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    net, meta = _packed_source(source)
    if meta is not None:
        scaling, labels = meta.scaling, meta.labels
    nodes, inits = [], [numpy_helper.from_array(np.zeros((), dtype=np.int8), "w_zero")]
    k0 = int(net.layers[0].shape[1])
    h = "x"
    for i, layer in enumerate(net.layers):
        cur = _gemm_nodes(i, h, layer, nodes, inits)
        if layer.bias is not None:
            inits.append(numpy_helper.from_array(layer.bias.float().numpy(), f"b{i}"))
            nodes.append(helper.make_node("Add", [cur, f"b{i}"], [f"pre{i}"]))
            cur = f"pre{i}"
        out = "y" if i == len(net.layers) - 1 else f"a{i}"
        op = {"relu": "Relu", "sigmoid": "Sigmoid"}.get(layer.activation, "Identity")
        nodes.append(helper.make_node(op, [cur], [out]))
        h = out
    n_out = int(net.layers[-1].shape[0])
    graph = helper.make_graph(nodes, "aecomp_packed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INT8_OPSET)], producer_name="aecomp")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    model = complete_graph(model, scaling, labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(model, path)
    return path


def export_int8_onnx(source, path: PathLike, *, scaling=None, labels=None) -> Path:
    """:func:`export_packed_onnx` for int8 models (kept for its name: int8 layers become
    DynamicQuantizeLinear + MatMulInteger)."""
    return export_packed_onnx(source, path, scaling=scaling, labels=labels)
