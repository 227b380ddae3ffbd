"""The bring-your-own options of ``aecomp compress``: parsing and the combinations refused in one line."""
from __future__ import annotations

import argparse

import pytest

from aecomp.cli import UsageError
from aecomp.compress import own_cli


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    own_cli.add_arguments(p)
    return p.parse_args(list(argv))


def _one_line(exc) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_parse_labels_and_classes():
    assert own_cli.parse_labels("10,100,1000") == [10, 100, 1000]
    assert own_cli.parse_labels(None) is None
    for bad in ("", "0", "-3", "ten", "1.5"):
        with pytest.raises(UsageError) as exc:
            own_cli.parse_labels(bad)
        assert "--labels" in _one_line(exc)
    assert own_cli.parse_classes("0-4", "--source", ()) == (0, 1, 2, 3, 4)
    assert own_cli.parse_classes("0-2,7", "--source", ()) == (0, 1, 2, 7)
    assert own_cli.parse_classes(None, "--source", (5,)) == (5,)
    for bad in ("", "4-0", "a", "1,1", "-1", "0-2,2"):
        with pytest.raises(UsageError) as exc:
            own_cli.parse_classes(bad, "--source", ())
        assert "--source" in _one_line(exc)


@pytest.mark.parametrize("argv, word", [
    (("--activations", "relu,none"), "--model"),
    (("--labels", "10,100"), "--study fewlabel"),
    (("--source", "0-4"), "--study transfer"),
    (("--study", "fewlabel", "--model", "m.pt"), "no --model"),
    (("--study", "fewlabel", "--target", "5-9"), "transfer"),
    (("--study", "transfer", "--unlabeled", "x.npy"), "--unlabeled"),
    (("--val-labels", "0"), "--val-labels"),
])
def test_combinations_that_make_no_sense(argv, word):
    with pytest.raises(UsageError) as exc:
        own_cli.check_arguments(_args(*argv))
    assert word in _one_line(exc)


def test_sensible_combinations_pass():
    for argv in ((), ("--model", "m.pt", "--activations", "relu,none"), ("--labels", "10"),
                 ("--study", "fewlabel", "--labels", "10,100"), ("--study", "transfer", "--source", "5-9"),
                 ("--encoder", "runs/ae", "--labels", "10", "--unlabeled", "x.npy")):
        own_cli.check_arguments(_args(*argv))
