"""The README's compression-Mod example (a plain torch.nn model, Flower's simulation engine) runs
as it stands and moves far fewer bytes than the same app without the Mod would."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")
pytest.importorskip("sklearn")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_fl_example_runs(tmp_path):
    text = README.read_text()
    block = re.search(r"<!-- fl-example:start -->\s*```python\n(.*?)```\s*<!-- fl-example:end -->", text, re.S)
    assert block, "the README lost its fl-example block"
    script = tmp_path / "example.py"
    script.write_text(block.group(1))
    # Ray's temp folder short and private (its socket paths must fit; nothing shared with other runs)
    env_code = "import os, tempfile; os.environ['RAY_TMPDIR'] = tempfile.mkdtemp(prefix='aer', dir='/tmp')\n"
    script.write_text(env_code + block.group(1))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"training accuracy ([\d.]+)%; ([\d,]+) bytes on the wire", out.stdout)
    assert m, out.stdout[-2000:]
    acc, nbytes = float(m.group(1)), int(m.group(2).replace(",", ""))
    params = 64 * 32 + 32 + 32 * 10 + 10
    plain = 3 * 2 * 3 * 4 * params  # 3 rounds x 3 clients x both ways x float32, before Flower's framing
    assert acc > 80.0 and nbytes < plain / 4, (acc, nbytes, plain)
