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

from .. import kernels
from ..cache import register_cache
from ..dispatch import UnsupportedBlockOp, register_block_op
from ..indirection import conv_taps
from ..pad import hr_canvas, hr_cells_of, lr_canvas, lr_cells_of, padded_parts
from ..stats import count_conv, timed
from ..tensor import BlockTensor, inference_fast_path, inference_kernels, pixel_rows
from ..tracing import exporting, known_zero, op_float
from .common import pair
from .geometry import crop, op_geometry, padded_or_plain

__all__ = [
    "conv2d",
    "conv2d_activation",
    "pointwise_gemm",
    "IM2COL_MAX_SIDE",
    "IM2COL_MIN_CHANNELS",
    "IM2COL_TINY_SIDE",
    "IM2COL_TINY_MIN_CHANNELS",
    "CANVAS_MIN_HALO_RATIO",
    "DIRECT_DEPTHWISE",
    "gemm_weight",
]

#: Block parts whose conv output tile is at most this many pixels wide, with at least
#: IM2COL_MIN_CHANNELS input channels, run as one gather-im2col + GEMM instead of a batched
#: conv: oneDNN ran 1.5-3.3x slower per MAC on 4x4 / 2x2 output tiles of 256-512 channels than
#: on the dense map (ResNet-18 trunk, 2 threads), while one GEMM over all tiles' pixels runs
#: near peak. With 64-128 channels the GEMM is too thin and the 9x gather dominates (tiles
#: 70 ms vs im2col 128 ms for 512 tiles of 4x4, 128 channels), so those stay with oneDNN.
IM2COL_MAX_SIDE = 4
IM2COL_MIN_CHANNELS = 256
#: Output tiles of at most 2 px (the deepest stages: 2x2 HR and 1x1 LR tiles at block 32 and
#: output stride 16) run as GEMMs from 64 input channels on. There a batched conv over ~1000
#: tiny images cost 1.2-2.7x the dense map forward and 3-11x in forward + backward (bfloat16,
#: 2 threads), where im2col + GEMM stayed within 1.0-1.6x.
IM2COL_TINY_SIDE = 2
IM2COL_TINY_MIN_CHANNELS = 64

#: Depthwise convs whose padded LR tile has at least this many times the tile's pixels run the
#: LR level once on the LR canvas (``segblocks.blocks.pad.lr_canvas``) instead of on padded LR
#: tiles: e.g. MobileNetV3's dilated 5x5 depthwise convs at output stride 16 and block 128 pad
#: 4x4 LR tiles by 4 (12x12, 9x), where filling and reading the halos cost more than the conv.
#: Depthwise only: its MACs are few, so computing the HR cells of the canvas too costs little.
#: Measured at 1024x2048, 40 % HR, fp32, 2 threads (A/B in one process, 15 runs): threshold 9
#: was the fastest or within noise of it for LR-ASPP-MobileNetV3 and SwiftNet-EffL1; 4 (which
#: adds 3x3 convs on 2x2 tiles and 5x5 on 4x4 tiles) was slower for EffL1 by 3-4 %.
CANVAS_MIN_HALO_RATIO = 9.0

#: With autograd (training), a depthwise conv that runs its LR level on the LR canvas (or has
#: no LR blocks) runs its HR level on the HR canvas (``segblocks.blocks.pad.hr_canvas``: the
#: map at HR resolution, LR blocks nearest-upsampled) when the padded HR blocks hold at least
#: this many times the canvas's pixels: e.g. EffL1's 5x5 depthwise convs on 2x2 blocks at
#: output stride 16 (padded 6x6, 9x the block) at 40 % HR blocks (3.6x). (Inference reads HR
#: halos through indirection.) Training step of SegBlocks-EffL1 at tau 0.4 (batch 8, 352x352,
#: fp32, 2 threads, one process alternating the settings): 1.5 and 3 within noise of each
#: other (~2.0 s), LR canvas alone 2.9 s with frequent slow steps; the padded path 2.4-2.9 s.
HR_CANVAS_MIN_RATIO = 3.0

#: Depthwise convs at inference read their halo through indirection tables
#: (``segblocks::depthwise_conv_blocks``) instead of padded blocks: no store, no halo fill, no
#: copy of the input into a store, and one kernel for both levels. Off: the padded path.
DIRECT_DEPTHWISE = True

_GEMM_WEIGHTS = register_cache("conv.gemm_weights", 512)


def gemm_weight(weight: Tensor) -> Tensor:
    """``[C_in*kh*kw, C_out]`` with rows ordered (ky, kx, c) to match channels-last im2col.

    Cached per weight, keyed on what the weight *is*: its storage pointer, dtype, device,
    shape and version counter. ``module.to(dtype)`` swaps ``.data`` without bumping the
    version, so identity and version alone would hand back a stale layout.
    """
    if exporting():
        # traced: the permuted copy becomes part of the program (constant-folded by AOTI)
        return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
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


def pointwise_gemm(p: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 conv (``groups=1``) of ``p [B, C, h, w]`` as one GEMM over its pixels.

    Why: oneDNN runs a 1x1 conv over a batch of small tiles at a fraction of its dense speed
    (2 threads, fp32: 46 vs 92 GMAC/s for 108 tiles of 1x1 px, 1152 -> 320 channels; 25 vs
    100 for 396 tiles), while one GEMM over all ``B * h * w`` channels-last pixels runs at
    dense speed whatever the tile size. For channels-last parts the pixel matrix is a view.
    Returns ``[B, C_out, h, w]`` channels-last.
    """
    n, c, h, w = p.shape
    y = F.linear(
        p.permute(0, 2, 3, 1).reshape(n * h * w, c), weight.reshape(weight.shape[0], c), bias
    )
    return y.view(n, h, w, weight.shape[0]).permute(0, 3, 1, 2)


def _linear(a: Tensor, weight: Tensor, bias, activation) -> Tensor:
    """``clamp(a @ weight.T + bias)`` for a pixel matrix ``a [P, C_in]`` at inference.

    Why ``mkldnn._linear_pointwise`` (bfloat16 only, see ``_POINTWISE_DTYPES``): oneDNN adds
    the bias and applies the clamp as post-ops of the GEMM, where ``F.linear`` copies the bias
    into the output first and the clamp is one more pass (2 threads, the CamVid network's GEMM
    shapes, shapes already compiled: 15 % less time in bfloat16, 5 % in float32). It is the op
    Inductor emits for linear layers on CPU; where it is missing or refuses the inputs,
    ``F.linear`` + ``clamp_`` give the same values. Traced (``torch.export``), ``F.linear``:
    the exported program's serialiser cannot write ``_linear_pointwise``'s empty scalar list,
    and Inductor picks its own GEMM for it anyway.
    """
    if (
        not exporting()
        and _LINEAR_POINTWISE is not None
        and bias is not None
        and a.device.type == "cpu"
        and a.dtype in _POINTWISE_DTYPES
    ):
        if activation is None:
            attr, scalars = "none", []
        elif activation[1] == float("inf") and activation[0] == 0:
            attr, scalars = "relu", []
        else:
            attr, scalars = "hardtanh", [float(activation[0]), float(activation[1])]
        try:
            return _LINEAR_POINTWISE(a, weight, bias, attr, scalars, "")
        except RuntimeError:
            pass
    y = F.linear(a, weight, bias)
    return y if activation is None else y.clamp_(*activation)


def _linear_pointwise_op():
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    return op if op is not None and torch.backends.mkldnn.is_available() else None


_LINEAR_POINTWISE = _linear_pointwise_op()
#: Dtypes whose 1x1 GEMMs take oneDNN's fused linear. Not float32: there ``F.linear`` runs as
#: a BLAS GEMM, while oneDNN builds (JIT-compiles) a primitive for every GEMM shape, and the
#: rows of a block GEMM change with the number of HR blocks: an unseen count cost ~0.4 ms per
#: layer, and once the primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, 1024 by default)
#: overflows every frame pays it (CamVid tau 0.4 over 80 HR counts: 45.6 -> 63 ms). bfloat16
#: GEMMs run in oneDNN either way, so they may as well fuse.
_POINTWISE_DTYPES = (torch.bfloat16,)


def _conv1x1(x: BlockTensor, weight: Tensor, bias, st: int, side: int, activation=None):
    """A 1x1 conv (``groups=1``) of both levels as one GEMM over all their pixels.

    The output is one ``[pixels, C_out]`` matrix (``pixels`` of the result), so that the
    activation, the next 1x1 conv or the residual add after it also run once for both levels.
    The input is one matrix too when its producer wrote one; otherwise (inference) each level's
    GEMM writes its rows of the output (and with autograd each level is a GEMM of its own).
    Why one GEMM: it reads the weights once instead of once per level, which in the deep stages
    (e.g. 1152 x 320 weights, a few hundred pixels) is as much memory traffic as the pixels.
    """
    c_out = weight.shape[0]
    autocast = torch.is_autocast_enabled(x.device.type)
    fast = inference_fast_path() and not autocast
    if st == 1 and x.pixels is not None:
        w2 = weight.reshape(c_out, -1)
        if inference_kernels() and not autocast:  # the clamp fused into the GEMM where it can be
            y = _linear(x.pixels, w2, bias, activation)
            activation = None
        else:
            y = F.linear(x.pixels, w2, bias)
        out = x.derive(None, side, owned=True, pixels=y)
    else:
        parts = x.parts
        if st > 1:  # a strided 1x1 conv only reads every st-th pixel
            parts = [p[:, :, ::st, ::st] for p in parts]
        if not fast:
            out = x.derive([pointwise_gemm(p, weight, bias) for p in parts], side, owned=True)
        else:
            w_t = weight.reshape(c_out, -1).t()
            rows = [p.shape[0] * p.shape[2] * p.shape[3] for p in parts]
            y = parts[0].new_empty(sum(rows), c_out)
            for p, o in zip(parts, y.split(rows), strict=True):
                a = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])
                if bias is None:
                    torch.mm(a, w_t, out=o)
                else:
                    torch.addmm(bias, a, w_t, out=o)
            out = x.derive(None, side, owned=True, pixels=y)
    count_conv(weight, 1, out)
    return _activate(out, activation)


def _im2col_index(x: BlockTensor, pads, level: int, k, stride, dilation, out_side):
    """Rows of a level's padded blocks (flattened ``[B*hp*wp, C]``) feeding each (output
    pixel, tap), in (block, oy, ox, ky, kx) order: ``[B * out^2, kh * kw]``."""
    g = x.grid

    def build():
        pt, pb, pl, pr = pads
        side = x.side >> level
        hp, wp = side + pt + pb, side + pl + pr
        dev = g.device
        o = torch.arange(out_side, device=dev) * stride
        ky = torch.arange(k[0], device=dev) * dilation[0]
        kx = torch.arange(k[1], device=dev) * dilation[1]
        rows = (o.view(-1, 1, 1, 1) + ky.view(1, 1, -1, 1)) * wp  # [oy, 1, ky, 1]
        cols = o.view(1, -1, 1, 1) + kx.view(1, 1, 1, -1)  # [1, ox, 1, kx]
        loc = (rows + cols).reshape(1, out_side * out_side, k[0] * k[1])  # (oy, ox), (ky, kx)
        count = g.count(level)
        blk = torch.arange(count, device=dev).view(count, 1, 1) * (hp * wp)
        # merge (block, pixel) only: Inductor cannot split a length that holds a traced count
        return (blk + loc).reshape(count * out_side * out_side, k[0] * k[1])

    return g.cached(("im2col", x.side, pads, level, k, stride, dilation), build)


def _conv_im2col(x: BlockTensor, weight, bias, pads, value, st, dilation, levels, side):
    """Conv of the levels in ``levels`` as gather-im2col + GEMM: ``{level: output}``.

    Differentiable: the gather's backward is a scatter-add into the padded blocks (then
    BlockPad's adjoint), the GEMM's the usual two GEMMs.
    """
    padded = padded_parts(x, pads, value=value)
    c_out = weight.shape[0]
    if torch.is_grad_enabled():
        w2 = weight.permute(2, 3, 1, 0).reshape(-1, c_out)
    else:
        w2 = gemm_weight(weight)
    kk = tuple(weight.shape[-2:])
    dil = pair(dilation)
    res = {}
    for lv in levels:
        p = padded[lv]
        n, out = p.shape[0], side >> lv
        # explicit sizes, no -1: Inductor cannot infer a -1 beside a traced block count
        flat = p.permute(0, 2, 3, 1).reshape(n * p.shape[2] * p.shape[3], p.shape[1])
        idx = _im2col_index(x, pads, lv, kk, st, dil, out)
        if exporting():
            # gather [pixels, taps, C] with the 2-D index, then merge the static dims: Inductor
            # cannot split a traced length into (pixels, taps) and would fix the block count
            cols = flat[idx].reshape(n * out * out, w2.shape[0])
        else:
            cols = flat.index_select(0, idx.view(-1)).view(n * out * out, w2.shape[0])
        y = torch.addmm(bias, cols, w2) if bias is not None else torch.mm(cols, w2)
        res[lv] = y.view(n, out, out, c_out).permute(0, 3, 1, 2)
    return res


def _use_im2col(out_side: int, c_in: int) -> bool:
    """Whether a conv with output tiles of ``out_side`` px and ``c_in`` inputs runs as a GEMM."""
    if out_side <= IM2COL_TINY_SIDE:
        return c_in >= IM2COL_TINY_MIN_CHANNELS
    return out_side <= IM2COL_MAX_SIDE and c_in >= IM2COL_MIN_CHANNELS


def _canvas_conv(x: BlockTensor, weight: Tensor, groups: int, value) -> bool:
    """Whether this conv may run a level on a canvas: depthwise, zero padding, a pad mode in
    which a block's halo is its neighbours as the canvas shows them."""
    # With autograd too (training): the canvas is built with differentiable indexing, and
    # its backward is one scatter of the canvas gradient instead of the adjoint of the halos.
    # Not while exported: the canvas indexes with boolean masks, whose traced sizes the
    # exported program does not resolve.
    if exporting() or x.pad_mode not in ("avg", "strided"):
        return False
    if groups == 1 or groups != weight.shape[0] or groups != x.channels:
        return False
    return value in (None, 0, 0.0)


def _use_lr_canvas(x: BlockTensor, pads) -> bool:
    """Whether the LR level of a canvas conv runs on the LR canvas (see
    CANVAS_MIN_HALO_RATIO)."""
    if x.grid.num_lr == 0:
        return False
    t = x.side // 2
    pt, pb, pl, pr = pads
    return (t + pt + pb) * (t + pl + pr) >= CANVAS_MIN_HALO_RATIO * t * t


def _use_hr_canvas(x: BlockTensor, pads) -> bool:
    """Whether the HR level of a canvas conv runs on the HR canvas, with autograd (see
    HR_CANVAS_MIN_RATIO)."""
    if not torch.is_grad_enabled() or known_zero(x.grid.num_hr):
        return False
    s = x.side
    pt, pb, pl, pr = pads
    padded = (s + pt + pb) * (s + pl + pr) * x.grid.num_hr
    return padded >= HR_CANVAS_MIN_RATIO * s * s * x.grid.N * x.grid.GH * x.grid.GW


def _use_direct_depthwise(x: BlockTensor, weight: Tensor, groups: int) -> bool:
    return (
        DIRECT_DEPTHWISE
        and inference_kernels()
        and groups > 1
        and weight.shape[1] == 1
        and groups == weight.shape[0] == x.channels
        and x.device.type == "cpu"
        and kernels.backend() == "cpp"
    )


def _depthwise_direct(
    x: BlockTensor, weight, bias, pads, st, dilation, value, side, lo, hi
) -> Tensor:
    """Both levels of a depthwise conv in one kernel reading halos through indirection:
    ``[pixels of both levels, C]``."""
    k = tuple(weight.shape[-2:])
    parts = x.parts if x.pixels is None else None
    if torch.is_autocast_enabled(x.device.type):
        # What autocast does for F.conv2d: input, weight and bias in the autocast dtype.
        dt = torch.get_autocast_dtype(x.device.type)
        weight = weight.to(dt)
        bias = None if bias is None else bias.to(dt)
        parts = [p.to(dt) for p in x.parts]
    taps = conv_taps(x.grid, x.side, pads, x.pad_mode, k, st, pair(dilation))
    if parts is None:
        hr, lr = x.pixels.split(pixel_rows(x.grid, x.side))  # [P, C] each: the same pixels
    else:
        # [B, h, w, C] views of channels-last parts (a copy only for parts living in a store)
        hr, lr = (p.permute(0, 2, 3, 1).contiguous() for p in parts)
    y = kernels.depthwise_conv_blocks_direct(
        hr,
        lr,
        gemm_weight(weight),  # [kh * kw, C]: taps in (ky, kx) order
        bias,
        taps.table_hr,
        taps.table_lr,
        taps.avg_ids,
        op_float(0.0 if value is None else value),
        op_float(lo),
        op_float(hi),
    )
    return y  # [pixels of both levels, C]


@register_block_op(F.conv2d)
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    """``F.conv2d`` on a block tensor; ``activation=(lo, hi)`` clamps the output (a fused
    ReLU / ReLU6 / hardtanh, see :func:`conv2d_activation`)."""
    if not isinstance(x, BlockTensor):
        raise UnsupportedBlockOp("conv2d with a block tensor as weight")
    pads, st, value = op_geometry("conv2d", x, weight.shape[-2:], stride, padding, dilation)
    side = x.side // st
    if not any(pads) and tuple(weight.shape[-2:]) == (1, 1):
        if groups == 1:
            return _conv1x1(x, weight, bias, st, side, activation)
        parts = x.parts
        if st > 1:  # a strided 1x1 conv only reads every st-th pixel
            parts = [p[:, :, ::st, ::st] for p in parts]
        out = [_conv_level(p, weight, bias, 1, 0, 1, groups) for p in parts]
        count_conv(weight, groups, out)
        return _activate(x.derive(out, side, owned=True), activation)
    if _use_direct_depthwise(x, weight, groups):
        lo, hi = activation or (float("-inf"), float("inf"))
        y = _depthwise_direct(x, weight, bias, pads, st, dilation, value, side, lo, hi)
        out = x.derive(None, side, owned=True, pixels=y)
        count_conv(weight, groups, out)
        return out
    gemm_levels = []
    if groups == 1 and (value is None or value == 0) and any(pads):
        gemm_levels = [
            lv
            for lv in range(len(x.parts))
            if not known_zero(x.grid.count(lv)) and _use_im2col(side >> lv, weight.shape[1])
        ]
    out = {}
    if gemm_levels:
        out = _conv_im2col(x, weight, bias, pads, 0.0, st, dilation, gemm_levels, side)
    canvas = not gemm_levels and any(pads) and _canvas_conv(x, weight, groups, value)
    if canvas and _use_lr_canvas(x, pads):
        with timed("pad", x.device):
            c = lr_canvas(x, pads)
        y = F.conv2d(c, weight, bias, st, 0, dilation, groups)
        out[1] = lr_cells_of(y, x.grid)
    # the HR canvas only where no padded level is left (all-HR grids: the LR level is empty)
    if canvas and (1 in out or x.grid.num_lr == 0) and _use_hr_canvas(x, pads):
        with timed("pad", x.device):
            c = hr_canvas(x, pads)
        out[0] = hr_cells_of(F.conv2d(c, weight, bias, st, 0, dilation, groups), x.grid)
        if 1 not in out:
            o = side // 2
            out[1] = out[0].new_empty(0, out[0].shape[1], o, o)
    if len(out) < len(x.parts):
        inputs = (
            padded_parts(x, pads, value=0.0, hr_only=True)
            if 1 in out
            else padded_or_plain(x, pads, 0.0 if value is None else value)
        )
        for lv, p in enumerate(inputs):
            if lv not in out:
                y = _conv_level(p, weight, bias, st, 0, dilation, groups)
                out[lv] = crop(y, side >> lv)
    out = [out[lv] for lv in range(len(x.parts))]
    count_conv(weight, groups, out)
    return _activate(x.derive(out, side, owned=True), activation)


def _conv_level(p: Tensor, weight, bias, stride, padding, dilation, groups) -> Tensor:
    """``F.conv2d`` of one level's blocks ``p [B, C, h, w]``; while traced, through
    ``segblocks::conv2d_channels_last`` (the layout of a conv over a traced number of blocks
    must be stated, see that op)."""
    if exporting():
        return kernels.conv2d_channels_last(
            p, weight, bias, list(pair(stride)), list(pair(padding)), list(pair(dilation)), groups
        )
    return F.conv2d(p, weight, bias, stride, padding, dilation, groups)


def _activate(y: BlockTensor, activation) -> BlockTensor:
    """Clamp a fresh conv output in place (``activation=(lo, hi)``), or return it as it is."""
    if activation is not None:
        lo, hi = activation
        if inference_fast_path():
            for p in [y.pixels] if y.pixels is not None else y.parts:
                p.clamp_(lo, hi)
        else:
            y = y.derive([p.clamp(lo, hi) for p in y.parts], owned=True)
    return y


def conv2d_activation(x, weight, bias, stride, padding, dilation, groups, lo, hi):
    """``clamp(F.conv2d(x, ...), lo, hi)`` as one call: ReLU is ``(0, inf)``, ReLU6 ``(0, 6)``.

    On block tensors at inference the clamp is fused where the conv allows it (the depthwise
    kernel applies it before storing; 1x1 convs use oneDNN's fused post-op when available);
    dense tensors run the conv, then an in-place clamp, as the unfused layers did.
    """
    if isinstance(x, BlockTensor):
        return conv2d(x, weight, bias, stride, padding, dilation, groups, activation=(lo, hi))
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups).clamp_(lo, hi)
