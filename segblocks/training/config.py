"""Training configuration: the :class:`TrainConfig` dataclass and YAML loading with overrides.

A config file is a YAML mapping whose keys are :class:`TrainConfig` fields, e.g.::

    model: swiftnet_rn18
    model_kwargs: {pretrained_backbone: true}
    policy: learned
    tau: 0.4
    block_size: 128
    dataset: cityscapes
    data_root: /data/cityscapes

Command-line overrides are ``key=value`` strings; the value is parsed with
``yaml.safe_load`` (``epochs=2``, ``crop_size=[256,256]``, ``data_root=null``) and dotted keys
reach into dict fields (``model_kwargs.output_stride=16``). Unknown keys raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "load_config", "apply_overrides", "DATASETS"]

DATASETS = ("procedural", "camvid", "cityscapes", "mapillary")


@dataclass
class TrainConfig:
    """Everything :func:`segblocks.training.trainer.train` needs (paper recipe as defaults).

    Model:
        model: registry name (``swiftnet_rn18``, ``swiftnet_rn50``, ``swiftnet_effl1``).
        num_classes: ``None`` = the dataset's number of classes.
        model_kwargs: more ``create_model`` arguments (``pretrained_backbone``,
            ``output_stride``, ``decoder_width``, ...).
        decoder_bn_momentum, spp_bn_momentum: BN momentum of the new layers; ``None`` keeps
            the SegBlocks defaults (0.02 / 0.005); raise them (e.g. 0.1) for short runs.
        policy: ``all_hr`` (static baseline), ``all_lr``, ``random``, ``heuristic``, ``learned``.
        policy_kwargs: policy constructor arguments (``tau`` is filled in for ``random`` and
            ``heuristic`` unless given; ``block_size`` for ``learned``).
        tau: target fraction of high-resolution blocks (hybrid loss); block_size: block side.
    Data:
        dataset: one of ``procedural``, ``camvid``, ``cityscapes``, ``mapillary``.
        data_root: dataset folder (not used by ``procedural``).
        dataset_kwargs: constructor arguments for both splits (``procedural``: ``num_images``,
            ``height``, ``width``; ``mapillary``: ``size``); val_kwargs: overrides for the
            validation split (e.g. ``{num_images: 16}``).
        crop_size: training crop ``[h, w]`` or an int (``None``: no crop);
        scale_min / scale_max: random scale range; jitter: brightness / contrast / saturation
        strength (0 disables); hflip: random horizontal flips.
    Optimisation:
        batch_size (per process), epochs, lr, min_lr (cosine end), backbone_lr_mult (lr and
        weight decay factor of the backbone), weight_decay, criterion (``ce`` / ``bootstrap``),
        beta / gamma (hybrid loss weights), iters_per_epoch (cap, ``None`` = full epoch).
    Run:
        num_workers, seed, out_dir, log_every (iterations between CSV rows), device
        (``auto``, ``cpu``, ``cuda``, ``cuda:1``...), amp (mixed precision: bfloat16 autocast
        on the CPU; float16 autocast with a GradScaler on CUDA),
        resume (continue from ``out_dir/last.pt`` if it exists), eval_at_end (mIoU on the
        validation split after training), eval_batch_size, find_unused_parameters (DDP),
        tensorboard (write TensorBoard events if ``torch.utils.tensorboard`` imports).
    """

    # model
    model: str = "swiftnet_rn18"
    num_classes: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    decoder_bn_momentum: float | None = None
    spp_bn_momentum: float | None = None
    policy: str = "learned"
    policy_kwargs: dict = field(default_factory=dict)
    tau: float = 0.4
    block_size: int = 128
    # data
    dataset: str = "procedural"
    data_root: str | None = None
    dataset_kwargs: dict = field(default_factory=dict)
    val_kwargs: dict = field(default_factory=dict)
    crop_size: Any = None
    scale_min: float = 0.5
    scale_max: float = 2.0
    jitter: float = 0.3
    hflip: bool = True
    # optimisation
    batch_size: int = 8
    epochs: int = 1
    lr: float = 4e-4
    min_lr: float = 1e-6
    backbone_lr_mult: float = 0.25
    weight_decay: float = 1e-4
    criterion: str = "ce"
    beta: float = 4.0
    gamma: float = 10.0
    iters_per_epoch: int | None = None
    # run
    num_workers: int = 0
    seed: int = 0
    out_dir: str = "runs/segblocks"
    log_every: int = 10
    device: str = "auto"
    amp: bool = False
    resume: bool = False
    eval_at_end: bool = True
    eval_batch_size: int = 1
    find_unused_parameters: bool = False
    tensorboard: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent values."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset {self.dataset!r} must be one of {', '.join(DATASETS)}")
        if self.criterion not in ("ce", "bootstrap"):
            raise ValueError(f"criterion {self.criterion!r} must be 'ce' or 'bootstrap'")
        if not 0.0 <= float(self.tau) <= 1.0:
            raise ValueError(f"tau {self.tau} must be in [0, 1]")
        for name in ("batch_size", "epochs", "block_size", "log_every", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.iters_per_epoch is not None and int(self.iters_per_epoch) < 1:
            raise ValueError(f"iters_per_epoch must be >= 1 or null, got {self.iters_per_epoch}")
        if not 0 < float(self.scale_min) <= float(self.scale_max):
            raise ValueError(
                f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}"
            )
        if not isinstance(self.amp, bool):
            raise ValueError(f"amp must be true or false, got {self.amp!r}")
        for name in ("model_kwargs", "policy_kwargs", "dataset_kwargs", "val_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        _check_keys(data)
        return cls(**data)


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_keys(data: dict) -> None:
    valid = _field_names()
    for key in data:
        if key not in valid:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key=value`` strings to a config mapping (a copy is returned).

    Values are parsed with ``yaml.safe_load``; ``a.b=v`` sets key ``b`` of the dict field
    ``a`` (nested dicts are created as needed). The top-level key must be a
    :class:`TrainConfig` field.
    """
    data = dict(data)
    valid = _field_names()
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(text) if text.strip() else None
        parts = key.split(".")
        if parts[0] not in valid:
            raise ValueError(f"unknown config key {parts[0]!r}; valid keys: {', '.join(valid)}")
        if len(parts) == 1:
            data[key] = value
            continue
        node = data.get(parts[0])
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {parts[0]!r} is not a mapping")
        node = dict(node)
        data[parts[0]] = node
        for p in parts[1:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


def load_config(path=None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (``None``: the defaults) and apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
        _check_keys(loaded)
        data = loaded
    data = apply_overrides(data, overrides)
    return TrainConfig.from_dict(data)
