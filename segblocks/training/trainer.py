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
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from ..data import transforms as T
from ..evaluation.metrics import ConfusionMatrix
from ..models import create_model, load_checkpoint, load_model, save_checkpoint
from ..models.segblocks_model import SegBlocksModel
from .config import TrainConfig
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
    net = create_model(cfg.model, **mk)
    return SegBlocksModel(net, cfg.policy, cfg.block_size, **_policy_kwargs(cfg))


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
    """Rebuild the trained :class:`SegBlocksModel` (eval mode) from a trainer checkpoint."""
    ckpt = load_checkpoint(path, map_location=map_location)
    net = load_model(path, map_location=map_location)
    sb = ckpt.get("segblocks") or {}
    model = SegBlocksModel(
        net,
        sb.get("policy", "all_hr"),
        sb.get("block_size", 128),
        **(sb.get("policy_kwargs") or {}),
    )
    if ckpt.get("policy_state_dict"):
        model.policy.load_state_dict(ckpt["policy_state_dict"])
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
    rank, world, device, initialised_here = _setup_distributed(cfg)
    try:
        return _train(cfg, rank, world, device)
    finally:
        if initialised_here:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> dict:
    is_main = rank == 0
    use_scaler = cfg.amp and device.type == "cuda"  # bfloat16 (CPU) needs no loss scaling
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

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
        raise ValueError(
            f"no full batch: {len(train_ds)} training images over {world} process(es) with "
            f"batch_size {cfg.batch_size}"
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
    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        model.net.load_state_dict(ckpt["state_dict"])
        model.policy.load_state_dict(ckpt["policy_state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
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

    logger = _Logger(out_dir, is_main, start_epoch if cfg.resume else 0, cfg.tensorboard)
    if is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    show_bar = is_main and sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None

    epoch_means: dict = history[-1]["train"] if history else {}
    for epoch in range(start_epoch, cfg.epochs):
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
            save_checkpoint(
                model.net,
                ckpt_path,
                policy_state_dict=model.policy.state_dict(),
                segblocks={
                    "policy": cfg.policy,
                    "policy_kwargs": _policy_kwargs(cfg),
                    "block_size": cfg.block_size,
                },
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if use_scaler else {},
                epoch=epoch + 1,
                global_step=global_step,
                rng_states=states,
                sampler_epoch=epoch + 1,
                history=history,
                config=cfg.to_dict(),
            )
        if world > 1:
            dist.barrier()

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
