"""A built wheel works outside the source tree: configs and C++ sources ship in the package.

Builds the wheel (no build isolation: the environment's setuptools, offline), installs it
without dependencies into a fresh virtual environment that reuses this environment's packages
(torch, timm, ...) through a ``.pth`` file, and runs ``segblocks --help``, ``segblocks demo
--engine`` and a packaged-config load from a folder outside the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")
def test_wheel_runs_outside_the_source_tree(tmp_path):
    pytest.importorskip("setuptools", reason="builds the wheel with this environment's setuptools")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # a clean copy of the sources (the working tree may hold build caches)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "segblocks", src / "segblocks", ignore=ignore)

    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        tmp_path,
        env,
    )
    (wheel,) = dist.glob("segblocks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for cfg in ("procedural_tiny", "cityscapes_rn18", "camvid_rn18", "mapillary_effl1"):
        assert f"segblocks/configs/{cfg}.yaml" in names
    assert "segblocks/csrc/block_ops.cpp" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    host = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_reuse_host_packages.pth").write_text("\n".join(sorted(host)) + "\n")
    _run(
        [*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], tmp_path, env
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        [py, "-c", "import segblocks, sys; print(segblocks.__file__)"], elsewhere, env
    ).stdout
    assert where.startswith(str(venv)), where  # the installed wheel, not the source tree
    exe = str(venv / "bin" / "segblocks")
    assert "demo" in _run([exe, "--help"], elsewhere, env).stdout
    out = _run(
        [exe, "demo", "--engine", "--size", "128x256", "--block-size", "64", "--threads", "1"],
        elsewhere,
        env,
    ).stdout
    assert "exact to float32 rounding" in out
    code = (
        "from segblocks.training import load_config; from segblocks.demo import CONFIG_NAME; "
        "print(load_config(CONFIG_NAME).block_size)"
    )
    assert _run([py, "-c", code], elsewhere, env).stdout.strip() == "64"
    assert not list(elsewhere.iterdir())  # nothing written outside


def test_import_raises_the_onednn_primitive_cache_unless_set():
    """Block shapes change with every mask; segblocks raises oneDNN's primitive cache (read at
    oneDNN's first use) unless the user chose a capacity."""
    code = "import os, segblocks; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "8192", out.stderr
    env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "100"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "100", out.stderr
