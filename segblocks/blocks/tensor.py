"""The block tensor and the padded buffers its parts live in.

Design: why a tensor-like object with ``__torch_function__`` rather than module conversion.
    The method must run *unmodified* third-party trunks (timm, torchvision). Their forward code
    does things no module swap can reach: residual ``x += shortcut`` inside ``forward``,
    timm's TF-"same" convs that call ``F.pad`` functionally before a padding-0 conv, feature
    lists collected in Python. A :class:`BlockTensor` is a plain Python object (not a
    ``torch.Tensor`` subclass, so there is no fake storage or shape to keep consistent) that
    implements ``__torch_function__``: every ``torch``/``F`` call that receives it is routed to a
    block-aware handler (``segblocks.blocks.dispatch``), and operators (``+``, ``+=``, ``*``) are
    routed the same way. Ops without a handler raise ``UnsupportedBlockOp`` naming the op;
    nothing silently falls back to a wrong result.

Parts by resolution level.
    A block tensor holds one tensor per resolution level (``parts[0]``: HR blocks
    ``[Nh, C, s, s]``; ``parts[1]``: LR blocks ``[Nl, C, s/2, s/2]``), channels-last. Handlers map
    over ``parts``; ``hr`` / ``lr`` are read-only conveniences.

Memory layout and speed (CPU first, device-agnostic).
    An activation that a padded op (conv, pool) will read is written by its producer
    (BlockSample, batch norm, activations, residual add) straight into the interior of a flat
    channels-last buffer ``[rows, C]`` that already has room for the halo (a :class:`Store`);
    BlockPad then only fills the halo (``segblocks.blocks.pad``) and the conv runs with padding
    0 on a zero-copy view. Producers cannot know their consumer, so a :class:`MarginProfile`
    remembers, per position of an op in the forward pass, the halo its consumer asked for; the
    first forward pass learns it (falling back to a copy into a fresh padded buffer), later
    passes write in place. The profile only ever affects speed: a wrong or stale entry costs
    one copy, never a wrong value. With autograd recording, BlockPad is one differentiable op
    that copies into a fresh buffer (its backward is the adjoint scatter-add).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cache import BufferPool
from .dispatch import dispatch, method
from .grid import LEVELS, BlockGrid
from .tracing import exporting, known_zero

__all__ = [
    "BlockTensor",
    "MarginProfile",
    "Trace",
    "Store",
    "inference_fast_path",
    "inference_kernels",
    "pixel_parts",
    "pixel_rows",
]


def inference_fast_path() -> bool:
    """In-place halo filling, pooled buffers and ``out=`` writes need autograd off, and state
    kept between calls (pools, learned halos) rules out tracing by ``torch.export``."""
    return not torch.is_grad_enabled() and not exporting()


def inference_kernels() -> bool:
    """Inference-only kernels without autograd (the direct depthwise op, fused GEMM epilogues):
    autograd off; functional, so also taken under ``torch.export``."""
    return not torch.is_grad_enabled()


def pixel_rows(grid: BlockGrid, side: int) -> tuple[int, int]:
    """Pixels of the HR and of the LR blocks at a scale with HR side ``side``."""
    t = side // 2
    return grid.num_hr * side * side, grid.num_lr * t * t


def pixel_parts(pixels: Tensor, grid: BlockGrid, side: int) -> list[Tensor]:
    """``[hr [Nh, C, s, s], lr [Nl, C, s/2, s/2]]`` channels-last views of ``pixels [rows, C]``
    (HR blocks' pixels, then LR blocks', each block row-major)."""
    C, t = pixels.shape[1], side // 2
    hr, lr = pixels.split(pixel_rows(grid, side))
    return [
        hr.view(grid.num_hr, side, side, C).permute(0, 3, 1, 2),
        lr.view(grid.num_lr, t, t, C).permute(0, 3, 1, 2),
    ]


class MarginProfile:
    """Learned halo widths per op position of a forward pass (speed only, never semantics).

    ``margins[k]`` is the ``(top, bottom, left, right)`` halo that the first padded consumer of
    the k-th produced block tensor asked for in an earlier pass. The profile also owns the
    :class:`~segblocks.blocks.cache.BufferPool` of padded buffers (CPU inference only).
    Keep one per network (``BlockSample`` modules hold one each); :meth:`clear` frees it.
    """

    def __init__(self, max_buffers: int = 48):
        self.margins: dict[int, tuple[int, int, int, int]] = {}
        self.pool = BufferPool(max_buffers)

    def record(self, op_id: int | None, pads) -> None:
        if op_id is not None:
            self.margins.setdefault(op_id, pads)

    def clear(self) -> None:
        """Forget learned halos and release pooled buffers."""
        self.margins.clear()
        self.pool.clear()


class Trace:
    """Numbers the block tensors produced in one forward pass (from one BlockSample)."""

    __slots__ = ("profile", "count")

    def __init__(self, profile: MarginProfile):
        self.profile = profile
        self.count = 0

    def next(self) -> int:
        self.count += 1
        return self.count - 1

    def margins_for(self, op_id: int):
        if not inference_fast_path():
            return None
        m = self.profile.margins.get(op_id)
        return m if m is not None and any(m) else None


class Store:
    """Flat channels-last buffer ``[rows + 1, C]``: padded blocks of each level, then one row.

    Level ``l`` holds ``grid.count(l)`` blocks of side ``side >> l`` padded by ``pads``
    (``(top, bottom, left, right)``), block after block, row-major pixels. The last row holds
    the pad value that halo pixels beyond the image read from.
    """

    __slots__ = ("flat", "pads", "side", "counts", "offsets", "rows", "halo")

    def __init__(self, grid: BlockGrid, side: int, pads, channels: int, dtype, device, trace=None):
        rows = self._layout(grid, side, pads)
        device = torch.device(device)
        if trace is not None and device.type == "cpu" and inference_fast_path():
            self.flat = trace.profile.pool.get(rows + 1, channels, dtype, device)
        else:
            self.flat = torch.empty(rows + 1, channels, dtype=dtype, device=device)
        self.halo = None  # key of the last halo fill (inference only)

    @classmethod
    def wrap(cls, flat: Tensor, grid: BlockGrid, side: int, pads) -> Store:
        """A store around an existing ``[rows + 1, C]`` buffer (e.g. an op's output)."""
        st = cls.__new__(cls)
        rows = st._layout(grid, side, pads)
        st.flat, st.halo = flat, None
        if flat.shape[0] != rows + 1:
            raise ValueError(f"store of {flat.shape[0]} rows, expected {rows + 1}")
        return st

    def _layout(self, grid: BlockGrid, side: int, pads) -> int:
        """Set pads, side, per-level counts and row offsets; return the rows before the last."""
        pt, pb, pl, pr = pads
        self.pads, self.side = pads, side
        self.counts = tuple(grid.count(lv) for lv in LEVELS)
        offsets, rows = [], 0
        for lv in LEVELS:
            offsets.append(rows)
            b = side >> lv
            rows += self.counts[lv] * (b + pt + pb) * (b + pl + pr)
        self.offsets, self.rows = tuple(offsets), rows
        return rows

    @property
    def rows_hr(self) -> int:
        return self.offsets[1]

    def padded(self) -> list[Tensor]:
        """Per level ``[B, C, b+pt+pb, b+pl+pr]`` views (``b = side >> level``)."""
        pt, pb, pl, pr = self.pads
        C = self.flat.shape[1]
        sizes = [self.offsets[1], self.rows - self.offsets[1], 1]
        # split, not slicing: under autograd its backward is one concatenation, where each
        # slice's backward would zero-fill a whole store-sized gradient.
        segs = self.flat.split(sizes)
        out = []
        for lv in LEVELS:
            b = self.side >> lv
            out.append(segs[lv].view(self.counts[lv], b + pt + pb, b + pl + pr, C))
        return [o.permute(0, 3, 1, 2) for o in out]

    def interiors(self) -> list[Tensor]:
        """Per level ``[B, C, b, b]`` views of the block interiors."""
        pt, _, pl, _ = self.pads
        return [
            p[:, :, pt : pt + (self.side >> lv), pl : pl + (self.side >> lv)]
            for lv, p in zip(LEVELS, self.padded(), strict=True)
        ]


class BlockTensor:
    """A batch of feature maps split into square blocks, some high-res and some low-res.

    Attributes:
        parts: per resolution level, ``parts[0]`` = HR blocks ``[Nh, C, s, s]`` and
            ``parts[1]`` = LR blocks ``[Nl, C, s/2, s/2]`` (row-major over ``(n, gy, gx)``),
            each LR block the 2x average-pooled version of its cell at this scale.
        grid: the :class:`BlockGrid` (decisions + cached plans), shared by all scales.
        side: HR block side ``s`` at this scale (``grid.block_size / stride``).
        pad_mode: how BlockPad samples HR neighbours for LR halos (see ``PAD_MODES``).
        pixels: ``[Nh*s*s + Nl*(s/2)^2, C]`` or ``None``: when set, both levels' pixels in
            one channels-last matrix (HR blocks, then LR blocks) of which ``parts`` are views.
            Point-wise work (1x1 convs as one GEMM, activations, residual adds) then runs once
            for both levels instead of once per level; producers that write one (1x1 convs,
            depthwise convs at inference) set it, every other op's output has ``None``.

    It behaves like the dense ``[N, C, H, W]`` tensor it stands for under ``torch`` / ``F``
    calls (see ``segblocks.blocks.layers`` for the supported ops). In-place ops keep the object
    but rebind its parts to new storage, so a tensor taken from ``x.hr`` earlier is not updated.
    """

    def __init__(
        self,
        parts,
        grid: BlockGrid,
        side: int,
        *,
        pad_mode: str = "avg",
        trace: Trace | None = None,
        op_id: int | None = None,
        store: Store | None = None,
        pending_pad: tuple | None = None,
        pixels: Tensor | None = None,
    ):
        # With only ``pixels`` given, the per-level views are made when first asked for
        # (most consumers of a pixel matrix never need them).
        self._parts = list(parts) if parts is not None else None
        self.pixels = pixels
        self.grid, self.side = grid, side
        self.pad_mode = pad_mode
        self.trace = trace
        self.op_id = op_id
        self.store = store
        self.pending_pad = pending_pad  # (top, bottom, left, right, value) from F.pad
        # True when the parts are fresh outputs (conv, pool) that no other object shares, so
        # an in-place op may really write into them.
        self.owned = False

    # -------------------------------------------------------------- construction
    @classmethod
    def from_parts(cls, hr: Tensor, lr: Tensor, grid: BlockGrid, side: int | None = None, **kw):
        """Wrap existing ``hr [Nh, C, s, s]`` and ``lr [Nl, C, s/2, s/2]`` block batches."""
        side = grid.block_size if side is None else side
        C = hr.shape[1] if hr.dim() == 4 else lr.shape[1]
        exp_hr, exp_lr = (grid.num_hr, C, side, side), (grid.num_lr, C, side // 2, side // 2)
        if tuple(hr.shape) != exp_hr or tuple(lr.shape) != exp_lr:
            raise ValueError(
                f"block shapes hr {tuple(hr.shape)} / lr {tuple(lr.shape)} do not match the grid "
                f"({grid.num_hr} HR, {grid.num_lr} LR blocks of side {side}): expected "
                f"{exp_hr} / {exp_lr}"
            )
        return cls([hr, lr], grid, side, **kw)

    def next_op_id(self) -> int | None:
        return self.trace.next() if self.trace is not None else None

    def derive(
        self, parts, side=None, store=None, owned=False, op_id=None, pixels=None
    ) -> BlockTensor:
        """A new block tensor on the same grid and trace with the given per-level parts (or,
        with ``parts=None``, the parts viewed from ``pixels [rows, C]``)."""
        y = BlockTensor(
            parts,
            self.grid,
            self.side if side is None else side,
            pad_mode=self.pad_mode,
            trace=self.trace,
            op_id=self.next_op_id() if op_id is None else op_id,
            store=store,
            pixels=pixels,
        )
        y.owned = owned
        return y

    def assign(self, other: BlockTensor) -> BlockTensor:
        """In-place semantics: this object now holds ``other``'s value."""
        self._parts = None if other._parts is None else list(other._parts)
        self.side, self.pixels = other.side, other.pixels
        self.op_id, self.store, self.pending_pad = other.op_id, other.store, other.pending_pad
        self.owned = other.owned
        return self

    # -------------------------------------------------------------- tensor-like API
    @property
    def parts(self) -> list[Tensor]:
        """``[hr [Nh, C, s, s], lr [Nl, C, s/2, s/2]]`` (views of ``pixels`` when it is set)."""
        if self._parts is None:
            self._parts = pixel_parts(self.pixels, self.grid, self.side)
        return self._parts

    @parts.setter
    def parts(self, value) -> None:
        self._parts, self.pixels = list(value), None

    @property
    def _any(self) -> Tensor:
        """A tensor holding this block tensor's values (for dtype / device queries)."""
        return self.pixels if self.pixels is not None else self.parts[0]

    @property
    def hr(self) -> Tensor:
        return self.parts[0]

    @property
    def lr(self) -> Tensor:
        return self.parts[1]

    @property
    def channels(self) -> int:
        if self.pixels is not None:
            return int(self.pixels.shape[1])
        hr, lr = self.parts
        return int(lr.shape[1] if known_zero(self.grid.num_hr) else hr.shape[1])

    @property
    def shape(self) -> torch.Size:
        """Shape of the dense tensor this stands for, ``[N, C, H, W]`` at HR resolution."""
        h = self.grid.GH * self.side
        w = self.grid.GW * self.side
        if self.pending_pad is not None:
            pt, pb, pl, pr, _ = self.pending_pad
            h, w = h + pt + pb, w + pl + pr
        return torch.Size((self.grid.N, self.channels, h, w))

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return 4

    ndim = property(dim)

    @property
    def dtype(self) -> torch.dtype:
        return self._any.dtype

    @property
    def device(self) -> torch.device:
        return self._any.device

    @property
    def is_cuda(self) -> bool:
        return self._any.is_cuda

    @property
    def requires_grad(self) -> bool:
        if self.pixels is not None:
            return self.pixels.requires_grad
        return any(p.requires_grad for p in self.parts)

    def contiguous(self, memory_format=None) -> BlockTensor:
        return self

    def is_contiguous(self, memory_format=None) -> bool:
        return True

    def __repr__(self) -> str:
        return (
            f"BlockTensor(shape={tuple(self.shape)}, side={self.side}, "
            f"parts={[tuple(p.shape) for p in self.parts]}, dtype={self.dtype})"
        )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return dispatch(func, args, kwargs or {})

    def __getattr__(self, name):
        # Only reached for attributes not defined above: tensor methods with a block form.
        if name.startswith("__"):
            raise AttributeError(name)
        return method(self, name)

    # Python operators go through the same table as torch calls (keys: torch.Tensor dunders).
    def __add__(self, other):
        return dispatch(Tensor.__add__, (self, other), {})

    def __radd__(self, other):
        return dispatch(Tensor.__add__, (self, other), {})

    def __iadd__(self, other):
        return dispatch(Tensor.__iadd__, (self, other), {})

    def __sub__(self, other):
        return dispatch(Tensor.__sub__, (self, other), {})

    def __rsub__(self, other):
        return dispatch(Tensor.__rsub__, (self, other), {})

    def __isub__(self, other):
        return dispatch(Tensor.__isub__, (self, other), {})

    def __mul__(self, other):
        return dispatch(Tensor.__mul__, (self, other), {})

    def __rmul__(self, other):
        return dispatch(Tensor.__mul__, (self, other), {})

    def __imul__(self, other):
        return dispatch(Tensor.__imul__, (self, other), {})

    def __truediv__(self, other):
        return dispatch(Tensor.__truediv__, (self, other), {})

    def __neg__(self):
        return dispatch(Tensor.__neg__, (self,), {})
