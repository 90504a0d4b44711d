from pathlib import Path

import pytest

from segblocks.engine.config import load_config
from segblocks.engine.trainer import train

pytest.importorskip("torch.utils.tensorboard")
pytest.importorskip("tensorboard")

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "procedural_tiny.yaml")


def test_tensorboard_events_written(tmp_path):
    cfg = load_config(
        CONFIG,
        [
            "epochs=1",
            "iters_per_epoch=1",
            "eval_at_end=false",
            f"out_dir={tmp_path}",
            "tensorboard=true",
            "log_every=1",
            "dataset_kwargs.num_images=2",
            "dataset_kwargs.height=128",
            "dataset_kwargs.width=256",
            "crop_size=[128,128]",
            "batch_size=2",
            "model_kwargs.decoder_width=32",
            "policy_kwargs.width=8",
        ],
    )
    train(cfg)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
