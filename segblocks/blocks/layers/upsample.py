"""2x upsampling of block tensors.

Nearest: per block (each block's pixels only depend on itself). Bilinear
(``align_corners=False``): pad 1 (replicate at the image border), upsample, crop, so that
neighbouring blocks give context exactly as in the dense map.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..dispatch import UnsupportedBlockOp, register_block_op
from ..pad import padded_parts
from .common import map_parts, no_pending, pair

__all__ = []


@register_block_op(F.interpolate, F.upsample)
def _interpolate(
    x,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
    antialias=False,
):
    no_pending(x, "interpolate")
    H, W = x.shape[-2:]
    if size is not None:
        sz = pair(size, "size")
        factor = sz[0] / H if sz[0] * W == sz[1] * H else None
    else:
        fs = scale_factor if isinstance(scale_factor, (list, tuple)) else (scale_factor,) * 2
        if len(fs) != 2:
            raise ValueError(f"scale_factor {scale_factor!r} must be a number or a pair")
        factor = float(fs[0]) if float(fs[0]) == float(fs[1]) else None
    if factor != 2.0:
        raise UnsupportedBlockOp(
            f"interpolate to {size or scale_factor} from {H}x{W}: block tensors support 2x "
            "upsampling only; use DenseFallback for other sizes"
        )
    if mode == "nearest":
        return map_parts(
            x, lambda a: F.interpolate(a, scale_factor=2, mode="nearest"), side=x.side * 2
        )
    if mode != "bilinear" or align_corners:
        raise UnsupportedBlockOp(
            f"interpolate mode {mode!r} (align_corners={align_corners}): blocks support nearest "
            "and bilinear with align_corners=False"
        )
    out = []
    for lv, p in enumerate(padded_parts(x, 1, border="replicate")):
        b = x.side >> lv
        up = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False)
        out.append(up[:, :, 2 : 2 + 2 * b, 2 : 2 + 2 * b])
    return x.derive(out, 2 * x.side)
