"""The one MAC formula of the project: multiply-accumulates of a conv or linear layer.

Convention (the paper's GMACs): only ``nn.Conv2d`` and ``nn.Linear`` count, bias excluded. One
output element of a conv costs ``C_in / groups * kh * kw`` MACs, one of a linear layer
``in_features``; a layer's MACs are that times its number of output elements
(``C_out * H_out * W_out`` per image for a conv, ``out_features`` per vector for a linear).

Every MAC counter calls :func:`macs_per_output_element`: the exact hook counter
(:mod:`segblocks.measuring.macs`), the policy network's static count
(:func:`segblocks.policies.learned.conv_stack_macs`) and the block engine's
:class:`~segblocks.blocks.stats.BlockStats`. It lives in ``blocks`` (below ``policies`` and
``measuring`` in the package's layers) and imports only torch, so every counter may import it
without an import cycle.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["macs_per_output_element"]


def macs_per_output_element(layer: nn.Module | Tensor) -> int:
    """MACs of one output element of ``layer``.

    ``layer`` is an ``nn.Conv2d`` (``C_in / groups * kh * kw``), an ``nn.Linear``
    (``in_features``) or a conv weight tensor ``[C_out, C_in / groups, kh, kw]`` (the product
    of its trailing sizes, the same number for the conv that owns it).
    """
    if isinstance(layer, Tensor):
        return math.prod(layer.shape[1:])
    if isinstance(layer, nn.Conv2d):
        return (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return layer.in_features
    raise TypeError(f"cannot count MACs of {type(layer).__name__}: only Conv2d and Linear count")
