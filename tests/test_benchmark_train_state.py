"""benchmarks/train_state.py: an unfinished run saved to the ``train-state`` branch comes back
byte for byte in a clone, ``main`` is left untouched, and a finished run is refused."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_state.py"
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _load(root: Path):
    spec = importlib.util.spec_from_file_location("train_state", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.ROOT = root
    return mod


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def test_save_and_restore_in_a_clone(tmp_path, monkeypatch):
    for who in ("AUTHOR", "COMMITTER"):  # a CI machine may have no git identity
        monkeypatch.setenv(f"GIT_{who}_NAME", "test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("x\n")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-qm", "init")
    run = repo / "runs" / "camvid" / "long_x"
    run.mkdir(parents=True)
    files = {"last.pt": b"\x00\x01state", "config.yaml": b"epochs: 78\n", "log.csv": b"epoch\n1\n"}
    for name, data in files.items():
        (run / name).write_bytes(data)
    (run / "train.lock").write_text("pid")
    head = _git(repo, "rev-parse", "HEAD")

    _load(repo).main(["save", "long_x", "--runs", str(run.parent)])
    assert _git(repo, "rev-parse", "HEAD") == head  # main untouched
    assert _git(repo, "status", "--porcelain") == "?? runs/\n"
    saved = _git(repo, "ls-tree", "-r", "--name-only", "train-state").split()
    assert sorted(saved) == sorted(f"runs/camvid/long_x/{f}" for f in files)

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    _load(clone).main(["restore"])  # from origin/train-state
    for name, data in files.items():
        assert (clone / "runs" / "camvid" / "long_x" / name).read_bytes() == data
    assert not (clone / "runs" / "camvid" / "long_x" / "train.lock").exists()

    (run / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit, match="has finished"):
        _load(repo).main(["save", "long_x", "--runs", str(run.parent)])
    with pytest.raises(SystemExit, match="is missing"):
        _load(repo).main(["save", "nope", "--runs", str(run.parent)])
