"""int8 per-channel quantization, magnitude pruning, and the files that hold the models (honest bytes)."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from aecomp import data
from aecomp.compress import (
    CompressedNet,
    accuracy,
    fit_classifier,
    lenet_300_100,
    load_packed,
    magnitude_masks,
    prune_,
    prune_and_retrain,
    quantize_model,
    quantize_per_channel,
    dequantize_per_channel,
    save_packed,
    sparsity,
)
from aecomp.compress import storage
from aecomp.nn import FusedMLP


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def trained_mlp(digits):
    """A 64-128-64-10 classifier trained for a few epochs (shared)."""
    tr, va, _ = digits
    torch.manual_seed(0)
    model = FusedMLP([64, 128, 64, 10], ["relu", "relu", "none"])
    fit_classifier(model, tr.x, tr.y, x_val=va.x, y_val=va.y, epochs=8, lr=3e-3)
    return model


def _weights_equal(a, b):
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(la.weight, lb.weight, rtol=0, atol=0)
        torch.testing.assert_close(la.bias, lb.bias, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- quantize
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (300, 64), (10, 100)])
def test_quantize_per_channel_matches_the_formula(shape):
    w = torch.randn(*shape) * torch.rand(shape[0], 1) * 3
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (shape[0],)
    # reference, written out: s_r = max|w_r| / 127, q = clamp(round(w / s_r), -127, 127)
    s_ref = w.abs().amax(1) / 127
    q_ref = torch.clamp(torch.round(w / s_ref[:, None]), -127, 127)
    torch.testing.assert_close(s, s_ref)
    assert torch.equal(q.float(), q_ref)
    assert int(q.min()) >= -127 and int(q.abs().amax(1).min()) == 127  # each row uses the full grid
    err = (dequantize_per_channel(q, s) - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-7).all())  # at most half a step of the row's grid


def test_quantize_zero_rows_and_non_contiguous():
    w = torch.randn(6, 10)
    w[2] = 0
    q, s = quantize_per_channel(w.T.contiguous().T)  # same values, other strides
    assert s[2] == 1 and bool((q[2] == 0).all())
    q2, s2 = quantize_per_channel(w)
    assert torch.equal(q, q2) and torch.equal(s, s2)
    with pytest.raises(ValueError, match="2-D"):
        quantize_per_channel(torch.randn(3))


def test_int8_model_keeps_accuracy(digits, trained_mlp):
    te = digits.test
    q = quantize_model(trained_mlp)
    assert abs(accuracy(q, te.x, te.y) - accuracy(trained_mlp, te.x, te.y)) <= 1.5
    assert trained_mlp.layers[0].weight.dtype == torch.float32  # the original is untouched


# ---------------------------------------------------------------------------------------- prune
@pytest.mark.parametrize("s", [0.0, 0.5, 0.9, 0.97])
def test_magnitude_masks_keep_the_largest_weights(s):
    model = FusedMLP([33, 20, 7], ["relu", "none"])
    masks = magnitude_masks(model, s)
    for layer in model.layers:
        m = masks[layer.weight]
        n = layer.weight.numel()
        assert int(m.sum()) == round((1 - s) * n)
        kept = layer.weight.detach().abs()[m.bool()]
        dropped = layer.weight.detach().abs()[~m.bool()]
        if kept.numel() and dropped.numel():
            assert float(kept.min()) >= float(dropped.max())


def test_prune_in_place_and_sparsity():
    model = FusedMLP([50, 40, 10], ["relu", "none"])
    biases = [layer.bias.clone() for layer in model.layers]
    prune_(model, 0.75)
    assert sparsity(model) == pytest.approx(0.75, abs=1e-3)
    for layer, b in zip(model.layers, biases):
        assert torch.equal(layer.bias, b)  # biases are not pruned
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune_(model, 1.0)


def test_retraining_keeps_pruned_weights_zero_and_recovers(digits, trained_mlp):
    tr, va, te = digits
    pruned = prune_and_retrain(trained_mlp, 0.8, tr.x, tr.y, x_val=va.x, y_val=va.y, epochs=3, lr=3e-3)
    masks = magnitude_masks(trained_mlp, 0.8)  # computes masks, changes nothing
    for layer, orig in zip(pruned.layers, trained_mlp.layers):
        zero = layer.weight == 0
        assert float(zero.float().mean()) >= 0.8 - 1e-3
        assert torch.equal(zero, masks[orig.weight] == 0)  # exactly the mask of the original weights
    assert accuracy(pruned, te.x, te.y) >= accuracy(trained_mlp, te.x, te.y) - 5
    assert sparsity(trained_mlp) < 0.01  # the original is untouched


# ---------------------------------------------------------------------------------------- storage
@pytest.mark.parametrize("shape,s", [((7, 13), 0.5), ((300, 64), 0.9), ((100, 300), 0.95), ((4, 3), 0.99)])
def test_sparse_encodings_round_trip(shape, s):
    w = torch.randn(*shape)
    w[torch.rand(shape) < s] = 0
    v, c, n = storage.encode_csr(w)
    assert v.numel() == int((w != 0).sum())
    assert c.dtype == (torch.uint8 if shape[1] <= 256 else torch.int16)
    assert torch.equal(storage.decode_csr(v, c, n, shape), w)
    bits, v2 = storage.encode_bitmask(w)
    assert bits.dtype == torch.uint8 and bits.numel() == (w.numel() + 7) // 8
    assert torch.equal(storage.decode_bitmask(bits, v2, shape), w)


@pytest.mark.parametrize("values,sparse", [("float32", False), ("int8", False), ("float32", True), ("int8", True)])
def test_packed_file_round_trip(tmp_path, trained_mlp, values, sparse):
    model = copy.deepcopy(trained_mlp)
    if sparse:
        prune_(model, 0.9)
    path = tmp_path / "m.safetensors"
    nbytes = save_packed(model, path, values=values, sparse=sparse)
    assert nbytes == os.path.getsize(path)
    loaded = load_packed(path)
    want = quantize_model(model) if values == "int8" else model
    _weights_equal(loaded, want)  # int8: exactly q * s, as quantize_model says
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
        header = json.loads(fh.metadata()["aecomp"])
    weight_keys = [k for k in stored if k.split(".")[1] in ("w", "q", "v")]
    assert {stored[k].dtype for k in weight_keys} == {torch.int8 if values == "int8" else torch.float32}
    if sparse:
        assert all(layer["encoding"] in ("csr", "bitmask") for layer in header["layers"])
        # only the nonzero weights are stored
        assert sum(stored[k].numel() for k in weight_keys) == sum(int((m.weight != 0).sum()) for m in want.layers)
    else:
        assert all(layer["encoding"] == "dense" for layer in header["layers"])


def test_file_sizes_are_honest(tmp_path, trained_mlp):
    """int8 ~ a quarter of float32; a 90%-pruned file is much smaller than the dense one; masks over
    dense weights would save nothing, so the sparse file's size follows the nonzeros."""
    n_weights = sum(layer.weight.numel() for layer in trained_mlp.layers)
    n_bias = sum(layer.bias.numel() for layer in trained_mlp.layers)
    f32 = save_packed(trained_mlp, tmp_path / "f32.safetensors")
    i8 = save_packed(trained_mlp, tmp_path / "i8.safetensors", values="int8")
    assert f32 >= 4 * (n_weights + n_bias)
    assert i8 >= n_weights and i8 < f32 / 3.3
    pruned = copy.deepcopy(trained_mlp)
    prune_(pruned, 0.9)
    sp32 = save_packed(pruned, tmp_path / "sp32.safetensors", sparse=True)
    sp8 = save_packed(pruned, tmp_path / "sp8.safetensors", values="int8", sparse=True)
    dense_pruned = save_packed(pruned, tmp_path / "dense_pruned.safetensors")
    assert dense_pruned == f32  # zeros stored densely cost the same: pruning alone saves nothing
    nnz = int(sum((layer.weight != 0).sum() for layer in pruned.layers))
    assert sp32 < f32 / 4 and sp32 >= 4 * nnz
    assert sp8 < sp32 and sp8 >= nnz
    # the payload helper agrees with what the files hold (the header is the rest)
    assert 0 < sp8 - storage.payload_bytes(pruned, "int8", sparse=True) < 2048


def test_compressed_net_packs_and_loads(tmp_path):
    net = CompressedNet(FusedMLP([64, 32, 8], ["relu", "none"]), FusedMLP([8, 16, 10], ["relu", "none"]), mode="replace")
    path = tmp_path / "net.safetensors"
    save_packed(net, path, values="int8")
    loaded = load_packed(path)
    assert isinstance(loaded, CompressedNet) and loaded.mode == "replace"
    x = torch.rand(9, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), quantize_model(net)(x), rtol=1e-5, atol=1e-5)


def test_load_packed_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(storage.StorageError, match="not a packed aecomp model"):
        load_packed(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(storage.StorageError, match="not a readable safetensors file"):
        load_packed(junk)


def test_lenet_pruned_and_int8_on_digits_end_to_end(tmp_path, digits):
    """The baseline's own numbers: trained, pruned 90% + retrained, int8 -- each measured from its file."""
    tr, va, te = digits
    torch.manual_seed(0)
    base = lenet_300_100(64, 10)
    fit_classifier(base, tr.x, tr.y, x_val=va.x, y_val=va.y, epochs=4, lr=1e-3)
    acc = accuracy(base, te.x, te.y)
    pruned = prune_and_retrain(base, 0.9, tr.x, tr.y, x_val=va.x, y_val=va.y, epochs=6, lr=3e-3)
    path = tmp_path / "p.safetensors"
    nbytes = save_packed(pruned, path, values="int8", sparse=True)
    base_bytes = save_packed(base, tmp_path / "b.safetensors")
    assert base_bytes / nbytes > 10
    assert accuracy(load_packed(path), te.x, te.y) >= acc - 4


def test_fold_inputs_keeps_the_spanning_columns_and_the_same_outputs():
    """Inputs that are linear combinations of others (here: 8 pixels upsampled to 20, plus two
    columns never nonzero) fold into the spanning columns: the first layer reads k columns and
    computes the same outputs on any input of that span, unseen ones included."""
    from aecomp.compress.prune import fold_inputs, input_basis, prune_and_retrain
    from aecomp.nn import FusedMLP

    g = torch.Generator().manual_seed(0)
    up = torch.rand(8, 20, generator=g)
    up[:, [3, 11]] = 0
    z = torch.rand(200, 8, generator=g)
    x, x_new = z @ up, torch.rand(50, 8, generator=g) @ up
    cols, fold = input_basis(x)
    assert cols.numel() == 8 and not {3, 11} & set(cols.tolist())
    torch.testing.assert_close(x[:, cols].double() @ fold, x.double(), rtol=0, atol=1e-5)
    model = FusedMLP([20, 16, 4], ["relu", "none"])
    folded, mask = fold_inputs(model, x)
    w = folded.layers[0].weight
    assert torch.equal((w != 0).any(0), mask[0].bool()) and int(mask[0].sum()) == 8
    with torch.no_grad():
        torch.testing.assert_close(folded(x_new), model(x_new), rtol=1e-4, atol=1e-4)  # float32 on both sides
    assert torch.equal(model.layers[1].weight, folded.layers[1].weight)
    y = torch.randint(0, 4, (200,), generator=g)
    pruned = prune_and_retrain(model, 0.5, x, y, epochs=1, lr=1e-3, fold=True)
    w0 = pruned.layers[0].weight
    assert int((w0 != 0).any(0).sum()) <= 8 and int((w0 != 0).sum()) <= 8 * 16  # only kept columns, never regrown
    with pytest.raises(ValueError, match="all zero"):
        input_basis(torch.zeros(5, 3))
