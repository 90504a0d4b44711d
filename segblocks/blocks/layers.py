"""Block execution of CNN layers: the handlers behind ``BlockTensor.__torch_function__``.

Every supported ``torch`` / ``torch.nn.functional`` call on a :class:`BlockTensor` lands in one
handler here, looked up by the function's name (so ``F.relu``, ``torch.relu`` and
``Tensor.relu`` share one). Rules, each chosen so that an all-HR grid reproduces the dense
network and an all-LR grid the dense network on the 2x average-pooled input:

- conv2d (any kernel, stride, dilation, groups): BlockPad with the conv's padding (plus any
  pending ``F.pad``), then the conv with padding 0 on HR and LR blocks separately; 1x1 convs
  without padding read the blocks directly (strided ones subsample first).
- batch norm: eval -> per-channel affine on both resolutions; training -> statistics over all
  HR and LR pixels jointly (each processed pixel counts once), running stats updated from them.
- point-wise ops (activations, dropout, arithmetic with scalars or per-channel tensors) and
  element-wise ops between block tensors of the same grid and scale: per resolution.
- max / avg pooling: BlockPad with ``-inf`` / 0 at the image border, pool with padding 0.
- ``F.pad`` (constant): deferred and merged into the next conv / pool's BlockPad.
- 2x upsampling: nearest per block; bilinear as pad-1 (replicate at the image border),
  upsample, crop, so neighbouring blocks give context exactly as in the dense map.
- ``torch.cat`` along channels.

Anything else raises :class:`UnsupportedBlockOp` naming the op; wrap such layers with
:class:`segblocks.blocks.DenseFallback` (combine -> layer -> re-sample).
"""

from __future__ import annotations

import numbers
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from .stats import count_conv
from .tensor import BlockTensor, UnsupportedBlockOp, _fast, _Store, padded_parts

_HANDLERS: dict[str, callable] = {}


def _register(*names):
    def deco(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn

    return deco


def _op_name(func) -> str:
    return getattr(func, "__name__", None) or str(func)


def dispatch(func, args, kwargs):
    name = _op_name(func)
    handler = _HANDLERS.get(name)
    if handler is None:
        raise UnsupportedBlockOp(
            f"'{name}' has no block implementation; run the layer that calls it on the dense map "
            "with segblocks.blocks.DenseFallback(layer) (or dense_fallback(fn, x)), or combine "
            "the blocks first with block_combine(x)"
        )
    return handler(*args, **kwargs)


def method(x: BlockTensor, name: str):
    """``x.<name>(...)`` for tensor methods with a handler (e.g. ``x.relu_()``, ``x.add(y)``)."""
    handler = _HANDLERS.get(name)
    if handler is None:
        raise AttributeError(
            f"BlockTensor has no method '{name}' with a block implementation; use "
            "segblocks.blocks.DenseFallback for layers that need the dense map"
        )
    return lambda *a, **k: handler(x, *a, **k)


# ----------------------------------------------------------------------------- helpers
def _pair(v, name="value"):
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise ValueError(f"{name} {v!r} must be an int or a pair")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _map(x: BlockTensor, fn, out_fn=None, side=None, other=None) -> BlockTensor:
    """Apply ``fn`` to HR and LR blocks; with a learned halo, write into a padded store.

    ``other``: the second operand's ``(hr, lr)`` for binary ops, passed as ``fn(a, b)`` /
    ``out_fn(a, b, out)``.
    """
    trace = x.trace
    op_id = trace.next() if trace is not None else None
    pads = trace.margins_for(op_id) if (trace is not None and out_fn is not None) else None
    extra = ((), ()) if other is None else ((other[0],), (other[1],))
    store = None
    if pads is not None:
        store = _Store(x.grid, x.side, pads, x.channels, x.dtype, x.device, trace)
        hi, li = store.interiors()
        out_fn(x.hr, *extra[0], hi)
        out_fn(x.lr, *extra[1], li)
        hr, lr = hi, li
    else:
        hr, lr = fn(x.hr, *extra[0]), fn(x.lr, *extra[1])
    return BlockTensor(
        hr,
        lr,
        x.grid,
        x.side if side is None else side,
        pad_mode=x.pad_mode,
        trace=trace,
        op_id=op_id,
        store=store,
    )


def _no_pending(x: BlockTensor, op: str) -> None:
    if x.pending_pad is not None:
        raise UnsupportedBlockOp(
            f"F.pad on a block tensor must be followed by a conv or pooling layer, not '{op}'"
        )


def _other_part(x: BlockTensor, other, op: str):
    """``(hr, lr)`` operands for an element-wise op between ``x`` and ``other``."""
    if isinstance(other, BlockTensor):
        _no_pending(other, op)
        if not x.grid.same_decisions(other.grid) or other.side != x.side:
            raise ValueError(
                f"'{op}' between block tensors with different grids or scales (sides {x.side} "
                f"and {other.side}); both operands must come from the same BlockSample and scale"
            )
        return other.hr, other.lr
    if isinstance(other, numbers.Number):
        return other, other
    if isinstance(other, Tensor):
        if other.dim() >= 2 and tuple(other.shape[-2:]) != (1, 1):
            raise ValueError(
                f"'{op}' between a block tensor and a dense tensor of shape {tuple(other.shape)}; "
                "split the dense tensor with block_sample(...) using the same grid first"
            )
        if other.dim() == 4 and other.shape[0] != 1:
            raise ValueError(
                f"'{op}' with a per-image tensor of shape {tuple(other.shape)} is not supported "
                "on block tensors (blocks of all images share one batch)"
            )
        return other, other
    raise UnsupportedBlockOp(f"'{op}' with an operand of type {type(other).__name__}")


def _binary(op_name, fn, out_fn=None):
    def handler(x, other, *args, **kwargs):
        if not isinstance(x, BlockTensor):  # reflected call, e.g. tensor + block (commutative)
            if op_name in ("sub", "div"):
                raise UnsupportedBlockOp(f"'{op_name}' with a block tensor as second operand")
            x, other = other, x
        _no_pending(x, op_name)
        pair = _other_part(x, other, op_name)

        def plain(a, b):
            return fn(a, b, *args, **kwargs)

        def into(a, b, out):
            out_fn(a, b, *args, out=out, **kwargs)

        return _map(x, plain, into if out_fn is not None else None, other=pair)

    return handler


def _inplace(handler):
    def run(x, *args, **kwargs):
        return x._assign(handler(x, *args, **kwargs))

    return run


# ----------------------------------------------------------------------------- pointwise
def _unary(name, fn, out_fn=None):
    def handler(x, *args, inplace=False, **kwargs):
        _no_pending(x, name)
        y = _map(
            x,
            lambda a: fn(a, *args, **kwargs),
            None if out_fn is None else (lambda a, out: out_fn(a, *args, out=out, **kwargs)),
        )
        return x._assign(y) if inplace else y

    return handler


def _relu(a, out=None):
    return torch.clamp_min(a, 0, out=out) if out is not None else torch.relu(a)


def _hardtanh(a, min_val=-1.0, max_val=1.0, out=None):
    if out is not None:
        return torch.clamp(a, min_val, max_val, out=out)
    return F.hardtanh(a, min_val, max_val)


def _silu(a, out=None):
    return torch.ops.aten.silu.out(a, out=out) if out is not None else F.silu(a)


_register("relu", "relu_")(_unary("relu", _relu, _relu))
_HANDLERS["relu_"] = lambda x: _HANDLERS["relu"](x, inplace=True)
_register("hardtanh")(_unary("hardtanh", _hardtanh, _hardtanh))
_HANDLERS["hardtanh_"] = lambda x, *a, **k: _HANDLERS["hardtanh"](x, *a, inplace=True, **k)
_HANDLERS["relu6"] = lambda x, inplace=False: _HANDLERS["hardtanh"](x, 0.0, 6.0, inplace=inplace)
_register("silu")(_unary("silu", _silu, _silu))
for _name, _fn in [
    ("sigmoid", torch.sigmoid),
    ("tanh", torch.tanh),
    ("gelu", F.gelu),
    ("hardswish", F.hardswish),
    ("hardsigmoid", F.hardsigmoid),
    ("leaky_relu", F.leaky_relu),
    ("elu", F.elu),
    ("mish", F.mish),
    ("neg", torch.neg),
    ("abs", torch.abs),
    ("exp", torch.exp),
]:
    _register(_name)(_unary(_name, _fn))
    _HANDLERS[_name + "_"] = (lambda n: lambda x, *a, **k: x._assign(_HANDLERS[n](x, *a, **k)))(
        _name
    )


@_register("dropout", "dropout1d", "alpha_dropout", "feature_alpha_dropout")
def _dropout(x, p=0.5, training=True, inplace=False):
    if not training or p == 0:
        return x
    # Element-wise masks are drawn per pixel at each resolution; block tensors of one grid
    # have no per-image channel structure, so only element-wise dropout is supported.
    return _unary("dropout", lambda a: F.dropout(a, p, True))(x, inplace=inplace)


@_register("dropout2d")
def _dropout2d(x, p=0.5, training=True, inplace=False):
    if not training or p == 0:
        return x
    raise UnsupportedBlockOp(
        "dropout2d in training drops whole channels per image, which block tensors cannot "
        "express; use element-wise dropout or DenseFallback"
    )


# ----------------------------------------------------------------------------- arithmetic
def _add_out(a, b, alpha=1, out=None):
    return torch.add(a, b, alpha=alpha, out=out)


_register("add", "__add__", "__radd__")(_binary("add", torch.add, _add_out))
_register("sub", "__sub__")(_binary("sub", torch.sub))
_register("mul", "__mul__", "__rmul__")(_binary("mul", torch.mul))
_register("div", "__truediv__")(_binary("div", torch.div))
for _n in ("add", "sub", "mul", "div"):
    _HANDLERS[_n + "_"] = _inplace(_HANDLERS[_n])


def inplace_add(x, other, alpha=1):
    """``x += other``: writes into ``x``'s blocks when they are fresh conv/pool outputs."""
    if _fast() and x.owned and x.pending_pad is None:
        oh, ol = _other_part(x, other, "add_")
        x.hr.add_(oh, alpha=alpha)
        x.lr.add_(ol, alpha=alpha)
        if x.store is not None:
            x.store.halo = None  # the interior changed: the halo must be refilled
        x.op_id = x.trace.next() if x.trace is not None else None
        return x
    return x._assign(_HANDLERS["add"](x, other, alpha=alpha))


_HANDLERS["add_"] = _HANDLERS["__iadd__"] = inplace_add
_HANDLERS["__isub__"] = _HANDLERS["sub_"]
_HANDLERS["__imul__"] = _HANDLERS["mul_"]


@_register("cat", "concat", "concatenate")
def _cat(tensors, dim=0, *, out=None):
    tensors = list(tensors)
    if out is not None:
        raise UnsupportedBlockOp("torch.cat(..., out=) on block tensors")
    if dim not in (1, -3):
        raise UnsupportedBlockOp(
            f"torch.cat along dim {dim}: block tensors concatenate along channels (dim=1) only"
        )
    x = tensors[0]
    if not all(isinstance(t, BlockTensor) for t in tensors):
        raise ValueError("torch.cat mixes block tensors and dense tensors; sample them first")
    for t in tensors[1:]:
        _other_part(x, t, "cat")
    return x._derive(torch.cat([t.hr for t in tensors], 1), torch.cat([t.lr for t in tensors], 1))


@_register("clone")
def _clone(x, memory_format=None):
    return _map(x, lambda a: a.clone())


# ----------------------------------------------------------------------------- batch norm
@_register("batch_norm")
def _batch_norm(
    x,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    cudnn_enabled=None,
):
    _no_pending(x, "batch_norm")
    if training or running_mean is None:
        # Joint statistics over every processed pixel, HR and LR alike (each counts once).
        C = x.channels
        flat = torch.cat(
            [x.hr.permute(0, 2, 3, 1).reshape(-1, C), x.lr.permute(0, 2, 3, 1).reshape(-1, C)]
        )
        y = F.batch_norm(flat, running_mean, running_var, weight, bias, True, momentum, eps)
        nh = x.hr.numel() // C
        s, t = x.side, x.side // 2
        hr = y[:nh].view(x.grid.num_hr, s, s, C).permute(0, 3, 1, 2)
        lr = y[nh:].view(x.grid.num_lr, t, t, C).permute(0, 3, 1, 2)
        return x._derive(hr, lr)
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    scale, shift = scale.view(-1, 1, 1).to(x.dtype), shift.view(-1, 1, 1).to(x.dtype)

    def plain(a):
        return F.batch_norm(a, running_mean, running_var, weight, bias, False, momentum, eps)

    def into(a, out):
        torch.addcmul(shift, a, scale, out=out)

    return _map(x, plain, into)


# ----------------------------------------------------------------------------- conv / pool
def _same_size_check(op, side, k, st, dil, total, H):
    eff = dil * (k - 1) + 1
    if side % st or (side // 2) % st:
        raise ValueError(
            f"{op} with stride {st} on blocks of {side} px (low-res {side // 2} px): the blocks "
            "must stay whole pixels; use a block size that is a multiple of 2 x the total stride"
        )
    if not (eff - st <= total <= eff - 1):
        raise ValueError(
            f"{op} with kernel {k}, stride {st}, dilation {dil} and total padding {total} maps "
            f"{H} px to {(H + total - eff) // st + 1} px, not {H // st}; block execution needs "
            f"'same'-style padding (total {eff - 1} for stride 1)"
        )


def _check_ceil(op, x, kernel, stride, padding, dilation):
    """``ceil_mode=True`` is fine only where it gives the same size as floor mode."""
    kh, _ = _pair(kernel, "kernel_size")
    sh, _ = _pair(stride if stride not in (None, ()) else kernel, "stride")
    ph, _ = _pair(padding, "padding") if not isinstance(padding, str) else (0, 0)
    dh, _ = _pair(dilation, "dilation")
    H = x.shape[-2]
    eff = dh * (kh - 1) + 1
    floor_out = (H + 2 * ph - eff) // sh + 1
    ceil_out = -(-(H + 2 * ph - eff) // sh) + 1
    if ceil_out != floor_out and (ceil_out - 1) * sh < H + ph:
        raise ValueError(
            f"{op} with ceil_mode=True maps {H} px to {ceil_out} px, not {H // sh}; block "
            "execution needs the floor-mode size: pass ceil_mode=False or use DenseFallback"
        )


def _geometry(op, x, kernel, stride, padding, dilation, own_pad_value=0.0):
    """Halo ``(top, bottom, left, right)``, stride and border value for a padded op on ``x``.

    ``own_pad_value`` is the value the op itself pads with (0 for conv / avg pool, ``-inf`` for
    max pool); a pending ``F.pad`` with another value can only be merged when the op itself
    does not pad.
    """
    kh, kw = _pair(kernel, "kernel_size")
    sh, sw = _pair(stride if stride not in (None, ()) else kernel, "stride")
    dh, dw = _pair(dilation, "dilation")
    if sh != sw:
        raise UnsupportedBlockOp(f"{op} with unequal strides {(sh, sw)} on square blocks")
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if sh != 1:
                raise ValueError(
                    f"{op} padding='same' with stride {sh}: PyTorch rejects it for strided "
                    "convolutions too; give explicit padding"
                )
            th, tw = dh * (kh - 1), dw * (kw - 1)
            padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(f"{op} padding {padding!r} must be 'same', 'valid' or ints")
    if isinstance(padding, (list, tuple)) and len(padding) == 4:
        pt, pb, pl, pr = (int(p) for p in padding)
    else:
        ph, pw = _pair(padding, "padding")
        pt, pb, pl, pr = ph, ph, pw, pw
    value = None
    if x.pending_pad is not None:
        qt, qb, ql, qr, value = x.pending_pad
        if value != own_pad_value and (pt or pb or pl or pr):
            raise UnsupportedBlockOp(
                f"F.pad with value {value} followed by {op} with its own padding {padding}: "
                "two different border values; pad once (F.pad) or use DenseFallback"
            )
        pt, pb, pl, pr = pt + qt, pb + qb, pl + ql, pr + qr
    H = x.grid.GH * x.side
    _same_size_check(op, x.side, kh, sh, dh, pt + pb, H)
    _same_size_check(op, x.side, kw, sw, dw, pl + pr, x.grid.GW * x.side)
    x.grid.check_side(x.side // sh, op)
    return (pt, pb, pl, pr), sh, value


def _crop(y: Tensor, side: int) -> Tensor:
    if y.shape[-1] != side or y.shape[-2] != side:
        y = y[:, :, :side, :side]
    return y


def _pooled_parts(x, pads, border_value):
    """Padded parts (or plain parts when no halo is needed)."""
    if any(pads):
        return padded_parts(x, pads, value=border_value)
    return x.hr, x.lr


#: Block parts whose conv output tile is at most this many pixels wide, with at least
#: IM2COL_MIN_CHANNELS input channels, run as one gather-im2col + GEMM instead of a batched
#: conv: oneDNN ran 1.5-3.3x slower per MAC on 4x4 / 2x2 output tiles of 256-512 channels than
#: on the dense map (ResNet-18 trunk, 2 threads), while one GEMM over all tiles' pixels runs
#: near peak. With 64-128 channels the GEMM is too thin and the 9x gather dominates (tiles
#: 70 ms vs im2col 128 ms for 512 tiles of 4x4, 128 channels), so those stay with oneDNN.
IM2COL_MAX_SIDE = 4
IM2COL_MIN_CHANNELS = 256

_WEIGHT_CACHE: dict[int, tuple] = {}


def _gemm_weight(weight: Tensor) -> Tensor:
    """``[C_in*kh*kw, C_out]`` with rows ordered (ky, kx, c) to match channels-last im2col.

    Cached per weight tensor (keyed by identity, invalidated by in-place updates through the
    tensor version counter, dropped when the weight is freed).
    """
    key = id(weight)
    hit = _WEIGHT_CACHE.get(key)
    if hit is not None and hit[0]() is weight and hit[1] == weight._version:
        return hit[2]
    w2 = weight.detach().permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
    ref = weakref.ref(weight, lambda _r, k=key: _WEIGHT_CACHE.pop(k, None))
    _WEIGHT_CACHE[key] = (ref, weight._version, w2)
    return w2


def _im2col_index(x, st_pads, hr: bool, k, stride, dilation, out_side):
    """Rows of the padded store feeding each (output pixel, tap): ``[P * kh * kw]``."""
    g = x.grid
    key = ("im2col", x.side, st_pads, hr, k, stride, dilation)
    idx = g._cache.get(key)
    if idx is None:
        pt, pb, pl, pr = st_pads
        side = x.side if hr else x.side // 2
        hp, wp = side + pt + pb, side + pl + pr
        nb = g.num_hr if hr else g.num_lr
        base = 0 if hr else g.num_hr * (x.side + pt + pb) * (x.side + pl + pr)
        dev = g.device
        o = torch.arange(out_side, device=dev) * stride
        ky = torch.arange(k[0], device=dev) * dilation[0]
        kx = torch.arange(k[1], device=dev) * dilation[1]
        rows = (o.view(-1, 1, 1, 1) + ky.view(1, 1, -1, 1)) * wp  # [oy, 1, ky, 1]
        cols = o.view(1, -1, 1, 1) + kx.view(1, 1, 1, -1)  # [1, ox, 1, kx]
        loc = (rows + cols).reshape(-1)  # (oy, ox, ky, kx)
        blk = torch.arange(nb, device=dev).view(-1, 1) * (hp * wp)
        idx = (base + blk + loc.view(1, -1)).reshape(-1)
        g._cache[key] = idx
    return idx


def _conv_parts_im2col(x, weight, bias, pads, st, dilation, use_hr, use_lr, side):
    """Conv of the selected parts through im2col + one GEMM; ``None`` for the others."""
    hr_p, lr_p = padded_parts(x, pads)
    store = x.store
    flat = store.flat
    w2 = _gemm_weight(weight)
    kk = tuple(weight.shape[-2:])
    dil = _pair(dilation)
    idx, shapes = [], []
    for use, is_hr, n, out in (
        (use_hr, True, x.grid.num_hr, side),
        (use_lr, False, x.grid.num_lr, side // 2),
    ):
        if use:
            idx.append(_im2col_index(x, store.pads, is_hr, kk, st, dil, out))
            shapes.append((n, out))
    index = idx[0] if len(idx) == 1 else torch.cat(idx)
    cols = flat.index_select(0, index).view(-1, w2.shape[0])
    y = torch.addmm(bias, cols, w2) if bias is not None else torch.mm(cols, w2)
    res, start = [], 0
    for n, out in shapes:
        rows = n * out * out
        res.append(y[start : start + rows].view(n, out, out, -1).permute(0, 3, 1, 2))
        start += rows
    it = iter(res)
    return (next(it) if use_hr else None), (next(it) if use_lr else None)


@_register("conv2d")
def _conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if not isinstance(x, BlockTensor):
        raise UnsupportedBlockOp("conv2d with a block tensor as weight")
    pads, st, value = _geometry("conv2d", x, weight.shape[-2:], stride, padding, dilation)
    side = x.side // st
    if not any(pads) and tuple(weight.shape[-2:]) == (1, 1):
        hr, lr = x.hr, x.lr
        if st > 1:  # a strided 1x1 conv only reads every st-th pixel
            hr, lr = hr[:, :, ::st, ::st], lr[:, :, ::st, ::st]
        yh = F.conv2d(hr, weight, bias, 1, 0, 1, groups)
        yl = F.conv2d(lr, weight, bias, 1, 0, 1, groups)
        count_conv(weight, groups, yh, yl)
        return x._derive(yh, yl, side, owned=True)
    use_hr = use_lr = False
    if (
        _fast()
        and groups == 1
        and weight.shape[1] >= IM2COL_MIN_CHANNELS
        and (value is None or value == 0)
        and any(pads)
    ):
        use_hr = 0 < side <= IM2COL_MAX_SIDE and x.grid.num_hr > 0
        use_lr = 0 < side // 2 <= IM2COL_MAX_SIDE and x.grid.num_lr > 0
    if use_hr or use_lr:
        yh, yl = _conv_parts_im2col(x, weight, bias, pads, st, dilation, use_hr, use_lr, side)
    if not (use_hr and use_lr):
        hr, lr = _pooled_parts(x, pads, 0.0 if value is None else value)
        if not use_hr:
            yh = _crop(F.conv2d(hr, weight, bias, st, 0, dilation, groups), side)
        if not use_lr:
            yl = _crop(F.conv2d(lr, weight, bias, st, 0, dilation, groups), side // 2)
    count_conv(weight, groups, yh, yl)
    return x._derive(yh, yl, side, owned=True)


@_register("max_pool2d", "_max_pool2d", "max_pool2d_with_indices")
def _max_pool2d(
    x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    if return_indices:
        raise UnsupportedBlockOp("max_pool2d(return_indices=True) on block tensors")
    if ceil_mode:
        _check_ceil("max_pool2d", x, kernel_size, stride, padding, dilation)
    pads, st, value = _geometry(
        "max_pool2d", x, kernel_size, stride, padding, dilation, own_pad_value=float("-inf")
    )
    side = x.side // st
    hr, lr = _pooled_parts(x, pads, float("-inf") if value is None else value)
    yh = F.max_pool2d(hr, kernel_size, st, 0, dilation)
    yl = F.max_pool2d(lr, kernel_size, st, 0, dilation)
    return x._derive(_crop(yh, side), _crop(yl, side // 2), side)


@_register("avg_pool2d")
def _avg_pool2d(
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    if ceil_mode:
        _check_ceil("avg_pool2d", x, kernel_size, stride, padding, 1)
    pads, st, value = _geometry("avg_pool2d", x, kernel_size, stride, padding, 1)
    if any(pads) and not count_include_pad:
        raise UnsupportedBlockOp(
            "avg_pool2d(count_include_pad=False) with padding: border pixels would be counted "
            "differently from the dense map; use DenseFallback"
        )
    side = x.side // st
    hr, lr = _pooled_parts(x, pads, 0.0 if value is None else value)
    kw = dict(divisor_override=divisor_override)
    yh = F.avg_pool2d(hr, kernel_size, st, 0, False, True, **kw)
    yl = F.avg_pool2d(lr, kernel_size, st, 0, False, True, **kw)
    return x._derive(_crop(yh, side), _crop(yl, side // 2), side)


@_register("pad")
def _pad(x, pad, mode="constant", value=None):
    if mode != "constant":
        raise UnsupportedBlockOp(f"F.pad mode {mode!r} on block tensors (only 'constant')")
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        pad = pad + (0, 0)
    if len(pad) != 4:
        raise UnsupportedBlockOp(f"F.pad {pad} on block tensors pads the last two dims only")
    if any(p < 0 for p in pad):
        raise ValueError(
            f"F.pad {pad} crops (negative widths); block tensors cannot be cropped, "
            "use DenseFallback"
        )
    pl, pr, pt, pb = pad
    value = 0.0 if value is None else float(value)
    # The padded tensor shares its blocks with x (the pad is applied lazily by the next op),
    # so neither may be written in place any more.
    x.owned = False
    if x.pending_pad is not None:
        qt, qb, ql, qr, v0 = x.pending_pad
        if v0 != value:
            raise UnsupportedBlockOp("two F.pad calls with different values on a block tensor")
        pt, pb, pl, pr = pt + qt, pb + qb, pl + ql, pr + qr
    y = BlockTensor(
        x.hr,
        x.lr,
        x.grid,
        x.side,
        pad_mode=x.pad_mode,
        trace=x.trace,
        op_id=x.op_id,
        store=x.store,
        pending_pad=(pt, pb, pl, pr, value),
    )
    return y


# ----------------------------------------------------------------------------- upsampling
@_register("interpolate", "upsample")
def _interpolate(
    x,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    recompute_scale_factor=None,
    antialias=False,
):
    _no_pending(x, "interpolate")
    H, W = x.shape[-2:]
    if size is not None:
        sz = _pair(size, "size")
        factor = sz[0] / H if sz[0] * W == sz[1] * H else None
    else:
        fs = scale_factor if isinstance(scale_factor, (list, tuple)) else (scale_factor,) * 2
        if len(fs) != 2:
            raise ValueError(f"scale_factor {scale_factor!r} must be a number or a pair")
        factor = float(fs[0]) if float(fs[0]) == float(fs[1]) else None
    if factor != 2.0:
        raise UnsupportedBlockOp(
            f"interpolate to {size or scale_factor} from {H}x{W}: block tensors support 2x "
            "upsampling only; use DenseFallback for other sizes"
        )
    if mode == "nearest":
        return _map(x, lambda a: F.interpolate(a, scale_factor=2, mode="nearest"), side=x.side * 2)
    if mode != "bilinear" or align_corners:
        raise UnsupportedBlockOp(
            f"interpolate mode {mode!r} (align_corners={align_corners}): blocks support nearest "
            "and bilinear with align_corners=False"
        )
    s, t = x.side, x.side // 2
    hr, lr = padded_parts(x, 1, border="replicate")
    up = lambda a: F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    yh = up(hr)[:, :, 2 : 2 + 2 * s, 2 : 2 + 2 * s]
    yl = up(lr)[:, :, 2 : 2 + 2 * t, 2 : 2 + 2 * t]
    return x._derive(yh, yl, 2 * s)


__all__ = ["dispatch", "method", "inplace_add", "IM2COL_MAX_SIDE", "IM2COL_MIN_CHANNELS"]
