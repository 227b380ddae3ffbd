"""The settings of a federated run, and their checks (no flwr import here: the CLI checks every
setting before Flower, Ray or any training starts)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["ENGINES", "SETUPS", "FLSettings", "FLError", "FolderError", "Job", "check_settings", "jobs_of", "parse_faults"]

# the ablation: each model family uncoded and through the compression Mod; "small" is the
# right-sized baseline (the compressed architecture trained directly, no autoencoder)
SETUPS = ("baseline", "baseline+coding", "compressed", "compressed+coding", "small", "small+coding")
ENGINES = ("simulation", "deployment")


class FLError(ValueError):
    """A setting the federated run cannot work with, or a run that failed; the message is one line."""


class FolderError(FLError):
    """An output folder the run cannot use (refused before anything runs)."""


@dataclass(frozen=True)
class FLSettings:
    """Everything that shapes a federated run. ``latent``, ``head_hidden`` and ``coding`` are what
    the validation split picked among four candidates, (latent, head, coding) = (16, 32, kmeans:4),
    (24, 32, kmeans:3), (16, 64, kmeans:3), (24, 32, top0.5+kmeans:4) (``candidates``; digits, 10
    clients, iid and dirichlet:0.5 alike; README: Federated learning); the rest are the earlier
    defaults, not tuned."""

    data: str = "digits"
    clients: int = 10
    rounds: int = 20
    partition: str = "iid"  # iid | dirichlet:ALPHA
    setups: Tuple[str, ...] = SETUPS
    ae_rounds: Optional[int] = None  # of the rounds, how many train the autoencoder; None: rounds // 4
    local_epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-2  # Adam, the classifiers
    ae_lr: float = 1e-2  # Adam, the autoencoder
    latent: int = 16
    hidden: int = 0  # encoder/decoder hidden width; 0: none (in -> latent -> in)
    head_hidden: int = 64  # the CompressedNet head: latent -relu-> head_hidden -> classes
    coding: str = "kmeans:3"  # the compression Mod's codec, both directions (aecomp.fl.compression)
    seed: int = 0  # repeat r uses seed + r: another split, partition, initialisation and batch order
    repeats: int = 1
    val_fraction: float = 0.15  # held by the server: every choice is made on it
    test_fraction: float = 0.2  # held by the server: reported once per final model
    round_timeout: float = 600.0  # seconds a round waits for replies
    engine: str = "simulation"
    drop: Tuple[Tuple[int, int], ...] = ()  # fault injection: (round, client; -1 all) raises mid-round
    kill: Tuple[Tuple[int, int], ...] = ()  # fault injection (deployment): (round, client) SuperNode killed mid-round
    backend: Optional[str] = None  # aecomp kernel backend (None: automatic)
    num_cpus: Optional[int] = None  # Ray CPUs (None: all); each client actor takes one
    candidates: Tuple[Tuple[int, int, str], ...] = ()  # --choose: (latent, head_hidden, coding) tried on validation

    def ae_rounds_for(self, setup: str) -> int:
        if not setup.startswith("compressed"):
            return 0
        return self.ae_rounds if self.ae_rounds is not None else max(1, self.rounds // 4)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("setups", "drop", "kill", "candidates"):
            d[k] = [list(x) if isinstance(x, tuple) else x for x in getattr(self, k)]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FLSettings":
        d = dict(d)
        d["setups"] = tuple(d.get("setups", SETUPS))
        for k in ("drop", "kill", "candidates"):
            d[k] = tuple(tuple(x) for x in d.get(k, ()))
        return cls(**d)


@dataclass(frozen=True)
class Job:
    """One federated training: a set-up on one repeat (``seed``) with one model size and codec."""

    setup: str
    seed: int
    latent: int
    head_hidden: int
    coding: Optional[str]  # None: plain messages
    split: str  # "test": a final repeat; "val": a --choose candidate (its test accuracy is not computed)

    @property
    def name(self) -> str:
        return f"{self.setup} seed {self.seed}" + ("" if self.split == "test" else
                                                   f" [choose: latent {self.latent}, head {self.head_hidden}, "
                                                   f"{self.coding or 'plain'}]")


def jobs_of(s: FLSettings) -> List[Job]:
    """The final repeats: every set-up for the seeds ``repeat_seed(seed, r)``, ``r < repeats``."""
    from ..compress.protocol import repeat_seed

    return [Job(setup, repeat_seed(s.seed, r), s.latent, s.head_hidden,
                s.coding if setup.endswith("+coding") else None, "test")
            for r in range(s.repeats) for setup in s.setups]


def parse_faults(text: Optional[str], flag: str) -> Tuple[Tuple[int, int], ...]:
    """``"2:1,3:*"`` -> ``((2, 1), (3, -1))`` (round:client, ``*`` every client)."""
    if not text:
        return ()
    out = []
    for part in str(text).split(","):
        r, _, c = part.strip().partition(":")
        try:
            out.append((int(r), -1 if c.strip() == "*" else int(c)))
        except ValueError:
            raise FLError(f"{flag} {text!r}: expected ROUND:CLIENT[,ROUND:CLIENT...] (CLIENT may be *)") from None
    return tuple(out)


def _positive(value, name: str, kind=int) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) and (math.isfinite(value) if kind is float else True)
    if not ok or value <= 0:
        raise FLError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}")


def check_settings(s: FLSettings) -> None:
    """Raise :class:`FLError` for any setting that cannot run; needs no flwr, loads only the data."""
    from .. import data as data_mod
    from ..compress.protocol import load_repeat
    from .codec import parse_codec
    from .partition import PartitionError, partition_indices

    unknown = [x for x in s.setups if x not in SETUPS]
    if unknown or not s.setups:
        raise FLError(f"unknown --setup {','.join(unknown) or '(none)'}; expected {', '.join(SETUPS)} or all")
    if s.engine not in ENGINES:
        raise FLError(f"unknown --engine {s.engine!r}; expected {' or '.join(ENGINES)}")
    for value, name in ((s.clients, "--clients"), (s.rounds, "--rounds"), (s.local_epochs, "--local-epochs"),
                        (s.batch_size, "--batch-size"), (s.latent, "--latent"), (s.repeats, "--repeats")):
        _positive(value, name)
    for value, name in ((s.lr, "--lr"), (s.ae_lr, "--ae-lr"), (s.round_timeout, "--round-timeout")):
        _positive(float(value) if isinstance(value, int) else value, name, float)
    if s.hidden < 0 or s.head_hidden < 0:
        raise FLError(f"--hidden and --head-hidden must be >= 0, got {s.hidden} and {s.head_hidden}")
    if s.num_cpus is not None:
        _positive(s.num_cpus, "--num-cpus")
    for value, name in ((s.val_fraction, "--val-fraction"), (s.test_fraction, "--test-fraction")):
        if not (isinstance(value, (int, float)) and 0 < value < 1):
            raise FLError(f"{name} must be a fraction in (0, 1), got {value!r}")
    if s.val_fraction + s.test_fraction >= 0.9:
        raise FLError(f"--val-fraction {s.val_fraction:g} + --test-fraction {s.test_fraction:g} leave the clients "
                      f"less than a tenth of the data")
    codings = [s.coding] + [c for _, _, c in s.candidates]
    for text in codings:
        try:
            parse_codec(text)
        except ValueError as exc:
            raise FLError(f"--coding: {exc}") from None
    for latent, head, _ in s.candidates:
        _positive(latent, "--choose latent")
        if head < 0:
            raise FLError(f"--choose head must be >= 0, got {head}")
    if any(x.startswith("compressed") for x in s.setups):
        a = s.ae_rounds_for("compressed")
        if not 1 <= a < s.rounds:
            raise FLError(f"the compressed set-ups need at least one autoencoder round and one classifier round: "
                          f"--ae-rounds {a} of --rounds {s.rounds}")
    for flag, faults in (("--fail", s.drop), ("--kill", s.kill)):
        for r, c in faults:
            if not 1 <= r <= s.rounds or not -1 <= c < s.clients:
                raise FLError(f"{flag} {r}:{c}: the round must be in 1..{s.rounds} and the client in "
                              f"0..{s.clients - 1} (or *)")
    if s.kill and s.engine != "deployment":
        raise FLError("--kill stops a SuperNode process: it needs --engine deployment")
    if s.kill and any(c < 0 for _, c in s.kill):
        raise FLError("--kill names one client per round, not *")
    for seed in range(s.seed, s.seed + s.repeats):
        try:
            splits = load_repeat(s.data, 0, seed=seed, val_fraction=s.val_fraction, test_fraction=s.test_fraction)
        except (data_mod.DataError, ValueError) as exc:
            raise FLError(str(exc)) from None
        if splits.train.y is None:
            raise FLError(f"{s.data} has no labels; federated classification needs them")
        features = splits.train.features
        for latent in [s.latent] + [c[0] for c in s.candidates]:
            if latent >= features:
                raise FLError(f"--latent {latent} is not smaller than the {features} input features of {s.data}")
        if len(splits.val) == 0 or len(splits.test) == 0:
            raise FLError(f"{s.data}: the validation or test split is empty; use more data or larger fractions")
        try:
            partition_indices(splits.train.y.numpy(), s.clients, s.partition, seed=seed)
        except PartitionError as exc:
            raise FLError(str(exc)) from None
        if seed > s.seed + 1:  # the split sizes do not depend on the seed: two are enough to check
            break
