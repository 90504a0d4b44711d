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


def heuristic_rn18(num_classes: int, **model_kwargs):
    """A SwiftNet-RN18 (random weights, no backbone download) with the heuristic policy at
    tau 0.4 in 64-px blocks, eval mode: the small model of the regression and export tests."""
    import warnings

    from segblocks.models.segblocks_model import create_segblocks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_segblocks(
            "swiftnet_rn18",
            "heuristic",
            64,
            num_classes=num_classes,
            pretrained_backbone=False,
            policy_kwargs={"tau": 0.4},
            **model_kwargs,
        ).eval()
