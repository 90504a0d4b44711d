"""Training engine: config loading / overrides, a smoke run, exact resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from segblocks.engine import trainer as trainer_mod
from segblocks.engine.config import TrainConfig, apply_overrides, load_config
from segblocks.engine.trainer import cosine_factor, load_segblocks, train
from segblocks.models import load_checkpoint

from ..tiny import TINY

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny_config(tmp_path, *extra) -> TrainConfig:
    return load_config(
        str(CONFIGS / "procedural_tiny.yaml"), [*TINY, f"out_dir={tmp_path}", *extra]
    )


def test_load_config_and_overrides(tmp_path):
    cfg = load_config(
        str(CONFIGS / "procedural_tiny.yaml"),
        ["epochs=3", "model_kwargs.output_stride=16", "crop_size=[64, 128]", "data_root=null"],
    )
    assert cfg.epochs == 3 and cfg.model_kwargs["output_stride"] == 16
    assert cfg.model_kwargs["decoder_width"] == 64  # untouched sibling key survives
    assert cfg.crop_size == [64, 128] and cfg.data_root is None
    assert cfg.block_size == 64 and cfg.policy == "learned"
    # new nested dicts are created by dotted keys
    assert apply_overrides({}, ["policy_kwargs.a.b=1"]) == {"policy_kwargs": {"a": {"b": 1}}}
    # defaults without a file
    assert load_config(None, ["lr=0.001"]).lr == pytest.approx(1e-3)


def test_bad_keys_and_values(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'epoch'.*epochs"):
        load_config(str(CONFIGS / "procedural_tiny.yaml"), ["epoch=3"])
    with pytest.raises(ValueError, match="unknown config key 'modle'"):
        load_config(None, ["modle.x=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(bad)
    with pytest.raises(ValueError, match="dataset"):
        load_config(None, ["dataset=kitti"])


@pytest.mark.parametrize(
    "name", ["procedural_tiny", "cityscapes_rn18", "camvid_rn18", "mapillary_effl1"]
)
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    stride = cfg.model_kwargs.get("output_stride", 32)
    assert cfg.block_size % (2 * stride) == 0
    crop = cfg.crop_size
    assert all(c % cfg.block_size == 0 for c in (crop if isinstance(crop, list) else [crop]))


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
    assert [int(r["iter"]) for r in rows] == [1, 2]
    assert set(rows[0]) == set(trainer_mod.CSV_FIELDS)
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert 0.0 <= res["val"]["miou"] <= 1.0
    # the checkpoint rebuilds the SegBlocks model
    model = load_segblocks(tmp_path / "last.pt")
    out = model(torch.randn(1, 3, 128, 128))
    assert out.logits.shape == (1, 9, 128, 128) and out.grid.shape == (1, 2, 2)


def test_static_baseline_all_hr(tmp_path):
    res = train(tiny_config(tmp_path, "policy=all_hr", "policy_kwargs={}", "eval_at_end=false"))
    assert res["train"]["hr_fraction"] == 1.0 and res["train"]["policy_loss"] == 0.0
    assert res["val"] is None


class _Crash(Exception):
    pass


def test_resume_is_exact(tmp_path, monkeypatch):
    extra = ["epochs=2", "eval_at_end=false"]
    full = train(tiny_config(tmp_path / "full", *extra))

    real_save = trainer_mod.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        if kwargs["epoch"] == 1:
            raise _Crash

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        train(tiny_config(tmp_path / "resumed", *extra))
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
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
