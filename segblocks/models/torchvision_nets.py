"""torchvision segmentation models as :class:`~segblocks.models.generic.SegmentationNet`.

``create_model("deeplabv3_mobilenet_v3_large", num_classes=11)`` builds torchvision's network
(random weights: no download; pass ``weights_backbone=...`` when online) and splits it into
encoder (``model.backbone``), decoder (the feature it reads) and head (``model.classifier``);
the dense forward gives torchvision's logits at the input size, and
``SegBlocksModel(net, policy=..., block_size=...)`` runs it in blocks.

The backbones run in blocks (squeeze-excitation pools globally per image, exact on block
tensors), and so do the FCN and LR-ASPP heads (LR-ASPP's attention branch is a global pool
too). DeepLabV3's ASPP runs densely: it is listed in ``dense_modules`` (``"head.0"``, the
first child of the ``DeepLabHead`` Sequential), so ``SegmentationNet.forward_logits`` calls
it through :func:`~segblocks.blocks.fallback.dense_call`. Its atrous convolutions (rates 12,
24, 36) read pixels up to 36 positions away, further than the neighbouring blocks' halo
reaches at any practical block size. (Its image-pooling branch alone would run in blocks.)
Output strides: the dilated ResNet-50s are at stride 8 (blocks: multiples of 16), the
MobileNetV3s at stride 16 (multiples of 32).
"""

from __future__ import annotations

from .generic import SegmentationNet, Select
from .registry import register_model

__all__ = []


def _build(name: str, num_classes: int, weights_backbone, **kwargs):
    import torchvision.models.segmentation as seg

    return getattr(seg, name)(
        weights=None,
        weights_backbone=weights_backbone,
        num_classes=int(num_classes),
        **kwargs,
    )


ASPP_DENSE = {
    "head.0": "ASPP: atrous convolutions with rates 12 / 24 / 36 read beyond the neighbouring "
    "blocks' halo"
}


def _recipe(name: str, output_stride: int, key: str | None, doc: str, dense=None):
    def build(num_classes: int = 21, weights_backbone=None) -> SegmentationNet:
        kw = {"aux_loss": False} if key is not None else {}
        tv = _build(name, num_classes, weights_backbone, **kw)
        return SegmentationNet(
            tv.backbone,
            tv.classifier,
            Select(key) if key is not None else None,
            num_classes=num_classes,
            output_stride=output_stride,
            dense_modules=dense,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    build.model_arguments = ("num_classes", "weights_backbone")
    build.output_stride = output_stride
    register_model(name)(build)
    return build


_recipe("fcn_resnet50", 8, "out", "torchvision FCN-ResNet50 (dilated, output stride 8).")
_recipe(
    "deeplabv3_resnet50",
    8,
    "out",
    "torchvision DeepLabV3-ResNet50 (output stride 8; ASPP dense).",
    ASPP_DENSE,
)
_recipe(
    "deeplabv3_mobilenet_v3_large",
    16,
    "out",
    "torchvision DeepLabV3-MobileNetV3-Large (output stride 16, squeeze-excitation; ASPP dense).",
    ASPP_DENSE,
)
_recipe(
    "lraspp_mobilenet_v3_large",
    16,
    None,
    "torchvision LR-ASPP-MobileNetV3-Large (features at strides 8 and 16).",
)
