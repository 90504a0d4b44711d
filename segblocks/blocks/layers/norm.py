"""Batch norm on block tensors.

Eval: the per-channel affine of the running statistics, applied per level (all-HR == dense).
Training: statistics over every processed pixel, HR and LR alike, each pixel counting once
(the original SegBlocks code normalised the two resolutions separately; joint statistics are
the principled choice), and running statistics updated from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import register_block_op
from ..tracing import exporting
from .common import map_parts, no_pending

__all__ = ["batch_norm"]


@register_block_op(F.batch_norm)
def batch_norm(
    x,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
):
    """``F.batch_norm`` order: ``(input, running_mean, running_var, weight, bias, ...)``."""
    no_pending(x, "batch_norm")
    if training or running_mean is None:
        nonempty = [lv for lv, p in enumerate(x.parts) if p.shape[0]]
        if len(nonempty) == 1:
            # All blocks at one resolution (all-HR / all-LR): the dense op on that part, no
            # concatenation.
            parts = list(x.parts)
            lv = nonempty[0]
            parts[lv] = F.batch_norm(
                parts[lv], running_mean, running_var, weight, bias, True, momentum, eps
            )
            return x.derive(parts)
        C = x.channels
        flat = torch.cat([p.permute(0, 2, 3, 1).reshape(-1, C) for p in x.parts])
        y = F.batch_norm(flat, running_mean, running_var, weight, bias, True, momentum, eps)
        # split (backward: one concatenation), not slices (backward: a zero-filled y each).
        ys = y.split([p.numel() // C for p in x.parts])
        parts = [
            yp.view(p.shape[0], p.shape[2], p.shape[3], C).permute(0, 3, 1, 2)
            for yp, p in zip(ys, x.parts, strict=True)
        ]
        return x.derive(parts)
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    scale, shift = scale.view(-1, 1, 1).to(x.dtype), shift.view(-1, 1, 1).to(x.dtype)

    def plain(a):
        if exporting():
            # F.batch_norm checks for an empty input, a guard on the traced block count;
            # ``a`` is a level [B, C, h, w] or the pixel matrix [P, C]
            shape = (-1,) if a.dim() == 2 else (-1, 1, 1)
            return torch.addcmul(shift.view(shape), a, scale.view(shape))
        return F.batch_norm(a, running_mean, running_var, weight, bias, False, momentum, eps)

    def into(a, out):
        torch.addcmul(shift, a, scale, out=out)

    return map_parts(x, plain, into)


@register_block_op(torch.batch_norm)
def _torch_batch_norm(
    x, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled=True
):
    """``torch.batch_norm`` takes weight and bias *before* the running statistics."""
    return batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
