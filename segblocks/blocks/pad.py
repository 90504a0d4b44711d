"""BlockPad: every block gets a halo from its neighbours, through index plans built per mask.

A padded op (conv, pool, bilinear upsampling) needs, around each block, the pixels of its
neighbours as the dense map would show them (paper section 3.2, Fig. 6): same-resolution
neighbours are copied, a low-res (LR) neighbour of a high-res (HR) block is nearest-upsampled,
an HR neighbour of an LR block is averaged over 2x2 (``avg``) or subsampled (``strided``),
and beyond the image the op's pad value (or, for ``border="replicate"``, the nearest image
pixel) is used.

Blocks live in a flat channels-last :class:`~segblocks.blocks.tensor.Store`; a
:class:`PadPlan` lists, for one (mask, scale, halo widths, mode, border), which rows of the store
each halo row takes its value from. Plans are built with vectorised tensor ops on the mask's
device, cached on the grid and reused by every layer at that scale. The fill itself and its
adjoint are the ``segblocks::halo_fill_`` / ``segblocks::pad_blocks`` ops of
:mod:`segblocks.blocks.kernels` (C++ on CPU, pure PyTorch elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from .cache import register_cache
from .grid import NEIGHBOUR_DIRECTIONS, BlockGrid
from .stats import timed
from .tensor import BlockTensor, Store, inference_fast_path
from .tracing import op_float

__all__ = [
    "PAD_MODES",
    "BORDERS",
    "PadPlan",
    "pad_plan",
    "hr_pad_plan",
    "normalize_pads",
    "padded_parts",
    "block_pad",
    "lr_canvas",
    "lr_cells_of",
    "hr_canvas",
    "hr_cells_of",
]

#: How a low-res block reads a high-res neighbour into its halo (paper Fig. 6 and Table 9).
#: ``avg``: mean of the 2x2 HR pixels under each LR halo pixel (Fig. 6b, the default);
#: ``strided``: the top-left pixel of each 2x2 group (Fig. 6a);
#: ``zero``: the ablation of Table 9 -- no BlockPad at all: every block is padded as if it
#: were a separate image (the op's pad value, or its own edge for a replicate border).
PAD_MODES = ("avg", "strided", "zero")
#: What lies beyond the image: the op's constant pad value, or the nearest pixel.
BORDERS = ("zeros", "replicate")

# Segment templates depend only on geometry, so they are shared by all grids.
_TEMPLATES = register_cache("pad.segment_templates", 512)

# Source kinds of a padded position.
_HR, _LR, _CONST, _AVG = 0, 1, 2, 3


def normalize_pads(padding) -> tuple[int, int, int, int]:
    """Return ``(top, bottom, left, right)`` from an int, ``(ph, pw)`` or ``(pt, pb, pl, pr)``."""
    if isinstance(padding, int):
        pads = (padding,) * 4
    else:
        padding = tuple(int(p) for p in padding)
        if len(padding) == 2:
            pads = (padding[0], padding[0], padding[1], padding[1])
        elif len(padding) == 4:
            pads = padding
        else:
            raise ValueError(
                f"padding {padding!r} must be an int, (pad_h, pad_w) or (top, bottom, left, right)"
            )
    if any(p < 0 for p in pads):
        raise ValueError(f"padding {pads} has a negative width; cropping is not a padding")
    return pads  # type: ignore[return-value]


@dataclass
class PadPlan:
    """Where each halo position of a padded block store takes its value from.

    All indices are rows of the flat channels-last store ``[R + 1, C]`` that holds the padded
    HR blocks ``[Nh, s+pt+pb, s+pl+pr]``, then the padded LR blocks, then one row holding the
    pad value (row ``R``). Sources point at block interiors or that row, so one pass fills every
    halo; ``avg`` entries are then overwritten with 2x2 means. ``avg_dst`` may name row ``R``
    (filler entries of short segments; never read afterwards).
    """

    pads: tuple[int, int, int, int]
    rows_hr: int  # rows taken by the padded HR blocks
    rows: int  # R: total rows before the pad-value row
    copy_dst: Tensor  # [Kc] halo rows copied from ...
    copy_src: Tensor  # [Kc] ... these interior rows
    avg_dst: Tensor  # [Ka] halo rows that average ...
    avg_src: Tensor  # [Ka * 4] ... these 2x2 HR interior rows
    const_dst: Tensor  # [Kz] halo rows that take the pad value

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The five index tensors in the order the kernels take them."""
        return self.copy_dst, self.copy_src, self.avg_dst, self.avg_src, self.const_dst


def pad_plan(
    grid: BlockGrid, side: int, pads: tuple[int, int, int, int], mode: str = "avg", border="zeros"
) -> PadPlan:
    """Plan to fill the halo of padded blocks at a scale with HR block side ``side``.

    Args:
        grid: the block decisions.
        side: HR block side at this scale (LR blocks are ``side // 2``).
        pads: ``(top, bottom, left, right)`` halo widths, each at most ``side``.
        mode: one of :data:`PAD_MODES`.
        border: ``"zeros"`` (the halo beyond the image takes the op's pad value) or
            ``"replicate"`` (nearest image pixel, what bilinear upsampling needs).
    """

    def build():
        with timed("plan", grid.device):
            return _build_pad_plan(grid, side, tuple(pads), mode, border)

    return grid.cached(("pad", side, tuple(pads), mode, border), build)


def _build_pad_plan(grid: BlockGrid, s, pads, mode, border) -> PadPlan:
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r} is not one of {PAD_MODES}")
    if border not in ("zeros", "replicate"):
        raise ValueError(f"border {border!r} must be 'zeros' or 'replicate'")
    grid.check_side(s)
    pt, pb, pl, pr = pads
    if max(pads) > s:
        raise ValueError(
            f"padding {pads} (top, bottom, left, right) is wider than the {s}-px blocks at "
            "this layer; use a larger block size or run this layer through "
            "segblocks.blocks.dense_fallback"
        )
    t = s // 2
    rows_hr = grid.num_hr * (s + pt + pb) * (s + pl + pr)
    rows = rows_hr + grid.num_lr * (t + pt + pb) * (t + pl + pr)
    if mode in ("avg", "strided"):
        geometry = (grid.N, grid.GH, grid.GW, s, pt, pb, pl, pr, mode == "avg")
        geometry += (border == "replicate",)
        fast = kernels.pad_plan_indices(grid.mask_flat, grid.slot, geometry)
        if fast is not None:
            empty = torch.empty(0, dtype=torch.long, device=grid.device)
            return PadPlan(pads, rows_hr, rows, *fast, empty)
        if border == "zeros" and max(pads) <= t:
            return _build_pad_plan_segments(grid, s, pads, mode)
    # General builder (replicate border, "zero" mode, halos wider than an LR block):
    # locates the source of every halo pixel from its global coordinates.
    geo = dict(s=s, t=t, pads=pads, rows_hr=rows_hr)
    parts = [
        _halo_sources(grid, True, geo, mode, border),
        _halo_sources(grid, False, geo, mode, border),
    ]
    kind = torch.cat([p[0] for p in parts])
    dst = torch.cat([p[1] for p in parts])
    src = torch.cat([p[2] for p in parts])
    copy = (kind == _HR) | (kind == _LR)
    avg = kind == _AVG
    wh = s + pl + pr
    avg_base = src[avg]
    avg_src = torch.stack([avg_base, avg_base + 1, avg_base + wh, avg_base + wh + 1], 1)
    return PadPlan(
        pads=pads,
        rows_hr=rows_hr,
        rows=rows,
        copy_dst=dst[copy],
        copy_src=src[copy],
        avg_dst=dst[avg],
        avg_src=avg_src.reshape(-1),
        const_dst=dst[kind == _CONST],
    )


# The common case (zero border, halo no wider than a low-res block) is assembled from
# per-direction templates: a block's halo is 8 segments (4 sides, 4 corners); where each
# segment reads from depends only on the direction and on whether that neighbour is HR,
# LR or outside the image. Per mask this is ~20 vectorised ops over all halo entries with
# no per-pixel boolean selection, instead of ~30 ops with selections (all plans of the
# ResNet-18 trunk at 1024x2048: 20-35 ms -> ~10 ms per mask). tests/blocks compare both
# builders against the reference.


def _segment_templates(device, s, pads, requester_hr: bool):
    """Halo entries of one block: ``(flat, padded)`` templates.

    ``flat`` is ``[4, L]``: for every halo pixel its padded row (dst), its source if that
    direction's neighbour is HR (row relative to the neighbour's HR block; for an LR
    requester the top-left of the 2x2 group) or LR (relative to the LR block), and the
    direction index. ``padded`` is ``[2, 8, Lmax]`` (dst, HR source) per direction, short
    segments padded by repeating their last entry (duplicate writes of equal values).
    """
    key = (s, pads, requester_hr, str(device))
    if key in _TEMPLATES:
        return _TEMPLATES.get(key)
    pt, pb, pl, pr = pads
    t = s // 2
    side = s if requester_hr else t
    wp = side + pl + pr
    hr_wp, lr_wp = s + pl + pr, t + pl + pr
    parts, per_dir = [], []
    for d, (dy, dx) in enumerate(NEIGHBOUR_DIRECTIONS):
        yr = {-1: range(-pt, 0), 0: range(0, side), 1: range(side, side + pb)}[dy]
        xr = {-1: range(-pl, 0), 0: range(0, side), 1: range(side, side + pr)}[dx]
        if len(yr) == 0 or len(xr) == 0:
            per_dir.append(None)
            continue
        y = torch.tensor(list(yr)).view(-1, 1).expand(len(yr), len(xr)).reshape(-1)
        x = torch.tensor(list(xr)).view(1, -1).expand(len(yr), len(xr)).reshape(-1)
        qy, qx = y - dy * side, x - dx * side  # pixel inside the neighbour
        if requester_hr:
            src_hr = (qy + pt) * hr_wp + (qx + pl)
            src_lr = (qy // 2 + pt) * lr_wp + (qx // 2 + pl)
        else:
            src_hr = (2 * qy + pt) * hr_wp + (2 * qx + pl)
            src_lr = (qy + pt) * lr_wp + (qx + pl)
        dst = (y + pt) * wp + (x + pl)
        parts.append(torch.stack([dst, src_hr, src_lr, torch.full_like(dst, d)]))
        per_dir.append(torch.stack([dst, src_hr]))
    if not parts:
        return _TEMPLATES.put(key, None)
    lmax = max(p.shape[1] for p in per_dir if p is not None)
    padded = torch.zeros(2, 8, lmax, dtype=torch.long)
    valid = torch.zeros(8, lmax, dtype=torch.bool)
    for d, p in enumerate(per_dir):
        if p is not None:
            padded[:, d, : p.shape[1]] = p
            padded[:, d, p.shape[1] :] = p[:, -1:]
            valid[d, : p.shape[1]] = True
    has_dir = valid.any(1)
    tm = (
        torch.cat(parts, 1).to(device),
        padded.to(device),
        has_dir.to(device),
        valid.to(device),
    )
    return _TEMPLATES.put(key, tm)


def _hr_neighbour_pairs(grid: BlockGrid, has_dir: Tensor):
    """``(block, direction)`` of LR blocks whose neighbour there is HR (and has a halo)."""
    key = ("nbpairs", tuple(has_dir.tolist()))
    return grid.cached(
        key, lambda: torch.nonzero(grid.neighbours(False)[2] & has_dir, as_tuple=True)
    )


def _build_pad_plan_segments(grid: BlockGrid, s, pads, mode) -> PadPlan:
    pt, pb, pl, pr = pads
    t = s // 2
    dev = grid.device
    hr_blk = (s + pt + pb) * (s + pl + pr)
    lr_blk = (t + pt + pb) * (t + pl + pr)
    rows_hr = grid.num_hr * hr_blk
    rows = rows_hr + grid.num_lr * lr_blk
    hr_wp = s + pl + pr
    empty = torch.empty(0, dtype=torch.long, device=dev)
    copy_dst, copy_src, avg_dst, avg_src = [], [], [], []
    for requester_hr in (True, False):
        n, gy, gx = grid.cells(requester_hr)
        nb = n.numel()
        tm = _segment_templates(grid.device, s, pads, requester_hr)
        if nb == 0 or tm is None:
            continue
        (dst_t, src_hr_t, src_lr_t, dir_t), padded, has_dir, valid = tm
        blk = hr_blk if requester_hr else lr_blk
        base = (0 if requester_hr else rows_hr) + torch.arange(nb, device=dev) * blk
        inside, all_inside, nhr, slot = grid.neighbours(requester_hr)
        nb_hr = slot * hr_blk  # HR neighbour's block base
        # LR neighbour's base; outside the image: an offset that lands on the const row.
        nb_lr = torch.where(inside, rows_hr + slot * lr_blk, rows - src_lr_t.min())
        k = nhr[:, dir_t]  # [B, L]
        src = torch.where(k, nb_hr[:, dir_t] + src_hr_t, nb_lr[:, dir_t] + src_lr_t)
        if not all_inside:
            src = torch.where(inside[:, dir_t], src, rows)
        copy_dst.append((base[:, None] + dst_t).reshape(-1))
        copy_src.append(src.reshape(-1))
        if not requester_hr and mode == "avg":
            # LR halo pixels facing an HR neighbour: overwrite with the 2x2 mean.
            b, d = _hr_neighbour_pairs(grid, has_dir)
            if b.numel():
                # Filler entries of short segments write into the pad-value row (never
                # read afterwards), so no halo pixel is written twice: duplicate writes
                # would double its gradient.
                dst = torch.where(valid[d], base[b, None] + padded[0, d], rows)
                tl = nb_hr[b, d, None] + padded[1, d]
                avg_dst.append(dst.reshape(-1))
                avg_src.append(
                    torch.stack([tl, tl + 1, tl + hr_wp, tl + hr_wp + 1], -1).reshape(-1)
                )

    def cat(parts):
        if not parts:
            return empty
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return PadPlan(
        pads=pads,
        rows_hr=rows_hr,
        rows=rows,
        copy_dst=cat(copy_dst),
        copy_src=cat(copy_src),
        avg_dst=cat(avg_dst),
        avg_src=cat(avg_src),
        const_dst=empty,
    )


def _halo_sources(grid: BlockGrid, requester_hr: bool, geo, mode, border):
    """Kinds, destination rows and source rows of the halo positions of HR or LR blocks."""
    s, t, (pt, pb, pl, pr), rows_hr = geo["s"], geo["t"], geo["pads"], geo["rows_hr"]
    dev = grid.device
    side = s if requester_hr else t
    hp, wp = side + pt + pb, side + pl + pr
    ly = torch.arange(-pt, side + pb, device=dev).view(-1, 1).expand(hp, wp)
    lx = torch.arange(-pl, side + pr, device=dev).view(1, -1).expand(hp, wp)
    halo = (ly < 0) | (ly >= side) | (lx < 0) | (lx >= side)
    hy, hx = ly[halo], lx[halo]  # [P]
    local_row = (hy + pt) * wp + (hx + pl)
    n, gy, gx = grid.cells(requester_hr)
    nb = n.numel()
    empty = torch.empty(0, dtype=torch.long, device=dev)
    if nb == 0 or hy.numel() == 0:
        return empty, empty, empty
    base = 0 if requester_hr else rows_hr
    dst = base + torch.arange(nb, device=dev).view(-1, 1) * (hp * wp) + local_row.view(1, -1)
    Y = gy.view(-1, 1) * side + hy.view(1, -1)  # [B, P], at the requester's resolution
    X = gx.view(-1, 1) * side + hx.view(1, -1)
    if mode == "zero":
        # Every block is an image of its own: its border is the block's own edge, so the
        # halo is the pad value or (replicate) the block's nearest edge pixel.
        y0, x0 = gy.view(-1, 1) * side, gx.view(-1, 1) * side
        y1, x1 = y0 + side - 1, x0 + side - 1
    else:
        y0 = x0 = torch.zeros((), dtype=torch.long, device=dev)
        y1, x1 = y0 + grid.GH * side - 1, x0 + grid.GW * side - 1
    inside = (Y >= y0) & (Y <= y1) & (X >= x0) & (X <= x1)
    Y = torch.minimum(torch.maximum(Y, y0), y1)
    X = torch.minimum(torch.maximum(X, x0), x1)
    if border == "replicate":
        inside = torch.ones_like(inside)
    ny, nx = (
        torch.div(Y, side, rounding_mode="floor"),
        torch.div(X, side, rounding_mode="floor"),
    )
    qy, qx = Y - ny * side, X - nx * side  # pixel inside the neighbour, requester's resolution
    cell = n.view(-1, 1) * (grid.GH * grid.GW) + ny * grid.GW + nx
    nhr = grid.mask_flat[cell]
    slot = grid.slot[cell]
    hr_wp, lr_wp = s + pl + pr, t + pl + pr
    hr_blk, lr_blk = (s + pt + pb) * hr_wp, (t + pt + pb) * lr_wp
    if requester_hr:
        # HR neighbour: same pixel; LR neighbour: nearest-upsampled, i.e. pixel (q // 2).
        src_hr = slot * hr_blk + (qy + pt) * hr_wp + (qx + pl)
        src_lr = rows_hr + slot * lr_blk + (qy // 2 + pt) * lr_wp + (qx // 2 + pl)
        kind = torch.where(nhr, _HR, _LR)
        src = torch.where(nhr, src_hr, src_lr)
    else:
        # LR neighbour: same pixel; HR neighbour: 2x2 group under the LR pixel (its
        # top-left row here; the plan adds the other three for "avg").
        src_lr = rows_hr + slot * lr_blk + (qy + pt) * lr_wp + (qx + pl)
        src_hr = slot * hr_blk + (2 * qy + pt) * hr_wp + (2 * qx + pl)
        kind = torch.where(nhr, _AVG if mode == "avg" else _HR, _LR)
        src = torch.where(nhr, src_hr, src_lr)
    kind = torch.where(inside, kind, _CONST)
    return kind.reshape(-1), dst.reshape(-1), src.reshape(-1)


# ---------------------------------------------------------------------- applying plans
def hr_pad_plan(
    grid: BlockGrid, side: int, pads: tuple[int, int, int, int], mode: str = "avg", border="zeros"
) -> PadPlan:
    """The part of :func:`pad_plan` that fills the halos of HR blocks only (for ops that read
    the LR level another way, e.g. from :func:`lr_canvas`)."""

    def build():
        plan = pad_plan(grid, side, pads, mode, border)
        keep = plan.copy_dst < plan.rows_hr
        empty = plan.avg_dst[:0]
        return PadPlan(
            plan.pads,
            plan.rows_hr,
            plan.rows,
            plan.copy_dst[keep],
            plan.copy_src[keep],
            empty,
            plan.avg_src[:0],
            plan.const_dst[plan.const_dst < plan.rows_hr],
        )

    return grid.cached(("pad_hr", side, tuple(pads), mode, border), build)


def fill_halo(
    store: Store, grid: BlockGrid, mode: str, border: str, value: float, hr_only: bool = False
) -> None:
    """Fill the halo of ``store`` in place (inference; interiors already written); with
    ``hr_only`` the halos of the HR blocks only (the LR ones keep stale values)."""
    key = (mode, border, value)
    if store.halo == key or (hr_only and store.halo == (*key, "hr")):
        return
    if hr_only:
        plan = hr_pad_plan(grid, store.side, store.pads, mode, border)
        key = (*key, "hr")
    else:
        plan = pad_plan(grid, store.side, store.pads, mode, border)
    kernels.halo_fill_(store.flat, *plan.tensors(), float(value))
    store.halo = key  # only reached without autograd (see _padded_parts)


def _empty_canvas(x: BlockTensor, tile: int, pads) -> tuple[Tensor, Tensor]:
    """A channels-last map ``[N, GH*tile+pt+pb, GW*tile+pl+pr, C]`` with its border zeroed
    (interior unset), and the view of its interior as cells ``[N, GH, GW, tile, tile, C]``."""
    g = x.grid
    pt, pb, pl, pr = pads
    H, W = g.GH * tile, g.GW * tile
    canvas = x.parts[0].new_empty(g.N, H + pt + pb, W + pl + pr, x.channels)
    for region in (canvas[:, :pt], canvas[:, pt + H :], canvas[:, :, :pl], canvas[:, :, pl + W :]):
        region.zero_()
    cells = canvas[:, pt : pt + H, pl : pl + W].view(g.N, g.GH, tile, g.GW, tile, -1)
    return canvas, cells.permute(0, 1, 3, 2, 4, 5)


def _fill_canvas(x: BlockTensor, hr: Tensor, lr: Tensor, pads, at_hr: bool, mode: str) -> Tensor:
    """The canvas of :func:`hr_canvas` (``at_hr``) or :func:`lr_canvas` from the levels'
    blocks ``hr [Nh, C, s, s]`` and ``lr [Nl, C, s/2, s/2]``: ``[N, C, H', W']``."""
    g = x.grid
    canvas, cells = _empty_canvas(x, x.side if at_hr else x.side // 2, pads)
    if g.num_hr:
        if not at_hr:
            hr = F.avg_pool2d(hr, 2) if mode == "avg" else hr[:, :, ::2, ::2]
        cells[g.cells(True)] = hr.permute(0, 2, 3, 1)
    if g.num_lr:
        lr = lr.permute(0, 2, 3, 1)  # [Nl, t, t, C]
        cells[g.cells(False)] = lr.repeat_interleave(2, 1).repeat_interleave(2, 2) if at_hr else lr
    return canvas.permute(0, 3, 1, 2)


class _Canvas(torch.autograd.Function):
    """:func:`_fill_canvas` with a backward that gathers the cells' gradients.

    Why not plain autograd: the canvas is written in place through views of it (border
    zeroing, the two levels' cells), and autograd's backward of each such write clones the
    whole canvas gradient, ~6 full-map copies per canvas (a quarter of a SegBlocks-EffL1
    training step's copies at 352x352). The adjoint here reads each cell once.
    """

    @staticmethod
    def forward(ctx, hr, lr, x, pads, at_hr, mode):
        ctx.grid, ctx.pads, ctx.at_hr, ctx.mode = x.grid, pads, at_hr, mode
        ctx.tile = x.side if at_hr else x.side // 2
        ctx.shapes = (hr.shape, lr.shape)
        return _fill_canvas(x, hr, lr, pads, at_hr, mode)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        g, t, (pt, _, pl, _) = ctx.grid, ctx.tile, ctx.pads
        H, W = g.GH * t, g.GW * t
        gc = grad.permute(0, 2, 3, 1)[:, pt : pt + H, pl : pl + W]
        gc = gc.view(g.N, g.GH, t, g.GW, t, -1).permute(0, 1, 3, 2, 4, 5)  # [N, GH, GW, t, t, C]
        C = gc.shape[-1]
        grad_hr = grad_lr = None
        if ctx.needs_input_grad[0]:
            if not g.num_hr:
                grad_hr = grad.new_zeros(ctx.shapes[0])
            elif ctx.at_hr:
                grad_hr = gc[g.cells(True)].permute(0, 3, 1, 2)
            else:
                cells = gc[g.cells(True)]  # [Nh, t, t, C], the reduced HR blocks' gradients
                if ctx.mode == "avg":
                    up = (cells * 0.25).repeat_interleave(2, 1).repeat_interleave(2, 2)
                else:
                    up = cells.new_zeros(cells.shape[0], 2 * t, 2 * t, C)
                    up[:, ::2, ::2] = cells
                grad_hr = up.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            if not g.num_lr:
                grad_lr = grad.new_zeros(ctx.shapes[1])
            elif ctx.at_hr:
                cells = gc[g.cells(False)]  # [Nl, s, s, C], the upsampled LR blocks' gradients
                h = t // 2
                grad_lr = cells.reshape(-1, h, 2, h, 2, C).sum((2, 4)).permute(0, 3, 1, 2)
            else:
                grad_lr = gc[g.cells(False)].permute(0, 3, 1, 2)
        return grad_hr, grad_lr, None, None, None, None


def _canvas(x: BlockTensor, pads, at_hr: bool, mode: str) -> Tensor:
    hr, lr = x.parts[0], x.parts[1]
    if torch.is_grad_enabled() and (hr.requires_grad or lr.requires_grad):
        return _Canvas.apply(hr, lr, x, pads, at_hr, mode)
    return _fill_canvas(x, hr, lr, pads, at_hr, mode)


def lr_canvas(x: BlockTensor, pads, mode: str | None = None) -> Tensor:
    """The LR level as one padded map: ``[N, C, GH*t+pt+pb, GW*t+pl+pr]`` (channels-last,
    ``t = x.side // 2``) holding the LR blocks as they are and the HR blocks reduced 2x as LR
    halos see them (``avg``: 2x2 mean, ``strided``: top-left pixel), zero beyond the image.

    The window of an LR cell in it is exactly that LR block padded by ``pads`` (what
    :func:`padded_parts` gives for the LR level, zero border), so an op that reads padded LR
    blocks can run once on the canvas and keep the LR cells of its output
    (:func:`lr_cells_of`). That pays where LR halos dwarf their tiles (a 4x4 tile padded by 4
    reads 9x its pixels): the canvas costs one write of the LR-resolution map instead; the op
    also computes the HR cells' outputs at LR resolution, which are dropped.
    """
    mode = x.pad_mode if mode is None else mode
    if mode not in ("avg", "strided"):
        raise ValueError(f"lr_canvas needs pad mode 'avg' or 'strided', not {mode!r}")
    return _canvas(x, pads, False, mode)


def hr_canvas(x: BlockTensor, pads) -> Tensor:
    """The HR level as one padded map: ``[N, C, GH*s+pt+pb, GW*s+pl+pr]`` (channels-last,
    ``s = x.side``) holding the HR blocks as they are and the LR blocks nearest-upsampled 2x
    (as HR halos see them in every pad mode but ``zero``), zero beyond the image.

    The window of an HR cell in it is exactly that HR block padded by ``pads`` (zero border,
    ``pads`` no wider than a block), so an op can run once on the canvas and keep the HR cells
    of its output (:func:`hr_cells_of`). That pays where HR halos dwarf the blocks and the op
    is cheap per pixel (a depthwise conv on 2x2 blocks padded by 2 reads 9x their pixels; the
    canvas is the whole map at HR resolution, 1 / HR share of the HR pixels).
    """
    if x.pad_mode == "zero":
        raise ValueError("hr_canvas needs pad mode 'avg' or 'strided', not 'zero'")
    return _canvas(x, pads, True, x.pad_mode)


def _cells_of(y: Tensor, grid: BlockGrid, hr: bool) -> Tensor:
    N, C, Ho, Wo = y.shape
    o = Ho // grid.GH
    tiles = y.permute(0, 2, 3, 1).reshape(N, grid.GH, o, grid.GW, o, C).permute(0, 1, 3, 2, 4, 5)
    return tiles[grid.cells(hr)].permute(0, 3, 1, 2)


def lr_cells_of(y: Tensor, grid: BlockGrid) -> Tensor:
    """The LR cells' tiles ``[Nl, C, o, o]`` (channels-last) of a map ``y [N, C, GH*o, GW*o]``
    computed on :func:`lr_canvas`."""
    return _cells_of(y, grid, False)


def hr_cells_of(y: Tensor, grid: BlockGrid) -> Tensor:
    """The HR cells' tiles ``[Nh, C, o, o]`` (channels-last) of a map ``y [N, C, GH*o, GW*o]``
    computed on :func:`hr_canvas`."""
    return _cells_of(y, grid, True)


def padded_parts(
    x: BlockTensor,
    pads,
    *,
    border: str = "zeros",
    value: float = 0.0,
    mode: str | None = None,
    fresh: bool = False,
    hr_only: bool = False,
) -> list[Tensor]:
    """Per level padded blocks of ``x`` for an op that pads by ``pads`` (see :func:`block_pad`).

    Without ``fresh`` (the layers' path) the result may be views of a buffer that the next
    padded read of ``x`` refills, so it must be consumed before that. ``hr_only``:
    only the HR blocks' halos are filled; the LR level is returned but must not be read.
    """
    with timed("pad", x.device):
        return _padded_parts(x, normalize_pads(pads), border, value, mode, fresh, hr_only)


def _padded_parts(
    x: BlockTensor, pads, border, value, mode, fresh=False, hr_only=False
) -> list[Tensor]:
    mode = x.pad_mode if mode is None else mode
    if border not in BORDERS:
        raise ValueError(f"border {border!r} must be one of {BORDERS}")
    if x.trace is not None and not fresh:
        x.trace.profile.record(x.op_id, pads)
    if not inference_fast_path():
        # Autograd: one differentiable op (interiors + halo into fresh padded blocks, one
        # tensor per level, consumed directly); its backward is the adjoint scatter-add into
        # the two block gradients, with no store-sized copies in the graph.
        # hr_only: the LR level's halos are left unfilled (and it must not be read)
        plan = (hr_pad_plan if hr_only else pad_plan)(x.grid, x.side, pads, mode, border)
        hr_padded, lr_padded = kernels.pad_blocks(
            x.parts[0], x.parts[1], *plan.tensors(), [x.side, *pads], op_float(value)
        )
        return [hr_padded, lr_padded]
    st = x.store
    if fresh or st is None or st.pads != pads:
        st = Store(x.grid, x.side, pads, x.channels, x.dtype, x.device, x.trace)
        for dst, src in zip(st.interiors(), x.parts, strict=True):
            dst.copy_(src)
        if not fresh:
            # Later consumers with the same halo (e.g. a residual branch) reuse this buffer.
            x.store, x.parts = st, st.interiors()  # (setting parts drops pixels)
    fill_halo(st, x.grid, mode, border, value, hr_only)
    return st.padded()


def block_pad(
    x: BlockTensor, padding, *, mode: str | None = None, border: str = "zeros", value: float = 0.0
) -> tuple[Tensor, Tensor]:
    """BlockPad: every block with a halo taken from its neighbours (diagonals included).

    Args:
        x: block tensor at a scale with HR side ``s``.
        padding: int, ``(ph, pw)`` or ``(top, bottom, left, right)``; each at most ``s``.
        mode: ``"avg"`` / ``"strided"`` / ``"zero"``; defaults to ``x.pad_mode``.
        border: beyond the image: ``"zeros"`` (the constant ``value``; use ``-inf`` for max
            pooling) or ``"replicate"``.
        value: the constant at the image border (and everywhere in ``"zero"`` mode).

    Returns:
        ``(hr [Nh, C, s+pt+pb, s+pl+pr], lr [Nl, C, s/2+pt+pb, s/2+pl+pr])``. Same-resolution
        neighbours are copied, LR neighbours of HR blocks nearest-upsampled, HR neighbours of LR
        blocks averaged over 2x2 (``avg``) or subsampled (``strided``).

    Example:
        >>> xb = block_sample(torch.randn(1, 8, 64, 64), torch.rand(1, 2, 2) > 0.5, 32)
        >>> hr, lr = block_pad(xb, 1)  # [Nh, 8, 34, 34], [Nl, 8, 18, 18]
    """
    if not isinstance(x, BlockTensor):
        raise ValueError(f"block_pad expects a BlockTensor, got {type(x).__name__}")
    if mode is not None and mode not in PAD_MODES:
        raise ValueError(f"pad mode {mode!r} is not one of {PAD_MODES}")
    # A fresh buffer: layers reuse and refill one padded buffer per activation, but results
    # handed to the caller must not change when the same tensor is padded again.
    hr, lr = padded_parts(x, padding, border=border, value=value, mode=mode, fresh=True)
    return hr, lr
