"""Trained weight sharing: bit packing, k-means, the in-memory form, codebook fine-tuning."""
import pytest
import torch

from aecomp.compress import lenet_300_100
from aecomp.compress.net import accuracy, linear_layers
from aecomp.compress.prune import prune_
from aecomp.compress.share import (Int8Linear, PackedNet, SharedLinear, SharedNet, finalize, finetune_codebooks,
                                   int8_model, kmeans_1d, pack_codes, share_model, share_weights, unpack_codes)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (10, 784), (13, 7)])
def test_pack_roundtrip_and_size(bits, shape):
    g = torch.Generator().manual_seed(bits * 100 + shape[1])
    codes = torch.randint(0, 1 << bits, shape, generator=g).to(torch.uint8)
    packed = pack_codes(codes, bits)
    n = shape[0] * shape[1]
    assert packed.numel() == (n * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, shape), codes)


def test_pack_layout_is_lsb_first():
    # codes 1, 2, 3 at 2 bits: stream bits 10 01 11 -> byte 0b00111001
    assert pack_codes(torch.tensor([[1, 2, 3]], dtype=torch.uint8), 2).tolist() == [0b00111001]


def test_pack_rejects_wide_codes():
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack_codes(torch.tensor([8], dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        pack_codes(torch.tensor([0], dtype=torch.uint8), 9)


def test_kmeans_linear_init_and_lloyd():
    # three tight clusters: k-means with 4 centroids must put three on them
    v = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.2), torch.full((5,), 3.0)])
    c = kmeans_1d(v + 1e-3 * torch.randn(v.shape), 4)
    assert torch.all(c[1:] >= c[:-1])
    for target in (-1.0, 0.2, 3.0):
        assert (c - target).abs().min() < 0.01
    # k-means never does worse than its linear initialisation
    x = torch.randn(2000)
    lin = torch.linspace(float(x.min()), float(x.max()), 8)
    def sse(cent):
        return float(((x[:, None] - cent[None]) ** 2).min(1).values.sum())
    assert sse(kmeans_1d(x, 8)) < sse(lin)


def test_share_weights_nearest_centroid_and_mask():
    w = torch.randn(13, 29)
    mask = torch.rand(13, 29) > 0.6
    w = w * mask
    layer = share_weights(w, 3, mask)
    dense = layer.dense_weight()
    assert torch.equal(dense[~mask], torch.zeros(int((~mask).sum())))
    # every kept weight maps to its nearest centroid
    d = (w[mask][:, None] - layer.codebook[None]).abs()
    assert torch.allclose(dense[mask], layer.codebook[d.argmin(1)])
    assert layer.codes[~mask].eq(0).all()


def test_dataclass_checks():
    with pytest.raises(ValueError, match="codebook must have shape \\[16\\]"):
        SharedLinear(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(8), 4)
    with pytest.raises(ValueError, match="codes must be uint8"):
        SharedLinear(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(16), 4)
    with pytest.raises(ValueError, match="scale must have shape"):
        Int8Linear(torch.zeros(2, 3, dtype=torch.int8), torch.ones(3))


def _trained_pruned(digits_small):
    x, y = digits_small
    torch.manual_seed(0)
    model = lenet_300_100(x.shape[1], 10)
    from aecomp.compress.net import fit_classifier

    fit_classifier(model, x, y, epochs=3, lr=3e-3)
    prune_(model, 0.8)
    return model


@pytest.fixture(scope="module")
def digits_small():
    from aecomp import data

    tr = data.load("digits", seed=0).train
    return tr.x[:600], tr.y[:600]


def test_shared_model_matches_packed_and_finetune_keeps_masks(digits_small):
    x, y = digits_small
    model = _trained_pruned(digits_small)
    packed = share_model(model, 3)
    assert all(layer.mask is not None for layer in packed.layers)
    rebuilt = packed.to_model()
    for m, layer in zip(linear_layers(rebuilt), packed.layers):
        assert torch.equal(m.weight, layer.dense_weight())
    # SharedNet computes exactly what the rebuilt model computes
    net = SharedNet(packed)
    assert torch.allclose(net(x[:50]), rebuilt(x[:50]), atol=1e-5)
    before = accuracy(rebuilt, x, y)
    tuned = finetune_codebooks(packed, x, y, epochs=3, lr=1e-3)
    for old, new in zip(packed.layers, tuned.layers):
        assert torch.equal(old.mask, new.mask)  # pruned weights stay pruned
        assert torch.all(new.codebook[1:] >= new.codebook[:-1])
        assert torch.equal(new.codebook, new.codebook.half().float())  # finalized
    after = accuracy(tuned.to_model(), x, y)
    assert after >= before - 1.0  # training accuracy: fine-tuning must not hurt


def test_codebook_gradient_is_sum_of_weight_gradients():
    torch.manual_seed(1)
    w = torch.randn(5, 7)
    layer = share_weights(w, 2, None, torch.randn(5), "none")
    packed = PackedNet({"type": "classifier", "dims": [7, 5], "activations": ["none"]}, [layer])
    net = SharedNet(packed, backend="reference")
    x = torch.randn(11, 7)
    net(x).square().sum().backward()
    # reference: dL/dW for y = x W^T + b, L = sum y^2  ->  dW = 2 y^T x
    with torch.no_grad():
        yv = x @ layer.dense_weight().T + layer.bias
        dw = 2 * yv.T @ x
    expected = torch.zeros(4).index_add_(0, layer.codes.long().flatten(), dw.flatten())
    assert torch.allclose(net.codebooks[0].grad, expected, rtol=1e-4, atol=1e-4)


def test_int8_packed_equals_quantize_model(digits_small):
    from aecomp.compress.quantize import quantize_model

    model = _trained_pruned(digits_small)
    packed = finalize(int8_model(model))
    rebuilt = packed.to_model()
    for a, b in zip(linear_layers(rebuilt), linear_layers(quantize_model(model))):
        assert torch.equal(a.weight, b.weight)
    assert packed.nnz() == sum(int((m.weight != 0).sum()) for m in linear_layers(model))


def test_choose_bits_gives_each_layer_its_fewest_bits_within_the_tolerance():
    """A layer whose weights take two values needs 2 bits; a layer of spread-out weights needs more;
    per-layer widths reach share_model, and a wrong count is refused."""
    from aecomp.compress.share import choose_bits, share_model
    from aecomp.nn import FusedMLP

    g = torch.Generator().manual_seed(0)
    model = FusedMLP([12, 40, 3], ["relu", "none"])
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.randn(40, 12, generator=g))
        model.layers[1].weight.copy_(torch.where(torch.rand(3, 40, generator=g) < 0.5, -0.3, 0.3))
    x = torch.randn(500, 12, generator=g)
    y = model(x).argmax(1)  # the float net is right on every sample
    widths = choose_bits(model, x, y, points=0.5)
    assert widths[1] == 2 and widths[0] > 2, widths
    w0 = model.layers[0].weight.clone()
    assert torch.equal(model.layers[0].weight, w0)  # measured on the side, nothing changed
    packed = share_model(model, widths)
    assert [layer.bits for layer in packed.layers] == widths
    with pytest.raises(ValueError, match="3 bit widths for 2 layers"):
        share_model(model, [4, 4, 4])
