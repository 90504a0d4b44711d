"""What a :class:`~segblocks.training.trainer.Trainer` does besides optimising, one hook each:
validate (:class:`EvalHook`), save ``last.pt`` (:class:`CheckpointHook`), write ``log.csv``
(:class:`CSVLogHook`) and TensorBoard events (:class:`TensorBoardHook`).

A hook gets the trainer at four points: :meth:`HookBase.before_train`, :meth:`HookBase.log_row`
(every ``log_every`` steps: the mean losses of the window), :meth:`HookBase.after_epoch` (the
epoch's means are ``trainer.history[-1]``) and :meth:`HookBase.after_train`. The trainer runs
them in list order, so that :class:`EvalHook` comes first and the others see its results.
(The ``trainer`` argument is not annotated: the trainer imports its hooks, not the reverse.)
"""

from __future__ import annotations

import csv

import torch.distributed as dist

from ..evaluation.evaluators import HRShareEvaluator, SegmentationEvaluator
from ..evaluation.loop import inference_on_dataset
from ..models.checkpoint import save_checkpoint
from .rng import rng_state

__all__ = [
    "HookBase",
    "EvalHook",
    "CheckpointHook",
    "CSVLogHook",
    "TensorBoardHook",
    "CSV_FIELDS",
    "VAL_FIELDS",
]

#: ``log.csv`` columns: training rows fill the first seven, validation rows ``epoch``, ``iter``
#: and the ``val_*`` columns
VAL_FIELDS = ("val_miou", "val_pixel_accuracy", "val_hr_fraction")
CSV_FIELDS = (
    "epoch",
    "iter",
    "loss",
    "task_loss",
    "policy_loss",
    "hr_fraction",
    "lr",
    *VAL_FIELDS,
)


class HookBase:
    """No-op hook; override the points you need."""

    def before_train(self, trainer) -> None:
        pass

    def log_row(self, trainer, row: dict) -> None:
        pass

    def after_epoch(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass


class EvalHook(HookBase):
    """Validation: mIoU, pixel accuracy, per-class IoU and the HR share on the validation
    split, through the evaluation loop of ``segblocks eval`` (batched, sharded over ranks).

    After every ``every``-th epoch (0: never) the result goes to ``trainer.history[-1]["val"]``;
    at the end (``at_end``) to ``trainer.val_metrics`` (the last epoch's, if just measured).
    """

    def __init__(self, every: int, at_end: bool):
        self.every, self.at_end = int(every), bool(at_end)

    @staticmethod
    def validate(trainer) -> dict:
        K = trainer.num_classes
        evaluators = [SegmentationEvaluator(K, trainer.ignore_index), HRShareEvaluator(K)]
        r = inference_on_dataset(
            trainer.model,
            trainer.val_ds,
            evaluators,
            device=trainer.device,
            batch_size=trainer.cfg.eval_batch_size,
            num_workers=trainer.cfg.num_workers,
            amp=trainer.cfg.amp,
        )
        return {k: r[k] for k in ("miou", "pixel_accuracy", "iou", "hr_fraction")}

    def after_epoch(self, trainer) -> None:
        if trainer.val_ds is not None and self.every and trainer.epoch % self.every == 0:
            trainer.history[-1]["val"] = self.validate(trainer)

    def after_train(self, trainer) -> None:
        if trainer.val_ds is None or not self.at_end or len(trainer.val_ds) == 0:
            return
        last = trainer.history[-1] if trainer.history else {}
        if last.get("epoch") == trainer.cfg.epochs and "val" in last:
            trainer.val_metrics = last["val"]
        else:
            trainer.val_metrics = self.validate(trainer)


class CheckpointHook(HookBase):
    """``last.pt`` after every epoch (rank 0, atomic), with the RNG states of every rank for
    an exact resume; with ``epochs: 0`` the initialised model once at the end."""

    def _save(self, trainer, states: list) -> None:
        save_checkpoint(trainer.model.net, trainer.checkpoint_path, **trainer.state(states))
        trainer.progress.saved = trainer.epoch

    def after_epoch(self, trainer) -> None:
        states = [rng_state()]
        if trainer.world > 1:
            states = [None] * trainer.world
            dist.all_gather_object(states, rng_state())
        if trainer.is_main:
            self._save(trainer, states)
        if trainer.world > 1:
            dist.barrier()

    def after_train(self, trainer) -> None:
        if trainer.cfg.epochs == 0 and trainer.is_main:
            self._save(trainer, [rng_state()])


class CSVLogHook(HookBase):
    """``log.csv`` (rank 0): a training row every ``log_every`` steps, a validation row after
    each validation. On resume the rows of the epochs the checkpoint holds are kept."""

    def __init__(self, path, keep_epochs: int):
        self.path, self.keep_epochs = path, int(keep_epochs)

    def before_train(self, trainer) -> None:
        rows = []
        if self.keep_epochs > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= self.keep_epochs]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def _write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)

    def _val_row(self, trainer, epoch: int, val: dict) -> None:
        self._write(
            {
                "epoch": epoch,
                "iter": trainer.global_step,
                **{f"val_{k}": val[k] for k in ("miou", "pixel_accuracy", "hr_fraction")},
            }
        )

    def log_row(self, trainer, row: dict) -> None:
        self._write(row)

    def after_epoch(self, trainer) -> None:
        if "val" in trainer.history[-1]:
            self._val_row(trainer, trainer.epoch, trainer.history[-1]["val"])

    def after_train(self, trainer) -> None:
        last = trainer.history[-1] if trainer.history else {}
        if trainer.val_metrics is not None and trainer.val_metrics is not last.get("val"):
            self._val_row(trainer, trainer.cfg.epochs, trainer.val_metrics)


class TensorBoardHook(HookBase):
    """TensorBoard events in ``out_dir/tb`` (rank 0; nothing when TensorBoard is not
    installed): ``train/*`` per logged row, ``epoch/*`` per epoch, ``val/*`` per validation."""

    def __init__(self, log_dir):
        self.log_dir, self.writer = log_dir, None

    def before_train(self, trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir))
        except Exception:  # tensorboard not installed: CSV only
            self.writer = None

    def _scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "iter"):
                    self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

    def log_row(self, trainer, row: dict) -> None:
        self._scalars("train", row, int(row["iter"]))

    def after_epoch(self, trainer) -> None:
        self._scalars("epoch", trainer.history[-1]["train"], trainer.epoch)
        if "val" in trainer.history[-1]:
            self._scalars("val", trainer.history[-1]["val"], trainer.global_step)

    def after_train(self, trainer) -> None:
        last = trainer.history[-1] if trainer.history else {}
        if trainer.val_metrics is not None and trainer.val_metrics is not last.get("val"):
            self._scalars("val", trainer.val_metrics, trainer.global_step)
        if self.writer is not None:
            self.writer.close()
