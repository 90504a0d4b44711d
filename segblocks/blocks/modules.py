"""Thin ``nn.Module`` wrappers around the block functional API."""

from __future__ import annotations

from torch import Tensor, nn

from .combine import block_combine
from .fallback import dense_call
from .pad import block_pad
from .sample import block_sample
from .tensor import BlockTensor, MarginProfile

__all__ = ["BlockSample", "BlockPad", "BlockCombine", "DenseFallback"]


class BlockSample(nn.Module):
    """Dense ``[N, C, H, W]`` + mask ``[N, GH, GW]`` -> :class:`BlockTensor` (see ``block_sample``).

    Each module keeps its own :class:`MarginProfile`, so the halo widths its network needs are
    learned once and reused on every later call.
    """

    def __init__(self, block_size: int, pad_mode: str = "avg"):
        super().__init__()
        self.block_size = block_size
        self.pad_mode = pad_mode
        self.profile = MarginProfile()

    def forward(self, x: Tensor, mask) -> BlockTensor:
        return block_sample(x, mask, self.block_size, pad_mode=self.pad_mode, profile=self.profile)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, pad_mode={self.pad_mode!r}"


class BlockPad(nn.Module):
    """Block tensor -> padded ``(hr, lr)`` blocks (see ``block_pad``)."""

    def __init__(self, padding, mode: str | None = None, border: str = "zeros", value: float = 0.0):
        super().__init__()
        self.padding, self.mode, self.border, self.value = padding, mode, border, value

    def forward(self, x: BlockTensor):
        return block_pad(x, self.padding, mode=self.mode, border=self.border, value=self.value)


class BlockCombine(nn.Module):
    """Block tensor -> dense ``[N, C, H, W]`` (see ``block_combine``)."""

    def __init__(self, upsample: str = "nearest"):
        super().__init__()
        self.upsample = upsample

    def forward(self, x: BlockTensor) -> Tensor:
        return block_combine(x, self.upsample)


class DenseFallback(nn.Module):
    """Run ``module`` on the dense map: combine -> module -> re-sample with the same grid.

    For layers that need the whole map (global pooling, SPP), as a module: ``forward`` is
    :func:`~segblocks.blocks.fallback.dense_call` of ``module``, so dense inputs pass straight
    through and a wrapped network still runs densely. Wrapping adds ``module.`` to the
    wrapped layer's state-dict keys; the networks of :mod:`segblocks.models` do not wrap, they
    call their dense layers through ``dense_call`` directly.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x, *args, **kwargs):
        return dense_call(self.module, x, *args, **kwargs)
