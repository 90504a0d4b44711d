"""Training configuration: the :class:`TrainConfig` dataclass, YAML loading with overrides, and
validation (all in this module).

A config file is a YAML mapping whose keys are :class:`TrainConfig` fields, e.g.::

    model: swiftnet_rn18
    model_kwargs: {pretrained_backbone: true}
    policy: learned
    tau: 0.4
    block_size: 128
    dataset: cityscapes
    data_root: /data/cityscapes

The configs shipped with the package (``segblocks/configs/*.yaml``: ``procedural_tiny``,
``cityscapes_rn18``, ``camvid_rn18``, ``mapillary_effl1``) can be given by name
(``load_config("procedural_tiny")``); a path that exists is read first.

Command-line overrides are ``key=value`` strings; the value is parsed with
``yaml.safe_load`` (``epochs=2``, ``crop_size=[256,256]``, ``data_root=null``) and dotted keys
reach into dict fields (``model_kwargs.output_stride=16``).

Validation (:meth:`TrainConfig.validate`, run on construction) checks every key's type and
range, the keys of ``model_kwargs`` / ``policy_kwargs`` / ``dataset_kwargs`` / ``val_kwargs``,
the block size against the network's stride, the crop against the block size and ``data_root``
for the real datasets. Every problem raises :class:`~segblocks.errors.ConfigError` (a
``ValueError``) with a one-line message naming the key, the value and the fix. Values are never
silently changed: the only conversions are int -> float for float keys, numeric strings
(``1e-4``, which YAML 1.1 reads as a string) -> float, and integral floats (``2.0``) -> int.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, did_you_mean, short_repr

__all__ = [
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "packaged_configs",
    "packaged_config_path",
    "check_resume_config",
    "RUN_KEYS",
    "FIXED_ON_RESUME",
]

#: keys a resumed run may change freely (how the run is executed, not what it computes)
RUN_KEYS = (
    "resume",
    "overwrite",
    "allow_config_change",
    "out_dir",
    "num_workers",
    "log_every",
    "device",
    "eval_at_end",
    "eval_every",
    "eval_batch_size",
    "find_unused_parameters",
    "tensorboard",
    "channels_last",
)
#: keys a resumed run can never change (the stored weights would not fit)
FIXED_ON_RESUME = ("model", "num_classes", "model_kwargs", "policy", "policy_kwargs", "dataset")


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
        policy: ``dense`` (static baseline: the plain network, ``policy_kwargs.scale`` < 1 for
            a reduced resolution), ``all_hr`` (the network in blocks), ``all_lr``, ``random``,
            ``heuristic``, ``learned``.
        policy_kwargs: policy constructor arguments (``tau`` is filled in for ``random`` and
            ``heuristic`` unless given; ``block_size`` for ``learned``).
        init_from: warm start: a trainer checkpoint (``last.pt``) whose network weights
            initialise this run's network (the policy and optimizer start fresh); ``None``
            trains from the backbone's ImageNet weights.
        tau: target fraction of high-resolution blocks (hybrid loss); block_size: block side,
            a multiple of 2 x the network's output stride; pad_mode: how BlockPad fills the
            halo of a low-res block from high-res neighbours (``avg``, paper default;
            ``strided``; ``zero``: no neighbour information, paper Table 9).
    Data:
        dataset: one of ``procedural``, ``camvid``, ``cityscapes``, ``mapillary`` (the
            names of :func:`segblocks.data.list_datasets`).
        data_root: dataset folder (required by all but ``procedural``).
        dataset_kwargs: constructor arguments for both splits (``procedural``: ``num_images``,
            ``height``, ``width``, ``seed``; ``mapillary``: ``size``; all real datasets:
            ``skip_bad``); val_kwargs: overrides for the validation split (e.g.
            ``{num_images: 16}``).
        crop_size: training crop ``[h, w]`` or an int, multiples of ``block_size`` (``None``:
            no crop); scale_min / scale_max: random scale range (other than 1-1 needs a crop);
            jitter: brightness / contrast / saturation strength (0 disables); hflip: random
            horizontal flips.
    Optimisation:
        batch_size (per process), epochs (0 with ``init_from``: no training, the network is
            saved with this config's policy and evaluated, e.g. the heuristic policy on a
            trained static network), lr (> 0), min_lr (cosine end, <= lr),
        backbone_lr_mult (lr and weight decay factor of the backbone), weight_decay, criterion
        (``ce`` / ``bootstrap``), beta / gamma (hybrid loss weights), iters_per_epoch (cap,
        ``None`` = full epoch).
    Run:
        num_workers, seed, out_dir, log_every (iterations between CSV rows), device
        (``auto``, ``cpu``, ``cuda``, ``cuda:1``...), amp (mixed precision: bfloat16 autocast
        on the CPU; float16 autocast with a GradScaler on CUDA), channels_last (weights and
        batches in channels-last memory layout: the same maths, ~1.5x faster training of the
        static EfficientNet SwiftNet on a 2-core CPU; a run key, it may change on resume),
        resume (continue from ``out_dir/last.pt`` if it exists; the stored config must match,
        see :func:`check_resume_config`), overwrite (replace the run in a non-empty
        ``out_dir``), allow_config_change (keys a resumed run may change, e.g. ``[epochs]``),
        eval_at_end (mIoU on the validation split after training), eval_every (also validate
        after every ``eval_every``-th epoch, 0: never; ``log.csv`` and the checkpoint's
        history hold the results: the training curve), eval_batch_size,
        find_unused_parameters (DDP), tensorboard (write TensorBoard events if
        ``torch.utils.tensorboard`` imports).
    """

    # model
    model: str = "swiftnet_rn18"
    num_classes: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    decoder_bn_momentum: float | None = None
    spp_bn_momentum: float | None = None
    policy: str = "learned"
    policy_kwargs: dict = field(default_factory=dict)
    init_from: str | None = None
    tau: float = 0.4
    block_size: int = 128
    pad_mode: str = "avg"
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
    channels_last: bool = False
    resume: bool = False
    overwrite: bool = False
    allow_config_change: list = field(default_factory=list)
    eval_at_end: bool = True
    eval_every: int = 0
    eval_batch_size: int = 1
    find_unused_parameters: bool = False
    tensorboard: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every value; raise :class:`~segblocks.errors.ConfigError` (one line naming
        the key, the value and the fix) for the first problem. Numeric values are normalised
        in place (int -> float for float keys, ``"1e-4"`` -> 1e-4, ``2.0`` -> 2 for int keys);
        nothing else is changed."""
        _validate(self)

    def check_trainable(self) -> None:
        """The checks that only matter for training (``train`` runs them after
        :meth:`validate`): random scaling needs a crop, so that the images of a batch match;
        ``init_from`` must exist.
        The defaults (scale 0.5-2, no crop) do not pass: a training config sets a crop."""
        if (self.scale_min, self.scale_max) != (1.0, 1.0) and self.crop_size is None:
            raise ConfigError(
                f"config key 'crop_size': random scaling (scale_min {self.scale_min:g}, "
                f"scale_max {self.scale_max:g}) needs a crop so that the images of a batch "
                "match; set crop_size (e.g. crop_size=[512, 512]) or scale_min=1 scale_max=1"
            )
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise _bad(
                "init_from",
                self.init_from,
                "is not a file (train the run it names first)",
                "give the last.pt of a finished run, or init_from=null",
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(
                f"a config must be a mapping of key: value, got {type(data).__name__}"
            )
        _check_keys(data)
        return cls(**data)


# --------------------------------------------------------------------------------------------
# value checks
# --------------------------------------------------------------------------------------------

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_MAX_SEED = 2**62


def _bad(key: str, value, why: str, fix: str = "") -> ConfigError:
    msg = f"config key {key!r}: {short_repr(value)} {why}"
    return ConfigError(msg + (f"; {fix}" if fix else ""))


def _int(key, v, lo=None, hi=None, none_ok=False, example=None):
    if v is None and none_ok:
        return None
    ex = f"e.g. {key.split('.')[-1]}={example if example is not None else lo or 1}"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        null = " or null" if none_ok else ""
        raise _bad(key, v, f"must be an integer{null}", ex)
    if lo is not None and v < lo:
        raise _bad(key, v, f"must be >= {lo}", ex)
    if hi is not None and v > hi:
        raise _bad(key, v, f"must be <= {hi}", ex)
    return v


def _float(key, v, lo=None, hi=None, lo_open=False, hi_open=False, none_ok=False, example=None):
    if v is None and none_ok:
        return None
    name = key.split(".")[-1]
    ex = f"e.g. {name}={example}" if example is not None else ""
    if isinstance(v, bool):
        raise _bad(key, v, "must be a number", ex)
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            raise _bad(key, v, "is not a number", ex) from None
    elif isinstance(v, (int, float)):
        try:
            f = float(v)
        except OverflowError:
            raise _bad(key, v, "is too large", ex) from None
    else:
        raise _bad(key, v, "must be a number", ex)
    if not math.isfinite(f):
        raise _bad(key, v, "must be a finite number", ex)
    if lo is not None and (f <= lo if lo_open else f < lo):
        raise _bad(key, v, f"must be {'>' if lo_open else '>='} {lo:g}", ex)
    if hi is not None and (f >= hi if hi_open else f > hi):
        raise _bad(key, v, f"must be {'<' if hi_open else '<='} {hi:g}", ex)
    return f


def _bool(key, v):
    if not isinstance(v, bool):
        raise _bad(key, v, "must be true or false", f"e.g. {key.split('.')[-1]}=true")
    return v


def _choice(key, v, choices):
    if not isinstance(v, str) or v not in choices:
        raise _bad(
            key, v, f"must be one of {', '.join(map(str, choices))}{did_you_mean(v, choices)}"
        )
    return v


def _text(key, v, none_ok=False):
    if v is None and none_ok:
        return None
    if not isinstance(v, str) or not v.strip():
        null = " (or null)" if none_ok else ""
        raise _bad(key, v, f"must be a non-empty path string{null}", f'quote it: {key}="..."')
    return v


def _mapping(key, v):
    if not isinstance(v, dict):
        raise _bad(key, v, "must be a mapping", f"e.g. {key}={{}} or {key}.name=value")
    for k in v:
        if not isinstance(k, str):
            raise _bad(key, v, f"has a non-string key {short_repr(k)}")
    return v


def _keys(key, v: dict, valid, what: str) -> None:
    for k in v:
        if k not in valid:
            if not valid:
                raise ConfigError(
                    f"config key {key!r}: {what} takes no options, got {k!r}; set {key}={{}}"
                )
            raise ConfigError(
                f"config key {key!r}: unknown key {k!r} for {what}{did_you_mean(k, valid)}; "
                f"valid keys: {', '.join(sorted(valid))}"
            )


def _size2(key, v, lo=1, none_ok=False):
    """An int or ``[h, w]`` of ints >= lo."""
    if v is None and none_ok:
        return None
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise _bad(
                key, v, "must be an integer or a list [height, width]", f"e.g. {key}=[256, 256]"
            )
        return [_int(f"{key}", x, lo=lo, example=256) for x in v]
    return _int(key, v, lo=lo, example=256)


def _signature_keys(fn, exclude=()) -> tuple[str, ...] | None:
    """Named parameters of ``fn`` (``None`` if it takes ``**kwargs`` and names none)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    names = [
        n
        for n, p in params.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self" and n not in exclude
    ]
    return tuple(names)


# model_kwargs checks for the known SwiftNet arguments (others only need a valid name)
def _check_model_kwargs(cfg: TrainConfig) -> int:
    """Validate ``model_kwargs``; returns the network's output stride."""
    from ..models.registry import model_arguments, model_output_stride

    mk = cfg.model_kwargs = dict(_mapping("model_kwargs", cfg.model_kwargs))
    valid = model_arguments(cfg.model)
    if valid is not None:
        _keys("model_kwargs", mk, valid, f"model {cfg.model}")
    checks = {
        "num_classes": lambda k, v: _int(k, v, lo=1, example=19),
        "decoder_width": lambda k, v: _int(k, v, lo=1, none_ok=True, example=128),
        "spp_width": lambda k, v: _int(k, v, lo=3, none_ok=True, example=128),
        "output_stride": lambda k, v: _choice_int(k, v, (16, 32)),
        "dilate_last_stage": _bool,
        "spp_square_grid": _bool,
        "decoder_bn_momentum": lambda k, v: _float(k, v, 0, 1, lo_open=True, example=0.1),
        "spp_bn_momentum": lambda k, v: _float(k, v, 0, 1, lo_open=True, example=0.1),
    }
    for name, check in checks.items():
        if name in mk:
            mk[name] = check(f"model_kwargs.{name}", mk[name])
    if "pretrained_backbone" in mk:
        pb = mk["pretrained_backbone"]
        if not isinstance(pb, (bool, str)) or (isinstance(pb, str) and not pb.strip()):
            raise _bad(
                "model_kwargs.pretrained_backbone",
                pb,
                "must be true, false or a path to a state-dict file",
            )
    if "spp_grids" in mk:
        g = mk["spp_grids"]
        if not isinstance(g, (list, tuple)) or not g:
            raise _bad("model_kwargs.spp_grids", g, "must be a list of rows", "e.g. [8, 4, 2]")
        mk["spp_grids"] = [_int("model_kwargs.spp_grids", x, lo=1, example=8) for x in g]
    if mk.get("dilate_last_stage") and mk.get("output_stride", 32) != 16:
        raise _bad("model_kwargs.dilate_last_stage", True, "needs model_kwargs.output_stride=16")
    return model_output_stride(cfg.model, mk)


def _choice_int(key, v, choices):
    v = _int(key, v, example=choices[-1])
    if v not in choices:
        raise _bad(key, v, f"must be one of {', '.join(map(str, choices))}")
    return v


_POLICY_CHECKS = {
    "dense": {"scale": lambda k, v: _float(k, v, 0, 2, lo_open=True, example=0.75)},
    "learned": {
        "block_size": lambda k, v: _int(k, v, lo=1, example=128),
        "width": lambda k, v: _int(k, v, lo=1, hi=4096, example=64),
        "layers": lambda k, v: _int(k, v, lo=1, hi=12, example=4),
        "head": lambda k, v: _choice(k, v, ("conv", "1x1")),
        "init_tau": lambda k, v: _float(k, v, 0, 1, lo_open=True, hi_open=True, example=0.5),
        "resize_mode": lambda k, v: _choice(k, v, ("area", "bilinear", "nearest")),
        "bn_momentum": lambda k, v: _float(k, v, 0, 1, lo_open=True, example=0.02),
        "in_channels": lambda k, v: _int(k, v, lo=1, hi=4096, example=3),
    },
    "random": {
        "tau": lambda k, v: _float(k, v, 0, 1, example=0.4),
        "seed": lambda k, v: _int(k, v, lo=0, hi=_MAX_SEED, none_ok=True, example=0),
    },
    "heuristic": {
        "tau": lambda k, v: _float(k, v, 0, 1, none_ok=True, example=0.4),
        "threshold": lambda k, v: _float(k, v, none_ok=True, example=0.1),
    },
}


def _check_policy_kwargs(cfg: TrainConfig) -> None:
    """Keys and values of ``policy_kwargs``, then the policy's own check of them against the
    run (:meth:`~segblocks.policies.Policy.config_kwargs`: e.g. ``learned``'s block size)."""
    from ..policies import POLICIES, PolicyConfigError

    pk = cfg.policy_kwargs = dict(_mapping("policy_kwargs", cfg.policy_kwargs))
    cls = POLICIES[cfg.policy]
    valid = _signature_keys(cls.__init__) or ()
    _keys("policy_kwargs", pk, valid, f"policy {cfg.policy}")
    for name, check in _POLICY_CHECKS.get(cfg.policy, {}).items():
        if name in pk:
            pk[name] = check(f"policy_kwargs.{name}", pk[name])
    try:
        cls.config_kwargs(pk, tau=cfg.tau, block_size=cfg.block_size)
    except PolicyConfigError as e:
        key = "policy_kwargs" if e.key is None else f"policy_kwargs.{e.key}"
        raise _bad(key, e.value, e.why, e.fix) from None


def _dataset_keys(name: str) -> tuple[str, ...]:
    from ..data import get_dataset_class

    cls = get_dataset_class(name)
    return _signature_keys(cls.__init__, exclude=("root", "split", "transform")) or ()


def _check_dataset_kwargs(cfg: TrainConfig, key: str) -> None:
    kw = dict(_mapping(key, getattr(cfg, key)))
    setattr(cfg, key, kw)
    _keys(key, kw, _dataset_keys(cfg.dataset), f"dataset {cfg.dataset}")
    checks = {
        "num_images": lambda k, v: _int(k, v, lo=1, example=64),
        "height": lambda k, v: _int(k, v, lo=32, example=256),
        "width": lambda k, v: _int(k, v, lo=32, example=512),
        "seed": lambda k, v: _int(k, v, lo=0, hi=_MAX_SEED, example=0),
        "skip_bad": _bool,
        "size": lambda k, v: _size2(k, v, lo=1, none_ok=True),
    }
    for name, check in checks.items():
        if name in kw:
            kw[name] = check(f"{key}.{name}", kw[name])
    if isinstance(kw.get("size"), int):
        raise _bad(
            f"{key}.size", kw["size"], "must be [height, width] or null", "e.g. [1152, 1536]"
        )


def _round_up(v: int, m: int) -> int:
    return max(m, -(-v // m) * m)


def _validate(cfg: TrainConfig) -> None:
    """Check (and normalise) every key of ``cfg``, section by section; the first problem
    raises :class:`~segblocks.errors.ConfigError`."""
    _validate_model(cfg)
    _validate_data(cfg)
    _validate_optimisation(cfg)
    _validate_run(cfg)


def _validate_model(cfg: TrainConfig) -> None:
    from ..blocks.pad import PAD_MODES
    from ..models.registry import list_models
    from ..policies import POLICIES

    _choice("model", cfg.model, list_models())
    cfg.num_classes = _int("num_classes", cfg.num_classes, lo=1, none_ok=True, example=19)
    stride = _check_model_kwargs(cfg)
    for name in ("decoder_bn_momentum", "spp_bn_momentum"):
        setattr(
            cfg,
            name,
            _float(name, getattr(cfg, name), 0, 1, lo_open=True, none_ok=True, example=0.1),
        )
    cfg.tau = _float("tau", cfg.tau, 0, 1, example=0.4)
    cfg.block_size = _int("block_size", cfg.block_size, lo=1, example=128)
    if cfg.block_size % (2 * stride):
        raise _bad(
            "block_size",
            cfg.block_size,
            f"must be a multiple of {2 * stride} (2 x the network's output stride {stride}: "
            "low-res blocks must keep whole pixels in the last stage)",
            f"e.g. block_size={_round_up(cfg.block_size, 2 * stride)}",
        )
    _choice("pad_mode", cfg.pad_mode, PAD_MODES)
    _choice("policy", cfg.policy, sorted(POLICIES))
    _check_policy_kwargs(cfg)
    cfg.init_from = _text("init_from", cfg.init_from, none_ok=True)
    if cfg.epochs == 0 and cfg.init_from is None:
        raise _bad(
            "epochs",
            0,
            "trains nothing and needs init_from (the network to wrap with this policy)",
            "set init_from=runs/NAME/last.pt, or epochs >= 1",
        )


def _validate_data(cfg: TrainConfig) -> None:
    from ..data import dataset_needs_root, list_datasets

    _choice("dataset", cfg.dataset, list_datasets())
    cfg.data_root = _text("data_root", cfg.data_root, none_ok=True)
    if dataset_needs_root(cfg.dataset) and cfg.data_root is None:
        raise ConfigError(
            f"config key 'data_root': dataset {cfg.dataset} needs data_root (the dataset "
            f"folder); e.g. data_root=/data/{cfg.dataset}, or dataset=procedural for the "
            "built-in data"
        )
    _check_dataset_kwargs(cfg, "dataset_kwargs")
    _check_dataset_kwargs(cfg, "val_kwargs")
    cfg.crop_size = _size2("crop_size", cfg.crop_size, lo=1, none_ok=True)
    if cfg.crop_size is not None:
        sides = cfg.crop_size if isinstance(cfg.crop_size, list) else [cfg.crop_size]
        if any(s % cfg.block_size for s in sides):
            fix = [_round_up(s, cfg.block_size) for s in sides]
            raise _bad(
                "crop_size",
                cfg.crop_size,
                f"is not a multiple of block_size {cfg.block_size} (each crop would be padded "
                "to whole blocks)",
                f"use crop_size={fix if len(fix) == 2 else fix[0]}",
            )
    cfg.scale_min = _float("scale_min", cfg.scale_min, 0, 100, lo_open=True, example=0.5)
    cfg.scale_max = _float("scale_max", cfg.scale_max, 0, 100, lo_open=True, example=2.0)
    if cfg.scale_min > cfg.scale_max:
        raise _bad(
            "scale_min", cfg.scale_min, f"must be <= scale_max {cfg.scale_max:g}", "swap them"
        )
    cfg.jitter = _float("jitter", cfg.jitter, 0, 1, example=0.3)
    cfg.hflip = _bool("hflip", cfg.hflip)


def _validate_optimisation(cfg: TrainConfig) -> None:
    cfg.batch_size = _int("batch_size", cfg.batch_size, lo=1, example=8)
    cfg.epochs = _int("epochs", cfg.epochs, lo=0, example=10)
    cfg.lr = _float("lr", cfg.lr, 0, lo_open=True, example=4e-4)
    cfg.min_lr = _float("min_lr", cfg.min_lr, 0, example=1e-6)
    if cfg.min_lr > cfg.lr:
        raise _bad(
            "min_lr",
            cfg.min_lr,
            f"must be <= lr {cfg.lr:g} (the cosine schedule decays from lr to min_lr)",
            f"e.g. min_lr={cfg.lr / 100:g}",
        )
    cfg.backbone_lr_mult = _float("backbone_lr_mult", cfg.backbone_lr_mult, 0, example=0.25)
    cfg.weight_decay = _float("weight_decay", cfg.weight_decay, 0, example=1e-4)
    _choice("criterion", cfg.criterion, ("ce", "bootstrap"))
    cfg.beta = _float("beta", cfg.beta, 0, example=4.0)
    cfg.gamma = _float("gamma", cfg.gamma, 0, example=10.0)
    cfg.iters_per_epoch = _int(
        "iters_per_epoch", cfg.iters_per_epoch, lo=1, none_ok=True, example=100
    )


def _validate_run(cfg: TrainConfig) -> None:
    cfg.num_workers = _int("num_workers", cfg.num_workers, lo=0, hi=256, example=4)
    cfg.seed = _int("seed", cfg.seed, lo=0, hi=_MAX_SEED, example=0)
    cfg.out_dir = _text("out_dir", cfg.out_dir)
    cfg.log_every = _int("log_every", cfg.log_every, lo=1, example=10)
    if not isinstance(cfg.device, str) or not _DEVICE_RE.match(cfg.device):
        raise _bad(
            "device",
            cfg.device,
            "is not a device: use auto, cpu, cuda or cuda:N"
            + did_you_mean(cfg.device, ("auto", "cpu", "cuda")),
        )
    for name in ("amp", "channels_last", "resume", "overwrite", "eval_at_end"):
        _bool(name, getattr(cfg, name))
    _bool("find_unused_parameters", cfg.find_unused_parameters)
    _bool("tensorboard", cfg.tensorboard)
    if cfg.resume and cfg.overwrite:
        raise ConfigError(
            "config keys 'resume' and 'overwrite' are both true: resume continues the run in "
            "out_dir, overwrite replaces it; set one of them"
        )
    cfg.eval_batch_size = _int("eval_batch_size", cfg.eval_batch_size, lo=1, example=1)
    cfg.eval_every = _int("eval_every", cfg.eval_every, lo=0, example=5)
    acc = cfg.allow_config_change
    if not isinstance(acc, (list, tuple)):
        raise _bad("allow_config_change", acc, "must be a list of config keys", "e.g. [epochs]")
    cfg.allow_config_change = list(acc)
    names = _field_names()
    for k in acc:
        if not isinstance(k, str) or k not in names:
            raise _bad(
                "allow_config_change",
                acc,
                f"names {short_repr(k)}, which is not a config key{did_you_mean(k, names)}",
            )


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_keys(data: dict) -> None:
    valid = _field_names()
    for key in data:
        if key not in valid:
            raise ConfigError(
                f"unknown config key {short_repr(key)}{did_you_mean(key, valid)}; valid keys: "
                f"{', '.join(valid)}"
            )


# --------------------------------------------------------------------------------------------
# files and overrides
# --------------------------------------------------------------------------------------------


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or (str(e).splitlines() or ["invalid YAML"])[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {' '.join(str(problem).split())}"


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``key=value`` strings to a config mapping (a copy is returned).

    Values are parsed with ``yaml.safe_load``; ``a.b=v`` sets key ``b`` of the dict field
    ``a`` (nested dicts are created as needed). The top-level key must be a
    :class:`TrainConfig` field. Problems raise :class:`~segblocks.errors.ConfigError`.
    """
    data = dict(data)
    valid = _field_names()
    for item in overrides or []:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(
                f"override {short_repr(item)} is not key=value (e.g. epochs=10 or "
                "model_kwargs.decoder_width=64)"
            )
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {short_repr(item)}: {_yaml_problem(e)}; quote text values and close "
                "brackets, e.g. crop_size=[256,256]"
            ) from None
        parts = key.split(".")
        if parts[0] not in valid:
            raise ConfigError(
                f"unknown config key {parts[0]!r}{did_you_mean(parts[0], valid)}; valid keys: "
                f"{', '.join(valid)}"
            )
        if len(parts) == 1:
            data[key] = value
            continue
        if any(not p for p in parts):
            raise ConfigError(f"override {short_repr(item)}: empty part in the dotted key")
        node = data.get(parts[0])
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise ConfigError(
                f"override {short_repr(item)}: {parts[0]!r} is not a mapping but {short_repr(node)}"
            )
        node = dict(node)
        data[parts[0]] = node
        for p in parts[1:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``segblocks/configs`` (without ``.yaml``); those in a
    sub-folder are named ``folder/name`` (e.g. ``camvid/static_full``)."""
    root = importlib.resources.files("segblocks") / "configs"
    names = []
    for p in root.iterdir():
        if p.name.endswith(".yaml"):
            names.append(p.name[: -len(".yaml")])
        elif p.is_dir():
            names += [f"{p.name}/{q.name[:-5]}" for q in p.iterdir() if q.name.endswith(".yaml")]
    return sorted(names)


def packaged_config_path(name: str):
    """The shipped config ``name`` (``"procedural_tiny"`` or ``"procedural_tiny.yaml"``) as an
    ``importlib.resources`` traversable; :class:`~segblocks.errors.ConfigError` if unknown."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    names = packaged_configs()
    if stem not in names:
        raise ConfigError(
            f"no packaged config {name!r}{did_you_mean(stem, names)}; packaged configs: "
            f"{', '.join(names)}"
        )
    return importlib.resources.files("segblocks").joinpath("configs", *f"{stem}.yaml".split("/"))


def _read_config_text(path) -> tuple[str, str]:
    """``(text, shown name)`` of a config path or packaged config name."""
    if not isinstance(path, (str, Path)):  # an importlib.resources traversable
        return path.read_text(encoding="utf-8"), str(path)
    p = Path(path)
    if p.is_file():
        try:
            return p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p}: not UTF-8 text; give a YAML file") from None
        except OSError as e:
            raise ConfigError(f"config file {p}: cannot read it ({e.strerror or e})") from None
    if p.exists():
        raise ConfigError(f"config {p} is not a file; give a YAML file")
    name = str(path)
    if "\\" not in name:
        stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
        if stem in packaged_configs():
            return packaged_config_path(stem).read_text(encoding="utf-8"), f"{stem}.yaml"
    raise ConfigError(
        f"config file {name} not found; give a YAML file or a packaged config name "
        f"({', '.join(packaged_configs())})"
    )


def load_config(path=None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (a path, a packaged config name, or ``None`` for the defaults) and
    apply ``key=value`` overrides; validated (:class:`~segblocks.errors.ConfigError`)."""
    data: dict = {}
    if path is not None:
        text, shown = _read_config_text(path)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"config file {shown}: {_yaml_problem(e)}; fix the YAML syntax (one key: value "
                "per line)"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {shown}: must be a YAML mapping of key: value lines, got a "
                f"{type(loaded).__name__}"
            )
        try:
            _check_keys(loaded)
        except ConfigError as e:
            raise ConfigError(f"config file {shown}: {e}") from None
        data = loaded
    data = apply_overrides(data, overrides)
    return TrainConfig.from_dict(data)


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------


def _diff(key: str, old, new) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k, "<unset>") != new.get(k, "<unset>"):
                out.append((f"{key}.{k}", old.get(k, "<unset>"), new.get(k, "<unset>")))
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return [] if list(old) == list(new) else [(key, old, new)]
    return [] if old == new else [(key, old, new)]


def check_resume_config(stored: dict, cfg: TrainConfig, checkpoint) -> list[str]:
    """Compare the config stored in a checkpoint with the one of a resumed run.

    Every key except :data:`RUN_KEYS` must match, unless listed in ``cfg.allow_config_change``
    (never allowed: :data:`FIXED_ON_RESUME`, the weights would not fit). Raises
    :class:`~segblocks.errors.ConfigError` naming each differing key; returns the keys that
    changed with permission.
    """
    defaults = TrainConfig.__dataclass_fields__
    requested = cfg.to_dict()
    changed, refused, fixed = [], [], []
    for key, new in requested.items():
        if key in RUN_KEYS:
            continue
        if key in stored:
            old = stored[key]
        else:
            f = defaults[key]
            old = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        diffs = _diff(key, old, new)
        if not diffs:
            continue
        if key in FIXED_ON_RESUME:
            fixed += diffs
        elif key in cfg.allow_config_change:
            changed.append(key)
        else:
            refused += diffs

    def show(diffs):
        return ", ".join(f"{k} {short_repr(o, 30)} -> {short_repr(n, 30)}" for k, o, n in diffs)

    if fixed:
        raise ConfigError(
            f"resume=true: {checkpoint} was trained with another model or data ({show(fixed)}); "
            "these cannot change on resume (the weights would not fit): use the stored values, "
            "or a new out_dir"
        )
    if refused:
        keys = ", ".join(dict.fromkeys(k.split(".")[0] for k, _, _ in refused))
        raise ConfigError(
            f"resume=true: the config differs from the one {checkpoint} was trained with "
            f"({show(refused)}); use the stored values, a new out_dir, or accept the change "
            f"with allow_config_change=[{keys}]"
        )
    return changed
