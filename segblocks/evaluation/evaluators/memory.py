"""Peak memory of an evaluation: CUDA ``max_memory_allocated``; on the CPU the process' peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``), best effort."""

from __future__ import annotations

import torch

from .base import Batch, DatasetEvaluator

__all__ = ["MemoryEvaluator", "peak_rss_reset", "peak_rss_mb"]


def peak_rss_reset() -> bool:
    """Reset the process' peak RSS (Linux ``/proc/self/clear_refs``); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident set size (``VmHWM``) of the process in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class MemoryEvaluator(DatasetEvaluator):
    """Peak memory from :meth:`reset` (before the first batch) to :meth:`evaluate`.

    Result: ``peak_memory_mb`` (MiB, ``None`` when unavailable) and ``memory_kind``
    (``"cuda_max_allocated"``, ``"cpu_vmhwm"`` or ``None``).
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.kind = None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "cpu_vmhwm" if peak_rss_reset() else None

    def process(self, batch: Batch) -> None:
        pass

    def evaluate(self) -> dict:
        peak = None
        if self.kind == "cuda_max_allocated":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "cpu_vmhwm":
            peak = peak_rss_mb()
        return {"peak_memory_mb": peak, "memory_kind": self.kind if peak is not None else None}
