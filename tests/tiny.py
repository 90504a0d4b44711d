"""Config overrides that shrink the packaged procedural_tiny.yaml to a seconds-long CPU run."""

from pathlib import Path

import segblocks

CONFIG = str(Path(segblocks.__file__).resolve().parent / "configs" / "procedural_tiny.yaml")

TINY = [
    "dataset_kwargs.num_images=4",
    "dataset_kwargs.height=128",
    "dataset_kwargs.width=256",
    "val_kwargs.num_images=2",
    "crop_size=[128,128]",
    "batch_size=2",
    "epochs=1",
    "log_every=1",
    "model_kwargs.decoder_width=32",
    "policy_kwargs.width=8",
    "tensorboard=false",
]
