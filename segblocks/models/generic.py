"""A generic segmentation network for SegBlocks: encoder -> decoder -> head -> upsample.

In the spirit of segmentation_models_pytorch's ``SegmentationModel``: any network given as
modules runs densely (:meth:`SegmentationNet.forward`) and in blocks through
:class:`~segblocks.models.segblocks_model.SegBlocksModel`, which calls
:meth:`SegmentationNet.forward_logits` on a block tensor. ``forward_logits`` calls the listed
``dense_modules`` through :func:`~segblocks.blocks.fallback.dense_call` (on a block tensor:
combine -> module -> re-sample; on a dense tensor: the plain call). It can route a module
that is one of the three parts (``"encoder"``, ``"decoder"``, ``"head"``) or a child of
``nn.Sequential`` containers under one (e.g. ``"head.0"``, whose container it runs child
by child); a module inside another module's own ``forward`` is refused at construction.
Every other layer must have a block handler (``segblocks.blocks.layers``); an op without one
raises :class:`~segblocks.blocks.UnsupportedBlockOp` naming it, and the fix is to list the
module that calls it in ``dense_modules`` with the reason.

The protocol :class:`SegBlocksModel` needs (SwiftNet implements it too):

- ``forward_logits(x)``: image ``[N, 3, H, W]`` -> logits ``[N, K, H / s, W / s]``, dense or
  on a block tensor, calling the layers that need the whole map through ``dense_call``;
- ``dense_modules``: ``{submodule name: reason}`` of those layers (what the network declares;
  ``SegBlocksModel`` only checks that it is there);
- ``output_stride``: the encoder's deepest stride (block sizes must be multiples of twice it);
- ``num_classes``; optionally ``input_mean`` / ``input_std`` and ``backbone_parameters()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks.fallback import dense_call

__all__ = ["SegmentationNet", "Select", "PROTOCOL", "missing_protocol"]

#: what SegBlocksModel calls on a network
PROTOCOL = ("forward_logits", "dense_modules")

#: the parts of a SegmentationNet, in execution order
PARTS = ("encoder", "decoder", "head")


def missing_protocol(net) -> list[str]:
    """The :data:`PROTOCOL` attributes ``net`` lacks (empty: it runs in SegBlocksModel)."""
    return [a for a in PROTOCOL if not hasattr(net, a)]


class Select(nn.Module):
    """Pick ``key`` from a dict (or index of a list) of encoder features."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    def forward(self, features):
        return features[self.key]

    def extra_repr(self) -> str:
        return f"key={self.key!r}"


class SegmentationNet(nn.Module):
    """``head(decoder(encoder(x)))`` upsampled bilinearly to the input size.

    Args:
        encoder: image ``[N, 3, H, W]`` -> features (a tensor, list or dict).
        head: decoder output -> logits ``[N, num_classes, H / s, W / s]``.
        decoder: features -> what the head takes (``None``: the head takes the features).
        num_classes: classes of the logits.
        output_stride: the encoder's deepest stride (e.g. 8 for a dilated ResNet, 32 for a
            plain one); SegBlocksModel checks block sizes against it.
        dense_modules: ``{name: reason}``: submodules (dotted names under this module, e.g.
            ``"head.0"``) that need the whole map; :meth:`forward_logits` calls them through
            ``dense_call``. Each is ``"encoder"``, ``"decoder"``, ``"head"`` or a child of
            ``nn.Sequential`` containers under one (anything else raises ``ValueError``: list
            the container instead, or call the module through ``dense_call`` in its parent's
            forward). The reason is shown by ``repr`` and in the docs.
        input_mean, input_std: the input normalisation the encoder expects (ImageNet default).
        backbone: the parameters given the backbone learning rate in training (default: the
            encoder's).
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        decoder: nn.Module | None = None,
        *,
        num_classes: int,
        output_stride: int,
        dense_modules: dict[str, str] | None = None,
        input_mean=(0.485, 0.456, 0.406),
        input_std=(0.229, 0.224, 0.225),
        backbone: Callable | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder if decoder is not None else nn.Identity()
        self.head = head
        self.num_classes = int(num_classes)
        self.output_stride = int(output_stride)
        self.dense_modules = dict(dense_modules or {})
        for name, reason in self.dense_modules.items():
            self.get_submodule(name)  # raises AttributeError naming a missing module
            if not reason:
                raise ValueError(f"dense module {name!r} needs a reason (why it needs the map)")
            self._check_routable(name)
        self.input_mean, self.input_std = tuple(input_mean), tuple(input_std)
        self._backbone = backbone

    def backbone_parameters(self):
        """The pretrained parameters (lr and weight decay x ``backbone_lr_mult``)."""
        return self._backbone() if self._backbone is not None else self.encoder.parameters()

    def forward_logits(self, x: Tensor) -> Tensor:
        """Image ``[N, 3, H, W]`` (dense or block tensor) -> logits at the head's stride.

        ``head(decoder(encoder(x)))`` with the :attr:`dense_modules` called through
        :func:`~segblocks.blocks.fallback.dense_call`.
        """
        for part in PARTS:
            x = self._call(part, getattr(self, part), x)
        return x

    def _call(self, name: str, module: nn.Module, x):
        """``module(x)`` for the submodule ``name``, the dense modules at or under it called
        through ``dense_call``; a ``Sequential`` holding some runs child by child."""
        if name in self.dense_modules:
            return dense_call(module, x)
        if not any(d.startswith(name + ".") for d in self.dense_modules):
            return module(x)
        for child, sub in module._modules.items():  # what nn.Sequential.forward runs
            x = self._call(f"{name}.{child}", sub, x)
        return x

    def _check_routable(self, name: str) -> None:
        """Raise unless :meth:`_call` reaches the dense module ``name``."""
        parts = name.split(".")
        if parts[0] not in PARTS:
            raise ValueError(
                f"dense module {name!r} is not under {', '.join(PARTS)}; forward_logits calls "
                "only those parts and the children of nn.Sequential containers in them"
            )
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            m = self.get_submodule(parent)
            if type(m).forward is not nn.Sequential.forward:
                raise ValueError(
                    f"dense module {name!r} is called by {parent!r} ({type(m).__name__}) in its "
                    "own forward, which SegmentationNet cannot route through dense_call: list "
                    f"{parent!r} instead (it then runs densely as a whole), or call the module "
                    "through segblocks.blocks.fallback.dense_call in that forward and leave it "
                    "out of dense_modules"
                )

    def forward(self, x: Tensor) -> Tensor:
        """Image ``[N, 3, H, W]`` -> logits ``[N, num_classes, H, W]``."""
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        dense = ", ".join(f"{k} ({v})" for k, v in self.dense_modules.items()) or "none"
        return f"num_classes={self.num_classes}, output_stride={self.output_stride}, dense: {dense}"
