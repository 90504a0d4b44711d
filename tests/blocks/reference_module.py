"""A slow reference block executor for whole ``nn.Module`` networks (torchvision, timm, SwiftNet).

:class:`RefBlocks` holds HR blocks ``[Nh, C, s, s]`` and LR blocks ``[Nl, C, s/2, s/2]`` as plain
tensors and implements ``__torch_function__`` with the definitions of ``reference.py``, op by op
and block by block, sharing nothing with the package's block engine (no dispatch table, index
plans, buffers or kernels):

* conv / pooling: every block padded with :func:`reference.ref_pad` (constant 0, or ``-inf`` for
  max pooling, or a pending ``F.pad``), then the dense op with padding 0 on one block at a time;
* pointwise ops (batch norm in eval, activations, dropout in eval): on every block;
* binary ops: block by block with another ``RefBlocks``; with a per-image dense operand
  (``[N, C, 1, 1]``, squeeze-excitation) each block takes the row of its own image;
* global average / max pooling and spatial means: from their definition, every pixel of the
  image at this scale counted once (an LR pixel stands for 2x2 pixels and counts 4 times);
* 2x upsampling: nearest per block; bilinear pads 1 (replicate border), upsamples, crops 2.

:func:`run_reference_model` runs ``net.forward_logits`` on a ``RefBlocks`` with the network's
``dense_modules`` run on the reference combine (nearest) and re-sampled, then combines.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import cells, per_block, ref_combine, ref_pad, ref_sample, upsample_nearest_2x

__all__ = ["RefBlocks", "run_reference_model"]

_OPS = {}


def _op(*funcs):
    def deco(fn):
        for f in funcs:
            _OPS[f] = fn
        return fn

    return deco


class RefBlocks:
    """Reference block tensor: ``hr [Nh, C, s, s]``, ``lr [Nl, C, s/2, s/2]`` on ``mask``."""

    def __init__(self, hr, lr, mask, side, mode="avg", pending=None):
        self.hr, self.lr, self.mask, self.side, self.mode = hr, lr, mask, side, mode
        self.pending = pending  # ((top, bottom, left, right), value) of an F.pad not yet used
        assert hr.shape[-1] == side and lr.shape[-1] == side // 2, (hr.shape, lr.shape, side)

    @property
    def shape(self):
        N, GH, GW = self.mask.shape
        C = self.hr.shape[1] if self.hr.shape[0] else self.lr.shape[1]
        return torch.Size((N, C, GH * self.side, GW * self.side))

    @property
    def dtype(self):
        return self.hr.dtype

    @property
    def device(self):
        return self.hr.device

    ndim = 4

    def dim(self):
        return 4

    def size(self, d=None):
        return self.shape if d is None else self.shape[d]

    def like(self, hr, lr, side=None):
        return RefBlocks(hr, lr, self.mask, self.side if side is None else side, self.mode)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        fn = _OPS.get(func)
        if fn is None:
            raise NotImplementedError(f"reference executor has no {func}")
        return fn(*args, **(kwargs or {}))

    def __getattr__(self, name):
        func = getattr(torch.Tensor, name, None)
        if func is None or func not in _OPS:
            raise AttributeError(name)
        return lambda *a, **k: _OPS[func](self, *a, **k)

    def __add__(self, other):
        return _binary(torch.add, self, other)

    __radd__ = __iadd__ = __add__

    def __mul__(self, other):
        return _binary(torch.mul, self, other)

    __rmul__ = __imul__ = __mul__

    def combine(self, upsample="nearest"):
        """Dense ``[N, C, H, W]`` (:func:`reference.ref_combine`)."""
        assert self.pending is None
        return ref_combine(self.hr, self.lr, self.mask, self.side, upsample, self.mode)


def _padded(x: RefBlocks, pads, value):
    """``(hr, lr)`` padded by ``pads`` (and a pending ``F.pad``), constant ``value``."""
    if x.pending is not None:
        (qt, qb, ql, qr), pv = x.pending
        assert not any(pads) or pv == value, "reference merges F.pad only with its own value"
        pads, value = (pads[0] + qt, pads[1] + qb, pads[2] + ql, pads[3] + qr), pv
    if not any(pads):
        return x.hr, x.lr
    return ref_pad(x.hr, x.lr, x.mask, x.side, pads, x.mode, "zeros", value)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _spatial(x: RefBlocks, pads, value, fn, stride):
    hp, lp = _padded(x, pads, value)
    hr, lr = per_block(fn, hp), per_block(fn, lp)
    return x.like(hr, lr, x.side // stride)


@_op(F.conv2d)
def _conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    ph, pw = _pair(padding)
    sh, sw = _pair(stride)
    assert sh == sw

    def conv(a):
        return F.conv2d(a, weight, bias, stride, 0, dilation, groups)

    return _spatial(x, (ph, ph, pw, pw), 0.0, conv, sh)


def _pool(fn, value):
    def handler(x, kernel_size, stride=None, padding=0, *args, **kwargs):
        stride = kernel_size if stride in (None, []) else stride
        ph, pw = _pair(padding)

        def pool(a):
            return fn(a, kernel_size, stride, 0, *args, **kwargs)

        return _spatial(x, (ph, ph, pw, pw), value, pool, _pair(stride)[0])

    return handler


_op(F.max_pool2d)(_pool(F.max_pool2d, float("-inf")))
_op(F.avg_pool2d)(_pool(F.avg_pool2d, 0.0))


@_op(F.pad)
def _pad(x, pad, mode="constant", value=None):
    assert mode == "constant" and x.pending is None
    left, right, top, bottom = pad
    y = x.like(x.hr, x.lr)
    y.pending = ((top, bottom, left, right), 0.0 if value is None else float(value))
    return y


def _pointwise(func):
    def handler(x, *args, **kwargs):
        kwargs.pop("inplace", None)
        if func is F.dropout:
            assert not kwargs.get("training", args[1] if len(args) > 1 else True)
            return x
        return x.like(func(x.hr, *args, **kwargs), func(x.lr, *args, **kwargs))

    return handler


for _f in (F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.dropout):
    _op(_f)(_pointwise(_f))
_op(torch.sigmoid, torch.Tensor.sigmoid)(_pointwise(torch.sigmoid))
_op(torch.relu, torch.Tensor.relu, torch.Tensor.relu_)(_pointwise(torch.relu))
_op(F.hardtanh)(_pointwise(F.hardtanh))


@_op(F.batch_norm)
def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, *a, **k):
    assert not training, "the reference runs batch norm in eval mode only"
    return _pointwise(F.batch_norm)(x, running_mean, running_var, weight, bias, False, *a, **k)


def _per_image_operand(x: RefBlocks, level_blocks, dense: Tensor, hr: bool, fn):
    """``fn(block, dense[n])`` for every block of one level, ``n`` the block's image."""
    imgs = [n for n, _, _, is_hr in cells(x.mask) if is_hr == hr]
    assert len(imgs) == level_blocks.shape[0]
    if not imgs:
        return level_blocks
    op = dense if dense.dim() == 4 else dense[None].expand(x.mask.shape[0], *dense.shape)
    return torch.stack([fn(level_blocks[i], op[n]) for i, n in enumerate(imgs)])


def _binary(func, a, b, **kwargs):
    def f(p, q):
        return func(p, q, **kwargs)

    if isinstance(a, RefBlocks) and isinstance(b, RefBlocks):
        assert a.side == b.side and a.pending is None and b.pending is None
        return a.like(f(a.hr, b.hr), f(a.lr, b.lr))
    x, other, swap = (a, b, False) if isinstance(a, RefBlocks) else (b, a, True)
    if not isinstance(other, Tensor) or other.dim() <= 1:
        g = (lambda p: f(other, p)) if swap else (lambda p: f(p, other))
        return x.like(g(x.hr), g(x.lr))
    assert other.shape[-2:] == (1, 1), f"dense operand {tuple(other.shape)} is not per-image"

    def g(p, o):
        return f(o, p) if swap else f(p, o)

    return x.like(
        _per_image_operand(x, x.hr, other, True, g), _per_image_operand(x, x.lr, other, False, g)
    )


# torch.add and torch.Tensor.add / add_ / __add__ / __radd__ / __iadd__ (and mul): functional
for _name in ("add", "mul"):
    _t = getattr(torch, _name)
    _forms = ("{}", "{}_", "__{}__", "__r{}__", "__i{}__")
    for _f in (_t, *(getattr(torch.Tensor, form.format(_name)) for form in _forms)):
        _op(_f)(lambda a, b, _t=_t, **k: _binary(_t, a, b, **k))


@_op(torch.cat)
def _cat(tensors, dim=1):
    assert dim in (1, -3) and all(isinstance(t, RefBlocks) for t in tensors)
    x = tensors[0]
    return x.like(torch.cat([t.hr for t in tensors], 1), torch.cat([t.lr for t in tensors], 1))


def _image_pixels(x: RefBlocks):
    """Per image, the list of ``(block [C, h, w], weight)``: an LR pixel has weight 4."""
    out = [[] for _ in range(x.mask.shape[0])]
    ih = il = 0
    for n, _, _, is_hr in cells(x.mask):
        if is_hr:
            out[n].append((x.hr[ih], 1.0))
            ih += 1
        else:
            out[n].append((x.lr[il], 4.0))
            il += 1
    return out


def _global_mean(x: RefBlocks) -> Tensor:
    """``[N, C]``: sum of every pixel times its weight over the image's pixel count."""
    N, GH, GW = x.mask.shape
    rows = [sum(b.sum((1, 2)) * w for b, w in blocks) for blocks in _image_pixels(x)]
    return torch.stack(rows) / (GH * GW * x.side * x.side)


def _global_max(x: RefBlocks) -> Tensor:
    rows = [torch.stack([b.amax((1, 2)) for b, _ in blocks]).amax(0) for blocks in _image_pixels(x)]
    return torch.stack(rows)


@_op(F.adaptive_avg_pool2d)
def _adaptive_avg(x, output_size):
    assert output_size in (1, (1, 1), [1, 1]), output_size
    return _global_mean(x)[:, :, None, None]


@_op(F.adaptive_max_pool2d)
def _adaptive_max(x, output_size, return_indices=False):
    assert output_size in (1, (1, 1), [1, 1]) and not return_indices
    return _global_max(x)[:, :, None, None]


@_op(torch.mean, torch.Tensor.mean)
def _mean(x, dim=None, keepdim=False, **kwargs):
    assert {d % 4 for d in dim} == {2, 3} and not kwargs, dim
    y = _global_mean(x)
    return y[:, :, None, None] if keepdim else y


@_op(F.interpolate)
def _interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None, **kwargs):
    H, W = x.shape[-2:]
    if size is not None:
        assert tuple(_pair(size)) == (2 * H, 2 * W), (size, H, W)
    else:
        assert scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)), scale_factor
    s = x.side
    if mode == "nearest":

        def up(a):
            return upsample_nearest_2x(a[0])[None]

        return x.like(per_block(up, x.hr), per_block(up, x.lr), 2 * s)
    assert mode == "bilinear" and not align_corners
    hp, lp = ref_pad(x.hr, x.lr, x.mask, s, 1, x.mode, "replicate")

    def up(side):
        def fn(a):
            u = F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)
            return u[:, :, 2 : 2 + 2 * side, 2 : 2 + 2 * side]

        return fn

    return x.like(per_block(up(s), hp), per_block(up(s // 2), lp), 2 * s)


@contextlib.contextmanager
def _dense_modules(net, names):
    """The modules ``names`` run on the reference combine (nearest) and are re-sampled."""
    patched = []
    try:
        for name in names:
            m = net.get_submodule(name)
            orig = m.forward

            def fwd(x, *args, _orig=orig, **kwargs):
                if not isinstance(x, RefBlocks):
                    return _orig(x, *args, **kwargs)
                y = _orig(x.combine("nearest"), *args, **kwargs)
                side = y.shape[-1] // x.mask.shape[-1]
                hr, lr = ref_sample(y, x.mask, side)
                return RefBlocks(hr, lr, x.mask, side, x.mode)

            m.forward = fwd
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


def run_reference_model(net, x, mask, block_size, *, mode="avg", combine="nearest"):
    """``net.forward_logits`` block by block on ``x [N, 3, H, W]`` with ``mask [N, GH, GW]``;
    dense logits ``[N, K, H / s, W / s]`` (the reference of ``SegBlocksModel.run_blocks``)."""
    hr, lr = ref_sample(x, mask, block_size)
    xb = RefBlocks(hr, lr, mask, block_size, mode)
    with _dense_modules(net, net.dense_modules):
        logits = net.forward_logits(xb)
    return logits.combine(combine)
