"""Exact multiply-accumulate (MAC) accounting for dense models and for block execution.

Convention (the paper's GMACs, NOTES "The original SegBlocks code"): only ``nn.Conv2d`` and
``nn.Linear`` layers count; bias, batch norm, activations, pooling, upsampling and the block
modules cost nothing. A conv costs ``out_elements * C_in / groups * kh * kw`` (``out_elements``
= ``C_out * H_out * W_out`` per image), a linear layer ``in_features * out_features`` per
output vector. Counts come from forward hooks on the modules, so they see the real output
sizes (timm's TF-"same" convs included) and nothing is estimated.

Block execution: a conv whose output is a :class:`~segblocks.blocks.BlockTensor` costs the
dense conv's per-pixel MACs over the output pixels of its HR blocks (``[Nh, C, s, s]``) and of
its LR blocks (``[Nl, C, s/2, s/2]``), counted separately. All images of a batch share one
block batch; MACs are attributed to image ``n`` from its own number of HR / LR blocks in
``grid.mask[n]``. Layers that see a dense tensor (e.g. inside ``DenseFallback``, or after a
``block_combine``) count at the dense map size, split evenly over the images. Policy networks
are counted separately (``policy`` rows) and included in the totals.

Typical use::

    rep = count_macs_blocks(trunk, image, mask, block_size=128, policy=policy)
    print(rep.table()); rep.per_image; rep.total
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..blocks.macs import macs_per_output_element
from ..policies.budget import AffineCost

if TYPE_CHECKING:
    from ..models.segblocks_model import SegBlocksModel

__all__ = [
    "MacRow",
    "MacReport",
    "count_macs_dense",
    "count_macs_blocks",
    "count_macs_segblocks",
    "MacCostModel",
    "model_from_name",
    "compare_macs",
]


@dataclass
class MacRow:
    """One call of one conv / linear module (a module called twice gives two rows)."""

    name: str
    type: str
    output: str  # shape of the output: dense, or "HR [..] + LR [..]"
    kind: str  # "dense" | "block" | "policy"
    hr: int = 0  # MACs over HR blocks (kind "block")
    lr: int = 0  # MACs over LR blocks (kind "block")
    dense: int = 0  # MACs at the dense map size (kind "dense" / "policy")
    per_image: list[int] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return self.hr + self.lr + self.dense


@dataclass
class MacReport:
    """MACs of one forward pass, per layer and per image.

    Attributes:
        rows: per-layer rows in call order (policy rows included, ``kind == "policy"``).
        per_image: total MACs of each image (network + policy), ``len == num_images``.
        policy_per_image: the policy's share of ``per_image``.
        num_images: images in the batch.
        mode: ``"dense"`` or ``"blocks"``.
        input_shape: shape of the input batch ``(N, C, H, W)``.
        hr_fraction: per image fraction of HR blocks (block mode), else ``None``.
    """

    rows: list[MacRow]
    per_image: list[int]
    policy_per_image: list[int]
    num_images: int
    mode: str
    input_shape: tuple
    hr_fraction: list[float] | None = None

    # ------------------------------------------------------------------ totals
    @property
    def total(self) -> int:
        """All MACs of the batch, network + policy."""
        return sum(self.per_image)

    @property
    def policy(self) -> int:
        return sum(self.policy_per_image)

    @property
    def network(self) -> int:
        return self.total - self.policy

    @property
    def hr(self) -> int:
        return sum(r.hr for r in self.rows)

    @property
    def lr(self) -> int:
        return sum(r.lr for r in self.rows)

    @property
    def dense(self) -> int:
        """MACs of network layers that ran on dense maps (not policy rows)."""
        return sum(r.dense for r in self.rows if r.kind != "policy")

    @property
    def mean_per_image(self) -> float:
        return self.total / self.num_images

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "input_shape": list(self.input_shape),
            "num_images": self.num_images,
            "total": self.total,
            "network": self.network,
            "hr": self.hr,
            "lr": self.lr,
            "dense": self.dense,
            "policy": self.policy,
            "per_image": list(self.per_image),
            "policy_per_image": list(self.policy_per_image),
            "hr_fraction": self.hr_fraction,
            "rows": [
                {
                    "name": r.name,
                    "type": r.type,
                    "output": r.output,
                    "kind": r.kind,
                    "hr": r.hr,
                    "lr": r.lr,
                    "dense": r.dense,
                    "macs": r.macs,
                }
                for r in self.rows
            ],
        }

    # ------------------------------------------------------------------ printing
    def summary(self) -> str:
        g = 1e9
        n = self.num_images
        lines = [
            f"mode: {self.mode}, input {'x'.join(str(v) for v in self.input_shape)}, "
            f"{n} image(s); conv + linear MACs only"
        ]
        if self.hr_fraction is not None:
            fr = ", ".join(f"{f:.3f}" for f in self.hr_fraction)
            lines.append(f"HR block fraction per image: {fr}")
        parts = f"network {self.network / g:.4f}"
        if self.mode == "blocks":
            parts += f" (HR {self.hr / g:.4f} + LR {self.lr / g:.4f} + dense {self.dense / g:.4f})"
        parts += f" + policy {self.policy / g:.4f}"
        lines.append(f"batch total: {self.total / g:.4f} GMACs = {parts}")
        per = ", ".join(f"{v / g:.4f}" for v in self.per_image)
        lines.append(f"per image: [{per}] GMACs; mean {self.mean_per_image / g:.4f} GMACs")
        return "\n".join(lines)

    def table(self, unit: float = 1e6, max_rows: int | None = None) -> str:
        """Per-layer table (MACs in units of ``unit``, default millions) and the summary."""
        u = {1.0: "", 1e3: "K", 1e6: "M", 1e9: "G"}.get(unit, f"x{unit:g} ")
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        w_name = max([len("layer")] + [len(r.name) for r in rows])
        w_type = max([len("type")] + [len(r.type) for r in rows])
        w_out = max([len("output")] + [len(r.output) for r in rows])
        head = (
            f"{'layer':<{w_name}}  {'type':<{w_type}}  {'kind':<6}  {'output':<{w_out}}  "
            f"{'HR ' + u + 'MACs':>12}  {'LR ' + u + 'MACs':>12}  {'dense ' + u + 'MACs':>12}  "
            f"{'total ' + u + 'MACs':>12}"
        )
        out = [head, "-" * len(head)]
        for r in rows:
            out.append(
                f"{r.name:<{w_name}}  {r.type:<{w_type}}  {r.kind:<6}  {r.output:<{w_out}}  "
                f"{r.hr / unit:12.3f}  {r.lr / unit:12.3f}  {r.dense / unit:12.3f}  "
                f"{r.macs / unit:12.3f}"
            )
        if max_rows is not None and len(self.rows) > max_rows:
            out.append(f"... {len(self.rows) - max_rows} more rows")
        out.append("-" * len(head))
        out.append(self.summary())
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------------------- hooks
def _shape_str(shape) -> str:
    return "[" + ", ".join(str(int(v)) for v in shape) + "]"


def _split_evenly(total: int, n: int) -> list[int]:
    q, r = divmod(total, n)
    return [q + (1 if i < r else 0) for i in range(n)]


class _Recorder:
    """Forward hooks on every Conv2d / Linear of a model that append :class:`MacRow` s."""

    def __init__(self, model: nn.Module, skip: nn.Module | None = None):
        from segblocks.policies import Policy

        self.rows: list[MacRow] = []
        self.grids: list = []
        self._pending_dense: list[tuple[MacRow, int]] = []  # (row, batch size) to attribute
        self._handles = []
        names = {m: n for n, m in model.named_modules()}
        skipped = {id(m) for m in skip.modules()} if skip is not None else set()
        in_policy = set()
        for m in model.modules():
            if isinstance(m, Policy):
                in_policy.update(id(s) for s in m.modules())
        self._calls: dict[int, int] = {}
        for m in model.modules():
            if id(m) in skipped or not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            kind = "policy" if id(m) in in_policy else None
            self._handles.append(m.register_forward_hook(self._hook(names[m] or "(model)", kind)))

    def _hook(self, name: str, kind: str | None):
        def hook(mod, inputs, out):
            self._record(mod, name, kind, out)

        return hook

    def _record(self, mod, name, kind, out) -> None:
        from segblocks.blocks import BlockTensor

        c = self._calls.get(id(mod), 0) + 1
        self._calls[id(mod)] = c
        if c > 1:
            name = f"{name}#{c}"
        k = macs_per_output_element(mod)
        typ = type(mod).__name__
        if isinstance(out, BlockTensor):
            g = out.grid
            if all(g is not x for x in self.grids):
                self.grids.append(g)
            hr_block = math.prod(out.hr.shape[1:]) * k
            lr_block = math.prod(out.lr.shape[1:]) * k
            n_hr = g.mask.reshape(g.N, -1).sum(1).tolist()
            B = g.GH * g.GW
            per = [h * hr_block + (B - h) * lr_block for h in n_hr]
            row = MacRow(
                name,
                typ,
                f"HR {_shape_str(out.hr.shape)} + LR {_shape_str(out.lr.shape)}",
                kind or "block",
                hr=out.hr.numel() * k,
                lr=out.lr.numel() * k,
                per_image=per,
            )
            assert row.macs == sum(per), (row.macs, per)
            self.rows.append(row)
            return
        if not isinstance(out, Tensor):
            raise TypeError(f"{name} ({typ}) returned {type(out).__name__}; cannot count MACs")
        row = MacRow(name, typ, _shape_str(out.shape), kind or "dense", dense=out.numel() * k)
        batched = out.dim() == 4 if isinstance(mod, nn.Conv2d) else out.dim() >= 2
        batch = int(out.shape[0]) if batched else 1
        self._pending_dense.append((row, batch))
        self.rows.append(row)

    def finish(self, num_images: int) -> None:
        """Split dense rows over the images (one batch element per image)."""
        for row, batch in self._pending_dense:
            if batch == num_images:
                per = row.dense // batch
                row.per_image = [per] * num_images
            else:  # the layer's batch is not one entry per image: spread its cost evenly
                row.per_image = _split_evenly(row.dense, num_images)
        self._pending_dense.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class _EvalNoGrad:
    """Run a model in eval mode without autograd, restoring its training flags afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.ng = torch.no_grad()
        self.ng.__enter__()

    def __exit__(self, *exc):
        self.ng.__exit__(*exc)
        for m, t in self.modes:
            m.training = t


def _run(model, inp, call, skip=None) -> _Recorder:
    rec = _Recorder(model, skip)
    try:
        with _EvalNoGrad(model):
            if call is None:
                model(inp)
            else:
                call(model, inp)
    finally:
        rec.remove()
    return rec


def _totals_per_image(rows: list[MacRow], n: int) -> tuple[list[int], list[int]]:
    per = [0] * n
    pol = [0] * n
    for r in rows:
        if len(r.per_image) != n:
            raise RuntimeError(
                f"layer {r.name} was attributed to {len(r.per_image)} images, the batch has {n}"
            )
        for i, v in enumerate(r.per_image):
            per[i] += v
            if r.kind == "policy":
                pol[i] += v
    return per, pol


# ---------------------------------------------------------------------------- public API
def count_macs_dense(
    model: nn.Module,
    input_shape,
    *,
    call: Callable | None = None,
    device=None,
    dtype=torch.float32,
) -> MacReport:
    """Conv + linear MACs of a dense forward pass.

    Args:
        model: any ``nn.Module``; it runs once in eval mode under ``no_grad`` (its training
            flags are restored afterwards).
        input_shape: ``(N, C, H, W)`` (a zero tensor is used), ``(C, H, W)`` (N = 1) or an
            input tensor.
        call: ``call(model, x)`` runs the model, for models whose forward needs more than
            ``model(x)``.
        device: device of the generated input (default: the model's).

    Returns:
        a :class:`MacReport` with one row per conv / linear call; ``per_image[n]`` is the
        batch's MACs split over its ``N`` images.
    """
    x = _make_input(model, input_shape, device, dtype)
    rec = _run(model, x, call)
    n = int(x.shape[0])
    rec.finish(n)
    per, pol = _totals_per_image(rec.rows, n)
    return MacReport(rec.rows, per, pol, n, "dense", tuple(x.shape))


def count_macs_blocks(
    model: nn.Module,
    x,
    mask: Tensor | None = None,
    block_size: int | None = None,
    *,
    policy=None,
    pad_mode: str = "avg",
    call: Callable | None = None,
) -> MacReport:
    """Conv + linear MACs of block execution, per layer (HR / LR) and per image.

    Args:
        model: a network that accepts a :class:`~segblocks.blocks.BlockTensor` (e.g. a timm
            trunk); runs once in eval mode under ``no_grad``.
        x: a ``BlockTensor`` (used as is), or a dense image batch ``[N, C, H, W]`` (or its
            shape; zeros are used) that is split with ``block_sample(x, mask, block_size)``.
        mask: ``[N, GH, GW]`` or ``[GH, GW]`` bool (``True`` = HR). When omitted, ``policy``
            decides it from ``x``.
        block_size: block side in input pixels (required with a dense ``x``).
        policy: a :class:`~segblocks.policies.Policy` (its ``macs(image_hw)`` is added per
            image as a ``policy`` row; it also makes the mask when ``mask`` is omitted) or an
            int (policy MACs per image). Policies that are submodules of ``model`` and run in
            its forward are counted by the hooks instead (``policy`` rows).
        pad_mode: BlockPad mode for the split (does not change the MACs).
        call: ``call(model, xb)`` runs the model on the block tensor (default ``model(xb)``).

    Returns:
        a :class:`MacReport`; ``per_image`` sums HR, LR, dense and policy MACs of each image.
    """
    from segblocks.blocks import BlockTensor, block_sample
    from segblocks.policies import Policy

    if isinstance(x, BlockTensor):
        if mask is not None:
            raise ValueError("x is already a BlockTensor; its grid is the mask, drop mask=")
        xb = x
        g = x.grid
        input_shape = (g.N, x.channels, g.GH * g.block_size, g.GW * g.block_size)
    else:
        if block_size is None:
            raise ValueError("block_size is required when x is a dense image")
        x = _make_input(model, x, None, torch.float32)
        N, _, H, W = x.shape
        if H % block_size or W % block_size:
            raise ValueError(f"image {H}x{W} is not a multiple of the block size {block_size}")
        grid_shape = (H // block_size, W // block_size)
        if mask is None:
            if not isinstance(policy, Policy):
                raise ValueError("give a mask, or a Policy (policy=) that decides it")
            with torch.no_grad():
                mask = policy(x, grid_shape).mask
        mask = torch.as_tensor(mask, device=x.device)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() == 3 and mask.shape[0] == 1 and N > 1:
            mask = mask.expand(N, -1, -1)
        xb = block_sample(x, mask, block_size, pad_mode=pad_mode)
        input_shape = tuple(x.shape)
    g = xb.grid
    skip = policy if isinstance(policy, Policy) else None
    rec = _run(model, xb, call, skip=skip)
    n = g.N
    rec.finish(n)
    for other in rec.grids:
        if other is not g and other.N != n:
            raise RuntimeError(
                f"the model built a second block grid with {other.N} images; the input has {n}"
            )
    rows = rec.rows
    if policy is not None and not (isinstance(policy, int) and policy == 0):
        pm = policy.macs(input_shape[-2:]) if isinstance(policy, Policy) else int(policy)
        name = type(policy).__name__ if isinstance(policy, Policy) else "policy"
        rows.insert(
            0,
            MacRow(
                name,
                "policy.macs()" if isinstance(policy, Policy) else "given",
                "per image",
                "policy",
                dense=pm * n,
                per_image=[pm] * n,
            ),
        )
    per, pol = _totals_per_image(rows, n)
    frac = g.mask.reshape(n, -1).float().mean(1).tolist()
    return MacReport(rows, per, pol, n, "blocks", tuple(input_shape), frac)


def _make_input(model, shape_or_tensor, device, dtype) -> Tensor:
    if isinstance(shape_or_tensor, Tensor):
        x = shape_or_tensor
    else:
        shape = tuple(int(v) for v in shape_or_tensor)
        if len(shape) == 3:
            shape = (1, *shape)
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        x = torch.zeros(shape, device=device, dtype=dtype)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    return x


def count_macs_segblocks(model: SegBlocksModel, x, mask: Tensor | None = None) -> MacReport:
    """:func:`count_macs_blocks` for a :class:`~segblocks.models.segblocks_model.SegBlocksModel`.

    The network runs as the model runs it (:meth:`SegBlocksModel.run_blocks`: SPP densely,
    one combine at stride 4); the model's policy is counted per image (``policy`` row).

    Args:
        model: the SegBlocks model; only ``model.net`` is hooked.
        x: a normalised image batch ``[N, 3, H, W]`` (or its shape), ``H`` and ``W`` multiples
            of ``model.block_size``.
        mask: ``[N, GH, GW]`` bool; ``None``: the model's policy decides it from ``x``.

    With the ``dense`` policy the plain network is counted on its (resized) input.
    """
    if model.dense:
        xs = _make_input(model.net, x, None, torch.float32)
        return count_macs_dense(model.net, model.dense_input(xs))
    return count_macs_blocks(
        model.net,
        x,
        mask=mask,
        block_size=model.block_size,
        policy=model.policy,
        call=lambda net, xb: model.run_blocks(xb),
    )


class MacCostModel:
    """The GMACs cost model of a SegBlocks model's budgets (``model.mac_cost_model``): one
    ``hp x wp`` (padded) image with ``k`` HR blocks costs ``base + per_block * k``, policy
    included. Exact: every HR block adds the same MACs, so two counts (all LR, all HR) per
    padded size give the line; they are made once per size and kept.

    Example:
        >>> model.mac_cost_model = MacCostModel(model)   # what a gmacs budget uses by default
        >>> model.mac_cost(384, 480)                     # AffineCost(base, per_block, "gmacs")
    """

    def __init__(self, model: SegBlocksModel):
        self.model = model
        self._costs: dict[tuple[int, int, int], AffineCost] = {}

    def cost(self, hp: int, wp: int, block_size: int) -> AffineCost:
        key = (int(hp), int(wp), int(block_size))
        if key not in self._costs:
            model = self.model
            if block_size != model.block_size:
                raise ValueError(f"block size {block_size} is not the model's {model.block_size}")
            p = next(iter(model.net.parameters()))
            x = torch.zeros(1, 3, hp, wp, device=p.device, dtype=p.dtype)
            gh, gw = hp // block_size, wp // block_size
            lo, hi = (
                count_macs_segblocks(
                    model, x, torch.full((1, gh, gw), v, dtype=torch.bool, device=p.device)
                ).total
                / 1e9
                for v in (False, True)
            )
            self._costs[key] = AffineCost(lo, (hi - lo) / (gh * gw), "gmacs")
        return self._costs[key]


def model_from_name(name: str) -> nn.Module:
    """``"timm:NAME"``: a timm ``features_only`` trunk (random weights, offline); otherwise a
    model of the :mod:`segblocks.models` registry. Raises ``ValueError`` if it cannot be built.
    """
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], features_only=True, pretrained=False)
    from segblocks.models import create_model

    try:
        return create_model(name)
    except ImportError as e:
        raise ValueError(f"model {name!r} could not be built: {e}") from None


def compare_macs(
    model: nn.Module,
    size: tuple[int, int],
    block_size: int,
    policy: str = "random",
    hr_fraction: float = 0.4,
    batch: int = 1,
    seed: int = 0,
) -> tuple[MacReport, MacReport]:
    """Dense and block-execution MACs of ``model`` on a random ``[batch, 3, *size]`` batch.

    Args:
        model: a trunk that accepts block tensors (e.g. from :func:`model_from_name`), or a
            segmentation network with ``forward_logits`` and ``dense_modules`` (a SwiftNet or
            any :class:`~segblocks.models.SegmentationNet`), which runs as
            :class:`~segblocks.models.segblocks_model.SegBlocksModel` runs it.
        size: ``(H, W)``, multiples of ``block_size``.
        policy: policy name; ``random`` and ``heuristic`` get ``tau = hr_fraction``;
            ``learned`` is an untrained policy net (initial bias ``hr_fraction``) whose mask is
            sampled; its network's MACs are counted.
        seed: seed of the image, the random policy and the learned policy's sampling.

    Returns:
        ``(dense, blocks)`` reports; ``blocks`` includes the policy.
    """
    from segblocks.policies import policy_from_config

    H, W = size
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, H, W, generator=gen)
    tau = hr_fraction
    # the policy fills in tau / block_size itself; seeding and the untrained net's bias are ours
    options = {
        "random": {"seed": seed},
        "learned": {"init_tau": min(max(tau, 1e-3), 1 - 1e-3)},
    }.get(policy, {})
    pol = policy_from_config(policy, options, tau=tau, block_size=block_size).eval()
    if policy == "learned":
        # Untrained: thresholding p ~ tau at 0.5 would make every block LR (tau < 0.5) or HR;
        # sampling (training mode) gives a mask with about tau HR blocks instead.
        pol.train()
    dense = count_macs_dense(model, x)
    from segblocks.models.generic import missing_protocol
    from segblocks.models.segblocks_model import SegBlocksModel

    if not missing_protocol(model):
        blocks = count_macs_segblocks(SegBlocksModel(model, pol, block_size), x)
    else:
        blocks = count_macs_blocks(model, x, block_size=block_size, policy=pol)
    return dense, blocks
