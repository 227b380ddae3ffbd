"""CompressedNet, the baselines (LeNet-300-100, PCA, the linear autoencoder) and the report, on digits."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from aecomp import data, models
from aecomp.compress import (
    DEEP_COMPRESSION_LENET_300_100,
    MODES,
    CompressedNet,
    PCABaseline,
    accuracy,
    build_model,
    classifier_config,
    compress_report,
    fit_classifier,
    lenet_300_100,
    linear_autoencoder,
    measure_latency,
    train_compressed,
)
from aecomp.compress.pipeline import fit_autoencoder, recon_mse
from aecomp.nn import FusedMLP


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def trained_ae(digits):
    """A small nonlinear autoencoder 64-32-8 trained briefly (shared by the CompressedNet tests)."""
    torch.manual_seed(0)
    ae = models.Autoencoder([64, 32, 8], output="sigmoid")
    fit_autoencoder(ae, digits.train, digits.val, epochs=15, lr=1e-2, batch_size=64, seed=0)
    return ae


# ---------------------------------------------------------------------------------------- CompressedNet
def test_compressed_net_is_encoder_plus_head_and_drops_the_decoder(trained_ae):
    net = CompressedNet.from_autoencoder(trained_ae, 10)
    assert isinstance(net.encoder, FusedMLP) and isinstance(net.head, FusedMLP)
    assert net.encoder.dims == (64, 32, 8) and net.head.dims == (8, 10)
    assert not any("decoder" in k for k in net.state_dict())
    # a copy: training the net leaves the autoencoder alone
    assert net.encoder.layers[0].weight.data_ptr() != trained_ae.encoder.layers[0].weight.data_ptr()
    x = torch.rand(7, 64)
    with torch.no_grad():
        want = trained_ae.encoder.to_sequential()(x) @ net.head.layers[0].weight.T + net.head.layers[0].bias
        torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)  # float32, one fused chain vs two steps
        torch.testing.assert_close(net(x), net.to_sequential()(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.features(x), trained_ae.encode(x), rtol=1e-5, atol=1e-5)


def test_modes_decide_what_trains(trained_ae):
    frozen = CompressedNet.from_autoencoder(trained_ae, 10, mode="frozen")
    assert frozen.num_params(trainable_only=True) == 8 * 10 + 10
    assert all(not p.requires_grad for p in frozen.encoder.parameters())
    for mode in ("replace", "finetune"):
        net = CompressedNet.from_autoencoder(trained_ae, 10, mode=mode)
        assert net.num_params(trainable_only=True) == net.num_params()
    replace = CompressedNet.from_autoencoder(trained_ae, 10, mode="replace", head_hidden=(100,))
    assert replace.head.dims == (8, 100, 10) and replace.head.activations == ("relu", "none")


def test_frozen_training_leaves_the_encoder_unchanged_and_learns(digits, trained_ae):
    tr, va, te = digits
    net = CompressedNet.from_autoencoder(trained_ae, 10, mode="frozen")
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    result = train_compressed(net, tr.x, tr.y, x_val=va.x, y_val=va.y, epochs=4, lr=1e-2)
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert result["val_accuracy"] > 60  # chance is 10%
    assert accuracy(net, te.x, te.y) > 60


def test_frozen_stays_frozen_through_pruning_and_weight_sharing(digits, trained_ae):
    """Issue 24: a ``frozen`` row's encoder is the autoencoder's, less the pruned weights and the
    k-means rounding; only the head retrains (pruning used to retrain every parameter)."""
    from aecomp.compress.prune import prune_and_retrain
    from aecomp.compress.share import finetune_codebooks, share_model, trainable_layers

    tr, va, _ = digits
    net = CompressedNet.from_autoencoder(trained_ae, 10, mode="frozen")
    train_compressed(net, tr.x, tr.y, epochs=1, lr=1e-2)
    enc = [m.weight.detach().clone() for m in net.encoder.layers]
    head = net.head.layers[0].weight.detach().clone()
    # no validation split here: with one, the best-validation weights can be those before any
    # retraining (epoch 0), and the head check below would see no change (seed 903575710)
    pruned = prune_and_retrain(net, 0.7, tr.x, tr.y, epochs=2, lr=1e-2)
    for m, w in zip(pruned.encoder.layers, enc):
        kept = m.weight != 0
        assert 0.25 < float(kept.float().mean()) < 0.35
        assert torch.equal(m.weight[kept], w[kept])  # kept weights: exactly the autoencoder's
        assert all(not p.requires_grad for p in pruned.encoder.parameters())
    assert not torch.equal(pruned.head.layers[0].weight, head * (pruned.head.layers[0].weight != 0))  # head retrained
    assert trainable_layers(pruned) == [False, False, True]
    shared = share_model(pruned, 4, pruned=True)
    tuned = finetune_codebooks(shared, tr.x, tr.y, epochs=2, lr=1e-2, trainable=trainable_layers(pruned))
    for before, after in zip(shared.layers[:2], tuned.layers[:2]):  # encoder codebooks fixed (float16-rounded)
        assert torch.equal(after.codebook, before.codebook.half().float())
        assert torch.equal(after.bias, before.bias.half().float())
    assert not torch.equal(tuned.layers[2].codebook, shared.layers[2].codebook.half().float())
    # the other modes still retrain every weight
    ft = CompressedNet.from_autoencoder(trained_ae, 10, mode="finetune")
    w0 = ft.encoder.layers[0].weight.detach().clone()
    again = prune_and_retrain(ft, 0.7, tr.x, tr.y, epochs=1, lr=1e-2)
    kept = again.encoder.layers[0].weight != 0
    assert not torch.equal(again.encoder.layers[0].weight[kept], w0[kept])
    assert torch.equal(ft.encoder.layers[0].weight, w0)  # the source model is not modified


def test_finetune_and_replace_move_the_encoder(digits, trained_ae):
    tr, va, _ = digits
    for mode in ("finetune", "replace"):
        net = CompressedNet.from_autoencoder(trained_ae, 10, mode=mode, head_hidden=(16,) if mode == "replace" else ())
        before = net.encoder.layers[0].weight.detach().clone()
        train_compressed(net, tr.x, tr.y, x_val=None, y_val=None, epochs=1, lr=1e-2)
        assert not torch.equal(net.encoder.layers[0].weight, before), mode
        assert net.mode == mode


def test_fit_classifier_keeps_the_best_validation_epoch(digits):
    tr, va, _ = digits
    torch.manual_seed(0)
    model = FusedMLP([64, 16, 10], ["relu", "none"])
    result = fit_classifier(model, tr.x, tr.y, x_val=va.x, y_val=va.y, epochs=3, lr=1e-2)
    assert 1 <= result["best_epoch"] <= 3
    assert result["val_accuracy"] == pytest.approx(accuracy(model, va.x, va.y))


def test_config_round_trip_rebuilds_the_same_architecture(trained_ae):
    net = CompressedNet.from_autoencoder(trained_ae, 10, mode="replace", head_hidden=(12,))
    cfg = json.loads(json.dumps(classifier_config(net)))
    again = build_model(cfg)
    again.load_state_dict(net.state_dict())
    x = torch.rand(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))
    assert again.mode == "replace"
    base = lenet_300_100(64, 10)
    assert isinstance(build_model(classifier_config(base)), FusedMLP)
    assert isinstance(build_model(trained_ae.config), models.Autoencoder)


def test_compressed_net_bad_inputs_say_what_is_wrong(trained_ae):
    with pytest.raises(ValueError, match="unknown mode 'squeeze'"):
        CompressedNet.from_autoencoder(trained_ae, 10, mode="squeeze")
    with pytest.raises(ValueError, match="takes 9 features but the encoder gives 8"):
        CompressedNet(FusedMLP([64, 8]), FusedMLP([9, 10]))
    with pytest.raises(TypeError, match="encoder must be a FusedMLP"):
        CompressedNet(nn.Linear(64, 8), num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        CompressedNet(FusedMLP([64, 8]))
    with pytest.raises(TypeError, match="FusedMLP"):
        CompressedNet.from_autoencoder(nn.Linear(3, 3), 10)
    assert set(MODES) == {"replace", "frozen", "finetune"}


# ---------------------------------------------------------------------------------------- baselines
def test_lenet_300_100_shape():
    net = lenet_300_100(784, 10)
    assert net.dims == (784, 300, 100, 10) and net.activations == ("relu", "relu", "none")
    n = sum(p.numel() for p in net.parameters())
    assert n == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10  # 266,610: the published "267K"
    assert abs(n - DEEP_COMPRESSION_LENET_300_100["params"]) < 1000


def test_linear_autoencoder_matches_pca_and_the_nonlinear_one_beats_it(digits, trained_ae):
    """PCA is the optimal rank-K linear reconstruction: a trained linear AE gets within 5% of it."""
    tr, va, te = digits
    k = 8
    pca = PCABaseline.fit(tr.x, tr.y, k)
    pca_mse = pca.recon_mse(te.x)
    torch.manual_seed(0)
    lin = linear_autoencoder(64, k)
    assert lin.encoder.activations == ("none",) and lin.decoder.activations == ("none",)
    fit_autoencoder(lin, tr, va, epochs=30, lr=3e-2, batch_size=64, seed=0)  # measured: within 1.3% of PCA
    lin_mse = recon_mse(lin, te.x)
    assert abs(lin_mse - pca_mse) <= 0.05 * pca_mse, (lin_mse, pca_mse)
    # the nonlinear 64-32-8 autoencoder, trained as briefly, reconstructs better than PCA
    assert recon_mse(trained_ae, te.x) < pca_mse


def test_pca_baseline_reconstruction_and_classifier_module(digits):
    tr, _, te = digits
    pca = PCABaseline.fit(tr.x, tr.y, 16)
    x = te.x
    # reference: project onto the top-16 right singular vectors of the centred training data
    mu = tr.x.double().mean(0)
    _, _, vt = torch.linalg.svd(tr.x.double() - mu, full_matrices=False)
    v = vt[:16]
    ref = ((x.double() - mu) @ v.T) @ v + mu
    assert pca.recon_mse(x) == pytest.approx(float(((ref - x.double()) ** 2).mean()), rel=1e-6)
    mod = pca.to_module(10)
    torch.testing.assert_close(mod.decode(mod.encode(x)), ref.float(), rtol=1e-4, atol=1e-5)
    sk = pca.classifier.predict(pca.pca.transform(x.double().numpy()))
    assert (mod(x).argmax(1).numpy() == sk).mean() > 0.99
    assert accuracy(mod, te.x, te.y) > 85
    assert mod.num_params == 64 + 16 * 64 + 10 * 16 + 10


# ---------------------------------------------------------------------------------------- report
def _report_inputs(accs=None, repeats=2):
    """Rows of the shipped files and their protocol summary (made-up per-image outcomes)."""
    import numpy as np

    from aecomp.compress import protocol

    accs = accs or {"baseline": (97.0, 4000), "compressed-frozen-int8": (96.5, 100), "pca-8": (90.0, 200),
                    "baseline-pruned90-int8": (96.8, 900)}
    rng = np.random.default_rng(0)
    ev = [protocol.Evaluation(n, r, b, rng.random(300) < a / 100, rng.random(600) < a / 100)
          for r in range(repeats) for n, (a, b) in accs.items()]
    stats = protocol.summarize(ev, "baseline")
    rows = [{"name": n, "params": 10, "bytes": b, "accuracy": stats[n].test.mean, "val_accuracy": stats[n].val.mean,
             "recon_mse": None, "latency_ms_b1": 0.1, "latency_ms_b256": 1.0, "over_repeats": stats[n].to_dict(),
             "file": f"/x/models/{n}.aecc"} for n, (a, b) in accs.items()]
    rows.append({"name": "autoencoder", "params": 30, "bytes": 300, "accuracy": None, "recon_mse": float("nan")})
    return rows, stats, ev


def test_compress_report_writes_json_markdown_and_plot(tmp_path):
    from aecomp.compress import protocol
    from aecomp.compress.report import _family_variant

    rows, stats, _ = _report_inputs()
    rec = protocol.smallest_within(stats.values(), "baseline", 1.0)
    front = protocol.frontier(stats.values(), lambda n: _family_variant(n)[0])
    paths, doc = compress_report(rows, stats, tmp_path, dataset="mnist", latent=8, recommendation=rec, frontier=front,
                                 published=[DEEP_COMPRESSION_LENET_300_100], notes=["a note"])
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(doc))
    assert doc["dataset"] == "mnist" and doc["latent"] == 8 and doc["protocol"]["repeats"] == 2
    assert [m["name"] for m in doc["models"]] == ["baseline", "compressed-frozen-int8", "pca-8",
                                                  "baseline-pruned90-int8", "autoencoder"]
    for m in doc["models"]:
        for key in ("name", "params", "bytes", "accuracy", "recon_mse", "latency_ms_b1", "latency_ms_b256", "ratio"):
            assert key in m, (m["name"], key)
    by = {m["name"]: m for m in doc["models"]}
    assert by["baseline"]["ratio"] == 1.0
    assert by["compressed-frozen-int8"]["ratio"] == pytest.approx(40.0)
    assert by["autoencoder"]["recon_mse"] is None  # NaN is not JSON: null
    assert doc["recommendation"]["name"] == rec.name and doc["protocol"]["compared"] == 4
    md = paths["md"].read_text()
    assert "## Answer" in md and "a note" in md and "1070 KB" in md and "val gap [95% CI]" in md
    assert md.index("## Answer") < md.index("## Frontier") < md.index("## All models")
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_measure_latency_is_single_threaded_and_restores_threads():
    seen = []
    before = torch.get_num_threads()
    ms = measure_latency(lambda x: seen.append(torch.get_num_threads()), torch.zeros(1), repeats=3, warmup=1)
    assert seen == [1, 1, 1, 1] and ms >= 0 and math.isfinite(ms)
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------------------- frontier (issue 14)
def test_family_and_variant_of_new_row_names():
    from aecomp.compress.report import _family_variant

    assert _family_variant("baseline-pruned90-shared4") == ("baseline", "pruned + shared")
    assert _family_variant("baseline-shared8") == ("baseline", "shared")
    assert _family_variant("compressed-frozen-kd-pruned70-int8-coded") == ("compressed-frozen-kd", "pruned + int8")
    assert _family_variant("compressed-frozen-pruned70-int8") == ("compressed-frozen", "pruned + int8")
    assert _family_variant("compressed-replace-kd") == ("compressed-replace-kd", "float32")
    assert _family_variant("scratch-pruned70-shared3") == ("scratch", "pruned + shared")


def test_the_published_point_is_drawn_only_for_mnist(tmp_path):
    """Issue 24: Deep Compression's MNIST point beside digits results compares other data at other
    bit widths; the report says why it is not drawn, and the rows beside it are chosen on validation."""
    from aecomp.compress import protocol

    rows, stats, _ = _report_inputs()
    rec = protocol.smallest_within(stats.values(), "baseline", 1.0)
    _, doc = compress_report(rows, stats, tmp_path / "d", dataset="digits", latent=8, recommendation=rec,
                             published=[], published_note="not drawn: digits is not MNIST")
    assert doc["published"] == [] and doc["ours_beside_published"] == []
    assert "not drawn: digits is not MNIST" in (tmp_path / "d" / "report.md").read_text()
    _, doc = compress_report(rows, stats, tmp_path / "m", dataset="mnist", latent=8, recommendation=rec,
                             published=[DEEP_COMPRESSION_LENET_300_100])
    beside = [o["name"] for o in doc["ours_beside_published"]]
    assert beside[0] == "baseline-pruned90-int8" and "compressed-frozen-int8" in beside


# ---------------------------------------------------------------------------------------- distillation
def test_distillation_loss_matches_its_formula():
    from aecomp.compress.distill import distillation_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 10, generator=g, dtype=torch.float64), torch.randn(7, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (7,), generator=g)
    T, a = 3.0, 0.6
    p, q = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(7), y].mean()
    assert torch.allclose(distillation_loss(s, t, y, T, a), a * T * T * kl + (1 - a) * ce)
    assert torch.allclose(distillation_loss(s, t, y, T, 0.0), ce)
    # the student that copies the teacher has zero soft loss
    assert float(distillation_loss(t, t, y, T, 1.0)) == pytest.approx(0.0, abs=1e-12)


def test_distilled_student_learns_from_the_teacher(digits):
    from aecomp.compress.distill import Distill
    from aecomp.compress.net import fit_classifier

    tr, va, te = digits
    torch.manual_seed(0)
    teacher = lenet_300_100(tr.features, 10)
    fit_classifier(teacher, tr.x, tr.y, epochs=3, lr=3e-3)
    torch.manual_seed(1)
    student = lenet_300_100(tr.features, 10)
    fit_classifier(student, tr.x, tr.y, epochs=3, lr=3e-3, distill=Distill(teacher, temperature=4.0, alpha=1.0))
    # alpha = 1: labels unused, yet the student learns the task from the teacher's soft targets
    assert accuracy(student, te.x, te.y) > 80
    with pytest.raises(ValueError, match="temperature must be a positive"):
        Distill(teacher, temperature=0.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        Distill(teacher, alpha=1.5)
