"""Every Python code block of README.md runs as written (issue 18), each in a fresh process
in an empty folder."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from segblocks.blocks import kernels

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, tmp_path):
    code = BLOCKS[i]
    if "load_exported" in code and kernels.backend() != "cpp":
        pytest.skip("exporting block execution needs the compiled kernels")
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, f"README block {i}:\n{code}\n{r.stderr[-3000:]}"
