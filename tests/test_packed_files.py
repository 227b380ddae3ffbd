"""Model files -> packed in-memory models (aecomp.compress.packed), int8 ONNX, and the round trip
file -> packed -> ONNX -> onnxruntime on the digits test set."""
from __future__ import annotations

import os

import pytest
import torch

from aecomp import data
from aecomp.compress import accuracy, fit_classifier
from aecomp.compress.packed import PackedModel, from_packed_net, load_packed_model
from aecomp.compress.storage import StorageError, load_packed, save_packed
from aecomp.compress.net import CompressedNet
from aecomp.nn import FusedMLP

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    """A small CompressedNet-shaped classifier 64-32-16 (encoder) + 16-10 (head), trained briefly."""
    torch.manual_seed(0)
    net = CompressedNet(FusedMLP([64, 32, 16], ["relu", "none"]), FusedMLP([16, 10], "none"), mode="replace")
    x, y = digits.train.x, digits.train.y
    fit_classifier(net, x, y, epochs=8, lr=3e-3, batch_size=64, seed=0)
    return net.eval()


def _dense(model) -> list:
    return [m.weight.detach() for m in model.layers]


@pytest.mark.parametrize("sparse", [False, True])
def test_int8_file_loads_packed_and_matches_the_dequantized_model(tmp_path, trained, digits, sparse):
    model = trained
    if sparse:
        from aecomp.compress.prune import prune_

        import copy

        model = copy.deepcopy(trained)
        prune_(model, 0.7)
    path = tmp_path / "m.safetensors"
    nbytes = save_packed(model, path, values="int8", sparse=sparse)
    packed = load_packed_model(path)
    assert isinstance(packed, PackedModel) and packed.file_bytes == nbytes
    ref = load_packed(path)  # the float32 model with dequantized weights (the old loader)
    x = digits.test.x
    with torch.no_grad():
        want = ref(x).double()
    got = packed.with_compute("float")(x).double()
    assert (got - want).abs().max() <= 1e-4 * (1 + want.abs().max())
    # resident bytes: int8 weights + scales + biases + column sums (+ padding of the 16-column groups)
    params = sum(w.numel() for w in _dense(model))
    assert params <= packed.resident_bytes < params + 2_000
    # auto (int8 path) predicts the same classes as the float path on nearly every sample
    agree = (packed(x).argmax(1) == got.argmax(1)).float().mean()
    assert agree >= 0.99


def test_shared_weight_files_load_packed(tmp_path, trained, digits):
    from aecomp.compress.coding import load_coded, save_coded
    from aecomp.compress.share import finalize, int8_model, share_model

    x = digits.test.x
    for net in (finalize(share_model(trained, 4)), finalize(share_model(trained, 6)), finalize(int8_model(trained))):
        path = tmp_path / "m.aecc"
        save_coded(net, path)
        packed = load_packed_model(path, compute="float")
        want = load_coded(path).to_model()(x).detach().double()
        got = packed(x).double()
        assert (got - want).abs().max() <= 1e-4 * (1 + want.abs().max()), packed
        assert packed.file_bytes == os.path.getsize(path)
    # pruned + shared: the mask's zeros become one more table entry
    from aecomp.compress.prune import prune_

    import copy

    pruned = copy.deepcopy(trained)
    prune_(pruned, 0.9)
    net = finalize(share_model(pruned, 3))
    packed = from_packed_net(net, compute="float")  # "auto" may run bf16 tiles at batch (test_packed_brgemm.py)
    want = net.to_model()(x).detach().double()
    assert (packed(x).double() - want).abs().max() <= 1e-4 * (1 + want.abs().max())


def test_bad_files_give_one_clear_error(tmp_path, trained):
    with pytest.raises(StorageError, match="cannot read"):
        load_packed_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(StorageError, match="not a readable safetensors"):
        load_packed_model(junk)
    f32 = tmp_path / "f32.safetensors"
    save_packed(trained, f32, values="float32")
    with pytest.raises(StorageError, match="holds float32 weights"):
        load_packed_model(f32)
    good = tmp_path / "good.safetensors"
    save_packed(trained, good, values="int8")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(StorageError):
        load_packed_model(cut)
    from aecomp.compress.coding import CodedFileError, save_coded
    from aecomp.compress.share import finalize, share_model

    coded = tmp_path / "m.aecc"
    save_coded(finalize(share_model(trained, 4)), coded)
    raw = bytearray(coded.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.aecc"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CodedFileError, match="checksum"):
        load_packed_model(bad)


def test_round_trip_file_packed_onnx_onnxruntime(tmp_path, trained, digits):
    from aecomp.compress.export import export_int8_onnx, onnx_ops, run_onnx

    path = tmp_path / "m.safetensors"
    save_packed(trained, path, values="int8")
    packed = load_packed_model(path)
    onnx_path = export_int8_onnx(path, tmp_path / "m.int8.onnx")
    kinds = set(onnx_ops(onnx_path))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= kinds and "MatMul" not in kinds and "Gemm" not in kinds
    x, y = digits.test.x, digits.test.y
    ours = packed(x)
    theirs = run_onnx(onnx_path, x)
    same = (ours.argmax(1) == theirs.argmax(1)).float().mean().item()
    assert same >= 0.999
    acc_ours = 100 * (ours.argmax(1) == y).float().mean().item()
    acc_ort = 100 * (theirs.argmax(1) == y).float().mean().item()
    assert abs(acc_ours - acc_ort) <= 0.1
    # the same integers: outputs agree to float rounding (not only the classes)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    # and the int8 model is as accurate as the dequantized float model within a point
    assert abs(acc_ours - accuracy(load_packed(path), x, y)) <= 1.0


def test_aecomp_export_int8_cli(tmp_path, trained, capsys):
    from aecomp.cli import main
    from aecomp.compress.export import onnx_ops

    path = tmp_path / "m.safetensors"
    save_packed(trained, path, values="int8", sparse=True)
    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(path), "--int8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 operators" in text and "vs the packed int8 kernel" in text
    assert "MatMulInteger" in onnx_ops(out)
    f32 = tmp_path / "f32.safetensors"
    save_packed(trained, f32, values="float32")
    assert main(["export", str(f32), "--int8", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds float32 weights" in err[0]


# ---------------------------------------------------------------------- raw inputs (issue 23 item 8, 24 item 4)
def _saved_kinds(tmp_path, model, scaling, labels=None):
    from aecomp.compress.coding import save_coded
    from aecomp.compress.share import finalize, share_model

    int8 = tmp_path / "m.safetensors"
    save_packed(model, int8, values="int8", scaling=scaling, labels=labels)
    shared = tmp_path / "m.aecc"
    save_coded(finalize(share_model(model, 4)), shared, scaling=scaling, labels=labels)
    return [int8, shared]


def test_integer_pixels_run_through_the_files_own_scaling(tmp_path, trained):
    """Before: uint8 / int32 / int64 inputs gave an all-zero tensor of the input dtype, silently."""
    from aecomp.data import Preprocessing

    scaling = Preprocessing("global", torch.tensor(0.0), torch.tensor(255.0))
    x = torch.randint(0, 256, (33, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    for path in _saved_kinds(tmp_path, trained, scaling):
        model = load_packed_model(path)
        want = model.forward_scaled(x.float() / 255)
        assert want.abs().max() > 0
        for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float64):
            got = model(x.to(dtype))
            assert got.dtype == torch.float32 and torch.equal(got, want), (path.name, dtype)
        with pytest.raises(TypeError, match="complex"):
            model(torch.complex(x.float(), x.float()))
        with pytest.raises(ValueError, match=r"expected \[\.\.\., 64\]"):
            model(x[:, :60])
        with pytest.raises(TypeError, match="forward_scaled: x has dtype torch.uint8"):
            model.forward_scaled(x)
    # a file that records no scaling cannot turn integers into what the model was trained on
    none = tmp_path / "none.safetensors"
    save_packed(trained, none, values="int8")
    with pytest.raises(TypeError, match="records no input scaling") as info:
        load_packed_model(none)(x)
    assert "\n" not in str(info.value)


def test_raw_pixels_give_the_accuracy_of_the_scaled_data(tmp_path, trained, digits):
    """Issue 24 item 4: a user with the raw digits (0..16, as float or as uint8 pixels) gets exactly
    the accuracy measured on the scaled test split, from the file alone; predict() gives labels."""
    raw = data.load("digits", test_fraction=0.2, seed=0, scale="none").test
    assert raw.x.max() == 16 and digits.test.x.max() <= 1
    scaling = digits.train.preprocessing
    labels = tuple(range(100, 1100, 100))
    for path in _saved_kinds(tmp_path, trained, scaling, labels):
        model = load_packed_model(path)
        scaled = model.forward_scaled(digits.test.x).argmax(1)
        acc = (scaled == digits.test.y).float().mean()
        assert acc > 0.8
        for x in (raw.x, raw.x.to(torch.uint8)):
            assert torch.equal(model(x).argmax(1), scaled)
            assert torch.equal(model.predict(x), torch.tensor(labels)[scaled])
