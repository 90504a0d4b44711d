"""Training loop: a smoke run, the static baseline, mixed precision, exact resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import segblocks
from segblocks.evaluation.visualize import read_val_curve, save_training_curves
from segblocks.models import load_checkpoint
from segblocks.models.segblocks_model import SegBlocksModel
from segblocks.training import hooks as hooks_mod
from segblocks.training.config import TrainConfig, load_config
from segblocks.training.trainer import Trainer, cosine_factor, train

from ..tiny import TINY

CONFIGS = Path(segblocks.__file__).resolve().parent / "configs"  # packaged configs


def tiny_config(tmp_path, *extra) -> TrainConfig:
    return load_config(
        str(CONFIGS / "procedural_tiny.yaml"), [*TINY, f"out_dir={tmp_path}", *extra]
    )


def test_cosine_factor():
    assert cosine_factor(0, 10, 0.01) == pytest.approx(1.0)
    assert cosine_factor(10, 10, 0.01) == pytest.approx(0.01)
    assert cosine_factor(5, 10, 0.0) == pytest.approx(0.5)
    assert cosine_factor(20, 10, 0.01) == pytest.approx(0.01)
    assert not math.isnan(cosine_factor(0, 0, 0.1))


def test_smoke_train_writes_checkpoint_and_csv(tmp_path):
    res = train(tiny_config(tmp_path))
    assert res["global_step"] == 2
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2
    assert ckpt["model_name"] == "swiftnet_rn18" and ckpt["segblocks"]["policy"] == "learned"
    groups = {g["name"]: g for g in ckpt["optimizer"]["param_groups"]}
    assert set(groups) == {"backbone", "head"}
    assert groups["backbone"]["weight_decay"] == pytest.approx(
        0.25 * groups["head"]["weight_decay"]
    )
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == set(hooks_mod.CSV_FIELDS)
    *steps, val = rows  # a row per step (log_every 1), then the validation at the end
    assert [int(r["iter"]) for r in steps] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and r["val_miou"] == "" for r in steps)
    assert 0.0 <= res["val"]["miou"] <= 1.0
    assert (val["epoch"], val["iter"], val["loss"]) == ("1", "2", "")
    assert float(val["val_miou"]) == pytest.approx(res["val"]["miou"])
    # the checkpoint rebuilds the SegBlocks model
    model = SegBlocksModel.from_checkpoint(tmp_path / "last.pt")
    out = model(torch.randn(1, 3, 128, 128))
    assert out.logits.shape == (1, 9, 128, 128) and out.grid.shape == (1, 2, 2)


def test_static_baseline_all_hr(tmp_path):
    res = train(tiny_config(tmp_path, "policy=all_hr", "policy_kwargs={}", "eval_at_end=false"))
    assert res["train"]["hr_fraction"] == 1.0 and res["train"]["policy_loss"] == 0.0
    assert res["val"] is None


def test_pad_mode_is_trained_and_restored(tmp_path):
    """pad_mode (the BlockPad ablation) reaches the model and comes back from the checkpoint."""
    train(tiny_config(tmp_path, "pad_mode=zero", "iters_per_epoch=1", "eval_at_end=false"))
    assert SegBlocksModel.from_checkpoint(tmp_path / "last.pt").sample.pad_mode == "zero"


def test_channels_last_trains_the_same_weights(tmp_path):
    """channels_last=true changes the memory layout, not the maths: two steps give the
    default run's weights (to float32 rounding), and the run can switch layout on resume."""
    extra = ["policy=all_hr", "policy_kwargs={}", "eval_at_end=false", "iters_per_epoch=2"]
    train(tiny_config(tmp_path / "default", *extra))
    res = train(tiny_config(tmp_path / "cl", *extra, "channels_last=true"))
    assert res["global_step"] == 2
    trainer = Trainer(tiny_config(tmp_path / "layout", *extra, "channels_last=true"))
    convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    a = load_checkpoint(tmp_path / "default" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "cl" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5), k
    # a run key: resuming with the other layout is allowed (the weights are the same)
    more = ["epochs=2", "allow_config_change=[epochs]", "resume=true"]
    res = train(tiny_config(tmp_path / "cl", *extra, *more))
    assert res["resumed_from_epoch"] == 1 and res["global_step"] == 4


def test_amp_one_step_on_cpu(tmp_path):
    """amp=true on the CPU trains under bfloat16 autocast (no GradScaler state saved)."""
    cfg = tiny_config(tmp_path, "amp=true", "iters_per_epoch=1", "device=cpu")
    res = train(cfg)
    assert res["global_step"] == 1
    assert all(math.isfinite(v) for v in res["train"].values())
    assert 0.0 <= res["val"]["miou"] <= 1.0
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["scaler"] == {}
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 for v in weights)  # autocast leaves weights fp32


class _Crash(Exception):
    pass


def test_resume_is_exact(tmp_path, monkeypatch):
    extra = ["epochs=2", "eval_at_end=false"]
    full = train(tiny_config(tmp_path / "full", *extra))

    real_save = hooks_mod.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        if kwargs["epoch"] == 1:
            raise _Crash

    monkeypatch.setattr(hooks_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        train(tiny_config(tmp_path / "resumed", *extra))
    monkeypatch.setattr(hooks_mod, "save_checkpoint", real_save)
    torch.manual_seed(123)  # unrelated RNG use between the runs must not matter
    resumed = train(tiny_config(tmp_path / "resumed", *extra, "resume=true"))
    assert resumed["resumed_from_epoch"] == 1 and resumed["global_step"] == full["global_step"]

    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in ("state_dict", "policy_state_dict"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for pid, sa in a["optimizer"]["state"].items():
        for k, v in sa.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert a["history"] == b["history"]

    def rows(p):
        with open(p / "log.csv", newline="") as f:
            return list(csv.DictReader(f))

    assert rows(tmp_path / "full") == rows(tmp_path / "resumed")


def test_eval_every_writes_the_training_curve_and_resumes_exactly(tmp_path, monkeypatch):
    """eval_every=1: a validation after each epoch, in log.csv and the checkpoint's history;
    validating in the middle of a run does not change it (the RNGs are restored), so the
    curve run ends bit-identical to one that never validates."""
    extra = ["epochs=2", "eval_at_end=true", "iters_per_epoch=1"]
    curve = train(tiny_config(tmp_path / "curve", *extra, "eval_every=1"))
    plain = train(tiny_config(tmp_path / "plain", *extra))
    a = load_checkpoint(tmp_path / "curve" / "last.pt")
    b = load_checkpoint(tmp_path / "plain" / "last.pt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [h["epoch"] for h in a["history"] if "val" in h] == [1, 2]
    assert curve["val"] == a["history"][-1]["val"]
    assert curve["val"]["miou"] == pytest.approx(plain["val"]["miou"])
    with open(tmp_path / "curve" / "log.csv", newline="") as f:
        vals = [r for r in csv.DictReader(f) if r["val_miou"]]
    assert [r["epoch"] for r in vals] == ["1", "2"]  # the final validation is epoch 2's
    assert float(vals[0]["val_miou"]) == pytest.approx(a["history"][0]["val"]["miou"])
    curve = read_val_curve(tmp_path / "curve" / "log.csv")
    assert [e for e, _ in curve] == [1, 2]
    png = save_training_curves(tmp_path / "curves.png", {"tiny": curve})
    assert png.stat().st_size > 1000
