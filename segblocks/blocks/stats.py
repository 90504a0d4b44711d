"""Opt-in accounting of block execution: time per block module and conv MACs per resolution.

Usage::

    with BlockStats() as st:
        y = model(block_sample(x, mask, 128))
        dense = block_combine(y[-1])
    st.times["pad"], st.macs["hr"], st.macs["lr"]

Times are wall-clock seconds spent inside BlockSample (``sample``), BlockPad (``pad``: halo
fills and copies into padded buffers) and BlockCombine (``combine``); on CUDA the device is
synchronised around each timed region, which itself costs time, so use it for profiles, not
for end-to-end latency. MACs count conv2d multiply-accumulates over the *output* pixels of HR
and LR blocks (``out_pixels * C_out * C_in / groups * kh * kw``), i.e. exactly what a dense
conv over the same pixels costs; an all-HR grid gives the dense network's conv MACs.
When no ``BlockStats`` is active the hooks cost one global lookup.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from .macs import macs_per_output_element

__all__ = ["BlockStats", "active"]

_ACTIVE: list[BlockStats] = []


def active() -> BlockStats | None:
    return _ACTIVE[-1] if _ACTIVE else None


class BlockStats:
    """Context manager collecting ``times[category]`` (s) and ``macs['hr'|'lr']``."""

    def __init__(self):
        self.times: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.macs: dict[str, int] = defaultdict(int)
        self._depth = 0

    def __enter__(self) -> BlockStats:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    @property
    def total_macs(self) -> int:
        return self.macs["hr"] + self.macs["lr"]

    def block_ops_time(self) -> float:
        return self.times["sample"] + self.times["pad"] + self.times["combine"]


class timed:
    """Time a region under the active :class:`BlockStats` (nested regions count once)."""

    __slots__ = ("cat", "st", "t0", "dev")

    def __init__(self, cat: str, device=None):
        self.cat = cat
        self.st = active()
        self.dev = device

    def __enter__(self):
        st = self.st
        if st is not None:
            st._depth += 1
            if st._depth == 1:
                if self.dev is not None and self.dev.type == "cuda":
                    torch.cuda.synchronize(self.dev)
                self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        st = self.st
        if st is not None:
            if st._depth == 1:
                if self.dev is not None and self.dev.type == "cuda":
                    torch.cuda.synchronize(self.dev)
                st.times[self.cat] += time.perf_counter() - self.t0
                st.calls[self.cat] += 1
            st._depth -= 1


def count_conv(weight: torch.Tensor, groups: int, outputs) -> None:
    """Add the MACs of a conv whose per-level outputs are ``outputs`` (level 0 = HR; or the
    output block tensor, whose parts are only looked at while counting)."""
    st = active()
    if st is None:
        return
    outputs = getattr(outputs, "parts", outputs)
    per_px = weight.shape[0] * macs_per_output_element(weight)  # C_out * C_in/groups * kh * kw
    for key, out in zip(("hr", "lr"), outputs, strict=True):
        st.macs[key] += out.shape[0] * out.shape[2] * out.shape[3] * per_px
