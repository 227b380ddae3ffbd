"""``aecomp.compress.protocol``: splits, paired gaps over repeats, and choices made on validation only."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aecomp.compress import protocol as P


# ---------------------------------------------------------------------------------------- splits
def _labels(counts, seed=0):
    y = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed))]


def test_stratified_split_sizes_proportions_and_disjointness():
    y = _labels([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])  # the digits' class sizes
    n = y.numel()
    s = P.stratified_indices(y, n, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert s.sizes() == (n - round(0.2 * n) - round(0.1 * n), round(0.1 * n), round(0.2 * n))
    P.check_disjoint(s)
    assert torch.equal(torch.cat([s.train, s.val, s.test]).sort().values, torch.arange(n))
    counts = torch.bincount(y)
    for part, frac in ((s.test, 0.2), (s.val, 0.1)):
        got = torch.bincount(y[part], minlength=10)
        # each class gets floor or ceil of its quota (largest remainders)
        assert ((got - counts * frac).abs() < 1.0 + 1e-9).all(), (got, counts * frac)
    for part in (s.train, s.val, s.test):
        assert torch.equal(part, part.sort().values)


def test_split_is_seeded_and_repeats_redraw_it():
    y = _labels([50] * 4)
    a = P.stratified_indices(y, 200, val_fraction=0.1, test_fraction=0.2, seed=P.repeat_seed(7, 0))
    b = P.stratified_indices(y, 200, val_fraction=0.1, test_fraction=0.2, seed=P.repeat_seed(7, 0))
    c = P.stratified_indices(y, 200, val_fraction=0.1, test_fraction=0.2, seed=P.repeat_seed(7, 1))
    assert all(torch.equal(u, v) for u, v in zip((a.train, a.val, a.test), (b.train, b.val, b.test)))
    assert not torch.equal(a.test, c.test) and not torch.equal(a.val, c.val)
    assert P.repeat_seed(7, 2) == 9
    with pytest.raises(ValueError, match="repeat must be an integer >= 0"):
        P.repeat_seed(0, -1)


def test_fixed_test_draws_only_validation_and_rare_classes_stay_in_training():
    y = _labels([40, 30, 1, 2])
    s = P.stratified_indices(y, y.numel(), val_fraction=0.25, test_fraction=0.5, seed=0, fixed_test=True)
    assert s.test.numel() == 0 and s.val.numel() == round(0.25 * y.numel())
    s = P.stratified_indices(y, y.numel(), val_fraction=0.3, test_fraction=0.5, seed=1)
    for k in range(4):
        assert int((y[s.train] == k).sum()) >= 1, k  # a class is never held out whole
    u = P.stratified_indices(None, 10, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert u.sizes() == (6, 2, 2)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be below 1"):
        P.stratified_indices(y, y.numel(), val_fraction=0.5, test_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="3 labels for 4 samples"):
        P.stratified_indices(torch.tensor([0, 1, 0]), 4, val_fraction=0.1, test_fraction=0.1, seed=0)


def test_a_planted_overlap_and_duplicate_rows_are_caught():
    s = P.SplitIndices(torch.tensor([0, 1, 2, 5]), torch.tensor([3]), torch.tensor([4, 5]), 0)
    with pytest.raises(P.LeakError, match="train and test splits share 1 sample"):
        P.check_disjoint(s)
    x = torch.rand(20, 6)
    test = torch.cat([torch.rand(5, 6), x[[3, 17]]])
    assert P.shared_rows(x, test) == 2 and P.shared_rows(x, torch.rand(4, 6)) == 0


def test_load_repeat_stratifies_and_redraws_every_split():
    a, b = P.load_repeat("digits", 0, seed=0), P.load_repeat("digits", 1, seed=0)
    assert a.train.config["stratify"] is True and a.train.config["seed"] == 0 and b.train.config["seed"] == 1
    assert len(a.test) == round(0.2 * 1797) and len(a.val) == round(0.1 * 1797)
    assert not torch.equal(a.test.x, b.test.x) and not torch.equal(a.val.x, b.val.x)
    # every digit in proportion: the test split holds 35 or 36 of each (about 180 per class * 0.2)
    assert set(torch.bincount(a.test.y).tolist()) <= {34, 35, 36, 37}
    # the scaling is fitted on the training split only (digits: one global min-max, 0..16)
    assert float(a.train.x.max()) == 1.0 and a.train.preprocessing.kind == "global"


def test_load_repeat_keeps_a_fixed_test_set(tmp_path):
    """MNIST-style data (its own t10k test set) keeps that test set in every repeat."""
    import struct

    def idx(path, arr, code):
        with open(path, "wb") as fh:
            fh.write(bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())

    g = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 20)):
        idx(tmp_path / f"{stem}-images-idx3-ubyte", g.integers(0, 255, (n, 4, 4), dtype=np.uint8), 0x08)
        idx(tmp_path / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 3).astype(np.uint8), 0x08)
    a = P.load_repeat(f"mnist:{tmp_path}", 0, val_fraction=0.2)
    b = P.load_repeat(f"mnist:{tmp_path}", 1, val_fraction=0.2)
    assert len(a.test) == 20 and torch.equal(a.test.y, b.test.y)
    assert len(a.val) == 12 and not torch.equal(a.val.x, b.val.x)
    assert torch.bincount(a.val.y).tolist() == [4, 4, 4]


# ---------------------------------------------------------------------------------------- statistics
def test_spread_is_mean_and_sample_std():
    s = P.spread([96.0, 97.0, 98.5])
    assert s.mean == pytest.approx(97.1666666) and s.std == pytest.approx(np.std([96, 97, 98.5], ddof=1))
    one = P.spread([90.0])
    assert one.n == 1 and math.isnan(one.std) and str(one) == "90.00"
    with pytest.raises(ValueError, match="non-finite"):
        P.spread([1.0, float("nan")])


def test_paired_gap_is_the_mean_difference_with_its_paired_error():
    m = np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)
    b = np.array([1, 0, 0, 1, 1, 1, 1, 0], bool)
    g = P.paired_gap(m, b)
    d = m.astype(float) - b
    assert g.points == pytest.approx(100 * d.mean()) and g.n == 8
    assert g.se == pytest.approx(100 * d.std(ddof=1) / math.sqrt(8))
    # images both get right or both get wrong do not widen the error: identical models, gap 0 +- 0
    assert P.paired_gap(m, m).se == 0.0
    with pytest.raises(ValueError, match="needs the same images"):
        P.paired_gap(m, b[:5])


def test_combined_interval_uses_the_larger_of_between_and_within_spread():
    within = [P.Gap(-1.0, 0.5, 400), P.Gap(-1.2, 0.5, 400), P.Gap(-0.8, 0.5, 400)]
    ci = P.combine_gaps(within)  # repeats agree: the images' sampling error decides
    assert ci.mean == pytest.approx(-1.0) and ci.quantile == pytest.approx(4.302653, rel=1e-5)
    assert ci.se == pytest.approx(math.sqrt(0.25 / 3))
    between = [P.Gap(-3.0, 0.2, 400), P.Gap(0.0, 0.2, 400), P.Gap(1.5, 0.2, 400)]
    ci = P.combine_gaps(between)  # repeats disagree: their spread decides
    assert ci.se == pytest.approx(np.std([-3, 0, 1.5], ddof=1) / math.sqrt(3))
    assert ci.quantile == pytest.approx(4.302653, rel=1e-5) and ci.low < -5 and ci.high > 3
    one = P.combine_gaps([P.Gap(2.0, 1.0, 100)])
    assert (one.low, one.high) == pytest.approx((2 - 1.959964, 2 + 1.959964), rel=1e-5)


def test_interval_covers_the_true_gap_about_95_percent_of_the_time():
    """Random-effects simulation: each repeat's models differ by a training effect (sd 1 point)
    and are scored on 300 fresh images; the 95% interval over 5 repeats covers the true gap."""
    rng = np.random.default_rng(0)
    true_gap, hits, sims = -1.0, 0, 400
    for _ in range(sims):
        gaps = []
        for _ in range(5):
            p = 0.95 + (true_gap + rng.normal(0, 1.0)) / 100
            base = rng.random(300) < 0.95
            flip = rng.random(300)
            model = np.where(base, flip < min(1, p / 0.95), flip < max(0, (p - 0.95) / 0.05))
            gaps.append(P.paired_gap(model, base))
        ci = P.combine_gaps(gaps)
        hits += ci.low <= true_gap <= ci.high
    assert 0.90 <= hits / sims <= 0.995, hits / sims


# ---------------------------------------------------------------------------------------- choices
def _evaluations(seed=0, repeats=3, n_val=180, n_test=360):
    """Rows of a made-up run: a baseline, models of known validation accuracy and sizes."""
    rng = np.random.default_rng(seed)
    spec = {"baseline": (97.0, 200_000), "a-int8": (96.8, 50_000), "a-shared4": (96.5, 900),
            "a-shared3": (95.0, 700), "b": (96.9, 3_000), "b-shared2": (90.0, 300)}
    out = []
    for r in range(repeats):
        for name, (acc, nbytes) in spec.items():
            out.append(P.Evaluation(name, r, nbytes + r, rng.random(n_val) < acc / 100, rng.random(n_test) < acc / 100))
    return out


def _choices(stats):
    """Everything the protocol chooses from a set of rows."""
    rec = P.smallest_within(stats.values(), "baseline", chance=10.0, n_val=180)
    fr = P.frontier(stats.values(), lambda n: n.split("-")[0])
    return (rec.name, rec.compared, P.best_on_validation(stats.values()).name,
            {k: [r.name for r in v] for k, v in fr.items()})


def test_summary_pairs_each_row_with_the_baseline_of_its_repeat():
    ev = _evaluations()
    stats = P.summarize(ev, "baseline")
    assert stats["baseline"].val_gap is None and stats["b"].repeats == 3
    want = np.mean([P.paired_gap(e.val_correct, next(b for b in ev if b.name == "baseline" and b.repeat == e.repeat)
                                 .val_correct).points for e in ev if e.name == "b"])
    assert stats["b"].val_gap.mean == pytest.approx(want)
    assert stats["b"].val.mean == pytest.approx(np.mean([e.val_accuracy for e in ev if e.name == "b"]))
    assert stats["b"].bytes.mean == 3001
    doc = stats["b"].to_dict()
    assert set(doc) >= {"val_accuracy", "test_accuracy", "val_gap", "test_gap"}
    with pytest.raises(ValueError, match="no baseline row"):
        P.summarize(ev, "lenet")
    with pytest.raises(ValueError, match="evaluated twice"):
        P.summarize(ev + ev[:1], "baseline")


def test_a_test_set_only_change_never_changes_a_choice():
    """Re-draw every test outcome (a model becomes perfect on test, another hopeless): every choice
    the protocol makes stays the same. A chooser that peeks at the test split is caught by the
    same comparison (the planted leak below)."""
    ev = _evaluations()
    before = _choices(P.summarize(ev, "baseline"))
    rng = np.random.default_rng(1)
    changed = [P.Evaluation(e.name, e.repeat, e.bytes, e.val_correct,
                            np.ones_like(e.test_correct) if e.name == "b-shared2" else rng.random(e.test_correct.size)
                            < 0.2) for e in ev]
    after_stats = P.summarize(changed, "baseline")
    assert _choices(after_stats) == before
    assert before[0] == "a-shared4"  # 900 bytes, about half a point below on validation

    def leaky_best(stats):  # planted leak: rank on the test split
        return max(stats.values(), key=lambda r: r.test.mean).name

    assert leaky_best(P.summarize(ev, "baseline")) != leaky_best(after_stats)


def test_recommendation_is_the_smallest_within_the_points_on_validation():
    stats = P.summarize(_evaluations(), "baseline")
    rec = P.smallest_within(stats.values(), "baseline", points=1.0)
    assert rec.name == "a-shared4" and rec.compared == 6 and "validation" in rec.reason
    assert P.smallest_within(stats.values(), "baseline", points=0.0).row.bytes.mean <= 200_001
    assert P.smallest_within(stats.values(), "baseline", points=10.0).name == "b-shared2"


def test_a_baseline_at_chance_gets_no_recommendation():
    rng = np.random.default_rng(0)
    ev = [P.Evaluation(name, r, nbytes, rng.random(200) < 0.1, rng.random(200) < 0.1)
          for r in range(3) for name, nbytes in (("baseline", 1000), ("small", 10))]
    stats = P.summarize(ev, "baseline")
    chance = P.chance_accuracy(torch.arange(100) % 10)
    assert chance == 10.0
    rec = P.smallest_within(stats.values(), "baseline", chance=chance, n_val=200)
    assert rec.row is None and "not clearly above chance" in rec.reason
    near, _ = P.near_chance(P.spread([97.0, 96.5]), 11.3, n_val=180)
    assert not near
    assert P.near_chance(P.spread([13.0]), 11.3, n_val=180)[0]  # 1.7 points above chance: not clearly above


def test_paired_comparison_of_two_rows_over_their_shared_repeats():
    ev = _evaluations()
    val, test = P.paired_comparison(ev, "a-shared4", "b")
    by = {(e.name, e.repeat): e for e in ev}
    want = np.mean([P.paired_gap(by["a-shared4", r].val_correct, by["b", r].val_correct).points for r in range(3)])
    assert val.mean == pytest.approx(want) and val.repeats == 3 and test.repeats == 3
    with pytest.raises(ValueError, match="share no repeat"):
        P.paired_comparison(ev, "a-shared4", "nope")
