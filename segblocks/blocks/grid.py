"""Block grids: the per-image HR/LR decisions of a batch and the tables derived from them.

A :class:`BlockGrid` holds the decision mask of a batch (``[N, GH, GW]`` bool, ``True`` = the
block is processed at high resolution), the numbering of HR and LR blocks, each block's 8
neighbours, and a per-grid cache in which the other modules keep what they derive from the
mask (BlockPad's index plans in ``segblocks.blocks.pad``, the im2col gathers of the conv
layers). Everything cached on a grid is built once and reused by every layer of the forward
pass, and dies with the grid.

Coordinates used throughout: a block tensor at a scale whose high-res (HR) block side is ``s``
stores HR blocks as ``[Nh, C, s, s]`` and low-res (LR) blocks as ``[Nl, C, s/2, s/2]``; HR blocks
are numbered in row-major order of their cell ``(n, gy, gx)``, LR blocks likewise. Resolution
*levels* index these parts: level 0 is HR, level 1 is LR (side ``s >> level``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from .cache import register_cache
from .tracing import exporting

__all__ = ["BlockGrid", "NEIGHBOUR_DIRECTIONS", "LEVELS"]

#: Resolution levels of a block tensor's parts: 0 = high-res, 1 = low-res (2x downsampled).
LEVELS = (0, 1)

#: The 8 neighbour directions (dy, dx) in a fixed order, shared by every table indexed by
#: direction (the neighbour tables here and BlockPad's segment templates).
NEIGHBOUR_DIRECTIONS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

_DIRS = register_cache("grid.directions", 16)


def _dirs_tensor(device) -> Tensor:
    """``[2, 8]`` (dy, dx) of the 8 neighbour directions."""
    return _DIRS.get_or_build(
        str(device), lambda: torch.tensor(NEIGHBOUR_DIRECTIONS, device=device).t().contiguous()
    )


def _symbolic_cells(flat: Tensor) -> tuple[Tensor, Tensor]:
    """``(hr_cells [Nh], lr_cells [Nl])`` under ``torch.export``: one data-dependent size
    ``Nh`` (an unbacked symbol) and ``Nl = cells - Nh``, so that shapes built from both levels
    stay comparable (two ``nonzero`` calls would give two unrelated symbols)."""
    total = flat.numel()
    num_hr = flat.sum().item()
    torch._check(num_hr >= 0)
    torch._check(num_hr <= total)
    # a stable sort puts the HR cells first, each level in row-major order as nonzero would
    order = torch.argsort((~flat).to(torch.uint8), stable=True)
    return order.narrow(0, 0, num_hr), order.narrow(0, num_hr, total - num_hr)


class BlockGrid:
    """The per-image block decisions of a batch and the tables derived from them.

    Args:
        mask: ``[N, GH, GW]`` bool tensor, ``True`` where a block is processed at high
            resolution. Any ``N >= 1`` and any grid are accepted, including all-HR and all-LR.
        block_size: side of a block in pixels at the input resolution (e.g. 128). Must be even.

    The grid is immutable; derived tables are cached on it (:meth:`cached`).
    """

    def __init__(self, mask: Tensor, block_size: int):
        if not isinstance(mask, Tensor):
            raise ValueError(
                f"mask must be a bool tensor [N, GH, GW], got {type(mask).__name__}; "
                "build one with torch.as_tensor(mask, dtype=torch.bool)"
            )
        if mask.dtype != torch.bool:
            if mask.is_floating_point() and torch.isnan(mask).any():
                raise ValueError(
                    "mask contains NaN; a block mask must be bool (True = high-res). "
                    "Threshold probabilities first, e.g. mask = probs > 0.5"
                )
            raise ValueError(
                f"mask has dtype {mask.dtype}; it must be torch.bool (True = high-res). "
                "Convert with mask.bool() for 0/1 values or threshold probabilities (probs > 0.5)"
            )
        if mask.dim() != 3:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}; expected [N, GH, GW] (one grid per image)"
            )
        if min(mask.shape) < 1:
            raise ValueError(f"mask shape {tuple(mask.shape)} has an empty dimension")
        block_size = int(block_size)
        if block_size < 2 or block_size % 2:
            raise ValueError(
                f"block size {block_size} must be an even integer >= 2 (low-res blocks are "
                "half its side)"
            )
        self.mask = mask
        self.block_size = block_size
        self.N, self.GH, self.GW = (int(v) for v in mask.shape)
        flat = mask.reshape(-1)
        self.mask_flat = flat
        if exporting():
            self.hr_cells, self.lr_cells = _symbolic_cells(flat)
            self.num_hr, self.num_lr = self.hr_cells.shape[0], self.lr_cells.shape[0]
        else:
            self.hr_cells = torch.nonzero(flat).squeeze(1)
            self.lr_cells = torch.nonzero(~flat).squeeze(1)
            self.num_hr = int(self.hr_cells.numel())
            self.num_lr = int(self.lr_cells.numel())
        slot = torch.empty(flat.numel(), dtype=torch.long, device=mask.device)
        slot[self.hr_cells] = torch.arange(self.num_hr, device=mask.device)
        slot[self.lr_cells] = torch.arange(self.num_lr, device=mask.device)
        #: ``[N*GH*GW]``: index of each cell among the blocks of its own resolution.
        self.slot = slot
        self._cache: dict = {}

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return self.mask.device

    @property
    def hr_fraction(self) -> float:
        return self.num_hr / self.mask_flat.numel()

    def count(self, level: int) -> int:
        """Number of blocks at resolution ``level`` (0 = HR, 1 = LR)."""
        return (self.num_hr, self.num_lr)[level]

    def __repr__(self) -> str:
        return (
            f"BlockGrid(N={self.N}, grid={self.GH}x{self.GW}, block_size={self.block_size}, "
            f"hr={self.num_hr}/{self.mask_flat.numel()})"
        )

    def cached(self, key: Hashable, build: Callable[[], object]):
        """A table derived from this grid: built by ``build()`` once, then reused."""
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = build()
        return hit

    def cells(self, hr: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(n, gy, gx)`` of the HR (``hr=True``) or LR blocks, each ``[Nh]`` / ``[Nl]``."""

        def build():
            c = self.hr_cells if hr else self.lr_cells
            per = self.GH * self.GW
            return c // per, (c % per) // self.GW, c % self.GW

        return self.cached(("cells", hr), build)

    def neighbours(self, requester_hr: bool):
        """Per block and direction ``[B, 8]`` (see :data:`NEIGHBOUR_DIRECTIONS`).

        Returns ``(inside, all_inside, is_hr, slot)``: the neighbour cell lies in the image;
        whether that holds for every entry; the neighbour is HR (and inside); its slot among
        the blocks of its resolution (clamped cell when outside).
        """

        def build():
            n, gy, gx = self.cells(requester_hr)
            dirs = _dirs_tensor(self.device)
            ny, nx = gy[:, None] + dirs[0], gx[:, None] + dirs[1]
            inside = (ny >= 0) & (ny < self.GH) & (nx >= 0) & (nx < self.GW)
            cell = (n[:, None] * self.GH + ny.clamp(0, self.GH - 1)) * self.GW + nx.clamp(
                0, self.GW - 1
            )
            return inside, bool(inside.all()), self.mask_flat[cell] & inside, self.slot[cell]

        return self.cached(("nb", requester_hr), build)

    def check_side(self, side: int, what: str = "this layer") -> None:
        """Raise unless blocks of side ``side`` (HR) and ``side/2`` (LR) are whole pixels."""
        if side < 2 or side % 2:
            raise ValueError(
                f"{what} would work on high-res blocks of {side} px (low-res {side / 2:g} px); "
                f"block size {self.block_size} is too small for the network's downsampling. "
                "Use a block size of at least 2 x the network's total stride (e.g. 128 for "
                "stride 32 with margin)"
            )

    def same_decisions(self, other: BlockGrid) -> bool:
        return other is self or (
            self.mask.shape == other.mask.shape
            and self.block_size == other.block_size
            and bool(torch.equal(self.mask, other.mask))
        )

    @staticmethod
    def grid_shape(height: int, width: int, block_size: int) -> tuple[int, int]:
        """``(GH, GW)`` for an image; raises with the size to pad to when not divisible."""
        bad = [(n, v) for n, v in (("height", height), ("width", width)) if v % block_size]
        if bad:
            name, v = bad[0]
            up = math.ceil(v / block_size) * block_size
            raise ValueError(
                f"{name} {v} is not a multiple of block size {block_size}; pad the input to "
                f"{up} (e.g. F.pad) or pick a block size that divides {v}"
            )
        return height // block_size, width // block_size
