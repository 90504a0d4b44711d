"""Convolution on block tensors.

BlockPad with the conv's padding (plus any pending ``F.pad``), then the conv with padding 0 on
each level's blocks; 1x1 convs without padding read the blocks directly (strided ones
subsample first). Small deep-stage tiles with many channels run as one gather-im2col + GEMM
over all levels instead (see :data:`IM2COL_MAX_SIDE`).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cache import register_cache
from ..dispatch import UnsupportedBlockOp, register_block_op
from ..pad import padded_parts
from ..stats import count_conv
from ..tensor import BlockTensor, inference_fast_path
from .common import pair
from .geometry import crop, op_geometry, padded_or_plain

__all__ = ["conv2d", "IM2COL_MAX_SIDE", "IM2COL_MIN_CHANNELS", "gemm_weight"]

#: Block parts whose conv output tile is at most this many pixels wide, with at least
#: IM2COL_MIN_CHANNELS input channels, run as one gather-im2col + GEMM instead of a batched
#: conv: oneDNN ran 1.5-3.3x slower per MAC on 4x4 / 2x2 output tiles of 256-512 channels than
#: on the dense map (ResNet-18 trunk, 2 threads), while one GEMM over all tiles' pixels runs
#: near peak. With 64-128 channels the GEMM is too thin and the 9x gather dominates (tiles
#: 70 ms vs im2col 128 ms for 512 tiles of 4x4, 128 channels), so those stay with oneDNN.
IM2COL_MAX_SIDE = 4
IM2COL_MIN_CHANNELS = 256

_GEMM_WEIGHTS = register_cache("conv.gemm_weights", 512)


def gemm_weight(weight: Tensor) -> Tensor:
    """``[C_in*kh*kw, C_out]`` with rows ordered (ky, kx, c) to match channels-last im2col.

    Cached per weight, keyed on what the weight *is*: its storage pointer, dtype, device,
    shape and version counter. ``module.to(dtype)`` swaps ``.data`` without bumping the
    version, so identity and version alone would hand back a stale layout.
    """
    key = id(weight)
    # Inference tensors (made under torch.inference_mode) track no version counter.
    version = None if weight.is_inference() else weight._version
    what = (weight.data_ptr(), weight.dtype, weight.device, tuple(weight.shape), version)
    hit = _GEMM_WEIGHTS.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == what:
        return hit[2]
    w2 = weight.detach().permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
    ref = weakref.ref(weight, lambda _r, k=key: _GEMM_WEIGHTS.pop(k))
    _GEMM_WEIGHTS.put(key, (ref, what, w2))
    return w2


def _im2col_index(x: BlockTensor, st_pads, level: int, k, stride, dilation, out_side):
    """Rows of the padded store feeding each (output pixel, tap): ``[P * kh * kw]``."""
    g = x.grid

    def build():
        pt, pb, pl, pr = st_pads
        side = x.side >> level
        hp, wp = side + pt + pb, side + pl + pr
        nb = g.count(level)
        base = 0 if level == 0 else g.num_hr * (x.side + pt + pb) * (x.side + pl + pr)
        dev = g.device
        o = torch.arange(out_side, device=dev) * stride
        ky = torch.arange(k[0], device=dev) * dilation[0]
        kx = torch.arange(k[1], device=dev) * dilation[1]
        rows = (o.view(-1, 1, 1, 1) + ky.view(1, 1, -1, 1)) * wp  # [oy, 1, ky, 1]
        cols = o.view(1, -1, 1, 1) + kx.view(1, 1, 1, -1)  # [1, ox, 1, kx]
        loc = (rows + cols).reshape(-1)  # (oy, ox, ky, kx)
        blk = torch.arange(nb, device=dev).view(-1, 1) * (hp * wp)
        return (base + blk + loc.view(1, -1)).reshape(-1)

    return g.cached(("im2col", x.side, st_pads, level, k, stride, dilation), build)


def _conv_im2col(x: BlockTensor, weight, bias, pads, st, dilation, levels, side):
    """Conv of the levels in ``levels`` through im2col + one GEMM: ``{level: output}``."""
    padded_parts(x, pads)
    store = x.store
    w2 = gemm_weight(weight)
    kk = tuple(weight.shape[-2:])
    dil = pair(dilation)
    idx = [_im2col_index(x, store.pads, lv, kk, st, dil, side >> lv) for lv in levels]
    index = idx[0] if len(idx) == 1 else torch.cat(idx)
    cols = store.flat.index_select(0, index).view(-1, w2.shape[0])
    y = torch.addmm(bias, cols, w2) if bias is not None else torch.mm(cols, w2)
    res, start = {}, 0
    for lv in levels:
        n, out = x.grid.count(lv), side >> lv
        res[lv] = y[start : start + n * out * out].view(n, out, out, -1).permute(0, 3, 1, 2)
        start += n * out * out
    return res


@register_block_op(F.conv2d)
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if not isinstance(x, BlockTensor):
        raise UnsupportedBlockOp("conv2d with a block tensor as weight")
    pads, st, value = op_geometry("conv2d", x, weight.shape[-2:], stride, padding, dilation)
    side = x.side // st
    if not any(pads) and tuple(weight.shape[-2:]) == (1, 1):
        parts = x.parts
        if st > 1:  # a strided 1x1 conv only reads every st-th pixel
            parts = [p[:, :, ::st, ::st] for p in parts]
        out = [F.conv2d(p, weight, bias, 1, 0, 1, groups) for p in parts]
        count_conv(weight, groups, out)
        return x.derive(out, side, owned=True)
    gemm_levels = []
    if (
        inference_fast_path()
        and groups == 1
        and weight.shape[1] >= IM2COL_MIN_CHANNELS
        and (value is None or value == 0)
        and any(pads)
    ):
        gemm_levels = [
            lv
            for lv in range(len(x.parts))
            if 0 < (side >> lv) <= IM2COL_MAX_SIDE and x.grid.count(lv) > 0
        ]
    out = {}
    if gemm_levels:
        out = _conv_im2col(x, weight, bias, pads, st, dilation, gemm_levels, side)
    if len(out) < len(x.parts):
        inputs = padded_or_plain(x, pads, 0.0 if value is None else value)
        for lv, p in enumerate(inputs):
            if lv not in out:
                out[lv] = crop(F.conv2d(p, weight, bias, st, 0, dilation, groups), side >> lv)
    out = [out[lv] for lv in range(len(x.parts))]
    count_conv(weight, groups, out)
    return x.derive(out, side, owned=True)
