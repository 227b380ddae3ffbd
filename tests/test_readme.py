"""The README's Python snippets run as written (issue 23 item 14), each in a fresh namespace inside an
empty folder, and the numbers the README quotes from the code are the code's. Regions marked
``<!-- NAME:start -->`` ... ``<!-- NAME:end -->`` have tests of their own, which run their blocks in
order or in a process of their own (``fl-example``: tests/test_fl_readme.py, ``byo``:
tests/test_readme_byo.py); every other ``python`` block is here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_TEXT = re.sub(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", "", README.read_text(), flags=re.S)
SNIPPETS = re.findall(r"```python\n(.*?)```", _TEXT, flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_each_readme_snippet_runs_as_written(index, tmp_path, monkeypatch):
    if "torch.onnx.export" in SNIPPETS[index]:
        pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    exec(compile(SNIPPETS[index], f"README.md python snippet {index + 1}", "exec"), {"__name__": "__readme__"})


def test_the_readme_names_the_npz_keys_and_the_header_dictionary_size():
    from aecomp.compress.coding import HEADER_DICT_BYTES

    text = README.read_text()
    assert "`.npz` with the array `x`" in text and "integer labels `y`" in text
    assert f"HEADER_DICT_BYTES` = {HEADER_DICT_BYTES} bytes" in text
