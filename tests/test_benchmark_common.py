"""benchmarks/_common.py: ``--malloc`` restarts the script under the chosen allocator."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
PROBE = (
    "import sys; sys.path.insert(0, {bench!r}); import _common as c; "
    "c.reexec_with_malloc({mode!r}); print(c.allocator())"
)


def _allocator_after(mode: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and "MALLOC" not in k}
    script = tmp_path / f"probe_{mode}.py"  # a file: the restart re-runs sys.argv
    script.write_text(PROBE.format(bench=str(BENCH), mode=mode))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_malloc_modes(tmp_path):
    assert _allocator_after("default", tmp_path) == "glibc malloc (default settings)"
    assert _allocator_after("tuned", tmp_path).startswith("glibc malloc, tuned")


@pytest.mark.skipif(
    ctypes.util.find_library("tcmalloc_minimal") is None, reason="no libtcmalloc_minimal"
)
def test_malloc_tcmalloc(tmp_path):
    assert _allocator_after("tcmalloc", tmp_path) == "tcmalloc (LD_PRELOAD)"
