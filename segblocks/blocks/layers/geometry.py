"""Halo geometry of padded ops (conv, pooling): padding, stride and 'same'-size checks."""

from __future__ import annotations

from torch import Tensor

from ..cache import register_cache
from ..dispatch import UnsupportedBlockOp
from ..pad import padded_parts
from ..tensor import BlockTensor
from .common import pair

__all__ = ["op_geometry", "check_ceil", "crop", "padded_or_plain"]

_GEOMETRY = register_cache("layers.op_geometry", 1024)


def _same_size_check(op, side, k, st, dil, total, H):
    eff = dil * (k - 1) + 1
    if side % st or (side // 2) % st:
        raise ValueError(
            f"{op} with stride {st} on blocks of {side} px (low-res {side // 2} px): the blocks "
            "must stay whole pixels; use a block size that is a multiple of 2 x the total stride"
        )
    if not (eff - st <= total <= eff - 1):
        raise ValueError(
            f"{op} with kernel {k}, stride {st}, dilation {dil} and total padding {total} maps "
            f"{H} px to {(H + total - eff) // st + 1} px, not {H // st}; block execution needs "
            f"'same'-style padding (total {eff - 1} for stride 1)"
        )


def check_ceil(op, x, kernel, stride, padding, dilation):
    """``ceil_mode=True`` is fine only where it gives the same size as floor mode."""
    kh, _ = pair(kernel, "kernel_size")
    sh, _ = pair(stride if stride not in (None, ()) else kernel, "stride")
    ph, _ = pair(padding, "padding") if not isinstance(padding, str) else (0, 0)
    dh, _ = pair(dilation, "dilation")
    H = x.shape[-2]
    eff = dh * (kh - 1) + 1
    floor_out = (H + 2 * ph - eff) // sh + 1
    ceil_out = -(-(H + 2 * ph - eff) // sh) + 1
    if ceil_out != floor_out and (ceil_out - 1) * sh < H + ph:
        raise ValueError(
            f"{op} with ceil_mode=True maps {H} px to {ceil_out} px, not {H // sh}; block "
            "execution needs the floor-mode size: pass ceil_mode=False or use DenseFallback"
        )


def _key(v):
    return tuple(v) if isinstance(v, list) else v


def op_geometry(op, x: BlockTensor, kernel, stride, padding, dilation, own_pad_value=0.0):
    """Halo ``(top, bottom, left, right)``, stride and border value for a padded op on ``x``.

    ``own_pad_value`` is the value the op itself pads with (0 for conv / avg pool, ``-inf`` for
    max pool); a pending ``F.pad`` with another value can only be merged when the op itself
    does not pad. Results are cached per argument set (a network asks the same few dozen
    questions every forward pass); invalid arguments raise every time.
    """
    g = x.grid
    key = (
        op,
        _key(kernel),
        _key(stride),
        _key(padding),
        _key(dilation),
        own_pad_value,
        x.pending_pad,
        x.side,
        g.GH,
        g.GW,
        g.block_size,
    )
    hit = _GEOMETRY.get(key)
    if hit is None:
        hit = _GEOMETRY.put(
            key, _op_geometry(op, x, kernel, stride, padding, dilation, own_pad_value)
        )
    return hit


def _op_geometry(op, x: BlockTensor, kernel, stride, padding, dilation, own_pad_value):
    kh, kw = pair(kernel, "kernel_size")
    sh, sw = pair(stride if stride not in (None, ()) else kernel, "stride")
    dh, dw = pair(dilation, "dilation")
    if sh != sw:
        raise UnsupportedBlockOp(f"{op} with unequal strides {(sh, sw)} on square blocks")
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if sh != 1:
                raise ValueError(
                    f"{op} padding='same' with stride {sh}: PyTorch rejects it for strided "
                    "convolutions too; give explicit padding"
                )
            th, tw = dh * (kh - 1), dw * (kw - 1)
            padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"{op} padding {padding!r} must be 'same', 'valid' or ints")
    if isinstance(padding, (list, tuple)) and len(padding) == 4:
        pt, pb, pl, pr = (int(p) for p in padding)
    else:
        ph, pw = pair(padding, "padding")
        pt, pb, pl, pr = ph, ph, pw, pw
    value = None
    if x.pending_pad is not None:
        qt, qb, ql, qr, value = x.pending_pad
        if value != own_pad_value and (pt or pb or pl or pr):
            raise UnsupportedBlockOp(
                f"F.pad with value {value} followed by {op} with its own padding {padding}: "
                "two different border values; pad once (F.pad) or use DenseFallback"
            )
        pt, pb, pl, pr = pt + qt, pb + qb, pl + ql, pr + qr
    H = x.grid.GH * x.side
    _same_size_check(op, x.side, kh, sh, dh, pt + pb, H)
    _same_size_check(op, x.side, kw, sw, dw, pl + pr, x.grid.GW * x.side)
    x.grid.check_side(x.side // sh, op)
    return (pt, pb, pl, pr), sh, value


def crop(y: Tensor, side: int) -> Tensor:
    if y.shape[-1] != side or y.shape[-2] != side:
        y = y[:, :, :side, :side]
    return y


def padded_or_plain(x: BlockTensor, pads, border_value) -> list[Tensor]:
    """Per level padded blocks, or the plain blocks when no halo is needed."""
    if any(pads):
        return padded_parts(x, pads, value=border_value)
    return list(x.parts)
