"""Slow, obviously-correct reference implementations of the SegBlocks block operations.

Everything here is written with plain torch ops and Python loops over blocks, straight from
the definitions (paper section 3.2 and the package spec), with no index plans or buffers:

* ``ref_sample``: cut the image into ``s x s`` blocks; HR cells keep the block, LR cells keep
  its 2x2 average pool.
* ``ref_pad`` ("canvas" definition): paint an HR-resolution canvas (HR blocks as they are, LR
  blocks nearest-upsampled 2x) and an LR-resolution canvas (LR blocks as they are, HR blocks
  reduced 2x by average pooling (``avg``) or by taking ``block[..., ::2, ::2]``
  (``strided``)); pad each canvas (constant ``value`` or edge replication); a padded HR block is
  its window in the padded HR canvas, a padded LR block its window in the padded LR canvas.
  Mode ``zero`` (the Table 9 ablation): each block is padded as a separate image (``value``,
  or its own edge pixels for a replicate border).
* ``ref_combine``: the HR canvas (``nearest``), or LR blocks bilinearly upsampled with a
  1-pixel replicate halo (``bilinear``).
* ``run_reference``: a tiny block executor for small CNNs described as a list of layers, doing
  every conv / pool / upsample per block with ``ref_pad`` halos. ``run_functional`` runs the
  same description with ``torch.nn.functional`` calls, so it works on a dense tensor (the dense
  network) and on a ``BlockTensor`` (the package's fast block execution).

Blocks are numbered row-major over ``(n, gy, gx)`` among HR cells, and likewise among LR cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- basics


def norm_pads(padding) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` from an int, ``(ph, pw)`` or a 4-tuple."""
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    assert len(padding) == 4
    return padding


def cells(mask):
    """All cells ``(n, gy, gx, is_hr)`` in row-major order."""
    N, GH, GW = mask.shape
    out = []
    for n in range(N):
        for gy in range(GH):
            for gx in range(GW):
                out.append((n, gy, gx, bool(mask[n, gy, gx])))
    return out


def _stack(blocks, shape, like):
    if blocks:
        return torch.stack(blocks)
    return torch.zeros((0, *shape), dtype=like.dtype, device=like.device)


def upsample_nearest_2x(block):
    """``[C, t, t]`` -> ``[C, 2t, 2t]``, each pixel repeated 2x2."""
    return block.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def reduce_2x(block, mode):
    """HR ``[C, s, s]`` -> ``[C, s/2, s/2]`` as an LR block's halo sees it."""
    if mode == "avg":
        return F.avg_pool2d(block[None], 2)[0]
    if mode == "strided":
        return block[:, ::2, ::2]
    raise ValueError(mode)


# ----------------------------------------------------------------------------- sample


def ref_sample(x, mask, s):
    """Dense ``x [N, C, H, W]`` -> ``(hr [Nh, C, s, s], lr [Nl, C, s/2, s/2])``."""
    C = x.shape[1]
    hr, lr = [], []
    for n, gy, gx, is_hr in cells(mask):
        block = x[n, :, gy * s : (gy + 1) * s, gx * s : (gx + 1) * s]
        if is_hr:
            hr.append(block)
        else:
            lr.append(F.avg_pool2d(block[None], 2)[0])
    return _stack(hr, (C, s, s), x), _stack(lr, (C, s // 2, s // 2), x)


# ----------------------------------------------------------------------------- canvases


def _channels(hr, lr):
    return hr.shape[1] if hr.shape[0] else lr.shape[1]


def _like(hr, lr):
    return hr if hr.shape[0] else lr


def ref_canvases(hr, lr, mask, s, mode="avg"):
    """HR canvas ``[N, C, GH*s, GW*s]`` and LR canvas ``[N, C, GH*s/2, GW*s/2]``."""
    N, GH, GW = mask.shape
    t = s // 2
    C = _channels(hr, lr)
    like = _like(hr, lr)
    canvas_hr = torch.zeros(N, C, GH * s, GW * s, dtype=like.dtype, device=like.device)
    canvas_lr = torch.zeros(N, C, GH * t, GW * t, dtype=like.dtype, device=like.device)
    ih = il = 0
    for n, gy, gx, is_hr in cells(mask):
        if is_hr:
            block = hr[ih]
            ih += 1
            canvas_hr[n, :, gy * s : (gy + 1) * s, gx * s : (gx + 1) * s] = block
            canvas_lr[n, :, gy * t : (gy + 1) * t, gx * t : (gx + 1) * t] = reduce_2x(block, mode)
        else:
            block = lr[il]
            il += 1
            canvas_lr[n, :, gy * t : (gy + 1) * t, gx * t : (gx + 1) * t] = block
            canvas_hr[n, :, gy * s : (gy + 1) * s, gx * s : (gx + 1) * s] = upsample_nearest_2x(
                block
            )
    assert ih == hr.shape[0] and il == lr.shape[0]
    return canvas_hr, canvas_lr


def pad_canvas(canvas, pads, border="zeros", value=0.0):
    """Pad the last two dims by ``(top, bottom, left, right)``: constant or edge replication."""
    pt, pb, pl, pr = pads
    H, W = canvas.shape[-2:]
    if border == "zeros":
        out = torch.full(
            (*canvas.shape[:-2], H + pt + pb, W + pl + pr),
            value,
            dtype=canvas.dtype,
            device=canvas.device,
        )
        out[..., pt : pt + H, pl : pl + W] = canvas
        return out
    assert border == "replicate", border
    ys = torch.arange(-pt, H + pb, device=canvas.device).clamp(0, H - 1)
    xs = torch.arange(-pl, W + pr, device=canvas.device).clamp(0, W - 1)
    return canvas[..., ys, :][..., :, xs]


def _window(padded, gy, gx, side, pads):
    """The padded window of cell ``(gy, gx)`` (blocks of ``side``) in a padded ``[C, H, W]``."""
    pt, pb, pl, pr = pads
    return padded[:, gy * side : gy * side + side + pt + pb, gx * side : gx * side + side + pl + pr]


def ref_pad(hr, lr, mask, s, padding, mode="avg", border="zeros", value=0.0):
    """Padded blocks ``(hr [Nh, C, s+pt+pb, s+pl+pr], lr [Nl, C, s/2+pt+pb, s/2+pl+pr])``."""
    pads = norm_pads(padding)
    pt, pb, pl, pr = pads
    N, GH, GW = mask.shape
    t = s // 2
    C = _channels(hr, lr)
    like = _like(hr, lr)
    out_hr, out_lr = [], []
    if mode == "zero":
        # Every block is an image of its own: padded with `value`, or with its own edge
        # pixels for a replicate border.
        ih = il = 0
        for _n, _gy, _gx, is_hr in cells(mask):
            if is_hr:
                block = hr[ih]
                ih += 1
            else:
                block = lr[il]
                il += 1
            (out_hr if is_hr else out_lr).append(pad_canvas(block, pads, border, value))
    else:
        canvas_hr, canvas_lr = ref_canvases(hr, lr, mask, s, mode)
        padded_hr = pad_canvas(canvas_hr, pads, border, value)
        padded_lr = pad_canvas(canvas_lr, pads, border, value)
        for n, gy, gx, is_hr in cells(mask):
            if is_hr:
                out_hr.append(_window(padded_hr[n], gy, gx, s, pads))
            else:
                out_lr.append(_window(padded_lr[n], gy, gx, t, pads))
    return (
        _stack(out_hr, (C, s + pt + pb, s + pl + pr), like),
        _stack(out_lr, (C, t + pt + pb, t + pl + pr), like),
    )


# ----------------------------------------------------------------------------- combine


def bilinear_lr_blocks(hr, lr, mask, s, mode="avg"):
    """LR blocks upsampled 2x: pad 1 (replicate border), bilinear 2x, crop 2 px per side."""
    _, lr_padded = ref_pad(hr, lr, mask, s, 1, mode, "replicate")
    ups = []
    for i in range(lr_padded.shape[0]):
        up = F.interpolate(
            lr_padded[i : i + 1], scale_factor=2, mode="bilinear", align_corners=False
        )
        ups.append(up[0, :, 2 : 2 + s, 2 : 2 + s])
    return _stack(ups, (_channels(hr, lr), s, s), _like(hr, lr))


def ref_combine(hr, lr, mask, s, upsample="nearest", mode="avg"):
    """Dense ``[N, C, GH*s, GW*s]``: HR blocks placed, LR blocks upsampled 2x."""
    if upsample == "nearest":
        return ref_canvases(hr, lr, mask, s, "avg")[0]
    assert upsample == "bilinear", upsample
    N, GH, GW = mask.shape
    like = _like(hr, lr)
    up = bilinear_lr_blocks(hr, lr, mask, s, mode)
    out = torch.zeros(N, _channels(hr, lr), GH * s, GW * s, dtype=like.dtype, device=like.device)
    ih = il = 0
    for n, gy, gx, is_hr in cells(mask):
        if is_hr:
            block = hr[ih]
            ih += 1
        else:
            block = up[il]
            il += 1
        out[n, :, gy * s : (gy + 1) * s, gx * s : (gx + 1) * s] = block
    return out


# ----------------------------------------------------------------------------- small CNNs
# A network is a list of the layer records below; parameters live in a dict name -> tensor.


@dataclass(frozen=True)
class Conv:
    name: str
    cin: int
    cout: int
    k: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    dilation: int = 1


@dataclass(frozen=True)
class BN:
    name: str
    c: int


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool:
    k: int = 3
    stride: int = 2
    pad: int = 1


@dataclass(frozen=True)
class AvgPool:
    k: int = 3
    stride: int = 1
    pad: int = 1


@dataclass(frozen=True)
class Pad:
    """``F.pad(x, (left, right, top, bottom), value=value)``, merged into the next conv/pool."""

    lrtb: tuple
    value: float = 0.0


@dataclass(frozen=True)
class Save:
    slot: str


@dataclass(frozen=True)
class Add:
    slot: str
    inplace: bool = False  # ``x += saved`` instead of ``x = x + saved``


@dataclass(frozen=True)
class Cat:
    slot: str


@dataclass(frozen=True)
class Up:
    mode: str  # "nearest" | "bilinear"


def make_params(layers, *, seed=0, dtype=torch.float32, requires_grad=False):
    """Random weights for a layer list: conv ``w``/``b``, BN ``w``/``b``/``rm``/``rv``."""
    g = torch.Generator().manual_seed(seed)
    p = {}

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    for layer in layers:
        if isinstance(layer, Conv):
            fan_in = layer.cin // layer.groups * layer.k * layer.k
            p[layer.name + ".w"] = rnd(layer.cout, layer.cin // layer.groups, layer.k, layer.k) * (
                1.5 / math.sqrt(fan_in)
            )
            p[layer.name + ".b"] = rnd(layer.cout) * 0.1
        elif isinstance(layer, BN):
            p[layer.name + ".w"] = 1 + 0.2 * rnd(layer.c)
            p[layer.name + ".b"] = 0.2 * rnd(layer.c)
            p[layer.name + ".rm"] = 0.2 * rnd(layer.c)
            p[layer.name + ".rv"] = 0.5 + torch.rand(layer.c, generator=g, dtype=torch.float64)
    out = {}
    for k, v in p.items():
        v = v.to(dtype)
        if requires_grad and not (k.endswith(".rm") or k.endswith(".rv")):
            v.requires_grad_(True)
        out[k] = v
    return out


def clone_params(params, requires_grad=None):
    out = {}
    for k, v in params.items():
        c = v.detach().clone()
        rg = v.requires_grad if requires_grad is None else requires_grad
        if rg and not (k.endswith(".rm") or k.endswith(".rv")):
            c.requires_grad_(True)
        out[k] = c
    return out


BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def run_functional(layers, params, x, training=False):
    """Run the network with ``torch.nn.functional`` calls on ``x`` (dense or BlockTensor)."""
    saved = {}
    for layer in layers:
        if isinstance(layer, Conv):
            x = F.conv2d(
                x,
                params[layer.name + ".w"],
                params[layer.name + ".b"],
                layer.stride,
                layer.pad,
                layer.dilation,
                layer.groups,
            )
        elif isinstance(layer, BN):
            x = F.batch_norm(
                x,
                params[layer.name + ".rm"],
                params[layer.name + ".rv"],
                params[layer.name + ".w"],
                params[layer.name + ".b"],
                training,
                BN_MOMENTUM,
                BN_EPS,
            )
        elif isinstance(layer, ReLU):
            x = F.relu(x)
        elif isinstance(layer, MaxPool):
            x = F.max_pool2d(x, layer.k, layer.stride, layer.pad)
        elif isinstance(layer, AvgPool):
            x = F.avg_pool2d(x, layer.k, layer.stride, layer.pad)
        elif isinstance(layer, Pad):
            x = F.pad(x, layer.lrtb, value=layer.value)
        elif isinstance(layer, Save):
            saved[layer.slot] = x
        elif isinstance(layer, Add):
            if layer.inplace:
                x += saved[layer.slot]
            else:
                x = x + saved[layer.slot]
        elif isinstance(layer, Cat):
            x = torch.cat([x, saved[layer.slot]], 1)
        elif isinstance(layer, Up):
            if layer.mode == "nearest":
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            else:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        else:
            raise TypeError(layer)
    return x


def per_block(fn, blocks):
    """``fn`` applied to each block ``[1, C, h, w]`` separately, results stacked."""
    if blocks.shape[0] == 0:
        return fn(torch.zeros((1, *blocks.shape[1:]), dtype=blocks.dtype))[:0]
    return torch.cat([fn(blocks[i : i + 1]) for i in range(blocks.shape[0])])


def _ref_batch_norm(hr, lr, params, name, training):
    w, b = params[name + ".w"], params[name + ".b"]
    rm, rv = params[name + ".rm"], params[name + ".rv"]
    if training:
        # Statistics over every processed pixel (HR and LR alike), each pixel counted once.
        C = _channels(hr, lr)
        pixels = torch.cat(
            [hr.permute(0, 2, 3, 1).reshape(-1, C), lr.permute(0, 2, 3, 1).reshape(-1, C)]
        )
        mean = pixels.mean(0)
        var = ((pixels - mean) ** 2).mean(0)
        count = pixels.shape[0]
        with torch.no_grad():
            rm.mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * mean)
            rv.mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * var * count / (count - 1))
    else:
        mean, var = rm, rv

    def affine(a):
        return (a - mean.view(-1, 1, 1)) / torch.sqrt(var.view(-1, 1, 1) + BN_EPS) * w.view(
            -1, 1, 1
        ) + b.view(-1, 1, 1)

    return affine(hr), affine(lr)


def run_reference(layers, params, hr, lr, mask, block_size, mode="avg", training=False):
    """Run the network block by block; returns ``(hr, lr, side)`` at the output scale.

    Each conv / pool reads its blocks padded with :func:`ref_pad` (constant border 0, or
    ``-inf`` for max pooling, or the pending ``F.pad`` value), then runs with padding 0 on one
    block at a time. Bilinear 2x upsampling pads 1 with replicate border, upsamples, crops 2.
    """
    s = block_size
    pending = None  # (pads (t, b, l, r), value) from a preceding Pad
    saved = {}

    def padded(pads, op_value):
        nonlocal pending
        value = op_value
        if pending is not None:
            (qt, qb, ql, qr), pv = pending
            if any(pads) and pv != op_value:
                raise NotImplementedError("reference merges F.pad only with its own value")
            pads = (pads[0] + qt, pads[1] + qb, pads[2] + ql, pads[3] + qr)
            value = pv
            pending = None
        if not any(pads):
            return hr, lr
        return ref_pad(hr, lr, mask, s, pads, mode, "zeros", value)

    for layer in layers:
        if isinstance(layer, Conv):
            w, b = params[layer.name + ".w"], params[layer.name + ".b"]
            hp, lp = padded((layer.pad,) * 4, 0.0)

            def conv(a, w=w, b=b, layer=layer):
                return F.conv2d(a, w, b, layer.stride, 0, layer.dilation, layer.groups)

            hr, lr = per_block(conv, hp), per_block(conv, lp)
            s //= layer.stride
        elif isinstance(layer, BN):
            hr, lr = _ref_batch_norm(hr, lr, params, layer.name, training)
        elif isinstance(layer, ReLU):
            hr, lr = torch.relu(hr), torch.relu(lr)
        elif isinstance(layer, MaxPool):
            hp, lp = padded((layer.pad,) * 4, float("-inf"))

            def pool(a, layer=layer):
                return F.max_pool2d(a, layer.k, layer.stride, 0)

            hr, lr = per_block(pool, hp), per_block(pool, lp)
            s //= layer.stride
        elif isinstance(layer, AvgPool):
            hp, lp = padded((layer.pad,) * 4, 0.0)

            def pool(a, layer=layer):
                return F.avg_pool2d(a, layer.k, layer.stride, 0)

            hr, lr = per_block(pool, hp), per_block(pool, lp)
            s //= layer.stride
        elif isinstance(layer, Pad):
            left, right, top, bottom = layer.lrtb
            pending = ((top, bottom, left, right), layer.value)
        elif isinstance(layer, Save):
            saved[layer.slot] = (hr, lr, s)
        elif isinstance(layer, Add):
            h2, l2, s2 = saved[layer.slot]
            assert s2 == s
            hr, lr = hr + h2, lr + l2
        elif isinstance(layer, Cat):
            h2, l2, s2 = saved[layer.slot]
            assert s2 == s
            hr, lr = torch.cat([hr, h2], 1), torch.cat([lr, l2], 1)
        elif isinstance(layer, Up):
            if layer.mode == "nearest":

                def up(a):
                    return upsample_nearest_2x(a[0])[None]

                hr, lr = per_block(up, hr), per_block(up, lr)
            else:
                hp, lp = ref_pad(hr, lr, mask, s, 1, mode, "replicate")
                side_h, side_l = s, s // 2

                def up_h(a):
                    u = F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)
                    return u[:, :, 2 : 2 + 2 * side_h, 2 : 2 + 2 * side_h]

                def up_l(a):
                    u = F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)
                    return u[:, :, 2 : 2 + 2 * side_l, 2 : 2 + 2 * side_l]

                hr, lr = per_block(up_h, hp), per_block(up_l, lp)
            s *= 2
        else:
            raise TypeError(layer)
        if not isinstance(layer, (Pad, Save)):
            assert hr.shape[-1] == s and lr.shape[-1] == s // 2, (layer, hr.shape, lr.shape, s)
    return hr, lr, s


def small_cnn(cin=3, c=8):
    """A small CNN touching every supported layer kind (total stride 4 at its deepest).

    Works for block sizes >= 8 (deepest HR side 2, LR side 1).
    """
    return [
        Conv("c1", cin, c, 3, pad=1),
        BN("bn1", c),
        ReLU(),
        Save("a"),  # side s
        MaxPool(3, 2, 1),  # s/2
        Conv("c2", c, c, 3, pad=1),
        BN("bn2", c),
        ReLU(),
        Save("b"),
        Conv("c3", c, 2 * c, 3, stride=2, pad=1),  # s/4
        ReLU(),
        Conv("c4", 2 * c, 2 * c, 3, pad=2, groups=2, dilation=2),  # grouped + dilated
        Conv("c5", 2 * c, c, 1),  # 1x1
        Up("bilinear"),  # s/2
        Add("b", inplace=True),
        Pad((0, 1, 0, 1)),  # TF-"same" style: F.pad merged into the next conv
        Conv("c6", c, c, 2),
        Conv("c7", c, c, 3, pad=1, groups=c),  # depthwise
        AvgPool(3, 1, 1),
        Cat("b"),  # 2c channels
        Conv("c8", 2 * c, c, 5, pad=2),
        Add("b", inplace=True),  # in place on a fresh conv output
        BN("bn3", c),
        Up("nearest"),  # s
        Add("a"),
        ReLU(),
        Pad((0, 1, 0, 1)),
        Conv("c9", c, c, 3, stride=2),  # strided conv with asymmetric "same" padding, s/2
        Pad((0, 1, 0, 1), float("-inf")),
        MaxPool(3, 2, 0),  # timm MaxPool2dSame style, s/4
        Conv("c10", c, c, 3, pad=1),
        Up("bilinear"),  # s/2
    ]


def grad_cnn(cin=2, c=3):
    """Tiny network for gradcheck: conv -> relu -> maxpool -> conv -> add -> upsample."""
    return [
        Conv("c1", cin, c, 3, pad=1),
        ReLU(),
        MaxPool(3, 2, 1),
        Save("a"),
        Conv("c2", c, c, 3, pad=1),
        Add("a", inplace=True),
        Up("bilinear"),
    ]


def small_cnn_b(cin=3, c=6):
    """Strided stem, 2x2 pools, strided 1x1 conv, depthwise 5x5 (total stride 8; block >= 16)."""
    return [
        Conv("s1", cin, c, 3, stride=2, pad=1),  # s/2
        BN("sb1", c),
        ReLU(),
        Save("a"),
        AvgPool(2, 2, 0),  # s/4
        Conv("s2", c, 2 * c, 1),
        Conv("s3", 2 * c, 2 * c, 1, stride=2),  # strided 1x1, s/8
        Up("nearest"),  # s/4
        Conv("s4", 2 * c, c, 3, pad=1),
        ReLU(),
        Up("bilinear"),  # s/2
        Add("a", inplace=True),  # in place on a fresh upsample output
        MaxPool(2, 2, 0),  # s/4
        Conv("s5", c, c, 5, pad=2, groups=c),  # depthwise 5x5
        BN("sb2", c),
        AvgPool(3, 2, 1),  # s/8
        Up("bilinear"),  # s/4
        Up("bilinear"),  # s/2
    ]
