"""SwiftNet, single scale (Orsic et al., CVPR 2019), as used by SegBlocks (TPAMI, section 4).

Architecture (``SwiftNet``):

- **Backbone**: a timm ``features_only`` trunk giving four maps at strides 4, 8, 16, 32
  (ResNet-18: 64/128/256/512 channels; ResNet-50: 256/512/1024/2048; EfficientNet-Lite1:
  24/40/112/320). The maps are timm's stage outputs, i.e. **post-ReLU** for ResNets (each
  residual block ends with a ReLU) and the linear (post-BN) block output for EfficientNet. The
  original SwiftNet taps pre-activation maps; the SegBlocks code used the post-ReLU ones, which
  lets the trunk stay an unmodified timm network. Each consumer starts with BN-ReLU anyway.
- **SPP** (``model.spp``) on the stride-32 map: BN-ReLU-Conv1x1 -> ``spp_width``; three levels
  of adaptive average pooling to grids of 8, 4, 2 rows (columns scaled by the map's aspect
  ratio), each BN-ReLU-Conv1x1 -> ``spp_width // 3`` and bilinear upsampling back; concatenate
  -> BN-ReLU-Conv1x1 -> ``decoder_width``. It needs the whole map (global pooling, arbitrary
  resizes), so ``decode`` calls it through :func:`~segblocks.blocks.fallback.dense_call`: on
  block tensors it runs on the combined map and its output is split back into blocks.
- **Decoder** (``model.decoder``): one upsampling stage per lateral (stride 16, 8, 4): lateral
  BN-ReLU-Conv1x1 -> width, 2x bilinear upsampling (``align_corners=False``) of the coarse map,
  add, BN-ReLU-Conv3x3. Only ops the block engine runs on block tensors.
- **Head** (``model.head``): BN-ReLU-Conv1x1 -> classes at stride 4. ``forward_features``
  returns these stride-4 logits; ``forward`` upsamples them bilinearly to the input size.

``output_stride=16`` removes the stride of the last backbone stage (the SegBlocks CamVid
setting): by default the stride-2 convs of that stage simply get stride 1 (as the SegBlocks
code did; weights unchanged), with ``dilate_last_stage=True`` timm's ``output_stride=16`` is
used instead (stride 1 plus dilation 2 in the following layers). The SPP then runs at stride 16
and, as in the original code, the decoder has two stages (laterals from strides 8 and 4).

Choices taken from the SegBlocks code (``models/seg/swiftnet``): SPP width equals the decoder
width (128; 48 for EfficientNet-Lite1), level width ``spp_width // 3`` (42; 16), BN momentum
0.02 in the decoder and head and 0.005 in the SPP, Kaiming (fan-out) init of the new convs,
bias only in the final 1x1 conv.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks.fallback import dense_call
from .registry import register_model
from .weights import load_backbone_weights

__all__ = [
    "BACKBONES",
    "BNReluConv",
    "SpatialPyramidPooling",
    "UpsampleStage",
    "SwiftNetDecoder",
    "SwiftNet",
    "swiftnet_rn18",
    "swiftnet_rn50",
    "swiftnet_effl1",
]


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    out_indices: tuple[int, ...]  # timm feature indices at strides 4, 8, 16, 32
    last_stage: tuple[str, ...]  # modules between the stride-16 and stride-32 features
    decoder_width: int


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", (1, 2, 3, 4), ("layer4",), 128),
    "resnet50": BackboneSpec("resnet50", (1, 2, 3, 4), ("layer4",), 128),
    # blocks.4 ends at stride 16; blocks.5 (stride 2) and blocks.6 (stride 1) give stride 32.
    "tf_efficientnet_lite1": BackboneSpec(
        "tf_efficientnet_lite1", (1, 2, 3, 4), ("blocks.5", "blocks.6"), 48
    ),
    # Squeeze-excitation in every block (a global mean per image: exact on block tensors).
    "efficientnet_b0": BackboneSpec("efficientnet_b0", (1, 2, 3, 4), ("blocks.5", "blocks.6"), 64),
    "mobilenetv3_large_100": BackboneSpec(
        "mobilenetv3_large_100", (1, 2, 3, 4), ("blocks.5", "blocks.6"), 64
    ),
}

DECODER_BN_MOMENTUM = 0.02
SPP_BN_MOMENTUM = 0.005


class BNReluConv(nn.Sequential):
    """BatchNorm -> ReLU -> Conv(k x k, 'same' padding)."""

    def __init__(
        self, c_in: int, c_out: int, k: int = 3, bias: bool = False, bn_momentum: float = 0.1
    ):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)  # acts on the fresh BN output only
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=k, padding=k // 2, bias=bias)


def _upsample_to(x, ref) -> Tensor:
    """Bilinear upsampling of ``x`` to ``ref``'s spatial size.

    Exactly 2x (``scale_factor=2``) whenever that gives the right size, which is always the case
    for block tensors (and for inputs whose sides are multiples of the output stride); other
    dense sizes (e.g. 360-px inputs) fall back to ``size=``.
    """
    h, w = x.shape[-2:]
    H, W = ref.shape[-2:]
    if (2 * h, 2 * w) == (H, W):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)


class SpatialPyramidPooling(nn.Module):
    """SwiftNet SPP: bottleneck, pooled levels upsampled back, concatenation, fuse.

    Args:
        c_in: input channels (backbone's last stage).
        width: bottleneck width (``spp_width``); each level has ``width // len(grids)``.
        c_out: output channels (decoder width).
        grids: rows of each pooling level; columns are ``max(1, round(rows * W / H))`` unless
            ``square_grid``.
    """

    def __init__(
        self,
        c_in: int,
        width: int = 128,
        c_out: int = 128,
        grids: tuple[int, ...] = (8, 4, 2),
        square_grid: bool = False,
        bn_momentum: float = SPP_BN_MOMENTUM,
    ):
        super().__init__()
        self.grids = tuple(int(g) for g in grids)
        self.square_grid = square_grid
        level_width = width // len(self.grids)
        self.level_width = level_width
        self.bottleneck = BNReluConv(c_in, width, k=1, bn_momentum=bn_momentum)
        self.levels = nn.ModuleList(
            BNReluConv(width, level_width, k=1, bn_momentum=bn_momentum) for _ in self.grids
        )
        self.fuse = BNReluConv(
            width + level_width * len(self.grids), c_out, k=1, bn_momentum=bn_momentum
        )

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        ar = W / H
        x = self.bottleneck(x)
        outs = [x]
        for g, level in zip(self.grids, self.levels, strict=True):
            size = (g, g) if self.square_grid else (g, max(1, round(ar * g)))
            y = level(F.adaptive_avg_pool2d(x, size))
            outs.append(F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(outs, 1))


class UpsampleStage(nn.Module):
    """Lateral BN-ReLU-Conv1x1, 2x bilinear upsampling of the coarse map, add, BN-ReLU-Conv3x3."""

    def __init__(
        self, c_skip: int, width: int, k: int = 3, bn_momentum: float = DECODER_BN_MOMENTUM
    ):
        super().__init__()
        self.lateral = BNReluConv(c_skip, width, k=1, bn_momentum=bn_momentum)
        self.blend = BNReluConv(width, width, k=k, bn_momentum=bn_momentum)

    def forward(self, x, skip):
        skip = self.lateral(skip)
        x = _upsample_to(x, skip)
        return self.blend(x + skip)


class SwiftNetDecoder(nn.Module):
    """Upsampling path. ``forward(x, laterals)``: ``x`` the SPP output, ``laterals`` the
    backbone maps used as skips, ordered fine to coarse (e.g. strides 4, 8, 16).

    Runs on dense tensors and on block tensors alike (convs, BN, ReLU, adds, 2x upsampling).
    """

    def __init__(
        self, lateral_channels, width: int = 128, k: int = 3, bn_momentum=DECODER_BN_MOMENTUM
    ):
        super().__init__()
        # Stages are stored coarse to fine, i.e. in execution order.
        self.stages = nn.ModuleList(
            UpsampleStage(c, width, k=k, bn_momentum=bn_momentum)
            for c in reversed(list(lateral_channels))
        )

    def forward(self, x, laterals):
        laterals = list(laterals)
        if len(laterals) != len(self.stages):
            raise ValueError(f"decoder expects {len(self.stages)} laterals, got {len(laterals)}")
        for stage, skip in zip(self.stages, reversed(laterals), strict=True):
            x = stage(x, skip)
        return x


def _remove_stride(trunk: nn.Module, module_names) -> int:
    """Set every stride-2 conv inside ``module_names`` of ``trunk`` to stride 1 (in place).

    Valid for convs whose padding keeps the size at stride 1: timm's dynamic TF-'same' convs
    (``Conv2dSame``, padding computed from the stride at run time) and symmetric ``k // 2``
    padding. Returns the number of convs changed.
    """
    from timm.layers import Conv2dSame

    changed = 0
    for name in module_names:
        module = trunk.get_submodule(name)
        for sub_name, m in module.named_modules():
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and m.stride not in (1, (1, 1)):
                raise ValueError(f"cannot remove the stride of pooling layer {name}.{sub_name}")
            if not isinstance(m, nn.Conv2d) or tuple(m.stride) == (1, 1):
                continue
            if tuple(m.stride) != (2, 2):
                raise ValueError(f"{name}.{sub_name} has stride {m.stride}; expected 2")
            same = tuple((k - 1) * d // 2 for k, d in zip(m.kernel_size, m.dilation, strict=True))
            if not isinstance(m, Conv2dSame) and tuple(m.padding) != same:
                raise ValueError(
                    f"{name}.{sub_name}: padding {m.padding} does not keep the size at stride 1"
                )
            m.stride = (1, 1)
            changed += 1
    if not changed:
        raise ValueError(f"no stride-2 conv found in {module_names}")
    return changed


def _init_new(modules) -> None:
    """Kaiming (fan-out) init of the decoder convs, identity BN (as the SwiftNet code)."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SwiftNet(nn.Module):
    """Single-scale SwiftNet with a timm backbone (see the module docstring).

    Args:
        backbone: one of ``BACKBONES`` (``resnet18``, ``resnet50``, ``tf_efficientnet_lite1``).
        num_classes: output classes.
        decoder_width: decoder / SPP output width; default 128 (48 for EfficientNet-Lite1, as in
            the paper).
        spp_width: SPP bottleneck width; default ``decoder_width`` (the SegBlocks code).
        output_stride: 32, or 16 to remove the stride of the last backbone stage.
        dilate_last_stage: with ``output_stride=16``, compensate the removed stride with
            dilation (timm ``output_stride=16``) instead of plain stride removal.
        pretrained_backbone: ``False``, ``True`` (ImageNet weights: packaged for
            EfficientNet-Lite1, timm's download for ResNets) or a path to a state-dict file; see
            :mod:`segblocks.models.weights`.
        spp_grids, spp_square_grid: SPP pooling grids (rows) and whether they are square.
        decoder_bn_momentum, spp_bn_momentum: BN momentum of the new layers (SegBlocks code:
            0.02 and 0.005; raise them for short training runs).

    Attributes:
        backbone, spp, decoder, head: the four parts; ``feature_strides`` of the backbone maps;
        ``backbone_weights``: what was loaded into the backbone (``None``: random init);
        ``input_mean`` / ``input_std``: the normalisation the pretrained backbone expects.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 19,
        decoder_width: int | None = None,
        spp_width: int | None = None,
        output_stride: int = 32,
        dilate_last_stage: bool = False,
        pretrained_backbone=False,
        spp_grids: tuple[int, ...] = (8, 4, 2),
        spp_square_grid: bool = False,
        decoder_bn_momentum: float = DECODER_BN_MOMENTUM,
        spp_bn_momentum: float = SPP_BN_MOMENTUM,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {backbone!r}; available: {', '.join(sorted(BACKBONES))}"
            )
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 32 or 16, got {output_stride!r}")
        if dilate_last_stage and output_stride != 16:
            raise ValueError("dilate_last_stage=True requires output_stride=16")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes!r}")
        spec = BACKBONES[backbone]
        self.backbone_name = backbone
        self.num_classes = int(num_classes)
        self.output_stride = output_stride
        decoder_width = int(decoder_width or spec.decoder_width)
        spp_width = int(spp_width or decoder_width)
        self.decoder_width, self.spp_width = decoder_width, spp_width

        create_kwargs = dict(features_only=True, out_indices=spec.out_indices)
        if dilate_last_stage:
            create_kwargs["output_stride"] = 16
        self.backbone = timm.create_model(spec.timm_name, pretrained=False, **create_kwargs)
        self.backbone_weights = load_backbone_weights(
            self.backbone, spec.timm_name, pretrained_backbone, create_kwargs
        )
        if output_stride == 16 and not dilate_last_stage:
            _remove_stride(self.backbone, spec.last_stage)
        strides = [4, 8, 16, 32]
        if output_stride == 16:
            strides[-1] = 16
        self.feature_strides = tuple(strides)
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        self.input_mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.input_std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

        channels = self.backbone.feature_info.channels()
        # Laterals: the maps at strides 4, 8 (and 16 unless the last stage runs at 16 too).
        self.num_laterals = 3 if output_stride == 32 else 2
        self.spp = SpatialPyramidPooling(
            channels[-1],
            spp_width,
            decoder_width,
            grids=spp_grids,
            square_grid=spp_square_grid,
            bn_momentum=spp_bn_momentum,
        )
        self.decoder = SwiftNetDecoder(
            channels[: self.num_laterals], decoder_width, bn_momentum=decoder_bn_momentum
        )
        self.head = BNReluConv(
            decoder_width, self.num_classes, k=1, bias=True, bn_momentum=decoder_bn_momentum
        )
        _init_new(m for part in (self.spp, self.decoder, self.head) for m in part.modules())

    # ------------------------------------------------------------------ parameter groups
    def backbone_parameters(self):
        """Pretrained parameters (the paper's recipe: lr and weight decay x 0.25)."""
        return self.backbone.parameters()

    def head_parameters(self):
        """Randomly initialised parameters: SPP, decoder, head."""
        for part in (self.spp, self.decoder, self.head):
            yield from part.parameters()

    # ------------------------------------------------------------------ forward
    def decode(self, features):
        """Backbone maps (strides 4, 8, 16, 32) -> logits at stride 4.

        Dense maps or block tensors: the SPP (:attr:`dense_modules`) is called through
        :func:`~segblocks.blocks.fallback.dense_call`, which runs it on the combined map when
        its input is a block tensor; the decoder and head run on block tensors as they are.
        """
        features = list(features)
        x = dense_call(self.spp, features[-1])
        x = self.decoder(x, features[: self.num_laterals])
        return self.head(x)

    #: layers that need the whole map, with the reason: :meth:`decode` calls them through
    #: ``dense_call`` (on the combined map in block execution)
    dense_modules = {
        "spp": "pyramid pooling to 8/4/2-row grids: each pooled cell mixes blocks of both "
        "resolutions, which blocks cannot express exactly"
    }

    def forward_features(self, x: Tensor) -> Tensor:
        """Image ``[N, 3, H, W]`` -> logits ``[N, classes, H/4, W/4]`` (stride 4)."""
        return self.decode(self.backbone(x))

    def forward_logits(self, x: Tensor) -> Tensor:
        """The :class:`~segblocks.models.generic.SegmentationNet` protocol: logits at stride
        4 (:meth:`forward_features`)."""
        return self.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Image ``[N, 3, H, W]`` -> logits ``[N, classes, H, W]`` (bilinear upsampling)."""
        logits = self.forward_features(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("swiftnet_rn18")
def swiftnet_rn18(**kwargs) -> SwiftNet:
    """SwiftNet with a ResNet-18 backbone (decoder width 128)."""
    return SwiftNet(backbone="resnet18", **kwargs)


@register_model("swiftnet_rn50")
def swiftnet_rn50(**kwargs) -> SwiftNet:
    """SwiftNet with a ResNet-50 backbone (decoder width 128)."""
    return SwiftNet(backbone="resnet50", **kwargs)


@register_model("swiftnet_effl1")
def swiftnet_effl1(**kwargs) -> SwiftNet:
    """SwiftNet with an EfficientNet-Lite1 backbone (tf_efficientnet_lite1; decoder width 48)."""
    return SwiftNet(backbone="tf_efficientnet_lite1", **kwargs)


# The keyword arguments of the builders above (checked by the training config).
_SWIFTNET_ARGS = tuple(
    n for n in inspect.signature(SwiftNet.__init__).parameters if n not in ("self", "backbone")
)


@register_model("swiftnet_effb0")
def swiftnet_effb0(**kwargs) -> SwiftNet:
    """SwiftNet with a timm EfficientNet-B0 backbone (squeeze-excitation, SiLU; width 64)."""
    return SwiftNet(backbone="efficientnet_b0", **kwargs)


@register_model("swiftnet_mbv3")
def swiftnet_mbv3(**kwargs) -> SwiftNet:
    """SwiftNet with a timm MobileNetV3-Large backbone (squeeze-excitation, hardswish)."""
    return SwiftNet(backbone="mobilenetv3_large_100", **kwargs)


for _fn in (swiftnet_rn18, swiftnet_rn50, swiftnet_effl1, swiftnet_effb0, swiftnet_mbv3):
    _fn.model_arguments = _SWIFTNET_ARGS
