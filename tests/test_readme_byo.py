"""The README's "Bring your own" commands run as written.

Every ``bash`` and ``python`` block between ``<!-- byo:start -->`` and ``<!-- byo:end -->`` runs, in
order, in one empty folder: ``aecomp ...`` lines through ``aecomp.cli.main`` with the words as written,
followed by flags that only make the run short (fewer repeats and epochs: CI has minutes, not hours);
``python - <<'EOF'`` heredocs and ``python`` blocks in this process, ``compress_model`` given the
same short settings. A command the README shows that fails here fails this test.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"

SHORT_TRAIN = ["--epochs", "1", "--no-progress"]
SHORT_STUDY = ["--repeats", "1", "--ae-epochs", "2", "--epochs", "2"]
SHORT_COMPRESS = SHORT_STUDY + ["--prune-epochs", "1", "--share-epochs", "1", "--bits", "4", "--mode", "frozen",
                                "--no-distill", "--latency-repeats", "2", "--no-export", "--no-baselines"]
SHORT_SETTINGS = dict(repeats=1, ae_epochs=2, epochs=2, prune_epochs=1, share_epochs=1, bits=[4], mode="frozen",
                      distill=False, latency_repeats=2, export=False, baselines=False)


def _blocks():
    text = README.read_text()
    start, end = text.index("<!-- byo:start -->"), text.index("<!-- byo:end -->")
    return re.findall(r"```(bash|python)\n(.*?)```", text[start:end], flags=re.S)


def _short(argv):
    if argv[0] == "train":
        return argv + SHORT_TRAIN
    return argv + (SHORT_STUDY if "--study" in argv else SHORT_COMPRESS)


def test_readme_has_the_four_paths():
    code = "".join(body for _, body in _blocks())
    for flag in ("--model", "--encoder", "--labels", "--study fewlabel", "--study transfer", "compress_model("):
        assert flag in code, flag


def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    import aecomp.compress as compress
    from aecomp.cli import main

    monkeypatch.chdir(tmp_path)
    real = compress.compress_model
    monkeypatch.setattr(compress, "compress_model", lambda *a, **kw: real(*a, **{**SHORT_SETTINGS, **kw}))
    namespace: dict = {}
    ran = 0
    for kind, body in _blocks():
        if kind == "python":
            exec(compile(body, "README.md (python block)", "exec"), namespace)
            ran += 1
            continue
        lines = iter(body.splitlines())
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("python - <<'EOF'"):
                script = []
                for inner in lines:
                    if inner.strip() == "EOF":
                        break
                    script.append(inner)
                exec(compile("\n".join(script), "README.md (heredoc)", "exec"), namespace)
            else:
                words = shlex.split(line.split("  #")[0])
                assert words[0] == "aecomp", line
                assert main(_short(words[1:])) == 0, line
                capsys.readouterr()
            ran += 1
    assert ran >= 8
    assert (tmp_path / "runs" / "mine" / "report.md").is_file()
    assert (tmp_path / "runs" / "fewlabel" / "study.md").is_file()
    assert (tmp_path / "runs" / "transfer" / "study.md").is_file()
