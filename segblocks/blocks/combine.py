"""BlockCombine: the dense map of a block tensor (LR blocks upsampled 2x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from .pad import padded_parts
from .stats import timed
from .tensor import BlockTensor
from .tracing import known_zero

__all__ = ["block_combine", "upsample_lr_bilinear", "COMBINE_MODES"]

COMBINE_MODES = ("nearest", "bilinear")


def upsample_lr_bilinear(x: BlockTensor) -> Tensor:
    """LR blocks upsampled 2x bilinearly with their neighbours as context: ``[Nl, C, s, s]``."""
    t = x.side // 2
    lrp = padded_parts(x, 1, border="replicate")[1]
    up = F.interpolate(lrp, scale_factor=2, mode="bilinear", align_corners=False)
    return up[:, :, 2 : 2 + 2 * t, 2 : 2 + 2 * t]


def block_combine(x: BlockTensor, upsample: str = "nearest") -> Tensor:
    """BlockCombine: the dense ``[N, C, H, W]`` map of a block tensor (channels-last).

    Args:
        x: block tensor with HR side ``s``; ``H = GH * s``, ``W = GW * s``.
        upsample: ``"nearest"`` (paper) or ``"bilinear"``: LR blocks upsampled with their
            neighbours as context (pad 1, bilinear 2x, crop), smoother at block borders.
    """
    if not isinstance(x, BlockTensor):
        raise ValueError(f"block_combine expects a BlockTensor, got {type(x).__name__}")
    if upsample not in COMBINE_MODES:
        raise ValueError(f"upsample {upsample!r} must be one of {COMBINE_MODES}")
    g = x.grid
    with timed("combine", x.device):
        if upsample == "bilinear" and not known_zero(g.num_lr):
            return _combine_same_size(x, upsample_lr_bilinear(x))
        return kernels.combine_blocks(
            x.parts[0], x.parts[1], g.hr_cells, g.lr_cells, [g.N, g.GH, g.GW, x.side]
        )


def _combine_same_size(x: BlockTensor, lr_up: Tensor) -> Tensor:
    """Dense map from HR blocks and LR blocks already upsampled to ``[Nl, C, s, s]``."""
    g, s = x.grid, x.side
    blocks = torch.cat([x.parts[0], lr_up])
    order = torch.cat([g.hr_cells, g.lr_cells]).argsort()  # back to row-major cell order
    C = blocks.shape[1]
    out = blocks[order].view(g.N, g.GH, g.GW, C, s, s).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(g.N, C, g.GH * s, g.GW * s).contiguous(memory_format=torch.channels_last)
