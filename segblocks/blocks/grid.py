"""Block grids and the index plans that every block layer of one scale reuses.

A :class:`BlockGrid` holds the decision mask of a batch (``[N, GH, GW]`` bool, ``True`` = the
block is processed at high resolution) and, lazily, the index plans that BlockPad and the
padded activation buffers need at each scale. Plans are built once per (block side, padding,
mode, border) with vectorised tensor ops on the mask's device and cached on the grid, so every
layer of a network that works at the same scale shares them. Building a plan costs a handful of
element-wise ops over the halo positions; it is inside the timed region of the benchmarks,
because at inference every image brings its own mask.

Coordinates used throughout: a block tensor at a scale whose high-res (HR) block side is ``s``
stores HR blocks as ``[Nh, C, s, s]`` and low-res (LR) blocks as ``[Nl, C, s/2, s/2]``; HR blocks
are numbered in row-major order of their cell ``(n, gy, gx)``, LR blocks likewise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .stats import timed

__all__ = ["BlockGrid", "PadPlan", "PAD_MODES", "normalize_pads"]

#: How a low-res block reads a high-res neighbour into its halo (paper Fig. 6 and Table 9).
#: ``avg``: mean of the 2x2 HR pixels under each LR halo pixel (Fig. 6b, the default);
#: ``strided``: the top-left pixel of each 2x2 group (Fig. 6a);
#: ``zero``: the ablation of Table 9 -- no BlockPad at all: every block is padded with the op's
#: pad value as if it were a separate image (neighbours of any resolution are ignored).
PAD_MODES = ("avg", "strided", "zero")

# Segment templates depend only on geometry, so they are shared by all grids.
_TEMPLATES: dict = {}

#: The 8 neighbour directions (dy, dx), in the order of the segment templates.
_DIRS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_DIRS_T: dict = {}


def _dirs_tensor(device) -> Tensor:
    """``[2, 8]`` (dy, dx) of the 8 neighbour directions, in ``_DIRS`` order."""
    t = _DIRS_T.get(device)
    if t is None:
        t = torch.tensor(_DIRS, device=device).t().contiguous()
        _DIRS_T[device] = t
    return t


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
    """Where each halo position of a padded block buffer takes its value from.

    All indices are rows of the flat channels-last buffer ``[R + 1, C]`` that holds the padded
    HR blocks ``[Nh, s+pt+pb, s+pl+pr]``, then the padded LR blocks, then one row holding the
    pad value (row ``R``). Sources point at block interiors or that row, so one gather + one
    scatter fill every halo; ``avg`` entries are then overwritten with 2x2 means.
    """

    pads: tuple[int, int, int, int]
    rows_hr: int  # rows taken by the padded HR blocks
    rows: int  # total rows
    copy_dst: Tensor  # [Kc] halo rows copied from ...
    copy_src: Tensor  # [Kc] ... these interior rows
    avg_dst: Tensor  # [Ka] halo rows that average ...
    avg_src: Tensor  # [Ka * 4] ... these 2x2 HR interior rows
    const_dst: Tensor  # [Kz] halo rows that take the pad value
    hr_interior: Tensor | None = None  # [Nh*s*s] rows of HR interior pixels (lazily built)
    lr_interior: Tensor | None = None


class BlockGrid:
    """The per-image block decisions of a batch and the plans derived from them.

    Args:
        mask: ``[N, GH, GW]`` bool tensor, ``True`` where a block is processed at high
            resolution. Any ``N >= 1`` and any grid are accepted, including all-HR and all-LR.
        block_size: side of a block in pixels at the input resolution (e.g. 128). Must be even.

    The grid is immutable; plans are cached per scale and reused by every layer of that scale.
    """

    def __init__(self, mask: Tensor, block_size: int):
        if not isinstance(mask, Tensor):
            raise ValueError(
                f"mask must be a bool tensor [N, GH, GW], got {type(mask).__name__}; "
                "build one with torch.as_tensor(mask, dtype=torch.bool)"
            )
        if mask.dtype != torch.bool:
            if mask.is_floating_point() and torch.isnan(mask).any():
                raise ValueError(
                    "mask contains NaN; a block mask must be bool (True = high-res). "
                    "Threshold probabilities first, e.g. mask = probs > 0.5"
                )
            raise ValueError(
                f"mask has dtype {mask.dtype}; it must be torch.bool (True = high-res). "
                "Convert with mask.bool() for 0/1 values or threshold probabilities (probs > 0.5)"
            )
        if mask.dim() != 3:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}; expected [N, GH, GW] (one grid per image)"
            )
        if min(mask.shape) < 1:
            raise ValueError(f"mask shape {tuple(mask.shape)} has an empty dimension")
        block_size = int(block_size)
        if block_size < 2 or block_size % 2:
            raise ValueError(
                f"block size {block_size} must be an even integer >= 2 (low-res blocks are "
                "half its side)"
            )
        self.mask = mask
        self.block_size = block_size
        self.N, self.GH, self.GW = (int(v) for v in mask.shape)
        flat = mask.reshape(-1)
        self.mask_flat = flat
        self.hr_cells = torch.nonzero(flat).squeeze(1)
        self.lr_cells = torch.nonzero(~flat).squeeze(1)
        self.num_hr = int(self.hr_cells.numel())
        self.num_lr = int(self.lr_cells.numel())
        slot = torch.empty(flat.numel(), dtype=torch.long, device=mask.device)
        slot[self.hr_cells] = torch.arange(self.num_hr, device=mask.device)
        slot[self.lr_cells] = torch.arange(self.num_lr, device=mask.device)
        self.slot = slot
        self._cache: dict = {}

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return self.mask.device

    @property
    def hr_fraction(self) -> float:
        return self.num_hr / self.mask_flat.numel()

    def __repr__(self) -> str:
        return (
            f"BlockGrid(N={self.N}, grid={self.GH}x{self.GW}, block_size={self.block_size}, "
            f"hr={self.num_hr}/{self.mask_flat.numel()})"
        )

    def cells(self, hr: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(n, gy, gx)`` of the HR (``hr=True``) or LR blocks, each ``[Nh]`` / ``[Nl]``."""
        key = ("cells", hr)
        if key not in self._cache:
            c = self.hr_cells if hr else self.lr_cells
            per = self.GH * self.GW
            self._cache[key] = (c // per, (c % per) // self.GW, c % self.GW)
        return self._cache[key]

    def check_side(self, side: int, what: str = "this layer") -> None:
        """Raise unless blocks of side ``side`` (HR) and ``side/2`` (LR) are whole pixels."""
        if side < 2 or side % 2:
            raise ValueError(
                f"{what} would work on high-res blocks of {side} px (low-res {side / 2:g} px); "
                f"block size {self.block_size} is too small for the network's downsampling. "
                "Use a block size of at least 2 x the network's total stride (e.g. 128 for "
                "stride 32 with margin)"
            )

    # ------------------------------------------------------------------ plans
    def pad_plan(
        self, side: int, pads: tuple[int, int, int, int], mode: str = "avg", border="zeros"
    ) -> PadPlan:
        """Plan to fill the halo of padded blocks at a scale with HR block side ``side``.

        Args:
            side: HR block side at this scale (LR blocks are ``side // 2``).
            pads: ``(top, bottom, left, right)`` halo widths, each at most ``side``.
            mode: one of :data:`PAD_MODES`.
            border: ``"zeros"`` (the halo beyond the image takes the op's pad value) or
                ``"replicate"`` (nearest image pixel, what bilinear upsampling needs).
        """
        key = ("pad", side, pads, mode, border)
        plan = self._cache.get(key)
        if plan is None:
            with timed("plan", self.device):
                plan = self._build_pad_plan(side, pads, mode, border)
            self._cache[key] = plan
        return plan

    def _build_pad_plan(self, s, pads, mode, border) -> PadPlan:
        if mode not in PAD_MODES:
            raise ValueError(f"pad mode {mode!r} is not one of {PAD_MODES}")
        if border not in ("zeros", "replicate"):
            raise ValueError(f"border {border!r} must be 'zeros' or 'replicate'")
        self.check_side(s)
        pt, pb, pl, pr = pads
        if max(pads) > s:
            raise ValueError(
                f"padding {pads} (top, bottom, left, right) is wider than the {s}-px blocks at "
                "this layer; use a larger block size or run this layer through "
                "segblocks.blocks.dense_fallback"
            )
        t = s // 2
        if border == "zeros" and mode in ("avg", "strided") and max(pads) <= t:
            return self._build_pad_plan_segments(s, pads, mode)
        # General builder (replicate border, "zero" mode, halos wider than an LR block):
        # locates the source of every halo pixel from its global coordinates.
        hr_rows_per = (s + pt + pb) * (s + pl + pr)
        lr_rows_per = (t + pt + pb) * (t + pl + pr)
        rows_hr = self.num_hr * hr_rows_per
        rows = rows_hr + self.num_lr * lr_rows_per
        geo = dict(s=s, t=t, pads=pads, rows_hr=rows_hr)
        parts = [
            self._halo_sources(True, geo, mode, border),
            self._halo_sources(False, geo, mode, border),
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

    def _segment_templates(self, s, pads, requester_hr: bool):
        """Halo entries of one block: ``(flat, padded)`` templates.

        ``flat`` is ``[4, L]``: for every halo pixel its padded row (dst), its source if that
        direction's neighbour is HR (row relative to the neighbour's HR block; for an LR
        requester the top-left of the 2x2 group) or LR (relative to the LR block), and the
        direction index. ``padded`` is ``[2, 8, Lmax]`` (dst, HR source) per direction, short
        segments padded by repeating their last entry (duplicate writes of equal values).
        """
        key = (s, pads, requester_hr, self.device)
        hit = _TEMPLATES.get(key)
        if hit is not None:
            return hit
        pt, pb, pl, pr = pads
        t = s // 2
        side = s if requester_hr else t
        wp = side + pl + pr
        hr_wp, lr_wp = s + pl + pr, t + pl + pr
        parts, per_dir = [], []
        for d, (dy, dx) in enumerate(_DIRS):
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
            _TEMPLATES[key] = None
            return None
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
            torch.cat(parts, 1).to(self.device),
            padded.to(self.device),
            has_dir.to(self.device),
            valid.to(self.device),
        )
        _TEMPLATES[key] = tm
        return tm

    def _neighbours(self, requester_hr: bool):
        """Per (block, direction) ``[B, 8]``: inside the image, neighbour is HR, its slot.

        The same for every scale, so computed once per grid.
        """
        key = ("nb", requester_hr)
        hit = self._cache.get(key)
        if hit is None:
            n, gy, gx = self.cells(requester_hr)
            dirs = _dirs_tensor(self.device)
            ny, nx = gy[:, None] + dirs[0], gx[:, None] + dirs[1]
            inside = (ny >= 0) & (ny < self.GH) & (nx >= 0) & (nx < self.GW)
            cell = (n[:, None] * self.GH + ny.clamp(0, self.GH - 1)) * self.GW + nx.clamp(
                0, self.GW - 1
            )
            hit = (inside, bool(inside.all()), self.mask_flat[cell] & inside, self.slot[cell])
            self._cache[key] = hit
        return hit

    def _hr_neighbour_pairs(self, has_dir: Tensor):
        """``(block, direction)`` of LR blocks whose neighbour there is HR (and has a halo)."""
        key = ("nbpairs", tuple(has_dir.tolist()))
        hit = self._cache.get(key)
        if hit is None:
            nhr = self._neighbours(False)[2]
            hit = torch.nonzero(nhr & has_dir, as_tuple=True)
            self._cache[key] = hit
        return hit

    def _build_pad_plan_segments(self, s, pads, mode) -> PadPlan:
        pt, pb, pl, pr = pads
        t = s // 2
        dev = self.device
        hr_blk = (s + pt + pb) * (s + pl + pr)
        lr_blk = (t + pt + pb) * (t + pl + pr)
        rows_hr = self.num_hr * hr_blk
        rows = rows_hr + self.num_lr * lr_blk
        hr_wp = s + pl + pr
        empty = torch.empty(0, dtype=torch.long, device=dev)
        copy_dst, copy_src, avg_dst, avg_src = [], [], [], []
        for requester_hr in (True, False):
            n, gy, gx = self.cells(requester_hr)
            nb = n.numel()
            tm = self._segment_templates(s, pads, requester_hr)
            if nb == 0 or tm is None:
                continue
            (dst_t, src_hr_t, src_lr_t, dir_t), padded, has_dir, valid = tm
            blk = hr_blk if requester_hr else lr_blk
            base = (0 if requester_hr else rows_hr) + torch.arange(nb, device=dev) * blk
            inside, all_inside, nhr, slot = self._neighbours(requester_hr)
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
                b, d = self._hr_neighbour_pairs(has_dir)
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

    def _halo_sources(self, requester_hr: bool, geo, mode, border):
        """Kinds, destination rows and source rows of the halo positions of HR or LR blocks."""
        s, t, (pt, pb, pl, pr), rows_hr = geo["s"], geo["t"], geo["pads"], geo["rows_hr"]
        dev = self.device
        side = s if requester_hr else t
        hp, wp = side + pt + pb, side + pl + pr
        ly = torch.arange(-pt, side + pb, device=dev).view(-1, 1).expand(hp, wp)
        lx = torch.arange(-pl, side + pr, device=dev).view(1, -1).expand(hp, wp)
        halo = (ly < 0) | (ly >= side) | (lx < 0) | (lx >= side)
        hy, hx = ly[halo], lx[halo]  # [P]
        local_row = (hy + pt) * wp + (hx + pl)
        n, gy, gx = self.cells(requester_hr)
        nb = n.numel()
        empty = torch.empty(0, dtype=torch.long, device=dev)
        if nb == 0 or hy.numel() == 0:
            return empty, empty, empty
        base = 0 if requester_hr else rows_hr
        dst = base + torch.arange(nb, device=dev).view(-1, 1) * (hp * wp) + local_row.view(1, -1)
        Y = gy.view(-1, 1) * side + hy.view(1, -1)  # [B, P], at the requester's resolution
        X = gx.view(-1, 1) * side + hx.view(1, -1)
        H, W = self.GH * side, self.GW * side
        inside = (Y >= 0) & (Y < H) & (X >= 0) & (X < W)
        Y = Y.clamp(0, H - 1)
        X = X.clamp(0, W - 1)
        if border == "replicate":
            inside = torch.ones_like(inside)
        ny, nx = (
            torch.div(Y, side, rounding_mode="floor"),
            torch.div(X, side, rounding_mode="floor"),
        )
        qy, qx = Y - ny * side, X - nx * side  # pixel inside the neighbour, requester's resolution
        if mode == "zero":
            inside = inside & (ny == gy.view(-1, 1)) & (nx == gx.view(-1, 1))
        cell = n.view(-1, 1) * (self.GH * self.GW) + ny * self.GW + nx
        nhr = self.mask_flat[cell]
        slot = self.slot[cell]
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

    def interior_rows(self, side: int, pads, hr: bool) -> Tensor:
        """Rows of the interior pixels of a padded buffer, in block/row-major pixel order."""
        key = ("interior", side, pads, hr)
        idx = self._cache.get(key)
        if idx is None:
            pt, pb, pl, pr = pads
            b = side if hr else side // 2
            nb = self.num_hr if hr else self.num_lr
            hp, wp = b + pt + pb, b + pl + pr
            base = 0 if hr else self.num_hr * (side + pt + pb) * (side + pl + pr)
            dev = self.device
            loc = (torch.arange(b, device=dev).view(-1, 1) + pt) * wp + (
                torch.arange(b, device=dev).view(1, -1) + pl
            )
            idx = base + (torch.arange(nb, device=dev).view(-1, 1) * (hp * wp) + loc.view(1, -1))
            idx = idx.reshape(-1)
            self._cache[key] = idx
        return idx

    def same_decisions(self, other: BlockGrid) -> bool:
        return other is self or (
            self.mask.shape == other.mask.shape
            and self.block_size == other.block_size
            and bool(torch.equal(self.mask, other.mask))
        )

    @staticmethod
    def grid_shape(height: int, width: int, block_size: int) -> tuple[int, int]:
        """``(GH, GW)`` for an image; raises with the size to pad to when not divisible."""
        bad = [(n, v) for n, v in (("height", height), ("width", width)) if v % block_size]
        if bad:
            name, v = bad[0]
            up = math.ceil(v / block_size) * block_size
            raise ValueError(
                f"{name} {v} is not a multiple of block size {block_size}; pad the input to "
                f"{up} (e.g. F.pad) or pick a block size that divides {v}"
            )
        return height // block_size, width // block_size
