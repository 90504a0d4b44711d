"""The block tensor and the three block modules' functional forms: sample, pad, combine.

Design: why a tensor-like object with ``__torch_function__`` rather than module conversion.
    The method must run *unmodified* third-party trunks (timm, torchvision). Their forward code
    does things no module swap can reach: residual ``x += shortcut`` inside ``forward``,
    timm's TF-"same" convs that call ``F.pad`` functionally before a padding-0 conv, feature
    lists collected in Python. A :class:`BlockTensor` is a plain Python object (not a
    ``torch.Tensor`` subclass, so there is no fake storage or shape to keep consistent) that
    implements ``__torch_function__``: every ``torch``/``F`` call that receives it is routed to a
    block-aware handler (``segblocks.blocks.layers``), and operators (``+``, ``+=``, ``*``) are
    plain methods. Ops without a handler raise :class:`UnsupportedBlockOp` naming the op and
    pointing to :func:`dense_fallback`; nothing silently falls back to a wrong result.

Memory layout and speed (CPU first, device-agnostic).
    HR blocks are ``[Nh, C, s, s]`` and LR blocks ``[Nl, C, s/2, s/2]``, channels-last. An
    activation that a padded op (conv, pool) will read is written by its producer (BlockSample,
    batch norm, activations, residual add) straight into the interior of a flat channels-last
    buffer ``[rows, C]`` that already has room for the halo (a :class:`_Store`); BlockPad then
    only fills the halo (one gather + one scatter of halo rows, driven by a cached
    :class:`~segblocks.blocks.grid.PadPlan`) and the conv runs with padding 0 on a zero-copy view.
    Producers cannot know their consumer, so a :class:`MarginProfile` remembers, per position
    of an op in the forward pass, the halo its consumer asked for; the first forward pass
    learns it (falling back to a copy into a fresh padded buffer), later passes write in place.
    The profile only ever affects speed: a wrong or stale entry costs one copy, never a wrong
    value. With autograd recording, every pad copies into a fresh buffer (out= ops and in-place
    halo refills would break the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .grid import PAD_MODES, BlockGrid, normalize_pads
from .stats import timed

__all__ = [
    "BlockTensor",
    "MarginProfile",
    "UnsupportedBlockOp",
    "block_sample",
    "block_pad",
    "block_combine",
    "dense_fallback",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class UnsupportedBlockOp(TypeError):
    """An op was called on a :class:`BlockTensor` that has no block implementation."""


def _storage_users(t: Tensor) -> int:
    """References to ``t``'s storage (tensors and views), or a large number if unknown."""
    try:
        # One reference is the temporary storage object made by this call.
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) - 1
    except Exception:  # private API; without it the pool just never reuses
        return 1 << 30


class BufferPool:
    """Reuses padded-buffer memory across forward passes (CPU, no autograd).

    Why: glibc returns every freed allocation above 32 MB to the OS, so a fresh buffer is
    page-faulted and zeroed by the kernel on first touch, which costs about as much as the
    element-wise op that fills it. Dense networks avoid this with in-place activations; block
    execution writes activations into new padded buffers, so it keeps its own. A buffer is
    handed out again only when no tensor or view references its storage any more (checked
    with the storage use count), so a caller holding an earlier output never sees it change.
    """

    def __init__(self, max_buffers: int = 48):
        self.max_buffers = max_buffers
        self.buffers: list[Tensor] = []

    def get(self, rows: int, channels: int, dtype, device) -> Tensor:
        need = rows * channels
        best = None
        for b in self.buffers:
            if b.dtype == dtype and b.device == device and b.numel() >= need:
                if (best is None or b.numel() < best.numel()) and _storage_users(b) <= 1:
                    best = b
        if best is None:
            # Slack so that the next mask, with a few more HR blocks, still fits.
            best = torch.empty(need + need // 4 + channels, dtype=dtype, device=device)
            self.buffers.append(best)
            if len(self.buffers) > self.max_buffers:
                free = [b for b in self.buffers if _storage_users(b) <= 1 and b is not best]
                if free:
                    self.buffers.remove(min(free, key=Tensor.numel))
        return best[:need].view(rows, channels)

    def clear(self) -> None:
        self.buffers.clear()


class MarginProfile:
    """Learned halo widths per op position of a forward pass (speed only, never semantics).

    ``margins[k]`` is the ``(top, bottom, left, right)`` halo that the first padded consumer of
    the k-th produced block tensor asked for in an earlier pass. The profile also owns the
    :class:`BufferPool` of padded buffers (CPU only; CUDA has its own caching allocator).
    """

    def __init__(self):
        self.margins: dict[int, tuple[int, int, int, int]] = {}
        self.pool = BufferPool()

    def record(self, op_id: int | None, pads) -> None:
        if op_id is not None:
            self.margins.setdefault(op_id, pads)

    def clear(self) -> None:
        """Forget learned halos and release pooled buffers."""
        self.margins.clear()
        self.pool.clear()


_DEFAULT_PROFILE = MarginProfile()


class _Trace:
    """Counts the block tensors produced in one forward pass (from one BlockSample)."""

    __slots__ = ("profile", "count")

    def __init__(self, profile: MarginProfile):
        self.profile = profile
        self.count = 0

    def next(self) -> int:
        self.count += 1
        return self.count - 1

    def margins_for(self, op_id: int):
        if torch.is_grad_enabled():
            return None
        m = self.profile.margins.get(op_id)
        return m if m is not None and any(m) else None


def _fast() -> bool:
    """In-place halo filling and ``out=`` writes are only legal without autograd recording."""
    return not torch.is_grad_enabled()


class _Store:
    """Flat channels-last buffer ``[rows, C]``: padded HR blocks, then padded LR blocks."""

    __slots__ = (
        "flat",
        "pads",
        "side",
        "nh",
        "nl",
        "rows_hr",
        "rows",
        "hp",
        "wp",
        "tp",
        "tw",
        "halo",
    )

    def __init__(self, grid: BlockGrid, side: int, pads, channels: int, dtype, device, trace=None):
        pt, pb, pl, pr = pads
        t = side // 2
        self.pads, self.side = pads, side
        self.nh, self.nl = grid.num_hr, grid.num_lr
        self.hp, self.wp = side + pt + pb, side + pl + pr
        self.tp, self.tw = t + pt + pb, t + pl + pr
        self.rows_hr = self.nh * self.hp * self.wp
        self.rows = rows = self.rows_hr + self.nl * self.tp * self.tw
        rows += 1  # the pad-value row that halo pixels beyond the image read from
        device = torch.device(device)
        if trace is not None and device.type == "cpu" and _fast():
            self.flat = trace.profile.pool.get(rows, channels, dtype, device)
        else:
            self.flat = torch.empty(rows, channels, dtype=dtype, device=device)
        self.halo = None  # key of the last halo fill

    def padded(self) -> tuple[Tensor, Tensor]:
        """Views ``[Nh, C, s+pt+pb, s+pl+pr]`` and ``[Nl, C, s/2+pt+pb, s/2+pl+pr]``."""
        C = self.flat.shape[1]
        hr = self.flat[: self.rows_hr].view(self.nh, self.hp, self.wp, C).permute(0, 3, 1, 2)
        lr = self.flat[self.rows_hr : self.rows].view(self.nl, self.tp, self.tw, C)
        lr = lr.permute(0, 3, 1, 2)
        return hr, lr

    def interiors(self) -> tuple[Tensor, Tensor]:
        pt, _, pl, _ = self.pads
        s, t = self.side, self.side // 2
        hr, lr = self.padded()
        return hr[:, :, pt : pt + s, pl : pl + s], lr[:, :, pt : pt + t, pl : pl + t]


class BlockTensor:
    """A batch of feature maps split into square blocks, some high-res and some low-res.

    Attributes:
        hr: ``[Nh, C, s, s]`` high-res blocks (row-major over ``(n, gy, gx)``).
        lr: ``[Nl, C, s/2, s/2]`` low-res blocks, each the 2x average-pooled version of its
            cell at this scale.
        grid: the :class:`BlockGrid` (decisions + cached plans), shared by all scales.
        side: HR block side ``s`` at this scale (``grid.block_size / stride``).
        pad_mode: how BlockPad samples HR neighbours for LR halos (see ``PAD_MODES``).

    It behaves like the dense ``[N, C, H, W]`` tensor it stands for under ``torch`` / ``F``
    calls (see ``segblocks.blocks.layers`` for the supported ops). In-place ops keep the object
    but rebind its blocks to new storage, so a tensor taken from ``x.hr`` earlier is not updated.
    """

    def __init__(
        self,
        hr: Tensor,
        lr: Tensor,
        grid: BlockGrid,
        side: int,
        *,
        pad_mode: str = "avg",
        trace: _Trace | None = None,
        op_id: int | None = None,
        store: _Store | None = None,
        pending_pad: tuple | None = None,
    ):
        self.hr, self.lr, self.grid, self.side = hr, lr, grid, side
        self.pad_mode = pad_mode
        self.trace = trace
        self.op_id = op_id
        self.store = store
        self.pending_pad = pending_pad  # (top, bottom, left, right, value) from F.pad
        # True when hr/lr are fresh outputs (conv, pool) that no other object shares, so an
        # in-place op may really write into them.
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
        return cls(hr, lr, grid, side, **kw)

    def _derive(self, hr, lr, side=None, store=None, owned=False) -> BlockTensor:
        trace = self.trace
        y = BlockTensor(
            hr,
            lr,
            self.grid,
            self.side if side is None else side,
            pad_mode=self.pad_mode,
            trace=trace,
            op_id=trace.next() if trace is not None else None,
            store=store,
        )
        y.owned = owned
        return y

    def _assign(self, other: BlockTensor) -> BlockTensor:
        """In-place semantics: this object now holds ``other``'s value."""
        self.hr, self.lr, self.side = other.hr, other.lr, other.side
        self.op_id, self.store, self.pending_pad = other.op_id, other.store, other.pending_pad
        self.owned = other.owned
        return self

    # -------------------------------------------------------------- tensor-like API
    @property
    def channels(self) -> int:
        return int(self.hr.shape[1] if self.grid.num_hr else self.lr.shape[1])

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
        return self.hr.dtype

    @property
    def device(self) -> torch.device:
        return self.hr.device

    @property
    def is_cuda(self) -> bool:
        return self.hr.is_cuda

    @property
    def requires_grad(self) -> bool:
        return self.hr.requires_grad or self.lr.requires_grad

    def contiguous(self, memory_format=None) -> BlockTensor:
        return self

    def is_contiguous(self, memory_format=None) -> bool:
        return True

    def __repr__(self) -> str:
        return (
            f"BlockTensor(shape={tuple(self.shape)}, side={self.side}, hr={tuple(self.hr.shape)}, "
            f"lr={tuple(self.lr.shape)}, dtype={self.dtype})"
        )

    def parts(self) -> tuple[Tensor, Tensor]:
        return self.hr, self.lr

    def combine(self, upsample: str = "nearest") -> Tensor:
        """BlockCombine: the dense ``[N, C, H, W]`` map (see :func:`block_combine`)."""
        return block_combine(self, upsample=upsample)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        from .layers import dispatch

        return dispatch(func, args, kwargs or {})

    def __getattr__(self, name):
        # Only reached for attributes not defined above: tensor methods without a block form.
        if name.startswith("__"):
            raise AttributeError(name)
        from .layers import method

        return method(self, name)

    # Python operators (not routed through __torch_function__ because this is no Tensor).
    def __add__(self, other):
        return torch.add(self, other)

    def __radd__(self, other):
        return torch.add(self, other)

    def __iadd__(self, other):
        from .layers import inplace_add

        return inplace_add(self, other)

    def __sub__(self, other):
        return torch.sub(self, other)

    def __rsub__(self, other):
        return torch.add(torch.neg(self), other)

    def __isub__(self, other):
        return self._assign(torch.sub(self, other))

    def __mul__(self, other):
        return torch.mul(self, other)

    def __rmul__(self, other):
        return torch.mul(self, other)

    def __imul__(self, other):
        return self._assign(torch.mul(self, other))

    def __truediv__(self, other):
        return torch.div(self, other)

    def __neg__(self):
        return torch.neg(self)


# ---------------------------------------------------------------------- BlockSample
def _check_dense(x: Tensor, what: str = "input") -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected [N, C, H, W]")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{what} has dtype {x.dtype}; block execution needs a floating dtype "
            f"({', '.join(str(d) for d in _FLOAT_DTYPES)}); convert with x.float()"
        )


def _as_grid(grid, block_size) -> BlockGrid:
    if isinstance(grid, BlockGrid):
        if block_size is not None and int(block_size) != grid.block_size:
            raise ValueError(
                f"block_size {block_size} differs from the BlockGrid's {grid.block_size}"
            )
        return grid
    if block_size is None:
        raise ValueError("block_size is required when the grid is given as a mask tensor")
    return BlockGrid(grid, block_size)


_POOL_WEIGHTS: dict = {}


def avg_pool2x2(x: Tensor) -> Tensor:
    """2x2 average pooling ``[B, C, h, w] -> [B, C, h/2, w/2]``, as a depthwise conv.

    Why not ``F.avg_pool2d``: on channels-last CPU tensors with few channels (images) the
    pooling kernel ran 6x slower than this depthwise conv with weights 1/4 (8.3 vs 1.3 ms for
    77 RGB blocks of 128 px). Results agree with ``F.avg_pool2d`` up to float rounding.
    """
    C = x.shape[1]
    key = (C, x.dtype, x.device)
    w = _POOL_WEIGHTS.get(key)
    if w is None:
        w = torch.full((C, 1, 2, 2), 0.25, dtype=x.dtype, device=x.device)
        _POOL_WEIGHTS[key] = w
    return F.conv2d(x, w, stride=2, groups=C)


def _split(x: Tensor, grid: BlockGrid, side: int, store_pads=None, trace=None):
    """Split dense ``x [N, C, H, W]`` into HR blocks and 2x avg-pooled LR blocks of side ``side``.

    Returns ``(hr [Nh, C, s, s], lr [Nl, C, s/2, s/2], store)``; with ``store_pads`` the blocks
    are written into the interior of a padded store (the halo is left for BlockPad).
    """
    N, C, H, W = x.shape
    if N != grid.N:
        raise ValueError(
            f"batch size {N} does not match the grid's {grid.N} images; pass one mask per image"
        )
    if (H, W) != (grid.GH * side, grid.GW * side):
        gh, gw = BlockGrid.grid_shape(H, W, side)
        raise ValueError(
            f"input of {H}x{W} with block size {side} has a {gh}x{gw} grid, but the mask grid is "
            f"{grid.GH}x{grid.GW}; build the mask with shape [N, {gh}, {gw}]"
        )
    if x.device != grid.device:
        raise ValueError(f"input is on {x.device} but the mask is on {grid.device}; move one")
    s = side
    # [N, GH, GW, s, s, C] view of the image; advanced indexing gathers whole blocks in one pass.
    x6 = x.unflatten(2, (grid.GH, s)).unflatten(4, (grid.GW, s)).permute(0, 2, 4, 3, 5, 1)
    hr = x6[grid.cells(True)]  # [Nh, s, s, C]
    lr = x6[grid.cells(False)]  # [Nl, s, s, C]
    hr = hr.permute(0, 3, 1, 2)
    lr = avg_pool2x2(lr.permute(0, 3, 1, 2))
    store = None
    if store_pads is not None:
        store = _Store(grid, s, store_pads, C, x.dtype, x.device, trace)
        hi, li = store.interiors()
        hi.copy_(hr)
        li.copy_(lr)
        hr, lr = hi, li
    return hr, lr, store


def block_sample(
    x: Tensor,
    grid,
    block_size: int | None = None,
    *,
    pad_mode: str = "avg",
    profile: MarginProfile | None = None,
) -> BlockTensor:
    """BlockSample: split ``x`` into blocks; HR blocks kept, LR blocks 2x2 average-pooled.

    Args:
        x: dense ``[N, C, H, W]`` float tensor; ``H`` and ``W`` multiples of the block size.
        grid: ``[N, GH, GW]`` bool mask (``True`` = high-res) or a :class:`BlockGrid`.
        block_size: block side in pixels (required when ``grid`` is a mask).
        pad_mode: how every later BlockPad fills LR halos from HR neighbours: ``"avg"``
            (paper Fig. 6b), ``"strided"`` (Fig. 6a) or ``"zero"`` (no BlockPad, Table 9).
        profile: where learned halo widths are kept (speed only); defaults to a global one.

    Returns:
        a :class:`BlockTensor` with ``hr [Nh, C, bs, bs]`` and ``lr [Nl, C, bs/2, bs/2]``.

    Example:
        >>> mask = torch.rand(1, 2, 4) > 0.5
        >>> xb = block_sample(torch.randn(1, 3, 64, 128), mask, block_size=32)
        >>> y = block_combine(xb)  # [1, 3, 64, 128]; LR blocks come back nearest-upsampled
    """
    _check_dense(x)
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode {pad_mode!r} is not one of {PAD_MODES}")
    if isinstance(grid, Tensor) and grid.device != x.device and grid.dtype == torch.bool:
        grid = grid.to(x.device)
    grid = _as_grid(grid, block_size)
    H, W = x.shape[-2:]
    BlockGrid.grid_shape(H, W, grid.block_size)
    trace = _Trace(profile if profile is not None else _DEFAULT_PROFILE)
    op_id = trace.next()
    pads = trace.margins_for(op_id)
    with timed("sample", x.device):
        hr, lr, store = _split(x, grid, grid.block_size, pads, trace)
    return BlockTensor(
        hr, lr, grid, grid.block_size, pad_mode=pad_mode, trace=trace, op_id=op_id, store=store
    )


# ---------------------------------------------------------------------- BlockPad
def _fill_halo(store: _Store, grid: BlockGrid, mode: str, border: str, value: float) -> None:
    key = (mode, border, value)
    if store.halo == key:
        return
    plan = grid.pad_plan(store.side, store.pads, mode, border)
    flat = store.flat
    flat[store.rows].fill_(value)
    if plan.copy_dst.numel():
        flat.index_copy_(0, plan.copy_dst, flat.index_select(0, plan.copy_src))
    if plan.avg_dst.numel():
        # After the copies: avg entries overwrite their (strided) placeholder values.
        v = flat.index_select(0, plan.avg_src).view(-1, 4, flat.shape[1]).sum(1).mul_(0.25)
        flat.index_copy_(0, plan.avg_dst, v)
    if plan.const_dst.numel():
        flat.index_fill_(0, plan.const_dst, value)
    store.halo = key if _fast() else None


def padded_parts(
    x: BlockTensor,
    pads,
    *,
    border: str = "zeros",
    value: float = 0.0,
    mode: str | None = None,
    fresh: bool = False,
) -> tuple[Tensor, Tensor]:
    """Padded HR and LR blocks of ``x`` for an op that pads by ``pads`` (see :func:`block_pad`).

    Without ``fresh`` (the layers' path) the result may be views of a buffer that the next
    padded read of ``x`` refills, so it must be consumed before that.
    """
    with timed("pad", x.device):
        return _padded_parts(x, normalize_pads(pads), border, value, mode, fresh)


def _padded_parts(x, pads, border, value, mode, fresh=False):
    mode = x.pad_mode if mode is None else mode
    if x.trace is not None and not fresh:
        x.trace.profile.record(x.op_id, pads)
    st = x.store
    if fresh or st is None or st.pads != pads or not _fast():
        st = _Store(x.grid, x.side, pads, x.channels, x.dtype, x.device, x.trace)
        # Views are taken one at a time: under autograd the first copy_ turns the buffer into
        # a graph node, and a view taken before that would still look like a leaf.
        st.interiors()[0].copy_(x.hr)
        st.interiors()[1].copy_(x.lr)
        hi, li = st.interiors()
        if _fast() and not fresh:
            # Later consumers with the same halo (e.g. a residual branch) reuse this buffer.
            x.store, x.hr, x.lr = st, hi, li
    _fill_halo(st, x.grid, mode, border, value)
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
    """
    if not isinstance(x, BlockTensor):
        raise ValueError(f"block_pad expects a BlockTensor, got {type(x).__name__}")
    # A fresh buffer: layers reuse and refill one padded buffer per activation, but results
    # handed to the caller must not change when the same tensor is padded again.
    return padded_parts(x, padding, border=border, value=value, mode=mode, fresh=True)


# ---------------------------------------------------------------------- BlockCombine
def upsample_lr_bilinear(x: BlockTensor) -> Tensor:
    """LR blocks upsampled 2x bilinearly with their neighbours as context: ``[Nl, C, s, s]``."""
    t = x.side // 2
    _, lrp = padded_parts(x, 1, border="replicate")
    up = F.interpolate(lrp, scale_factor=2, mode="bilinear", align_corners=False)
    return up[:, :, 2 : 2 + 2 * t, 2 : 2 + 2 * t]


def block_combine(x: BlockTensor, upsample: str = "nearest") -> Tensor:
    """BlockCombine: the dense ``[N, C, H, W]`` map of a block tensor (channels-last).

    Args:
        x: block tensor with HR side ``s``; ``H = GH * s``, ``W = GW * s``.
        upsample: ``"nearest"`` (paper) or ``"bilinear"``: LR blocks upsampled with their
            neighbours as context (pad 1, bilinear 2x, crop), smoother at block borders.
    """
    if not isinstance(x, BlockTensor):
        raise ValueError(f"block_combine expects a BlockTensor, got {type(x).__name__}")
    if upsample not in ("nearest", "bilinear"):
        raise ValueError(f"upsample {upsample!r} must be 'nearest' or 'bilinear'")
    with timed("combine", x.device):
        return _combine(x, upsample)


def _combine(x: BlockTensor, upsample: str) -> Tensor:
    g, s = x.grid, x.side
    t = s // 2
    C = x.channels
    hr = x.hr
    lr = x.lr
    out = torch.empty(g.N, g.GH * s, g.GW * s, C, dtype=x.dtype, device=x.device)
    o6 = out.view(g.N, g.GH, s, g.GW, s, C).permute(0, 1, 3, 2, 4, 5)
    if g.num_hr:
        o6.index_put_(g.cells(True), hr.permute(0, 2, 3, 1))
    if g.num_lr:
        if upsample == "bilinear":
            o6.index_put_(g.cells(False), upsample_lr_bilinear(x).permute(0, 2, 3, 1))
        else:
            o8 = out.view(g.N, g.GH, t, 2, g.GW, t, 2, C).permute(0, 1, 4, 2, 3, 5, 6, 7)
            v = lr.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(-1, t, 2, t, 2, C)
            o8.index_put_(g.cells(False), v)
    return out.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------- dense fallback
def dense_fallback(fn, x: BlockTensor, *args, **kwargs) -> BlockTensor:
    """Run ``fn`` on the dense map of ``x`` and split the result with the same decisions.

    For layers that need the whole map (global pooling, SPP): combine (nearest) -> ``fn`` ->
    re-sample (LR blocks average-pooled). The output's spatial size must be a whole multiple
    of the grid, e.g. ``fn`` keeps ``H x W``.
    """
    dense = block_combine(x)
    y = fn(dense, *args, **kwargs)
    _check_dense(y, "dense_fallback output")
    g = x.grid
    Ho, Wo = y.shape[-2:]
    if Ho % g.GH or Wo % g.GW or Ho // g.GH != Wo // g.GW:
        raise ValueError(
            f"dense_fallback output is {Ho}x{Wo}, which does not split into the {g.GH}x{g.GW} "
            "block grid; the wrapped layer must keep the spatial size (or scale it evenly)"
        )
    side = Ho // g.GH
    g.check_side(side, "dense_fallback output")
    trace = x.trace
    op_id = trace.next() if trace is not None else None
    pads = trace.margins_for(op_id) if trace is not None else None
    hr, lr, store = _split(y, g, side, pads, trace)
    return BlockTensor(hr, lr, g, side, pad_mode=x.pad_mode, trace=trace, op_id=op_id, store=store)
