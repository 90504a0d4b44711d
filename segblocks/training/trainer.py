"""Training loop: :func:`train` runs the SegBlocks recipe from a :class:`TrainConfig`.

Recipe (paper section 4): Adam, lr 4e-4 with a per-iteration cosine schedule to 1e-6, weight
decay 1e-4, backbone lr and weight decay x 0.25 (the policy network trains with the head),
random scale / crop / colour jitter / flip, the hybrid loss (task + REINFORCE policy term,
``segblocks.training.losses.HybridLoss``).

Mixed precision (``amp: true``): bfloat16 ``torch.autocast`` on the CPU; float16 autocast with
a ``GradScaler`` on CUDA. The loss is computed in float32 either way.

Reproducibility and resume: the data order of epoch ``e`` comes from a ``DistributedSampler``
seeded with ``seed`` (it shuffles with ``seed + e``; one replica without torch.distributed),
and every sample's augmentation runs under its own RNG seeded from ``(seed, e, index)``
(``segblocks.training.data``), so data does not depend on worker count or on what ran
before. The global RNGs (used by the
stochastic policies) are saved in the checkpoint of every epoch (per rank under DDP), with the
model, optimizer, scheduler and GradScaler states, so ``resume=True`` continues to exactly the
result of an uninterrupted run (bit-identical on CPU).

Outputs in ``out_dir`` (rank 0 only): ``last.pt`` (written atomically every epoch; a
``segblocks.models`` checkpoint of the SwiftNet plus ``policy_state_dict`` and the training
state; rebuild the SegBlocks model with :func:`load_segblocks`), ``log.csv``, ``config.yaml``,
``metrics.json`` and TensorBoard events if ``torch.utils.tensorboard`` is importable.

Safety: a non-empty ``out_dir`` is refused unless ``resume=true`` (continue the run) or
``overwrite=true`` (delete its ``last.pt``, ``log.csv``, ``config.yaml``, ``metrics.json`` and
``tb/``); ``out_dir/train.lock`` (``fcntl.flock``, held while training; it names the holder's
PID) stops a second trainer; temporary files of killed checkpoint writes are removed. With
``resume=true`` the config stored in ``last.pt`` must match (``check_resume_config``; e.g.
``allow_config_change=[epochs]`` extends a run: the cosine schedule then stretches to the new
length from the next step on). Ctrl-C raises :class:`~segblocks.errors.TrainingInterrupted`
saying which epoch ``last.pt`` holds.

DDP: under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) the process group is initialised
(gloo on CPU, nccl on CUDA) and the model wrapped in ``DistributedDataParallel``;
``batch_size`` is per process.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no out_dir lock
    fcntl = None

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from ..data import transforms as T
from ..errors import (
    CheckpointError,
    ConfigError,
    OutputDirError,
    SegBlocksError,
    TrainingInterrupted,
)
from ..evaluation.metrics import ConfusionMatrix
from ..models import create_model, load_checkpoint, save_checkpoint
from ..models.checkpoint import (
    load_state_dict_checked,
    model_from_checkpoint,
    remove_stale_temp_files,
)
from ..models.segblocks_model import SegBlocksModel
from .config import TrainConfig, check_resume_config
from .data import EpochSampler, build_datasets, dataset_num_classes, make_dataset
from .losses import HybridLoss

__all__ = [
    "train",
    "load_segblocks",
    "build_model",
    "build_optimizer",
    "cosine_factor",
    "CSV_FIELDS",
]

CSV_FIELDS = ("epoch", "iter", "loss", "task_loss", "policy_loss", "hr_fraction", "lr")
CHECKPOINT_NAME = "last.pt"
LOCK_NAME = "train.lock"
#: what ``overwrite=true`` deletes from ``out_dir`` (other files are left alone)
RUN_OUTPUTS = (CHECKPOINT_NAME, "log.csv", "config.yaml", "metrics.json", "tb")


# --------------------------------------------------------------------------------------------
# model / optimisation
# --------------------------------------------------------------------------------------------


def _policy_kwargs(cfg: TrainConfig) -> dict:
    pk = dict(cfg.policy_kwargs)
    if cfg.policy in ("random", "heuristic") and "tau" not in pk and "threshold" not in pk:
        pk["tau"] = cfg.tau
    return pk


def build_model(cfg: TrainConfig, num_classes: int) -> SegBlocksModel:
    """SwiftNet (``create_model``) inside a :class:`SegBlocksModel` with the configured policy."""
    mk = dict(cfg.model_kwargs)
    mk.setdefault("num_classes", int(cfg.num_classes or num_classes))
    if cfg.decoder_bn_momentum is not None:
        mk["decoder_bn_momentum"] = float(cfg.decoder_bn_momentum)
    if cfg.spp_bn_momentum is not None:
        mk["spp_bn_momentum"] = float(cfg.spp_bn_momentum)
    try:
        net = create_model(cfg.model, **mk)
        return SegBlocksModel(
            net, cfg.policy, cfg.block_size, pad_mode=cfg.pad_mode, **_policy_kwargs(cfg)
        )
    except (ValueError, TypeError) as e:
        if isinstance(e, SegBlocksError):
            raise
        first = " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())
        raise ConfigError(
            f"cannot build model {cfg.model} with policy {cfg.policy} from this config "
            f"({first}); check model_kwargs and policy_kwargs"
        ) from None


def build_optimizer(cfg: TrainConfig, model: SegBlocksModel) -> torch.optim.Adam:
    """Adam with two groups: ``backbone`` (lr and wd x backbone_lr_mult) and ``head`` (the
    SPP, decoder, head and policy network)."""
    bb_fn = getattr(model.net, "backbone_parameters", None)
    bb_ids = {id(p) for p in bb_fn()} if bb_fn is not None else set()
    seen, backbone, head = set(), [], []
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (backbone if id(p) in bb_ids else head).append(p)
    m = float(cfg.backbone_lr_mult)
    groups = [
        {
            "params": backbone,
            "lr": cfg.lr * m,
            "weight_decay": cfg.weight_decay * m,
            "name": "backbone",
        },
        {"params": head, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "head"},
    ]
    return torch.optim.Adam([g for g in groups if g["params"]])


def cosine_factor(step: int, total: int, min_ratio: float) -> float:
    """lr factor at ``step`` of ``total``: cosine from 1 to ``min_ratio``."""
    t = min(max(step, 0), total) / max(total, 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def load_segblocks(path, map_location="cpu") -> SegBlocksModel:
    """Rebuild the trained :class:`SegBlocksModel` (eval mode) from a trainer checkpoint.

    The model also gets ``dataset`` (the training dataset's name, ``None`` if unknown) and
    ``class_names`` (list, or ``None``) attributes. Unreadable or unfitting files raise
    :class:`~segblocks.errors.CheckpointError`.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    net = model_from_checkpoint(ckpt, path, map_location=map_location)
    sb = ckpt.get("segblocks") or {}
    try:
        model = SegBlocksModel(
            net,
            sb.get("policy", "all_hr"),
            sb.get("block_size", 128),
            pad_mode=sb.get("pad_mode", "avg"),
            **(sb.get("policy_kwargs") or {}),
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: cannot rebuild its SegBlocks model ({e})"
        ) from None
    if ckpt.get("policy_state_dict"):
        load_state_dict_checked(model.policy, ckpt["policy_state_dict"], path, "policy weights")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    model.dataset = sb.get("dataset") or config.get("dataset")
    classes = sb.get("classes")
    model.class_names = list(classes) if classes else None
    if map_location is not None and not callable(map_location):
        model.to(map_location)
    return model.eval()


# --------------------------------------------------------------------------------------------
# RNG / distributed helpers
# --------------------------------------------------------------------------------------------


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _setup_distributed(cfg: TrainConfig):
    """``(rank, world_size, device, initialised_here)``."""
    if cfg.device.startswith("cuda"):
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ConfigError(
                f"config key 'device': {cfg.device!r} but this machine has {count or 'no'} CUDA "
                "device(s); use device=auto or device=cpu"
            )
    initialised_here = False
    if dist.is_available() and not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and "RANK" in os.environ:
            want_cuda = cfg.device.startswith("cuda") or (
                cfg.device == "auto" and torch.cuda.is_available()
            )
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
            initialised_here = True
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', rank % torch.cuda.device_count()))}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device, initialised_here


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------


class _Logger:
    def __init__(self, out_dir: Path, enabled: bool, keep_epochs: int, tensorboard: bool):
        self.enabled = enabled
        self.path = out_dir / "log.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if keep_epochs > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_epochs]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # tensorboard not installed: CSV only
                self.writer = None

    def row(self, values: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(values)
        if self.writer is not None:
            step = int(values["iter"])
            for k in CSV_FIELDS[2:]:
                self.writer.add_scalar(f"train/{k}", float(values[k]), step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _autocast(device: torch.device, amp: bool):
    """Autocast for ``amp``: float16 on CUDA, bfloat16 elsewhere (CPU); a no-op without amp."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp)


def _evaluate(model, val, num_classes, cfg, device, rank, world) -> dict:
    model.eval()
    shard = Subset(val, list(range(rank, len(val), world)))
    loader = DataLoader(shard, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)
    cm = ConfusionMatrix(num_classes, device=device)
    hr = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for image, label in loader:
            image, label = image.to(device), label.to(device)
            with _autocast(device, cfg.amp):
                out = model(image)
            cm.update(out.logits.float(), label)
            hr += torch.stack([out.hr_fraction.double().sum(), hr.new_tensor(len(image))])
    cm.sync()
    if world > 1:
        dist.all_reduce(hr)
    res = cm.compute()
    return {
        "miou": res["miou"],
        "pixel_accuracy": res["pixel_accuracy"],
        "iou": res["iou"],
        "hr_fraction": (hr[0] / hr[1].clamp_min(1)).item(),
    }


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def train(config: TrainConfig | dict) -> dict:
    """Train (or resume) as configured; returns final metrics and output paths.

    Returns:
        ``{"epochs", "global_step", "train": {loss, task_loss, policy_loss, hr_fraction} of
        the last epoch, "val": {miou, pixel_accuracy, iou, hr_fraction} or None,
        "checkpoint", "log_csv", "out_dir", "resumed_from_epoch"}``.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg.validate()
    cfg.check_trainable()
    rank, world, device, initialised_here = _setup_distributed(cfg)
    progress = _Progress(Path(cfg.out_dir) / CHECKPOINT_NAME, cfg.epochs)
    lock = None
    try:
        lock = _claim_out_dir(cfg, rank, world)
        return _train(cfg, rank, world, device, progress)
    except KeyboardInterrupt:
        raise progress.interrupted() from None
    finally:
        _release_lock(lock)
        if initialised_here:
            dist.destroy_process_group()


class _Progress:
    """How far a run got (for the Ctrl-C message)."""

    def __init__(self, checkpoint: Path, epochs: int):
        self.checkpoint, self.epochs = checkpoint, epochs
        self.epoch: int | None = None  # running epoch, 1-based
        self.saved = 0  # epoch held by the checkpoint

    def interrupted(self) -> TrainingInterrupted:
        where = (
            f"in epoch {self.epoch} of {self.epochs}"
            if self.epoch is not None
            else "before the first epoch"
        )
        held = (
            f"{self.checkpoint} holds epoch {self.saved}"
            if self.saved
            else f"no checkpoint written yet in {self.checkpoint.parent}"
        )
        return TrainingInterrupted(
            f"training interrupted {where}; {held}: continue with resume=true",
            epoch=self.epoch,
            saved_epoch=self.saved,
            checkpoint=self.checkpoint,
            epochs=self.epochs,
        )


def _lock_out_dir(out_dir: Path):
    """Take ``out_dir/train.lock`` (``fcntl.flock``) or raise naming the process holding it."""
    if fcntl is None:
        return None
    f = open(out_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held until _release_lock
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = " ".join(f.read().split()) or "process unknown"
        f.close()
        raise OutputDirError(
            f"out_dir {out_dir} is in use by another segblocks train ({holder}); wait for it "
            "to finish or stop it, or choose another out_dir"
        ) from None
    f.seek(0)
    f.truncate()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
    f.flush()
    return f


def _release_lock(f) -> None:
    if f is None:
        return
    try:
        f.seek(0)
        f.truncate()
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass
    finally:
        f.close()


def _prepare_out_dir(cfg: TrainConfig, out_dir: Path):
    """Create and lock ``out_dir``; refuse a non-empty one without resume / overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"out_dir {out_dir} is a file, not a folder; choose another out_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(
            f"cannot create out_dir {out_dir}: {e.strerror or e}; choose another out_dir"
        ) from None
    lock = _lock_out_dir(out_dir)
    try:
        remove_stale_temp_files(out_dir / CHECKPOINT_NAME)
        others = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME)
        if others and not (cfg.resume or cfg.overwrite):
            shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            raise OutputDirError(
                f"out_dir {out_dir} is not empty ({shown}): continue that run with resume=true, "
                "replace it with overwrite=true, or choose another out_dir"
            )
    except BaseException:
        _release_lock(lock)
        raise
    return lock


def _claim_out_dir(cfg: TrainConfig, rank: int, world: int):
    """:func:`_prepare_out_dir` on rank 0; its error (if any) is raised on every rank."""
    lock, err = None, None
    if rank == 0:
        try:
            lock = _prepare_out_dir(cfg, Path(cfg.out_dir))
        except SegBlocksError as e:
            err = e
    if world > 1:
        box = [None if err is None else str(err)]
        dist.broadcast_object_list(box, src=0)
        if err is None and box[0] is not None:
            err = OutputDirError(box[0])
    if err is not None:
        _release_lock(lock)
        raise err
    return lock


def _clear_run(out_dir: Path) -> None:
    """``overwrite=true``: delete the previous run's outputs (:data:`RUN_OUTPUTS`)."""
    for name in RUN_OUTPUTS:
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


_RESUME_HINT = "delete it to start over, or set resume=false overwrite=true"


def _read_resume_checkpoint(cfg: TrainConfig, ckpt_path: Path) -> dict:
    """The checkpoint to resume from, checked against the requested config."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu", hint=_RESUME_HINT)
    need = ("policy_state_dict", "optimizer", "scheduler", "epoch", "global_step")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"cannot resume from {ckpt_path}: it has no training state ({', '.join(missing)} "
            f"missing: a model-only checkpoint?); {_RESUME_HINT}"
        )
    stored = ckpt.get("config")
    if isinstance(stored, dict):
        check_resume_config(stored, cfg, ckpt_path)
    done = int(ckpt["epoch"])
    if done > cfg.epochs:
        raise ConfigError(
            f"resume=true: {ckpt_path} is at epoch {done}, beyond epochs={cfg.epochs}; set "
            f"epochs >= {done} (with allow_config_change=[epochs]) or use a new out_dir"
        )
    return ckpt


def _train(
    cfg: TrainConfig, rank: int, world: int, device: torch.device, progress: _Progress
) -> dict:
    is_main = rank == 0
    use_scaler = cfg.amp and device.type == "cuda"  # bfloat16 (CPU) needs no loss scaling
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    ckpt = None
    if cfg.resume and ckpt_path.exists():
        ckpt = _read_resume_checkpoint(cfg, ckpt_path)
        progress.saved = int(ckpt["epoch"])

    # Same initial weights on every rank (DDP broadcasts rank 0's anyway).
    _seed_all(cfg.seed)
    train_base = make_dataset(cfg, "train", cfg.dataset_kwargs)
    num_classes = int(cfg.num_classes or dataset_num_classes(train_base))
    ignore_index = int(getattr(train_base, "ignore_index", 255))
    model = build_model(cfg, num_classes).to(device)
    mean = getattr(model.net, "input_mean", T.IMAGENET_MEAN)
    std = getattr(model.net, "input_std", T.IMAGENET_STD)
    train_ds, val_ds = build_datasets(cfg, mean, std)

    base_sampler = DistributedSampler(
        train_ds.base, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    sampler = EpochSampler(base_sampler)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    iters = len(loader)
    if cfg.iters_per_epoch is not None:
        iters = min(iters, int(cfg.iters_per_epoch))
    if iters < 1:
        raise ConfigError(
            f"config key 'batch_size': {cfg.batch_size} is more than the {len(train_ds)} "
            f"training image(s) over {world} process(es) give (no full batch); lower "
            "batch_size or use more images"
        )
    total_steps = iters * cfg.epochs

    optimizer = build_optimizer(cfg, model)
    min_ratio = float(cfg.min_lr) / float(cfg.lr) if cfg.lr else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, total_steps, min_ratio)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    criterion = HybridLoss(
        cfg.tau,
        gamma=cfg.gamma,
        beta=cfg.beta,
        criterion=cfg.criterion,
        ignore_index=ignore_index,
        block_size=cfg.block_size,
    )

    start_epoch, global_step, history = 0, 0, []
    if ckpt is None and cfg.init_from:
        init = load_checkpoint(cfg.init_from, map_location=device)
        load_state_dict_checked(model.net, init["state_dict"], cfg.init_from, "network weights")
    if ckpt is not None:
        load_state_dict_checked(model.net, ckpt["state_dict"], ckpt_path, "network weights")
        load_state_dict_checked(
            model.policy, ckpt["policy_state_dict"], ckpt_path, "policy weights"
        )
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            first = " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())
            raise CheckpointError(
                f"cannot resume from {ckpt_path}: its optimizer state does not fit this run "
                f"({first[:120]}); {_RESUME_HINT}"
            ) from None
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        history = list(ckpt.get("history") or [])
        states = ckpt.get("rng_states") or []
        if len(states) == world:
            _set_rng_state(states[rank])
        else:  # different world size: data order stays exact, policy sampling reseeded
            _seed_all(cfg.seed + 1000 * start_epoch + rank)
    else:
        _seed_all(cfg.seed + rank)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )

    if is_main and cfg.overwrite:
        _clear_run(out_dir)
    logger = _Logger(out_dir, is_main, start_epoch if cfg.resume else 0, cfg.tensorboard)
    if is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    show_bar = is_main and sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None

    def _save(done: int, states: list) -> None:
        save_checkpoint(
            model.net,
            ckpt_path,
            policy_state_dict=model.policy.state_dict(),
            segblocks={
                "policy": cfg.policy,
                "policy_kwargs": _policy_kwargs(cfg),
                "block_size": cfg.block_size,
                "pad_mode": cfg.pad_mode,
                "dataset": cfg.dataset,
                "classes": [str(c) for c in getattr(train_base, "classes", ()) or ()],
            },
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if use_scaler else {},
            epoch=done,
            global_step=global_step,
            rng_states=states,
            sampler_epoch=done,
            history=history,
            config=cfg.to_dict(),
        )
        progress.saved = done

    epoch_means: dict = history[-1]["train"] if history else {}
    for epoch in range(start_epoch, cfg.epochs):
        progress.epoch = epoch + 1
        sampler.set_epoch(epoch)
        train_model.train()
        bar = None
        if tqdm is not None:
            bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show_bar)
        sums, window, n_window = defaultdict(float), defaultdict(float), 0
        for it, (image, label) in enumerate(itertools.islice(loader, iters)):
            image = image.to(device, non_blocking=True)
            label = label.to(device, non_blocking=True)
            with _autocast(device, cfg.amp):
                out = train_model(image)
            res = criterion(out.logits.float(), label, out)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(res.loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1

            vals = {
                "loss": res.loss.item(),
                "task_loss": res.task_loss.item(),
                "policy_loss": res.policy_loss.item(),
                "hr_fraction": res.hr_fraction.mean().item(),
            }
            for k, v in vals.items():
                sums[k] += v
                window[k] += v
            n_window += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{vals['loss']:.3f}", hr=f"{vals['hr_fraction']:.2f}")
            if n_window and (global_step % cfg.log_every == 0 or it == iters - 1):
                row = {k: window[k] / n_window for k in vals}
                lr = optimizer.param_groups[-1]["lr"]
                logger.row({"epoch": epoch + 1, "iter": global_step, **row, "lr": lr})
                window, n_window = defaultdict(float), 0
        if bar is not None:
            bar.close()
        epoch_means = {k: v / iters for k, v in sums.items()}
        history.append({"epoch": epoch + 1, "train": epoch_means})
        logger.scalars("epoch", epoch_means, epoch + 1)

        # RNG states at the end of the epoch, of every rank (for an exact resume).
        states = [_rng_state()]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, _rng_state())
        if is_main:
            _save(epoch + 1, states)
        if world > 1:
            dist.barrier()

    if cfg.epochs == 0 and is_main:  # init_from wrapped with this config's policy, untrained
        _save(0, [_rng_state()])

    val_metrics = None
    if val_ds is not None and len(val_ds) > 0:
        val_metrics = _evaluate(model, val_ds, num_classes, cfg, device, rank, world)
        logger.scalars("val", val_metrics, global_step)
    logger.close()

    result = {
        "epochs": cfg.epochs,
        "global_step": global_step,
        "train": epoch_means,
        "val": val_metrics,
        "checkpoint": str(ckpt_path),
        "log_csv": str(out_dir / "log.csv"),
        "out_dir": str(out_dir),
        "resumed_from_epoch": start_epoch if cfg.resume else None,
    }
    if is_main:
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
