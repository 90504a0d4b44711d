"""The training loop: :func:`train` runs the SegBlocks recipe from a :class:`TrainConfig`
through a :class:`Trainer` (build, resume, step) and its hooks (:mod:`.hooks`: validate,
checkpoint, ``log.csv``, TensorBoard).

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
state; rebuild the SegBlocks model with ``SegBlocksModel.from_checkpoint``), ``log.csv``,
``config.yaml``, ``metrics.json`` and TensorBoard events if ``torch.utils.tensorboard`` is
importable. ``eval_every: k`` validates after every k-th epoch as well (the training curve, in
``log.csv`` and the checkpoint's ``history``).

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

import itertools
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..data import transforms as T
from ..errors import CheckpointError, ConfigError, SegBlocksError
from ..evaluation.loop import autocast
from ..models import create_model, load_checkpoint
from ..models.checkpoint import load_state_dict_checked
from ..models.segblocks_model import SegBlocksModel
from ..policies import policy_kwargs_from_config
from .config import TrainConfig, check_resume_config
from .data import EpochSampler, build_datasets, dataset_num_classes, make_dataset
from .distributed import setup_distributed
from .hooks import CheckpointHook, CSVLogHook, EvalHook, HookBase, TensorBoardHook
from .losses import HybridLoss
from .rng import seed_all, set_rng_state
from .run_dir import CHECKPOINT_NAME, RunProgress, claim_out_dir, clear_run, release_lock

__all__ = ["train", "Trainer", "build_model", "build_optimizer", "cosine_factor"]

#: the per-step values a training step reports (and ``log.csv`` averages over a window)
STEP_VALUES = ("loss", "task_loss", "policy_loss", "hr_fraction")


# --------------------------------------------------------------------------------------------
# model / optimisation
# --------------------------------------------------------------------------------------------


def _policy_kwargs(cfg: TrainConfig) -> dict:
    """The policy's constructor arguments in this run (the policy fills in ``tau``; the
    model fills in the block size)."""
    return policy_kwargs_from_config(cfg.policy, cfg.policy_kwargs, tau=cfg.tau)


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


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------


_RESUME_HINT = "delete it to start over, or set resume=false overwrite=true"


def read_resume_checkpoint(cfg: TrainConfig, ckpt_path: Path) -> dict:
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


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """One training run: :meth:`__init__` builds it (data, model, optimiser, schedule, loss),
    :meth:`resume` loads a checkpoint or the warm start, :meth:`step` is one optimisation
    step, :meth:`fit` runs the epochs and calls the :attr:`hooks`.

    Args:
        cfg: the run's (validated) config.
        rank, world, device: this process in the run (see :func:`.distributed.setup_distributed`).
        progress: where the epoch reached is noted (for the Ctrl-C message).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        progress: RunProgress | None = None,
    ):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, torch.device(device)
        self.is_main = rank == 0
        self.out_dir = Path(cfg.out_dir)
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        self.progress = progress or RunProgress(self.checkpoint_path, cfg.epochs)
        self.use_scaler = cfg.amp and self.device.type == "cuda"  # bfloat16 needs no scaling

        seed_all(cfg.seed)  # the same initial weights on every rank
        self.train_base = make_dataset(cfg, "train", cfg.dataset_kwargs)
        self.num_classes = int(cfg.num_classes or dataset_num_classes(self.train_base))
        self.ignore_index = int(getattr(self.train_base, "ignore_index", 255))
        self.model = build_model(cfg, self.num_classes).to(self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        mean = getattr(self.model.net, "input_mean", T.IMAGENET_MEAN)
        std = getattr(self.model.net, "input_std", T.IMAGENET_STD)
        self.train_ds, self.val_ds = build_datasets(cfg, mean, std)
        self._build_loader()
        self.optimizer = build_optimizer(cfg, self.model)
        total = self.iters * cfg.epochs
        min_ratio = float(cfg.min_lr) / float(cfg.lr) if cfg.lr else 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_factor(step, total, min_ratio)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_scaler)
        self.criterion = HybridLoss(
            cfg.tau,
            gamma=cfg.gamma,
            beta=cfg.beta,
            criterion=cfg.criterion,
            ignore_index=self.ignore_index,
            block_size=cfg.block_size,
        )
        self.train_model = self.model
        self.start_epoch = self.epoch = self.global_step = 0
        self.history: list[dict] = []
        self.val_metrics: dict | None = None
        self.hooks: list[HookBase] = []

    def _build_loader(self) -> None:
        cfg = self.cfg
        base = DistributedSampler(
            self.train_ds.base,
            num_replicas=self.world,
            rank=self.rank,
            shuffle=True,
            seed=cfg.seed,
        )
        self.sampler = EpochSampler(base)
        self.loader = DataLoader(
            self.train_ds,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.iters = len(self.loader)
        if cfg.iters_per_epoch is not None:
            self.iters = min(self.iters, int(cfg.iters_per_epoch))
        if self.iters < 1:
            raise ConfigError(
                f"config key 'batch_size': {cfg.batch_size} is more than the "
                f"{len(self.train_ds)} training image(s) over {self.world} process(es) give "
                "(no full batch); lower batch_size or use more images"
            )

    # ---------------------------------------------------------------------------- resume
    def resume(self, ckpt: dict | None) -> None:
        """Continue from ``ckpt`` (a trainer checkpoint: weights, optimiser, schedule, RNGs),
        or without one start from ``init_from``'s network weights (or the backbone's)."""
        cfg = self.cfg
        if ckpt is None:
            if cfg.init_from:
                init = load_checkpoint(cfg.init_from, map_location=self.device)
                load_state_dict_checked(
                    self.model.net, init["state_dict"], cfg.init_from, "network weights"
                )
            seed_all(cfg.seed + self.rank)
            return
        path = self.checkpoint_path
        load_state_dict_checked(self.model.net, ckpt["state_dict"], path, "network weights")
        load_state_dict_checked(
            self.model.policy, ckpt["policy_state_dict"], path, "policy weights"
        )
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            first = " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())
            raise CheckpointError(
                f"cannot resume from {path}: its optimizer state does not fit this run "
                f"({first[:120]}); {_RESUME_HINT}"
            ) from None
        self.start_epoch = self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.history = list(ckpt.get("history") or [])
        states = ckpt.get("rng_states") or []
        if len(states) == self.world:
            set_rng_state(states[self.rank])
        else:  # another world size: the data order stays exact, policy sampling is reseeded
            seed_all(cfg.seed + 1000 * self.start_epoch + self.rank)

    def state(self, rng_states: list) -> dict:
        """What ``last.pt`` holds besides the network weights (for :meth:`resume` and
        :meth:`SegBlocksModel.from_checkpoint`)."""
        cfg = self.cfg
        return dict(
            policy_state_dict=self.model.policy.state_dict(),
            segblocks={
                "policy": cfg.policy,
                "policy_kwargs": _policy_kwargs(cfg),
                "block_size": cfg.block_size,
                "pad_mode": cfg.pad_mode,
                "dataset": cfg.dataset,
                "classes": [str(c) for c in getattr(self.train_base, "classes", ()) or ()],
            },
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.use_scaler else {},
            epoch=self.epoch,
            global_step=self.global_step,
            rng_states=rng_states,
            sampler_epoch=self.epoch,
            history=self.history,
            config=cfg.to_dict(),
        )

    # ---------------------------------------------------------------------------- steps
    def step(self, image, label) -> dict:
        """One optimisation step on a batch; returns :data:`STEP_VALUES` as floats."""
        image = image.to(self.device, non_blocking=True, memory_format=self.memory_format)
        label = label.to(self.device, non_blocking=True)
        with autocast(self.device, self.cfg.amp):
            out = self.train_model(image)
        res = self.criterion(out.logits.float(), label, out)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(res.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        return {
            "loss": res.loss.item(),
            "task_loss": res.task_loss.item(),
            "policy_loss": res.policy_loss.item(),
            "hr_fraction": res.hr_fraction.mean().item(),
        }

    def train_epoch(self, epoch: int) -> dict:
        """Epoch ``epoch`` (0-based): the steps, a logged row every ``log_every`` steps (and
        at the end); returns the epoch's mean :data:`STEP_VALUES`."""
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        self.train_model.train()
        bar = _bar(self.iters, f"epoch {epoch + 1}/{cfg.epochs}", self.is_main)
        sums, window, n_window = defaultdict(float), defaultdict(float), 0
        for it, (image, label) in enumerate(itertools.islice(self.loader, self.iters)):
            vals = self.step(image, label)
            for k, v in vals.items():
                sums[k] += v
                window[k] += v
            n_window += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{vals['loss']:.3f}", hr=f"{vals['hr_fraction']:.2f}")
            if self.global_step % cfg.log_every == 0 or it == self.iters - 1:
                row = {k: window[k] / n_window for k in STEP_VALUES}
                row = {"epoch": epoch + 1, "iter": self.global_step, **row}
                row["lr"] = self.optimizer.param_groups[-1]["lr"]
                for h in self.hooks:
                    h.log_row(self, row)
                window, n_window = defaultdict(float), 0
        if bar is not None:
            bar.close()
        return {k: v / self.iters for k, v in sums.items()}

    def fit(self) -> dict:
        """Run the remaining epochs with the hooks; returns :meth:`result`."""
        for h in self.hooks:
            h.before_train(self)
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.find_unused_parameters,
            )
        for epoch in range(self.start_epoch, self.cfg.epochs):
            self.progress.epoch = epoch + 1
            means = self.train_epoch(epoch)
            self.epoch = epoch + 1
            self.history.append({"epoch": self.epoch, "train": means})
            for h in self.hooks:
                h.after_epoch(self)
        for h in self.hooks:
            h.after_train(self)
        return self.result()

    def result(self) -> dict:
        last = self.history[-1]["train"] if self.history else {}
        return {
            "epochs": self.cfg.epochs,
            "global_step": self.global_step,
            "train": last,
            "val": self.val_metrics,
            "checkpoint": str(self.checkpoint_path),
            "log_csv": str(self.out_dir / "log.csv"),
            "out_dir": str(self.out_dir),
            "resumed_from_epoch": self.start_epoch if self.cfg.resume else None,
        }


def _bar(total: int, desc: str, is_main: bool):
    """A tqdm bar on rank 0 when stderr is a terminal (``None`` without tqdm)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, disable=not (is_main and sys.stderr.isatty()))


def default_hooks(cfg: TrainConfig, is_main: bool, keep_epochs: int) -> list[HookBase]:
    """Validation, checkpoint, ``log.csv`` and (when configured) TensorBoard, in that order;
    rank 0 writes the logs."""
    out_dir = Path(cfg.out_dir)
    hooks: list[HookBase] = [EvalHook(cfg.eval_every, cfg.eval_at_end), CheckpointHook()]
    if is_main:
        hooks.append(CSVLogHook(out_dir / "log.csv", keep_epochs))
        if cfg.tensorboard:
            hooks.append(TensorBoardHook(out_dir / "tb"))
    return hooks


# --------------------------------------------------------------------------------------------
# entry point
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
    rank, world, device, initialised_here = setup_distributed(cfg)
    out_dir = Path(cfg.out_dir)
    progress = RunProgress(out_dir / CHECKPOINT_NAME, cfg.epochs)
    lock = None
    try:
        lock = claim_out_dir(cfg, rank, world)
        ckpt = None
        if cfg.resume and (out_dir / CHECKPOINT_NAME).exists():
            ckpt = read_resume_checkpoint(cfg, out_dir / CHECKPOINT_NAME)
            progress.saved = int(ckpt["epoch"])
        trainer = Trainer(cfg, rank, world, device, progress)
        trainer.resume(ckpt)
        if rank == 0:
            if cfg.overwrite:
                clear_run(out_dir)
            (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        keep = trainer.start_epoch if cfg.resume else 0
        trainer.hooks = default_hooks(cfg, rank == 0, keep)
        result = trainer.fit()
        if rank == 0:
            (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        return result
    except KeyboardInterrupt:
        raise progress.interrupted() from None
    finally:
        release_lock(lock)
        if initialised_here:
            dist.destroy_process_group()
