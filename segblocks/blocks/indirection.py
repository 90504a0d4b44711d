"""BlockPad without copies: indirection tables for ops that read padded blocks.

A padded op reads, for every output pixel, a window of the padded block (:mod:`.pad`). Instead
of building the padded blocks (a store written by the producer, then a halo fill), an op can
read each tap straight from where BlockPad would have copied it: the block's own pixel, a
neighbour's pixel (same resolution, nearest-upsampled LR, or strided HR), the border value, or
the 2x2 mean of an HR neighbour's pixels (``avg`` mode). :func:`conv_taps` lists that source for
every (output pixel, tap): on the C++ backend in one pass from global coordinates
(``segblocks_C::conv_taps``), otherwise (:func:`build_from_plan`) from the same
:func:`~segblocks.blocks.pad.pad_plan` the padded path fills halos with. Both give the same
sources, and the depthwise convolution over them equals the padded path
(``tests/blocks/test_indirection.py``).

Source ids (shared with ``segblocks::depthwise_conv_blocks``, :mod:`.kernels`): ``[0, Ph)``
the HR pixels (``hr [Nh, s, s]`` row-major), ``[Ph, Ph + Pl)`` the LR pixels, ``Ph + Pl`` the
pad value, ``Ph + Pl + 1 + j`` the mean of the four HR pixels ``avg_ids[j]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import kernels
from .grid import BlockGrid
from .pad import PAD_MODES, pad_plan
from .tensor import pixel_rows

__all__ = ["ConvTaps", "conv_taps", "build_from_plan"]


@dataclass
class ConvTaps:
    """Indirection tables of one padded op geometry on one grid.

    Attributes:
        table_hr: ``[Nh * o * o, kh * kw]`` int32 source ids of the HR output pixels (``o`` the
            HR output side), taps in ``(ky, kx)`` row-major order.
        table_lr: ``[Nl * o/2 * o/2, kh * kw]`` the same for the LR output pixels.
        avg_ids: ``[Ka, 4]`` int32 HR pixel ids whose mean is source ``Ph + Pl + 1 + j``.
        out_side: HR output side ``o``.
    """

    table_hr: Tensor
    table_lr: Tensor
    avg_ids: Tensor
    out_side: int


def conv_taps(
    grid: BlockGrid,
    side: int,
    pads: tuple[int, int, int, int],
    mode: str,
    kernel: tuple[int, int],
    stride: int,
    dilation: tuple[int, int],
) -> ConvTaps:
    """Tables for a conv / pool with ``kernel``, ``stride``, ``dilation`` and halo ``pads``
    (``(top, bottom, left, right)``, zero border) on blocks of HR side ``side``; cached on the
    grid like the pad plans."""
    key = ("taps", side, tuple(pads), mode, tuple(kernel), stride, tuple(dilation))
    return grid.cached(key, lambda: _build(grid, side, tuple(pads), mode, kernel, stride, dilation))


def _build(grid, s, pads, mode, kernel, stride, dilation) -> ConvTaps:
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r} is not one of {PAD_MODES}")
    pt, _, pl, _ = pads
    geometry = (grid.N, grid.GH, grid.GW, s, pt, pl, *kernel, stride, *dilation)
    fast = kernels.conv_taps_indices(
        grid.mask_flat, grid.slot, (*geometry, PAD_MODES.index(mode)), grid.num_hr
    )
    if fast is not None:
        return ConvTaps(*fast, s // stride)
    return build_from_plan(grid, s, pads, mode, kernel, stride, dilation)


def build_from_plan(grid, s, pads, mode, kernel, stride, dilation) -> ConvTaps:
    """The tables from the halo plan with tensor ops (python backend, other devices; the C++
    builder is tested against it)."""
    plan = pad_plan(grid, s, pads, mode, "zeros")
    dev = grid.device
    pt, pb, pl, pr = pads
    counts, sides = (grid.num_hr, grid.num_lr), (s, s // 2)
    Ph, Pl = pixel_rows(grid, s)
    pad_id = Ph + Pl
    # The source of every row of the padded store the plan addresses (row R: the pad value).
    src = torch.full((plan.rows + 1,), pad_id, dtype=torch.long, device=dev)
    offsets, bases = (0, plan.rows_hr), (0, Ph)
    for n, b, off, base in zip(counts, sides, offsets, bases, strict=True):
        hp, wp = b + pt + pb, b + pl + pr
        blk = torch.arange(n, device=dev).view(-1, 1, 1)
        y = torch.arange(b, device=dev).view(1, -1, 1)
        x = torch.arange(b, device=dev).view(1, 1, -1)
        rows = off + blk * (hp * wp) + (y + pt) * wp + (x + pl)
        src[rows.reshape(-1)] = (base + blk * (b * b) + y * b + x).reshape(-1)
    interior = src.clone()
    # Halo rows: the plan's sources are interior rows or row R, so one lookup resolves them.
    src[plan.copy_dst] = interior[plan.copy_src]
    src[plan.const_dst] = pad_id
    real = plan.avg_dst < plan.rows  # entries naming row R are fillers
    avg_dst = plan.avg_dst[real]
    avg_ids = interior[plan.avg_src.view(-1, 4)[real]]
    src[avg_dst] = pad_id + 1 + torch.arange(avg_dst.numel(), device=dev)
    src[plan.rows] = pad_id
    kh, kw = kernel
    dh, dw = dilation
    out_side = s // stride
    tables = []
    for n, b, off in zip(counts, sides, offsets, strict=True):
        hp, wp = b + pt + pb, b + pl + pr
        o = b // stride
        oy = torch.arange(o, device=dev) * stride
        ky = torch.arange(kh, device=dev) * dh
        kx = torch.arange(kw, device=dev) * dw
        pos = (oy.view(-1, 1, 1, 1) + ky.view(1, 1, -1, 1)) * wp + (
            oy.view(1, -1, 1, 1) + kx.view(1, 1, 1, -1)
        )  # [oy, ox, ky, kx] rows inside a padded block
        rows = off + torch.arange(n, device=dev).view(-1, 1) * (hp * wp) + pos.view(1, -1)
        tables.append(src[rows].view(n * o * o, kh * kw).to(torch.int32).contiguous())
    return ConvTaps(tables[0], tables[1], avg_ids.to(torch.int32).contiguous(), out_side)
