"""SegBlocksModel: a SwiftNet run in blocks, high resolution where a policy says so.

Pipeline (paper section 3, Fig. 2): the policy picks a grid of HR blocks for the (normalised)
image; BlockSample splits the image; the backbone, decoder and head run on block tensors (the
engine of ``segblocks.blocks``); the SPP, which pools the whole map, runs densely: the
network calls it through :func:`~segblocks.blocks.fallback.dense_call` (combine -> SPP ->
split back into blocks); one BlockCombine at stride 4 gives dense logits, which are
bilinearly upsampled to the input size.

What holds exactly (tested in ``tests/models/test_segblocks_model.py``):

- all-HR policy: the logits equal the dense SwiftNet's (float32 relative error <= 1e-5);
- all-LR policy: every backbone stage equals the dense backbone on the 2x average-pooled image,
  and so do the decoder and logits *except* for the SPP's contribution: the SPP runs on the
  combined map, i.e. on the stride-32 features nearest-upsampled 2x, so its bilinear
  upsampling of the pooled levels happens at twice the resolution before being averaged back.
  The logits therefore differ slightly from the dense network on the pooled image (measured
  in the test), and are *not* claimed equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import BlockSample, BlockTensor, block_combine, kernels
from ..blocks.extension import failure_reason
from ..blocks.tracing import exporting
from ..errors import EXPORT_HINT, ExportError
from ..policies import Policy, policy_from_config
from ..policies.budget import (
    AffineCost,
    Budget,
    CostModel,
    budget_count,
    default_cost_model,
    no_calibration,
    top_k_mask,
)
from .checkpoint import segblocks_from_checkpoint
from .generic import missing_protocol
from .registry import create_model

__all__ = ["SegBlocksModel", "SegBlocksOutput", "create_segblocks"]


@dataclass
class SegBlocksOutput:
    """Result of :class:`SegBlocksModel`.

    Attributes:
        logits: ``[N, classes, H, W]`` at the input size.
        grid: ``[N, GH, GW]`` bool, ``True`` where the block ran at high resolution.
        probs: ``[N, GH, GW]`` policy probability of HR per block (``None`` for fixed policies).
        log_probs: ``[N, GH, GW]`` log-probability of the taken actions (for REINFORCE), or None.
        hr_fraction: ``[N]`` fraction of HR blocks per image.
    """

    logits: Tensor
    grid: Tensor
    probs: Tensor | None
    log_probs: Tensor | None
    hr_fraction: Tensor


# a pytree node, so that torch.export of a SegBlocksModel returns it as it is
torch.export.register_dataclass(SegBlocksOutput, serialized_type_name="segblocks.SegBlocksOutput")


class SegBlocksModel(nn.Module):
    """Wraps a segmentation network (a SwiftNet or any ``SegmentationNet``) for block-based
    dynamic resolution.

    Args:
        net: the segmentation network, with the protocol of
            :class:`~segblocks.models.generic.SegmentationNet`: ``forward_logits(x)`` (logits
            at its stride; runs on block tensors), ``dense_modules`` (``{name: reason}`` of
            the layers run through a dense fallback, e.g. SwiftNet's SPP) and
            ``output_stride``. SwiftNet and every ``create_model`` network have it.
        policy: a :class:`~segblocks.policies.Policy` or a policy name
            (``"all_hr"``, ``"all_lr"``, ``"random"``, ``"heuristic"``, ``"learned"``, ...).
        block_size: block side in input pixels; a multiple of 2 x the network's total stride
            (64 for output stride 32, 32 for output stride 16).
        pad_to_block: pad the input (bottom / right) to a multiple of the block size and crop
            the logits back. With ``False`` a size that is not a multiple raises
            ``ValueError`` naming the size to use.
        input_pad: how ``pad_to_block`` fills the added rows / columns: ``"replicate"``
            (default: the edge pixels repeated, so that the border blocks see no artificial
            edge; the padded pixels are cropped from the logits and never scored) or
            ``"zeros"`` (the mean colour of a normalised image).
        pad_mode: BlockPad sampling of HR neighbours for LR halos (``"avg"``, ``"strided"``,
            ``"zero"``).
        combine: BlockCombine upsampling of LR blocks at stride 4 (``"nearest"``, paper; or
            ``"bilinear"`` with neighbour context).
        dataset, class_names, palette: what the model was trained on (the training dataset's
            name, its class names and ``[(r, g, b), ...]`` colours), ``None`` when unknown;
            :meth:`from_checkpoint` restores them, the CLI uses them to name and draw classes.
        **policy_kwargs: options of a policy given by name
            (:func:`~segblocks.policies.policy_from_config`).

    Input: normalised images ``[N, 3, H, W]`` (as the dense SwiftNet takes them).

    With the ``dense`` policy (:class:`~segblocks.policies.Dense`) no block runs: the plain
    network processes the padded image (resized by the policy's ``scale``), which makes static
    baselines train and evaluate through the same padding, cropping and API.

    Example:
        >>> net = create_model("swiftnet_rn18", num_classes=19)
        >>> model = SegBlocksModel(net, policy="heuristic", tau=0.4, block_size=128).eval()
        >>> out = model(torch.randn(1, 3, 512, 1024))
        >>> out.logits.shape, out.grid.shape   # [1, 19, 512, 1024], [1, 4, 8]
    """

    def __init__(
        self,
        net: nn.Module,
        policy: Policy | str = "all_hr",
        block_size: int = 128,
        *,
        pad_to_block: bool = True,
        input_pad: str = "replicate",
        pad_mode: str = "avg",
        combine: str = "nearest",
        dataset: str | None = None,
        class_names: list[str] | None = None,
        palette: list[tuple[int, int, int]] | None = None,
        **policy_kwargs,
    ):
        super().__init__()
        if input_pad not in ("replicate", "zeros"):
            raise ValueError(f"input_pad {input_pad!r} must be 'replicate' or 'zeros'")
        missing = missing_protocol(net)
        if missing:
            raise TypeError(
                f"{type(net).__name__} lacks {' and '.join(missing)}; wrap it as "
                "segblocks.models.SegmentationNet(encoder, head, decoder, num_classes=..., "
                "output_stride=..., dense_modules={...})"
            )
        stride = int(getattr(net, "output_stride", 32))
        if block_size % (2 * stride):
            raise ValueError(
                f"block size {block_size} is not a multiple of {2 * stride} (2 x the network's "
                f"output stride {stride}); low-res blocks would be fractional pixels in the last "
                f"stage. Use e.g. {max(2 * stride, (block_size // (2 * stride)) * 2 * stride)}"
            )
        if combine not in ("nearest", "bilinear"):
            raise ValueError(f"combine {combine!r} must be 'nearest' or 'bilinear'")
        if isinstance(policy, str):
            policy = policy_from_config(policy, policy_kwargs, block_size=block_size)
        elif policy_kwargs:
            raise ValueError(
                f"policy options {sorted(policy_kwargs)} given with a Policy instance; "
                "configure the instance instead"
            )
        self.net = net
        self.policy = policy
        self.block_size = block_size
        self.pad_to_block = pad_to_block
        self.input_pad = input_pad
        self.combine = combine
        self.sample = BlockSample(block_size, pad_mode)
        self.dataset = dataset
        self.class_names = list(class_names) if class_names else None
        self.palette = [tuple(int(v) for v in c) for c in palette] if palette else None
        #: cost model of ``gmacs`` budgets; ``None``: the registered default (the exact counter
        #: :class:`segblocks.measuring.MacCostModel`), made at the first such budget
        self.mac_cost_model: CostModel | None = None
        #: latency model of ``ms`` budgets (``segblocks calibrate``; see :meth:`latency_cost`)
        self.latency_calibration: CostModel | None = None

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> SegBlocksModel:
        """The trained model of a trainer checkpoint (``segblocks train``'s ``last.pt``, or its
        ``segblocks export``), in eval mode: the network, its policy (weights included), block
        size and BlockPad mode, and the ``dataset``, ``class_names`` and ``palette`` it was
        trained with. Unreadable or unfitting files raise
        :class:`~segblocks.errors.CheckpointError`.

        Example:
            >>> model = SegBlocksModel.from_checkpoint("checkpoints/camvid/segblocks_tau04.pt")
            >>> model.dataset, model.class_names[:2]      # 'camvid', ['sky', 'building']
        """
        return segblocks_from_checkpoint(cls, path, map_location)

    def with_policy(self, policy: Policy | str, **policy_kwargs) -> SegBlocksModel:
        """A model sharing this one's network (not a copy) with another policy, e.g.
        ``model.with_policy("dense")`` for the static network on the same padded input;
        block size, padding, combine and the dataset fields are kept."""
        return type(self)(
            self.net,
            policy,
            self.block_size,
            pad_to_block=self.pad_to_block,
            input_pad=self.input_pad,
            pad_mode=self.sample.pad_mode,
            combine=self.combine,
            dataset=self.dataset,
            class_names=self.class_names,
            palette=self.palette,
            **policy_kwargs,
        ).train(self.training)

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """``(hp, wp)``: ``h x w`` rounded up to whole blocks (raises without ``pad_to_block``)."""
        bs = self.block_size
        hp, wp = math.ceil(h / bs) * bs, math.ceil(w / bs) * bs
        if (hp, wp) != (h, w) and not self.pad_to_block:
            raise ValueError(
                f"input {h}x{w} is not a multiple of block size {bs}; resize or pad it to "
                f"{hp}x{wp}, or construct SegBlocksModel(..., pad_to_block=True)"
            )
        return hp, wp

    @property
    def dense(self) -> bool:
        """``True`` when the policy selects dense execution (``policy.runs_blocks`` false, the
        ``dense`` policy): the plain network runs, no blocks."""
        return not self.policy.runs_blocks

    def pad_input(self, image: Tensor, hp: int, wp: int) -> Tensor:
        """``image [N, 3, H, W]`` padded bottom / right to ``[N, 3, hp, wp]`` (``input_pad``)."""
        H, W = image.shape[-2:]
        if (hp, wp) == (H, W):
            return image
        pad = (0, wp - W, 0, hp - H)
        if self.input_pad == "zeros":
            return F.pad(image, pad)
        return F.pad(image, pad, mode="replicate")

    def dense_input(self, x: Tensor) -> Tensor:
        """The network's input under the ``dense`` policy: ``x [N, 3, H, W]`` resized by the
        policy's ``scale`` (unchanged at scale 1)."""
        size = self.policy.scaled_size(*x.shape[-2:])
        if size == tuple(x.shape[-2:]):
            return x
        # antialiased resizing has CPU kernels for float32 / float64 only (not bfloat16)
        y = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)
        return y.to(x.dtype)

    def run_dense(self, x: Tensor) -> Tensor:
        """The plain network on the (padded) image ``x [N, 3, H, W]``, resized by the
        ``dense`` policy's scale; logits ``[N, classes, h, w]`` at the network's input size."""
        return self.net(self.dense_input(x))

    def run_blocks(self, xb: BlockTensor) -> Tensor:
        """Run the network on a block-sampled image; dense logits at stride 4.

        ``self.net.forward_logits(xb)``: the backbone, decoder and head run on block tensors,
        and the network calls its ``dense_modules`` (SwiftNet's SPP) through
        :func:`~segblocks.blocks.fallback.dense_call`, i.e. on the combined map; then one
        BlockCombine (``self.combine``). No policy, padding or final upsampling (that is
        :meth:`forward`). Nothing is installed on the network, so threads may share it.

        Args:
            xb: the image split into blocks, e.g. ``self.sample(x, mask)`` for a normalised
                ``x [N, 3, H, W]`` (``H``, ``W`` multiples of ``block_size``) and a mask
                ``[N, H / block_size, W / block_size]``: HR blocks ``[Nh, 3, s, s]``, LR blocks
                ``[Nl, 3, s/2, s/2]`` (``s = block_size``).

        Returns:
            logits ``[N, classes, H / 4, W / 4]`` (LR blocks upsampled by the combine).
        """
        logits = self.net.forward_logits(xb)
        return block_combine(logits, self.combine)

    def mac_cost(self, hp: int, wp: int) -> AffineCost:
        """GMACs of one ``hp x wp`` (padded) image with ``k`` HR blocks: ``base + per_block *
        k``, policy included, from ``self.mac_cost_model``."""
        if self.mac_cost_model is None:
            self.mac_cost_model = default_cost_model("gmacs", self)
        return self.mac_cost_model.cost(hp, wp, self.block_size)

    def latency_cost(self, hp: int, wp: int) -> AffineCost:
        """Milliseconds of one ``hp x wp`` image with ``k`` HR blocks, from
        ``self.latency_calibration`` (``segblocks calibrate``)."""
        cal = self.latency_calibration
        if cal is None:
            raise no_calibration()
        return cal.cost(hp, wp, self.block_size)

    def budget_mask(self, x: Tensor, budget, grid_shape) -> tuple[Tensor, object]:
        """``(mask [N, GH, GW], policy output)``: the top-k blocks of the policy's ranking
        that fit ``budget`` (see :mod:`segblocks.policies.budget`)."""
        budget = Budget.parse(budget)
        if self.dense:
            raise ValueError("a budget needs a block policy; the dense policy has no blocks")
        pol = self.policy(x, grid_shape)
        if pol.scores is None:
            raise ValueError(
                f"policy {self.policy.name!r} does not rank blocks; budgets need the learned, "
                "heuristic or random policy"
            )
        hp, wp = x.shape[-2:]
        cost = None
        if budget.unit == "gmacs":
            cost = self.mac_cost(hp, wp)
        elif budget.unit == "ms":
            cost = self.latency_cost(hp, wp)
        k = budget_count(budget, grid_shape[0] * grid_shape[1], cost)
        return top_k_mask(pol.scores, k), pol

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: block execution is Python dispatch on a
        # tensor-like object, which TorchScript cannot express
        raise ExportError(f"torch.jit.script cannot compile a SegBlocksModel; {EXPORT_HINT}")

    def forward(self, image: Tensor, mask: Tensor | None = None, budget=None) -> SegBlocksOutput:
        """``image [N, 3, H, W]`` -> :class:`SegBlocksOutput`; ``mask`` overrides the policy.

        ``budget`` (per image: ``0.4`` or ``"40%"`` of the blocks, ``"12blocks"``,
        ``"2.1gmacs"``, ``"35ms"``, or a :class:`~segblocks.policies.budget.Budget`) runs the
        policy's top-ranked blocks that fit it in high resolution instead of thresholding.
        """
        if torch.jit.is_tracing():
            raise ExportError(
                "torch.jit.trace cannot record block execution (its shapes depend on the "
                f"mask); {EXPORT_HINT}"
            )
        if not exporting() or self.dense:
            return self._forward(image, mask, budget)
        if torch.compiler.is_dynamo_compiling() and torch.compiler.is_exporting():
            raise ExportError(
                "torch.export(strict=True) cannot trace block execution (Python dispatch on "
                f"block tensors); {EXPORT_HINT}"
            )
        if budget is not None:
            raise ExportError(
                "a budget is converted to a block count in Python; exported programs take the "
                f"count as an input: {EXPORT_HINT}"
            )
        if not self.dense and kernels.backend() != "cpp":
            raise ExportError(
                "exporting block execution needs the compiled kernels (segblocks::pad_plan, "
                "segblocks::conv_taps), but the block ops run on the python backend "
                f"({failure_reason() or 'SEGBLOCKS_BACKEND=python'}); {EXPORT_HINT}"
            )
        try:
            return self._forward(image, mask, budget)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - any tracing failure gets the one way that works
            raise ExportError(
                f"tracing this SegBlocksModel failed ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:300]}); {EXPORT_HINT}"
            ) from e

    def _forward(self, image: Tensor, mask: Tensor | None, budget) -> SegBlocksOutput:
        if not isinstance(image, Tensor) or image.dim() != 4:
            raise ValueError(
                f"image must be a [N, 3, H, W] tensor, got "
                f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}"
            )
        N, _, H, W = image.shape
        if N == 0 or H == 0 or W == 0:
            raise ValueError(
                f"SegBlocksModel got an empty batch: image shape {tuple(image.shape)}; pass at "
                "least one image of at least 1x1 pixels ([N >= 1, 3, H, W])"
            )
        hp, wp = self.padded_size(H, W)
        x = self.pad_input(image, hp, wp)
        grid_shape = (hp // self.block_size, wp // self.block_size)
        if budget is not None:
            if mask is not None:
                raise ValueError("give a mask or a budget, not both")
            mask, pol = self.budget_mask(x, budget, grid_shape)
            probs, log_probs = pol.probs, None
        elif mask is None:
            pol = self.policy(x, grid_shape)
            mask, probs, log_probs = pol.mask, pol.probs, pol.log_probs
        else:
            probs = log_probs = None
        if tuple(mask.shape) != (N, *grid_shape):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match the {grid_shape[0]}x"
                f"{grid_shape[1]} grid of a {hp}x{wp} (padded) input with {N} image(s)"
            )
        if self.dense:
            logits = self.run_dense(x)
        else:
            logits = self.run_blocks(self.sample(x, mask))
        logits = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)
        if (hp, wp) != (H, W):
            logits = logits[:, :, :H, :W]
        hr_fraction = mask.flatten(1).float().mean(1)
        return SegBlocksOutput(logits, mask, probs, log_probs, hr_fraction)


def create_segblocks(
    name: str,
    policy: Policy | str = "all_hr",
    block_size: int = 128,
    *,
    pad_to_block: bool = True,
    pad_mode: str = "avg",
    combine: str = "nearest",
    policy_kwargs: dict | None = None,
    **model_kwargs,
) -> SegBlocksModel:
    """``SegBlocksModel`` around ``create_model(name, **model_kwargs)``.

    Example: ``create_segblocks("swiftnet_rn18", "learned", 128, num_classes=19)``.
    """
    net = create_model(name, **model_kwargs)
    return SegBlocksModel(
        net,
        policy,
        block_size,
        pad_to_block=pad_to_block,
        pad_mode=pad_mode,
        combine=combine,
        **(policy_kwargs or {}),
    )
