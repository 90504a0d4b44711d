"""BlockSample: a dense map split into blocks; high-res blocks kept, low-res ones 2x2-pooled."""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels
from .grid import BlockGrid
from .pad import PAD_MODES
from .stats import timed
from .tensor import BlockTensor, MarginProfile, Store, Trace

__all__ = ["block_sample", "split_dense", "check_dense", "FLOAT_DTYPES"]

FLOAT_DTYPES = kernels.FLOAT_DTYPES


def check_dense(x: Tensor, what: str = "input") -> None:
    """Raise a one-line error unless ``x`` is a floating ``[N, C, H, W]`` tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected [N, C, H, W]")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{what} has dtype {x.dtype}; block execution needs a floating dtype "
            f"({', '.join(str(d) for d in FLOAT_DTYPES)}); convert with x.float()"
        )


def _as_grid(grid, block_size) -> BlockGrid:
    if isinstance(grid, BlockGrid):
        if block_size is not None and int(block_size) != grid.block_size:
            raise ValueError(
                f"block_size {block_size} differs from the BlockGrid's {grid.block_size}"
            )
        return grid
    if block_size is None:
        raise ValueError("block_size is required when the grid is given as a mask tensor")
    return BlockGrid(grid, block_size)


def split_dense(
    x: Tensor, grid: BlockGrid, side: int, *, pad_mode: str = "avg", trace: Trace | None = None
) -> BlockTensor:
    """Split dense ``x [N, C, GH*side, GW*side]`` on ``grid`` at a scale with HR side ``side``.

    HR cells keep their ``[C, side, side]`` block, LR cells its 2x2 average pool. When the
    trace's profile knows the halo the next op will ask for, the blocks are written into the
    interior of a store with room for it.
    """
    N, C, H, W = x.shape
    if N != grid.N:
        raise ValueError(
            f"batch size {N} does not match the grid's {grid.N} images; pass one mask per image"
        )
    if (H, W) != (grid.GH * side, grid.GW * side):
        gh, gw = BlockGrid.grid_shape(H, W, side)
        raise ValueError(
            f"input of {H}x{W} with block size {side} has a {gh}x{gw} grid, but the mask grid is "
            f"{grid.GH}x{grid.GW}; build the mask with shape [N, {gh}, {gw}]"
        )
    if x.device != grid.device:
        raise ValueError(f"input is on {x.device} but the mask is on {grid.device}; move one")
    op_id = trace.next() if trace is not None else None
    pads = (trace.margins_for(op_id) if trace is not None else None) or (0, 0, 0, 0)
    flat = kernels.sample_blocks(x, grid.hr_cells, grid.lr_cells, [grid.GH, grid.GW, side, *pads])
    store = Store.wrap(flat, grid, side, pads)
    return BlockTensor(
        store.interiors(),
        grid,
        side,
        pad_mode=pad_mode,
        trace=trace,
        op_id=op_id,
        store=store if any(pads) else None,
    )


def block_sample(
    x: Tensor,
    grid,
    block_size: int | None = None,
    *,
    pad_mode: str = "avg",
    profile: MarginProfile | None = None,
) -> BlockTensor:
    """BlockSample: split ``x`` into blocks; HR blocks kept, LR blocks 2x2 average-pooled.

    Args:
        x: dense ``[N, C, H, W]`` float tensor; ``H`` and ``W`` multiples of the block size.
        grid: ``[N, GH, GW]`` bool mask (``True`` = high-res) or a :class:`BlockGrid`.
        block_size: block side in pixels (required when ``grid`` is a mask).
        pad_mode: how every later BlockPad fills LR halos from HR neighbours: ``"avg"``
            (paper Fig. 6b), ``"strided"`` (Fig. 6a) or ``"zero"`` (no BlockPad, Table 9).
        profile: where learned halo widths and reusable padded buffers are kept (speed only).
            Without one, nothing is kept between calls; pass the same profile (or use one
            ``BlockSample`` module) for every run of a network to write activations in place.

    Returns:
        a :class:`BlockTensor` with ``hr [Nh, C, bs, bs]`` and ``lr [Nl, C, bs/2, bs/2]``.

    Example:
        >>> mask = torch.rand(1, 2, 4) > 0.5
        >>> xb = block_sample(torch.randn(1, 3, 64, 128), mask, block_size=32)
        >>> y = block_combine(xb)  # [1, 3, 64, 128]; LR blocks come back nearest-upsampled
    """
    check_dense(x)
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode {pad_mode!r} is not one of {PAD_MODES}")
    if isinstance(grid, Tensor) and grid.device != x.device and grid.dtype == torch.bool:
        grid = grid.to(x.device)
    grid = _as_grid(grid, block_size)
    H, W = x.shape[-2:]
    BlockGrid.grid_shape(H, W, grid.block_size)
    trace = Trace(profile) if profile is not None else None
    with timed("sample", x.device):
        return split_dense(x, grid, grid.block_size, pad_mode=pad_mode, trace=trace)
