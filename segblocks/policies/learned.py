"""The learned policy of SegBlocks (TPAMI section 3.1.1): a small CNN, one logit per block.

Architecture, as in the authors' code (``PolicyNet``): the image is resized so that the net's
total stride maps exactly one output pixel to one block, then

    conv 7x7 stride 4 (3 -> width), BN, ReLU
    (layers - 2) x [conv 5x5 stride 2 (width -> width), BN, ReLU]
    conv 5x5 stride 2 (width -> 1, with bias) = the logit of each block

``layers`` counts all convs (total stride ``4 * 2**(layers - 1)``, 32 for the default 4).
For block 128 the resize factor is 32 / 128 = 1/4 (a 2048x1024 image enters as 512x256, the
paper's setting; 0.34 GMACs, Table 6). In general the image of ``GH x GW`` blocks is resized to
exactly ``(GH * stride, GW * stride)`` pixels, and the conv arithmetic (``padding = k // 2``)
then yields exactly ``GH x GW`` logits for every block size; no adaptive pooling is needed.
For block sizes below the stride the image is upsampled instead (e.g. block 16: x2).

``head="1x1"`` is the variant where all ``layers`` convs are ``width`` wide (each with BN and
ReLU) and a 1x1 conv makes the logit (0.352 instead of 0.339 GMACs at 512x256).

Training mode samples actions ``a ~ Bernoulli(p)`` (global RNG) and returns ``log p(a)`` with
gradients for REINFORCE; eval mode is deterministic, ``a = p > 0.5`` (logit > 0). The logit
bias starts at ``logit(init_tau)`` and the last conv's weights near zero, so every block starts
with ``p ~ init_tau``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks.macs import macs_per_output_element
from .base import Policy, PolicyConfigError, PolicyOutput, register_policy

__all__ = ["LearnedPolicy", "conv_stack_macs"]


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv_stack_macs(modules, h: int, w: int) -> int:
    """MACs of a chain of modules applied in order to an ``h x w`` map (one image).

    Conv2d layers cost ``H_out * W_out * C_out * C_in / groups * kh * kw`` (bias and
    element-wise layers are not counted, as in the paper); Linear layers ``in * out`` per
    position (:func:`segblocks.blocks.macs.macs_per_output_element` per output element).
    Output sizes follow the conv arithmetic ``floor((h + 2p - d (k - 1) - 1) / s) + 1``; other
    modules must keep the size.
    """
    total = 0
    for m in modules:
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str):
                raise ValueError(f"string padding {m.padding!r} is not supported here")
            (kh, kw), (sh, sw) = _pair(m.kernel_size), _pair(m.stride)
            (ph, pw), (dh, dw) = _pair(m.padding), _pair(m.dilation)
            h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            total += h * w * m.out_channels * macs_per_output_element(m)
        elif isinstance(m, nn.Linear):
            total += m.out_features * macs_per_output_element(m)
    return total


@register_policy("learned")
class LearnedPolicy(Policy):
    """Policy network of SegBlocks, trained with REINFORCE (see the module docstring).

    Args:
        block_size: block side in input pixels; the image is resized by
            ``stride / block_size`` (1/4 for block 128 with 4 layers).
        width: channels of the hidden convs (paper: 64).
        layers: number of convs, ``>= 1`` (paper: 4); sets the stride ``4 * 2**(layers-1)``.
        head: ``"conv"`` (the last 5x5 stride-2 conv outputs the logit, as in the authors'
            code) or ``"1x1"`` (``layers`` hidden convs, then a 1x1 conv to the logit).
        init_tau: initial probability of high resolution for every block, in ``(0, 1)``.
        resize_mode: ``F.interpolate`` mode for the resize: ``"area"`` (default; average
            pooling for integer factors), ``"bilinear"`` (antialiased) or ``"nearest"``
            (the authors' code).
        bn_momentum: batch-norm momentum (authors' code: 0.02).
        in_channels: image channels.
    """

    def __init__(
        self,
        block_size: int,
        width: int = 64,
        layers: int = 4,
        *,
        head: str = "conv",
        init_tau: float = 0.5,
        resize_mode: str = "area",
        bn_momentum: float = 0.02,
        in_channels: int = 3,
    ):
        super().__init__()
        block_size, width, layers = int(block_size), int(width), int(layers)
        if block_size < 1:
            raise ValueError(f"block_size {block_size} must be positive")
        if width < 1 or layers < 1:
            raise ValueError(f"width {width} and layers {layers} must be >= 1")
        if head not in ("conv", "1x1"):
            raise ValueError(f"head {head!r} must be 'conv' or '1x1'")
        if not 0.0 < float(init_tau) < 1.0:
            raise ValueError(f"init_tau {init_tau} must be strictly between 0 and 1")
        if resize_mode not in ("area", "bilinear", "nearest"):
            raise ValueError(f"resize_mode {resize_mode!r} must be 'area', 'bilinear' or 'nearest'")
        self.block_size, self.width, self.layers, self.head = block_size, width, layers, head
        self.init_tau, self.resize_mode = float(init_tau), resize_mode
        self.stride = 4 * 2 ** (layers - 1)

        def hidden(cin, k, s):
            return [
                nn.Conv2d(cin, width, k, stride=s, padding=k // 2, bias=False),
                nn.BatchNorm2d(width, momentum=bn_momentum),
                nn.ReLU(inplace=True),
            ]

        mods: list[nn.Module] = []
        n_hidden = layers - 1 if head == "conv" else layers
        cin = in_channels
        for i in range(n_hidden):
            mods += hidden(cin, 7 if i == 0 else 5, 4 if i == 0 else 2)
            cin = width
        if head == "conv":
            k, s = (7, 4) if layers == 1 else (5, 2)
            last = nn.Conv2d(cin, 1, k, stride=s, padding=k // 2)
        else:
            last = nn.Conv2d(cin, 1, 1)
        mods.append(last)
        self.net = nn.Sequential(*mods)
        self.reset_logit(self.init_tau)

    @classmethod
    def config_kwargs(cls, options=None, *, tau=None, block_size=None) -> dict:
        """``options`` with the run's ``block_size`` filled in; a different ``block_size``
        option is an error. The run's ``tau`` is not used (it is the loss's target; the net
        starts at its own ``init_tau``)."""
        kw = dict(options or {})
        if block_size is not None:
            if kw.get("block_size", block_size) != block_size:
                raise PolicyConfigError(
                    cls.name,
                    "block_size",
                    kw["block_size"],
                    f"differs from block_size {block_size}",
                    "remove it (the block size is filled in)",
                )
            kw["block_size"] = block_size
        return kw

    def reset_logit(self, init_tau: float) -> None:
        """Re-initialise the logit layer so that every block starts with ``p ~ init_tau``."""
        last = self.net[-1]
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.constant_(last.bias, math.log(init_tau / (1.0 - init_tau)))

    # ------------------------------------------------------------------ geometry
    def input_size(self, grid_shape) -> tuple[int, int]:
        """``(h, w)`` the image is resized to for a ``(GH, GW)`` grid."""
        return grid_shape[0] * self.stride, grid_shape[1] * self.stride

    def _grid_of(self, hw, what="image") -> tuple[int, int]:
        H, W = (int(v) for v in hw)
        bs = self.block_size
        if H % bs or W % bs:
            raise ValueError(f"{what} {H}x{W} is not a multiple of the block size {bs}")
        return H // bs, W // bs

    def macs(self, image_hw) -> int:
        h, w = self.input_size(self._grid_of(image_hw, "image_hw"))
        return conv_stack_macs(self.net, h, w)

    # ------------------------------------------------------------------ forward
    def logits(self, image: Tensor, grid_shape) -> Tensor:
        """``[N, GH, GW]`` logit of high resolution per block."""
        gh, gw = grid_shape
        H, W = image.shape[-2:]
        if (H, W) != (gh * self.block_size, gw * self.block_size):
            raise ValueError(
                f"LearnedPolicy: image {H}x{W} with block size {self.block_size} does not give "
                f"the requested {gh}x{gw} grid (expected an image of "
                f"{gh * self.block_size}x{gw * self.block_size})"
            )
        x = image
        size = self.input_size((gh, gw))
        if (H, W) != size:
            kw = {}
            if self.resize_mode == "bilinear":
                kw = {"align_corners": False, "antialias": size[0] < H}
            x = F.interpolate(x, size=size, mode=self.resize_mode, **kw)
        z = self.net(x)
        if tuple(z.shape[-2:]) != (gh, gw):  # cannot happen with k // 2 paddings; guard anyway
            raise RuntimeError(f"policy net output {tuple(z.shape)} does not match {(gh, gw)}")
        return z[:, 0]

    def decide(self, image, grid_shape):
        z = self.logits(image, grid_shape).float()
        probs = torch.sigmoid(z)
        if self.training:
            with torch.no_grad():
                mask = torch.bernoulli(probs).bool()
        else:
            mask = z > 0  # p > 0.5
        log_probs = torch.where(mask, F.logsigmoid(z), F.logsigmoid(-z))
        return PolicyOutput.from_mask(mask, probs=probs, log_probs=log_probs, scores=z)

    def extra_repr(self) -> str:
        return (
            f"block_size={self.block_size}, width={self.width}, layers={self.layers}, "
            f"head={self.head!r}, stride={self.stride}, resize_mode={self.resize_mode!r}"
        )
