"""Every process-wide cache of the block engine, bounded, and one :func:`clear_caches`.

The engine keeps three kinds of derived data between calls, all of them pure speed (a miss
recomputes the same value):

- small geometry tables (halo segment templates, pooling weights): a few KB each;
- GEMM layouts of conv weights for the im2col path, keyed on what the weight *is* (storage
  pointer, dtype, device, shape, version counter) so that ``module.to(dtype)`` or an in-place
  update never reuses a stale layout;
- padded activation buffers (:class:`BufferPool`): large, so never process-wide. A pool belongs
  to a :class:`~segblocks.blocks.tensor.MarginProfile`, which the caller creates and owns
  (``BlockSample`` modules hold one each); the functional API without a profile allocates fresh
  buffers and keeps nothing.

Index plans of a mask live on its :class:`~segblocks.blocks.grid.BlockGrid` and die with it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from .tracing import exporting

__all__ = ["BoundedCache", "BufferPool", "clear_caches", "register_cache", "caches"]

_CACHES: dict[str, BoundedCache] = {}


class BoundedCache:
    """A least-recently-used mapping with at most ``max_entries`` entries."""

    def __init__(self, max_entries: int = 256):
        if max_entries < 1:
            raise ValueError(f"max_entries {max_entries} must be >= 1")
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, default=None):
        v = self._data.get(key, default)
        if v is not default:
            self._data.move_to_end(key)
        return v

    def put(self, key: Hashable, value) -> Any:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        return value

    def get_or_build(self, key: Hashable, build: Callable[[], Any]):
        if exporting():
            # traced values are fake tensors and symbols: never kept, never served
            return build()
        v = self.get(key)
        return v if v is not None else self.put(key, build())

    def pop(self, key: Hashable, default=None):
        return self._data.pop(key, default)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data


def register_cache(name: str, max_entries: int = 256) -> BoundedCache:
    """The process-wide cache called ``name`` (created on first use); cleared by clear_caches."""
    c = _CACHES.get(name)
    if c is None:
        c = _CACHES[name] = BoundedCache(max_entries)
    return c


def caches() -> dict[str, int]:
    """``{name: entries}`` of every process-wide cache (for inspection and tests)."""
    return {k: len(v) for k, v in _CACHES.items()}


def clear_caches() -> None:
    """Empty every process-wide cache of the block engine (profiles' pools are the owners')."""
    for c in _CACHES.values():
        c.clear()


def _storage_users(t: Tensor) -> int:
    """References to ``t``'s storage (tensors and views), or a large number if unknown."""
    try:
        # One reference is the temporary storage object made by this call.
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) - 1
    except Exception:  # private API; without it the pool just never reuses
        return 1 << 30


class BufferPool:
    """Reuses padded-buffer memory across forward passes (CPU, no autograd).

    Why: glibc returns every freed allocation above 32 MB to the OS, so a fresh buffer is
    page-faulted and zeroed by the kernel on first touch, which costs about as much as the
    element-wise op that fills it. Dense networks avoid this with in-place activations; block
    execution writes activations into new padded buffers, so it keeps its own. A buffer is
    handed out again only when no tensor or view references its storage any more (checked
    with the storage use count), so a caller holding an earlier output never sees it change.
    At most ``max_buffers`` buffers are kept.
    """

    def __init__(self, max_buffers: int = 48):
        self.max_buffers = max_buffers
        self.buffers: list[Tensor] = []
        # two threads running one model must not both take a buffer they each saw free
        self._lock = threading.Lock()

    # A copied or pickled pool starts empty (its buffers are scratch memory; a lock cannot be
    # copied): copy.deepcopy(model) and torch.save(model) keep working.
    def __getstate__(self) -> dict:
        return {"max_buffers": self.max_buffers}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_buffers"])

    def get(self, rows: int, channels: int, dtype, device) -> Tensor:
        """A ``[rows, channels]`` buffer no one else references (contents undefined)."""
        with self._lock:
            return self._get(rows, channels, dtype, device)

    def _get(self, rows: int, channels: int, dtype, device) -> Tensor:
        need = rows * channels
        best = None
        # A buffer made under torch.inference_mode is an inference tensor, which may not be
        # written outside it (and vice versa the other way round is allowed, but keeps the
        # pools apart): a model used under inference_mode, then under no_grad, must not be
        # handed the first mode's buffers.
        inference = torch.is_inference_mode_enabled()
        for b in self.buffers:
            if (
                b.dtype == dtype
                and b.device == device
                and b.numel() >= need
                and b.is_inference() == inference
            ):
                if (best is None or b.numel() < best.numel()) and _storage_users(b) <= 1:
                    best = b
        if best is None:
            # Slack so that the next mask, with a few more HR blocks, still fits.
            best = torch.empty(need + need // 4 + channels, dtype=dtype, device=device)
            self.buffers.append(best)
            if len(self.buffers) > self.max_buffers:
                free = [b for b in self.buffers if _storage_users(b) <= 1 and b is not best]
                if free:
                    self.buffers.remove(min(free, key=Tensor.numel))
        return best[:need].view(rows, channels)

    def clear(self) -> None:
        with self._lock:
            self.buffers.clear()
