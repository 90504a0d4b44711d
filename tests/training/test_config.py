"""Training config: YAML loading, key=value overrides, validation, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

import segblocks
from segblocks.training.config import apply_overrides, load_config

CONFIGS = Path(segblocks.__file__).resolve().parent / "configs"  # packaged configs


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


def test_amp_must_be_a_bool():
    assert load_config(None, ["amp=true"]).amp is True
    with pytest.raises(ValueError, match="'amp': 'bf16' must be true or false"):
        load_config(None, ["amp=bf16"])
