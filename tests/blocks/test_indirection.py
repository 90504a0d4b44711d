"""Depthwise convolution through indirection tables (segblocks::depthwise_conv_blocks) against
the reference BlockPad + per-level convolution, on both backends."""

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks import BlockGrid, block_combine, block_sample, kernels
from segblocks.blocks.indirection import ConvTaps, build_from_plan, conv_taps
from segblocks.blocks.layers import conv as conv_layer
from segblocks.blocks.layers.conv import gemm_weight

from ._util import make_mask, rel_err
from .reference import ref_pad, ref_sample
from .test_kernels import backend  # noqa: F401  (fixture: both backends)

# (block side, kernel, stride, dilation, pads (top, bottom, left, right))
GEOMS = [
    (8, 3, 1, 1, (1, 1, 1, 1)),
    (8, 5, 1, 1, (2, 2, 2, 2)),
    (8, 3, 2, 1, (0, 1, 0, 1)),  # TF-"same" stride 2: asymmetric pads
    (8, 3, 1, 2, (2, 2, 2, 2)),  # dilated
    (4, 5, 1, 1, (2, 2, 2, 2)),  # halo as wide as an LR block
    (16, 5, 2, 1, (1, 2, 1, 2)),
    (4, 3, 1, 1, (1, 1, 1, 1)),  # 2x2 LR tiles (the deep stages at block 32)
]


def _reference(hr, lr, mask, s, weight, bias, k, st, dil, pads, mode, value):
    ph, pl = ref_pad(hr, lr, mask, s, pads, mode=mode, value=value)
    C = weight.shape[0]
    # (an empty level stays empty, with its output tile size)
    return [
        F.conv2d(p, weight, bias, st, 0, dil, C) if p.shape[0] else p.new_empty(0, C, o, o)
        for p, o in zip((ph, pl), (s // st, s // st // 2), strict=True)
    ]


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("mode", ["avg", "strided", "zero"])
@pytest.mark.parametrize("mask_kind", ["mixed", "all_hr", "all_lr"])
def test_depthwise_matches_reference(backend, geom, mode, mask_kind):  # noqa: F811
    s, k, st, dil, pads = geom
    gen = torch.Generator().manual_seed(hash((geom, mode, mask_kind)) % 1000)
    N, GH, GW, C = 2, 3, 4, 5
    mask = make_mask(mask_kind, N, GH, GW, gen)
    x = torch.randn(N, C, GH * s, GW * s, generator=gen, dtype=torch.float64)
    hr, lr = ref_sample(x, mask, s)
    weight = torch.randn(C, 1, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(C, generator=gen, dtype=torch.float64)
    value = 0.0 if mode != "zero" else 0.5  # a border value other than 0 once
    ref = _reference(hr, lr, mask, s, weight, bias, k, st, (dil, dil), pads, mode, value)
    taps = conv_taps(BlockGrid(mask, s), s, pads, mode, (k, k), st, (dil, dil))
    y = kernels.depthwise_conv_blocks(
        hr.permute(0, 2, 3, 1).contiguous(),
        lr.permute(0, 2, 3, 1).contiguous(),
        gemm_weight(weight),
        bias,
        taps.table_hr,
        taps.table_lr,
        taps.avg_ids,
        value,
        float("-inf"),
        float("inf"),
    )
    o = s // st
    assert taps.out_side == o
    yh, yl = y.split([len(taps.table_hr), len(taps.table_lr)])
    got = [
        yh.view(-1, o, o, C).permute(0, 3, 1, 2),
        yl.view(-1, o // 2, o // 2, C).permute(0, 3, 1, 2),
    ]
    for g, r in zip(got, ref, strict=True):
        assert g.shape == r.shape
        if r.numel():
            assert rel_err(g, r) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [16, 53])  # 53: the 32- and 16-channel tiles and a 5-channel tail
def test_depthwise_fused_clamp_and_low_precision(backend, dtype, C):  # noqa: F811
    gen = torch.Generator().manual_seed(3)
    mask = make_mask("mixed", 1, 4, 4, gen)
    s = 8
    x = torch.randn(1, C, 32, 32, generator=gen)
    hr, lr = ref_sample(x, mask, s)
    weight, bias = torch.randn(C, 1, 3, 3, generator=gen), torch.randn(C, generator=gen)
    ref = [
        p.clamp(0, 6)
        for p in _reference(hr, lr, mask, s, weight, bias, 3, 1, (1, 1), (1,) * 4, "avg", 0.0)
    ]
    taps = conv_taps(BlockGrid(mask, s), s, (1,) * 4, "avg", (3, 3), 1, (1, 1))
    y = kernels.depthwise_conv_blocks(
        hr.to(dtype).permute(0, 2, 3, 1).contiguous(),
        lr.to(dtype).permute(0, 2, 3, 1).contiguous(),
        gemm_weight(weight.to(dtype)),
        bias.to(dtype),
        taps.table_hr,
        taps.table_lr,
        taps.avg_ids,
        0.0,
        0.0,
        6.0,
    )
    assert y.dtype == dtype
    yh, yl = y.split([len(taps.table_hr), len(taps.table_lr)])
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    assert rel_err(yh.view(-1, s, s, C).permute(0, 3, 1, 2), ref[0]) < tol
    assert rel_err(yl.view(-1, s // 2, s // 2, C).permute(0, 3, 1, 2), ref[1]) < tol


def test_bad_tables_are_refused(backend):  # noqa: F811
    hr, lr = torch.randn(1, 2, 2, 3), torch.randn(1, 1, 1, 3)
    table = torch.full((4, 1), 99, dtype=torch.int32)
    with pytest.raises((RuntimeError, IndexError)):
        kernels.depthwise_conv_blocks(
            hr,
            lr,
            torch.ones(1, 3),
            None,
            table,
            table[:1],
            torch.zeros(0, 4, dtype=torch.int32),
            0.0,
            float("-inf"),
            float("inf"),
        )


@pytest.mark.parametrize("pad_mode", ["avg", "strided"])
def test_layer_path_equals_padded_path(pad_mode, monkeypatch):
    """nn.Conv2d(groups=C) on a block tensor: the indirection path (inference) equals the
    padded path, and is the one taken on the C++ backend."""
    gen = torch.Generator().manual_seed(5)
    C = 12
    conv = torch.nn.Conv2d(C, C, 3, 2, 1, groups=C)
    x = torch.randn(2, C, 64, 96, generator=gen).contiguous(memory_format=torch.channels_last)
    mask = make_mask("mixed", 2, 4, 6, gen)
    with torch.inference_mode():
        conv_layer.DIRECT_DEPTHWISE = False
        try:
            a = block_combine(conv(block_sample(x, mask, 16, pad_mode=pad_mode)))
        finally:
            conv_layer.DIRECT_DEPTHWISE = True
        calls = []
        direct = kernels.depthwise_conv_blocks_direct
        monkeypatch.setattr(
            kernels, "depthwise_conv_blocks_direct", lambda *a: calls.append(1) or direct(*a)
        )
        b = block_combine(conv(block_sample(x, mask, 16, pad_mode=pad_mode)))
    assert rel_err(b, a) < 1e-6
    assert len(calls) == (1 if kernels.backend() == "cpp" else 0)


def _resolved(taps: ConvTaps, pad_id: int) -> torch.Tensor:
    """Every table entry as the four pixel ids it averages (a plain pixel: itself 4 times)."""
    out = []
    for table in (taps.table_hr, taps.table_lr):
        t = table.long()
        quad = t.unsqueeze(-1).expand(*t.shape, 4).clone()
        avg = t > pad_id
        quad[avg] = taps.avg_ids.long()[t[avg] - pad_id - 1].sort(-1).values
        out.append(quad.reshape(-1, 4))
    return torch.cat(out)


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("mode", ["avg", "strided", "zero"])
def test_cpp_table_builder_matches_the_plan_builder(geom, mode):
    if kernels.backend() != "cpp":
        pytest.skip("the C++ kernels are not built")
    s, k, st, dil, pads = geom
    gen = torch.Generator().manual_seed(11)
    grid = BlockGrid(make_mask("mixed", 2, 3, 5, gen), s)
    fast = conv_taps(grid, s, pads, mode, (k, k), st, (dil, dil))
    slow = build_from_plan(grid, s, pads, mode, (k, k), st, (dil, dil))
    assert fast.out_side == slow.out_side
    assert fast.table_hr.shape == slow.table_hr.shape and fast.table_lr.shape == slow.table_lr.shape
    pad_id = grid.num_hr * s * s + grid.num_lr * (s // 2) ** 2
    assert torch.equal(_resolved(fast, pad_id), _resolved(slow, pad_id))
    assert len(fast.avg_ids) == len(torch.unique(fast.avg_ids[:, 0]))  # each group once


def test_pointwise_work_runs_once_on_the_pixel_matrix():
    """At inference a 1x1 conv writes both levels into one pixel matrix (``pixels``); the
    activation and the residual add after it keep working on it; values equal per-level ops."""
    gen = torch.Generator().manual_seed(7)
    C = 6
    conv = torch.nn.Conv2d(C, 2 * C, 1)
    dw = torch.nn.Conv2d(2 * C, 2 * C, 3, padding=1, groups=2 * C)
    x = torch.randn(2, C, 32, 48, generator=gen)
    mask = make_mask("mixed", 2, 2, 3, gen)

    def net(t):
        y = torch.relu(conv(t))
        return dw(y) + y

    with torch.inference_mode():
        xb = block_sample(x, mask, 16)
        y = torch.relu(conv(xb))
        assert y.pixels is not None and y.pixels.shape == (
            mask.sum() * 16 * 16 + (~mask).sum() * 8 * 8,
            2 * C,
        )
        got = block_combine(net(block_sample(x, mask, 16)))
    ref = block_combine(net(block_sample(x, mask, 16)))  # grad mode: the per-level path
    assert ref.requires_grad
    assert rel_err(got, ref) < 1e-6
