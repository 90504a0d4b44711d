#!/usr/bin/env python
"""Carry unfinished training runs across machines through git (issue 19's long schedule).

A CamVid run of the long schedule may outlive a working session, and files outside git do not
survive it. ``save`` commits the state a run needs to continue exactly (``last.pt`` with its
optimiser and RNG state, ``config.yaml``, ``log.csv``) to the side branch ``train-state``;
``restore`` writes it back under ``runs/``, after which ``segblocks train --config ...
resume=true`` continues the run where it stopped::

    python benchmarks/train_state.py save long_segblocks_tau02     # before a session ends
    python benchmarks/train_state.py restore                       # on the next machine
    python benchmarks/train_state.py drop                          # once the runs finished

The branch holds one parentless commit, replaced by every ``save``, so a clone carries only
the newest state (tens of MiB), never a history of them. ``main``'s index and working tree are
not touched: the commit is built with git plumbing on a temporary index.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRANCH = "train-state"
#: what ``resume=true`` needs; ``metrics.json`` marks a finished run and ``train.lock`` is
#: per-process, so neither is carried
FILES = ("last.pt", "config.yaml", "log.csv")


def _git(*args: str, env: dict | None = None, stdin: bytes | None = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=ROOT, env=env, input=stdin, capture_output=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {out.stderr.decode().strip()}")
    return out.stdout.decode().strip()


def _last_epoch(log_csv: Path) -> str:
    rows = log_csv.read_text().strip().splitlines()
    return rows[-1].split(",")[0] if len(rows) > 1 else "0"


def save(names: list[str], runs: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        for name in names:
            run = runs / name
            if (run / "metrics.json").is_file():
                raise SystemExit(f"run {run} has finished (metrics.json); export it instead")
            for f in FILES:
                path = run / f
                if not path.is_file():
                    raise SystemExit(f"{path} is missing: is {name!r} a started run?")
                blob = _git("hash-object", "-w", str(path))
                rel = path.resolve().relative_to(ROOT.resolve()).as_posix()
                _git("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
        tree = _git("write-tree", env=env)
    head = _git("rev-parse", "--short", "HEAD")
    # the epoch of log.csv's last row (a row of the epoch in progress past last.pt's)
    at = [f"{n} (log at epoch {_last_epoch(runs / n / 'log.csv')})" for n in names]
    msg = f"unfinished runs {', '.join(at)}; main at {head}: benchmarks/train_state.py restore"
    commit = _git("commit-tree", tree, "-m", msg)
    _git("update-ref", f"refs/heads/{BRANCH}", commit)
    print(f"saved {', '.join(names)} to branch {BRANCH} ({commit[:10]})")


def _saved_ref() -> str:
    """The local branch, else a clone's remote-tracking one."""
    for ref in (f"refs/heads/{BRANCH}", f"refs/remotes/origin/{BRANCH}"):
        if (
            subprocess.run(
                ["git", "rev-parse", "-q", "--verify", ref], cwd=ROOT, capture_output=True
            ).returncode
            == 0
        ):
            return ref
    raise SystemExit(f"no branch {BRANCH!r} (local or origin/): nothing to restore")


def restore() -> None:
    ref = _saved_ref()
    for rel in _git("ls-tree", "-r", "--name-only", ref).splitlines():
        data = subprocess.run(
            ["git", "show", f"{ref}:{rel}"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        dest = ROOT / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        print(f"restored {rel} ({len(data) / 2**20:.1f} MiB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="commit unfinished runs to the train-state branch")
    s.add_argument("names", nargs="+", help="run names under --runs, e.g. long_segblocks_tau02")
    s.add_argument("--runs", type=Path, default=ROOT / "runs" / "camvid")
    sub.add_parser("restore", help="write the saved runs back under runs/")
    sub.add_parser("drop", help="delete the train-state branch")
    args = ap.parse_args(argv)
    if args.cmd == "save":
        save(args.names, args.runs)
    elif args.cmd == "restore":
        restore()
    else:
        _git("branch", "-D", BRANCH)
        print(f"deleted branch {BRANCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
