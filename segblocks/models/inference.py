"""The fast inference form of a model: eval mode, batch norm folded, conv -> ReLU / ReLU6
fused, channels-last.

Every inference path (``segblocks infer``, ``eval``, ``bench``, ``calibrate``, the benchmarks)
runs static and SegBlocks models in this same form, so that a speed ratio compares both sides
as a user would deploy them: folding removes one read + write pass per conv, fusing lets block
execution clamp while writing a conv's output, and channels-last is what oneDNN runs fastest
on CPU and what the block engine's buffers use.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..blocks.fuse import fold_batchnorm, fuse_activations

__all__ = ["optimize_for_inference"]


def _example(module: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    p = next(module.parameters(), None)
    return torch.randn(
        1,
        3,
        *size,
        device=p.device if p is not None else None,
        dtype=p.dtype if p is not None else None,
    )


def optimize_for_inference(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    example_size: tuple[int, int] = (256, 256),
    inplace: bool = False,
    fuse: bool = True,
) -> nn.Module:
    """``model`` in eval mode with batch norm folded into its convs, conv -> ReLU / ReLU6 pairs
    fused (:func:`~segblocks.blocks.fuse.fuse_activations`) and channels-last weights.

    Args:
        model: a :class:`~segblocks.models.segblocks_model.SegBlocksModel` (its network and a
            learned policy's network are folded) or a plain segmentation network.
        dtype: convert parameters to this dtype after folding (e.g. ``torch.bfloat16``);
            folding itself runs in the model's dtype.
        example_size: ``(H, W)`` of the traced dense forward that finds conv -> BN pairs; any
            size the network accepts (a multiple of its output stride).
        inplace: modify ``model`` instead of a copy.
        fuse: fuse activations into convs (on dense tensors the fused layer is the conv and
            an in-place clamp, as before; on block tensors the clamp is applied as the
            depthwise kernel or the 1x1 GEMM writes its output).

    Returns the model (a copy unless ``inplace``), eval mode. Outputs equal the original's up to
    float rounding (``tests/models/test_inference.py``). Training it afterwards is not
    meaningful: the batch-norm layers are gone.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    net = getattr(model, "net", None)

    def fast(m: nn.Module) -> nn.Module:
        m = fold_batchnorm(m, _example(m, example_size), inplace=True)
        return fuse_activations(m, _example(m, example_size), inplace=True) if fuse else m

    if isinstance(net, nn.Module) and hasattr(model, "policy"):
        model.net = fast(net)
        pol_net = getattr(model.policy, "net", None)
        if isinstance(pol_net, nn.Module) and hasattr(model.policy, "input_size"):
            gh = max(1, example_size[0] // model.block_size)
            gw = max(1, example_size[1] // model.block_size)
            size = model.policy.input_size((gh, gw))
            model.policy.net = fold_batchnorm(pol_net, _example(pol_net, size), inplace=True)
    else:
        model = fast(model)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(memory_format=torch.channels_last)
