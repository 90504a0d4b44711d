import pytest

from segblocks.training.config import load_config
from segblocks.training.trainer import train

from ..tiny import CONFIG, TINY

pytest.importorskip("torch.utils.tensorboard")
pytest.importorskip("tensorboard")


def test_tensorboard_events_written(tmp_path):
    extra = ["iters_per_epoch=1", "eval_at_end=false", f"out_dir={tmp_path}", "tensorboard=true"]
    train(load_config(CONFIG, [*TINY, *extra]))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
