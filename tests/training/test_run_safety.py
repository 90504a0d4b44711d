"""No lost runs: out_dir refusal and lock, Ctrl-C, resume checks (trainer API; the CLI side
is in tests/test_cli_errors.py)."""

from __future__ import annotations

import fcntl
import os

import pytest
import torch

from segblocks.errors import (
    CheckpointError,
    ConfigError,
    OutputDirError,
    TrainingInterrupted,
)
from segblocks.models import load_checkpoint
from segblocks.training import hooks as hooks_mod
from segblocks.training import trainer as trainer_mod
from segblocks.training.config import load_config
from segblocks.training.run_dir import LOCK_NAME
from segblocks.training.trainer import train

from ..tiny import CONFIG, TINY


def cfg(out, *extra):
    return load_config(CONFIG, [*TINY, f"out_dir={out}", "eval_at_end=false", *extra])


def test_ctrl_c_names_the_checkpoint_and_releases_the_lock(tmp_path, monkeypatch):
    real_save = hooks_mod.save_checkpoint

    def save_or_interrupt(*args, **kwargs):
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt
        real_save(*args, **kwargs)

    monkeypatch.setattr(hooks_mod, "save_checkpoint", save_or_interrupt)
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg(tmp_path, "epochs=3"))
    err = e.value
    assert (err.epoch, err.epochs, err.saved_epoch) == (2, 3, 1)
    assert str(err) == (
        f"training interrupted in epoch 2 of 3; {tmp_path / 'last.pt'} holds epoch 1: continue "
        "with resume=true"
    )
    monkeypatch.setattr(hooks_mod, "save_checkpoint", real_save)
    res = train(cfg(tmp_path, "epochs=3", "resume=true"))  # lock released, run continues
    assert res["resumed_from_epoch"] == 1 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_ctrl_c_before_the_first_epoch(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "make_dataset", interrupted)
    with pytest.raises(TrainingInterrupted, match="before the first epoch; no checkpoint"):
        train(cfg(tmp_path))


def test_lock_names_the_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / LOCK_NAME, "w") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(f"pid {os.getpid()} on somehost since now\n")
        f.flush()
        with pytest.raises(OutputDirError, match=rf"in use by .*\(pid {os.getpid()} on somehost"):
            train(cfg(out))
    assert not list(out.glob("*.pt"))  # nothing was written
    train(cfg(out))  # lock released: runs (the folder held only the lock file)


def test_non_empty_out_dir_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"not empty \(notes.txt\).*resume=true.*overwrite"):
        train(cfg(tmp_path))
    train(cfg(tmp_path, "overwrite=true"))
    assert (tmp_path / "notes.txt").read_text() == "mine"  # overwrite deletes run outputs only
    first = load_checkpoint(tmp_path / "last.pt")["state_dict"]
    (tmp_path / "log.csv").write_text("epoch\nstale-row-from-an-old-run\n")
    (tmp_path / "tb").mkdir()
    train(cfg(tmp_path, "overwrite=true", "seed=5"))
    # (a marker no fresh log can contain: a number such as 99 may occur in a loss value)
    log = (tmp_path / "log.csv").read_text()
    assert not (tmp_path / "tb").exists() and "stale-row-from-an-old-run" not in log
    second = load_checkpoint(tmp_path / "last.pt")["state_dict"]
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_resume_checks(tmp_path):
    train(cfg(tmp_path, "epochs=2"))
    fewer = cfg(tmp_path, "resume=true", "epochs=1", "allow_config_change=[epochs]")
    with pytest.raises(ConfigError, match="is at epoch 2, beyond epochs=1"):
        train(fewer)
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.*delete it to start over, or set resume"):
        train(cfg(tmp_path, "resume=true"))


def test_environment_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="'batch_size': 8 is more than the 4 training image"):
        train(cfg(tmp_path / "a", "batch_size=8"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'device': 'cuda' but this machine has no CUDA"):
            train(cfg(tmp_path / "b", "device=cuda"))
