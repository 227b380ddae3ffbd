"""The evaluation protocol: seeded stratified splits, repeats, paired intervals, validation-only choices.

One module for every claim the project makes about accuracy (``aecomp compress``, federated
learning, bring-your-own-model). Everything here is a pure function of its arguments (a seed
is an argument); nothing trains a model.

**Splits** (:func:`stratified_indices`). Repeat ``r`` of a run with seed ``s`` uses the seed
``repeat_seed(s, r) = s + r``. With labels, the split is stratified: for each split size ``T``
(``round(n * fraction)``) class ``c`` (``n_c`` samples) gets ``floor(T n_c / n)`` samples, and
the ``T - sum floor(.)`` left over go one each to the classes with the largest remainders
``T n_c / n - floor(T n_c / n)`` (ties broken by a seeded shuffle of the classes); test is
drawn first, then validation, and every class keeps at least one training sample (a class
with one sample is never held out). Inside each class a seeded permutation decides which
samples go where. Without labels it is one seeded permutation. :func:`holdout` carves a part off
the training split the same way (early stopping: the validation split must not pick a model's
epochs if its accuracy is to rank models without bias). Train and validation are
re-drawn in every repeat; test too, unless the data brings a fixed test set (MNIST's ``t10k``),
which then stays the test split of every repeat. :func:`check_disjoint` refuses index sets
that share a sample; :func:`shared_rows` counts test samples whose features equal a training
sample's exactly (a leak a split by index cannot see).

**Accuracy of one model over repeats** (:func:`spread`): the mean and the sample standard
deviation (``ddof = 1``) of its per-repeat accuracies, in percent.

**Gap to a baseline** (:func:`paired_gap`, :func:`combine_gaps`). Within repeat ``r`` the model
and the baseline are scored on the same ``n_r`` images; ``d_i = c_model,i - c_base,i`` with
``c`` = 1 for a correct prediction, so

    gap_r = 100 * mean_i d_i,      w_r = 100^2 * var_i(d_i) / n_r     (sample variance, ddof = 1)

(``w_r`` is the squared paired standard error: the images both models get right or both get
wrong cancel). Over ``R`` repeats, ``gap = mean_r gap_r``, and its variance is

    V = max(s_b^2, mean_r w_r) / R,    s_b^2 = var_r(gap_r) (ddof = 1; 0 when R = 1)

-- the random-effects form: ``s_b^2`` estimates the whole spread of a repeat's gap (new split,
new training seeds, new images), but from only ``R`` values, so the within-repeat sampling
variance, estimated from all the images, is its floor. The interval is ``gap +- q sqrt(V)``
with ``q`` the two-sided Student-t quantile with ``R - 1`` degrees of freedom (``R`` values
went into it; ``level`` = 0.95, ``R`` = 3: ``q = 4.30``), and for one repeat the normal
quantile (``q = 1.96``). (With the normal quantile whenever the floor wins, a simulation with
a training effect as large as the sampling error covered the true gap only 89% of the time.)

**Choices** (:func:`best_on_validation`, :func:`frontier`, :func:`smallest_within`) read only
the validation fields of :class:`RowStats` (``val``, ``val_gap``) and the file size; the test
fields are carried along to be reported, never to rank. The recommendation is the smallest
file whose mean validation gap over repeats is at least ``-points`` (ties: the higher mean
validation accuracy, then the name), and :class:`Recommendation` says how many models were
compared. A baseline whose validation accuracy is not clearly above chance
(:func:`near_chance`) gets no recommendation at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "Evaluation",
    "Gap",
    "GapInterval",
    "LeakError",
    "Recommendation",
    "RowStats",
    "SplitIndices",
    "Spread",
    "best_on_validation",
    "chance_accuracy",
    "check_disjoint",
    "combine_gaps",
    "frontier",
    "holdout",
    "load_repeat",
    "near_chance",
    "paired_comparison",
    "paired_gap",
    "repeat_seed",
    "shared_rows",
    "smallest_within",
    "spread",
    "stratified_indices",
    "summarize",
]


class LeakError(ValueError):
    """Splits that share samples (the test split is no longer unseen); one line."""


# ---------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class SplitIndices:
    """Sorted int64 index tensors into the pool of samples; ``test`` is empty when the data
    brings a fixed test set (then that set is the test split)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    seed: int

    def sizes(self) -> Tuple[int, int, int]:
        return int(self.train.numel()), int(self.val.numel()), int(self.test.numel())


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` (0-based) of a run started with ``seed``: ``seed + repeat``
    (split, initialisation and batch order all derive from it)."""
    if not isinstance(repeat, int) or repeat < 0:
        raise ValueError(f"repeat_seed: repeat must be an integer >= 0, got {repeat!r}")
    return int(seed) + int(repeat)


def _allocate(total: int, sizes: np.ndarray, capacity: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per-class counts summing to ``min(total, capacity.sum())``: ``floor(total * n_c / n)``
    each (capped), the rest one at a time to the largest remainders (ties in ``order``)."""
    n = int(sizes.sum())
    if n == 0 or total <= 0:
        return np.zeros_like(sizes)
    quota = total * sizes / n
    take = np.minimum(np.floor(quota).astype(np.int64), capacity)
    left = min(total, int(capacity.sum())) - int(take.sum())
    remainder = quota - np.floor(quota)
    # largest remainder first; among equal remainders the seeded class order decides
    rank = sorted(range(len(sizes)), key=lambda c: (-remainder[c], order[c]))
    while left > 0:
        progressed = False
        for c in rank:
            if left == 0:
                break
            if take[c] < capacity[c]:
                take[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return take


def stratified_indices(labels: Optional[torch.Tensor], n: int, *, val_fraction: float, test_fraction: float,
                       seed: int, fixed_test: bool = False) -> SplitIndices:
    """Split ``n`` samples into train / val / test (see the module docstring).

    ``labels``: int ``[n]`` or None (then one seeded permutation). ``fixed_test``: the data has
    its own test set, so only validation is drawn here and ``test`` is empty. Fractions are of
    ``n`` and must be in [0, 1) with a sum below 1.
    """
    n = int(n)
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or not 0.0 <= f < 1.0 or math.isnan(f):
            raise ValueError(f"stratified_indices: {name} must be in [0, 1), got {f!r}")
    t_frac = 0.0 if fixed_test else float(test_fraction)
    if t_frac + val_fraction >= 1.0:
        raise ValueError(f"stratified_indices: val_fraction + test_fraction must be below 1, got "
                         f"{val_fraction} + {test_fraction}")
    g = torch.Generator().manual_seed(int(seed))
    n_test, n_val = int(round(n * t_frac)), int(round(n * val_fraction))
    if labels is None:
        perm = torch.randperm(n, generator=g)
        parts = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    else:
        y = torch.as_tensor(labels).reshape(-1).long().cpu()
        if y.numel() != n:
            raise ValueError(f"stratified_indices: {y.numel()} labels for {n} samples")
        classes, inverse = torch.unique(y, return_inverse=True)
        sizes = torch.bincount(inverse, minlength=classes.numel()).numpy().astype(np.int64)
        order = torch.randperm(classes.numel(), generator=g).numpy()
        capacity = np.maximum(sizes - 1, 0)  # every class keeps a training sample
        take_test = _allocate(n_test, sizes, capacity, order)
        take_val = _allocate(n_val, sizes, capacity - take_test, order)
        test, val, train = [], [], []
        for c in range(classes.numel()):
            members = torch.nonzero(inverse == c).reshape(-1)
            members = members[torch.randperm(members.numel(), generator=g)]
            a, b = int(take_test[c]), int(take_test[c] + take_val[c])
            test.append(members[:a])
            val.append(members[a:b])
            train.append(members[b:])
        parts = torch.cat(test), torch.cat(val), torch.cat(train)
    test_i, val_i, train_i = (p.sort().values.long() for p in parts)
    return SplitIndices(train_i, val_i, test_i, int(seed))


def holdout(labels: Optional[torch.Tensor], n: int, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held)``: a stratified ``fraction`` of ``n`` samples held out (the same allocation
    as :func:`stratified_indices`), e.g. the early-stopping part of a training split, so that
    the validation split is never used to fit or stop a model and stays unbiased for choices."""
    s = stratified_indices(labels, n, val_fraction=fraction, test_fraction=0.0, seed=seed)
    return s.train, s.val


def check_disjoint(split: SplitIndices) -> SplitIndices:
    """``split`` unchanged, or :class:`LeakError` naming the two splits that share samples."""
    names = ("train", "val", "test")
    parts = [split.train, split.val, split.test]
    for i in range(3):
        for j in range(i + 1, 3):
            both = np.intersect1d(parts[i].numpy(), parts[j].numpy())
            if both.size:
                raise LeakError(f"the {names[i]} and {names[j]} splits share {both.size} sample(s) (first index "
                                f"{int(both[0])}); a model would be scored on data it was fitted or chosen on")
    return split


def shared_rows(pool: torch.Tensor, query: torch.Tensor) -> int:
    """How many rows of ``query`` ``[m, d]`` equal some row of ``pool`` ``[n, d]`` exactly
    (byte-wise): duplicated samples across splits that index checks cannot see."""
    if pool.shape[0] == 0 or query.shape[0] == 0:
        return 0
    if pool.shape[1:] != query.shape[1:]:
        raise ValueError(f"shared_rows: rows of {list(pool.shape[1:])} and {list(query.shape[1:])} differ in shape")
    a = np.ascontiguousarray(pool.detach().cpu().numpy().reshape(pool.shape[0], -1))
    b = np.ascontiguousarray(query.detach().cpu().numpy().reshape(query.shape[0], -1).astype(a.dtype))
    seen = {row.tobytes() for row in a}
    return sum(row.tobytes() in seen for row in b)


# ---------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``ddof = 1``; ``nan`` for one value) of ``n`` values."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.n < 2 else f"{self.mean:.2f} ± {self.std:.2f}"

    def to_dict(self) -> Dict[str, object]:
        return {"mean": _json(self.mean), "std": _json(self.std), "n": self.n}


def _json(v: Optional[float]) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


def spread(values: Iterable[float]) -> Spread:
    """:class:`Spread` of ``values`` (non-finite values are refused: a NaN accuracy is a bug upstream)."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        raise ValueError("spread: no values")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"spread: non-finite value(s) in {v.tolist()}")
    return Spread(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size))


@dataclass(frozen=True)
class Gap:
    """One repeat's paired gap: ``points = 100 mean(d)``, ``se = 100 sd(d) / sqrt(n)``."""

    points: float
    se: float
    n: int


def _correct(c, where: str) -> np.ndarray:
    a = np.asarray(c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else c)
    if a.ndim != 1:
        raise ValueError(f"{where}: per-sample correctness must be 1-D, got shape {a.shape}")
    if a.dtype != np.bool_ and not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{where}: per-sample correctness must be 0/1 or bool")
    return a.astype(np.float64)


def paired_gap(model_correct, base_correct) -> Gap:
    """The paired gap of one repeat: both arrays hold, for the same images in the same order,
    whether each model classified the image correctly (see the module docstring)."""
    m, b = _correct(model_correct, "paired_gap"), _correct(base_correct, "paired_gap")
    if m.shape != b.shape:
        raise ValueError(f"paired_gap: {m.size} and {b.size} images; a paired gap needs the same images")
    if m.size == 0:
        raise ValueError("paired_gap: no images")
    d = m - b
    se = 100.0 * float(d.std(ddof=1)) / math.sqrt(d.size) if d.size > 1 else math.nan
    return Gap(100.0 * float(d.mean()), se, int(d.size))


@dataclass(frozen=True)
class GapInterval:
    """The gap combined over repeats with its ``level`` interval ``[low, high]`` (module docstring)."""

    mean: float
    low: float
    high: float
    se: float
    repeats: int
    within_se: float  # sqrt(mean_r w_r / R)
    between_sd: float  # s_b (nan for one repeat)
    quantile: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    def to_dict(self) -> Dict[str, object]:
        return {k: (_json(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def combine_gaps(gaps: Sequence[Gap], level: float = 0.95) -> GapInterval:
    """Combine per-repeat paired gaps into a mean with an interval (module docstring)."""
    from scipy import stats

    if not gaps:
        raise ValueError("combine_gaps: no repeats")
    if not 0.0 < level < 1.0:
        raise ValueError(f"combine_gaps: level must be in (0, 1), got {level}")
    r = len(gaps)
    points = np.asarray([g.points for g in gaps])
    within = np.asarray([g.se ** 2 if math.isfinite(g.se) else 0.0 for g in gaps])
    mean = float(points.mean())
    between_var = float(points.var(ddof=1)) if r > 1 else 0.0
    within_var = float(within.mean())
    var = max(between_var, within_var) / r
    q = float(stats.t.ppf(0.5 + level / 2, r - 1)) if r > 1 else float(stats.norm.ppf(0.5 + level / 2))
    se = math.sqrt(var)
    return GapInterval(mean, mean - q * se, mean + q * se, se, r, math.sqrt(within_var / r),
                       math.sqrt(between_var) if r > 1 else math.nan, q, level)


# ---------------------------------------------------------------------------------------- rows
@dataclass
class Evaluation:
    """One model in one repeat: its file size and, per image, whether it was right
    (``val_correct`` on the validation split, ``test_correct`` on the test split, both in the
    order of the split, so rows of the same repeat pair up image by image). ``test_correct`` is
    None for a model that is only a candidate of a choice made on validation (never tested)."""

    name: str
    repeat: int
    bytes: int
    val_correct: np.ndarray
    test_correct: Optional[np.ndarray] = None

    @property
    def val_accuracy(self) -> float:
        return 100.0 * float(np.mean(self.val_correct))

    @property
    def test_accuracy(self) -> Optional[float]:
        return None if self.test_correct is None else 100.0 * float(np.mean(self.test_correct))


@dataclass
class RowStats:
    """One model over the repeats: sizes and accuracies (:class:`Spread`), gaps to the baseline
    (:class:`GapInterval`; ``None`` for the baseline itself)."""

    name: str
    repeats: int
    bytes: Spread
    val: Spread
    test: Optional[Spread]  # None when the model was not tested (a candidate chosen among on validation)
    val_gap: Optional[GapInterval] = None
    test_gap: Optional[GapInterval] = None
    extra: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "repeats": self.repeats, "bytes": self.bytes.to_dict(),
                "val_accuracy": self.val.to_dict(), "test_accuracy": self.test.to_dict() if self.test else None,
                "val_gap": self.val_gap.to_dict() if self.val_gap else None,
                "test_gap": self.test_gap.to_dict() if self.test_gap else None, **self.extra}


def summarize(evaluations: Iterable[Evaluation], baseline: str, level: float = 0.95) -> Dict[str, RowStats]:
    """:class:`RowStats` per model name, in first-seen order. Every model's gap is paired with
    the ``baseline`` row of the same repeat; a model missing in a repeat is summarised over the
    repeats it has."""
    by_name: Dict[str, Dict[int, Evaluation]] = {}
    for e in evaluations:
        reps = by_name.setdefault(e.name, {})
        if e.repeat in reps:
            raise ValueError(f"summarize: {e.name!r} evaluated twice in repeat {e.repeat}")
        reps[e.repeat] = e
    if baseline not in by_name:
        raise ValueError(f"summarize: no baseline row {baseline!r} among {sorted(by_name)}")
    base = by_name[baseline]
    out: Dict[str, RowStats] = {}
    for name, reps in by_name.items():
        ordered = [reps[r] for r in sorted(reps)]
        tested = all(e.test_correct is not None for e in ordered)
        row = RowStats(name, len(ordered), spread(e.bytes for e in ordered), spread(e.val_accuracy for e in ordered),
                       spread(e.test_accuracy for e in ordered) if tested else None)
        if name != baseline:
            missing = [e.repeat for e in ordered if e.repeat not in base]
            if missing:
                raise ValueError(f"summarize: {name!r} has repeat(s) {missing} that the baseline lacks")
            row.val_gap = combine_gaps([paired_gap(e.val_correct, base[e.repeat].val_correct) for e in ordered], level)
            if tested and all(base[e.repeat].test_correct is not None for e in ordered):
                row.test_gap = combine_gaps([paired_gap(e.test_correct, base[e.repeat].test_correct)
                                             for e in ordered], level)
        out[name] = row
    return out


def paired_comparison(evaluations: Iterable[Evaluation], name: str, reference: str,
                      level: float = 0.95) -> Tuple[GapInterval, GapInterval]:
    """``(validation, test)`` gap of ``name`` minus ``reference``, paired image by image within
    each repeat both were evaluated in and combined over those repeats (:func:`combine_gaps`):
    e.g. an autoencoder-initialised net against the same architecture from random initialisation."""
    by: Dict[Tuple[str, int], Evaluation] = {(e.name, e.repeat): e for e in evaluations}
    repeats = sorted(r for (n, r) in by if n == name and (reference, r) in by)
    if not repeats:
        raise ValueError(f"paired_comparison: {name!r} and {reference!r} share no repeat")
    val = [paired_gap(by[name, r].val_correct, by[reference, r].val_correct) for r in repeats]
    test = [paired_gap(by[name, r].test_correct, by[reference, r].test_correct) for r in repeats]
    return combine_gaps(val, level), combine_gaps(test, level)


# ---------------------------------------------------------------------------------------- choices (validation only)
def best_on_validation(rows: Iterable[RowStats]) -> RowStats:
    """The row with the highest mean validation accuracy (ties: the smaller file, then the name)."""
    rows = list(rows)
    if not rows:
        raise ValueError("best_on_validation: no rows to choose from")
    return min(rows, key=lambda r: (-r.val.mean, r.bytes.mean, r.name))


def frontier(rows: Iterable[RowStats], family: Callable[[str], str]) -> Dict[str, List[RowStats]]:
    """Per family (``family(name)``), the rows no smaller file of the family beats on mean
    validation accuracy: sorted by mean bytes, each strictly more accurate on validation than
    every smaller one."""
    fams: Dict[str, List[RowStats]] = {}
    for r in rows:
        fams.setdefault(family(r.name), []).append(r)
    out: Dict[str, List[RowStats]] = {}
    for fam, members in fams.items():
        best, keep = -math.inf, []
        for r in sorted(members, key=lambda m: (m.bytes.mean, -m.val.mean, m.name)):
            if r.val.mean > best:
                keep.append(r)
                best = r.val.mean
        out[fam] = keep
    return out


@dataclass
class Recommendation:
    """The validated pick: ``row`` (None when the baseline is near chance), ``compared`` = how
    many models were ranked, ``reason`` = one sentence for the report."""

    row: Optional[RowStats]
    compared: int
    points: float
    reason: str

    @property
    def name(self) -> Optional[str]:
        return self.row.name if self.row is not None else None


def smallest_within(rows: Iterable[RowStats], baseline: str, points: float = 1.0,
                    chance: Optional[float] = None, n_val: Optional[int] = None) -> Recommendation:
    """The smallest file whose mean validation gap to ``baseline`` is ``>= -points`` (module
    docstring; the baseline itself always qualifies). ``chance`` (percent, see
    :func:`chance_accuracy`) and ``n_val`` (validation images per repeat): when the baseline's
    validation accuracy is near chance (:func:`near_chance`), no recommendation."""
    rows = list(rows)
    base = next((r for r in rows if r.name == baseline), None)
    if base is None:
        raise ValueError(f"smallest_within: no baseline row {baseline!r}")
    compared = len(rows)
    if chance is not None:
        low, why = near_chance(base.val, chance, n_val)
        if low:
            return Recommendation(None, compared, points, why)
    ok = [r for r in rows if r.name == baseline or (r.val_gap is not None and r.val_gap.mean >= -points)]
    pick = min(ok, key=lambda r: (r.bytes.mean, -r.val.mean, r.name))
    return Recommendation(pick, compared, points,
                          f"the smallest of {compared} models whose mean validation accuracy over {base.repeats} "
                          f"repeat(s) is within {points:g} point(s) of the baseline's")


def chance_accuracy(train_labels) -> float:
    """The accuracy (percent) of always answering the most frequent training class."""
    y = torch.as_tensor(train_labels).reshape(-1).long()
    if y.numel() == 0:
        raise ValueError("chance_accuracy: no labels")
    return 100.0 * float(torch.bincount(y - y.min()).max()) / y.numel()


def near_chance(val: Spread, chance: float, n_val: Optional[int] = None, margin: float = 5.0) -> Tuple[bool, str]:
    """Whether a baseline with mean validation accuracy ``val.mean`` is near (or below) the
    chance accuracy ``chance``: less than ``margin`` points above it, or, given ``n_val`` (the
    validation images per repeat), not above it by a one-sided binomial test at the 1% level
    (normal approximation: less than ``2.33 * 100 sqrt(p (1 - p) / (n_val R))`` points above,
    ``p = chance / 100``, ``R`` repeats). Returns ``(near, sentence)``."""
    gap = val.mean - chance
    need = margin
    if n_val:
        p = min(max(chance / 100.0, 1e-9), 1 - 1e-9)
        need = max(need, 232.6 * math.sqrt(p * (1 - p) / (n_val * max(val.n, 1))))
    if gap < need:
        return True, (f"the baseline's validation accuracy ({val}%) is not clearly above chance ({chance:.1f}%, "
                      f"always the most frequent class): the data or the labels carry no usable signal, so no "
                      f"model is recommended")
    return False, ""


# ---------------------------------------------------------------------------------------- data
def load_repeat(spec: str, repeat: int, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                scale: str = "auto", per_feature: Optional[bool] = None):
    """The :class:`aecomp.data.Splits` of repeat ``repeat``: ``aecomp.data.load`` with the seed
    ``repeat_seed(seed, repeat)`` and the stratified split (scaling fitted on that repeat's
    training split). Raises ``aecomp.data.DataError`` for unusable data."""
    from .. import data

    return data.load(spec, val_fraction=val_fraction, test_fraction=test_fraction, seed=repeat_seed(seed, repeat),
                     scale=scale, per_feature=per_feature, stratify=True)
