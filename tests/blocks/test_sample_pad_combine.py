"""BlockSample / BlockPad / BlockCombine against the slow reference (``reference.py``).

Many random cases: all-HR, all-LR and mixed masks; batch 1-3; grids 1x1 .. 3x3; 1-16 channels;
block sizes 4/8/16; symmetric, asymmetric and block-wide pads; modes avg/strided/zero; border
zeros/replicate; pad values 0 / -inf / 1.5; NCHW and channels_last; float32 and float64.
BlockPad is checked on its three code paths: with autograd recording (fresh buffer), without
(copy into a new padded buffer) and without after a MarginProfile was learned (BlockSample
writes straight into a padded buffer and BlockPad fills the halo in place).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from segblocks.blocks import (
    BlockCombine,
    BlockGrid,
    BlockPad,
    BlockSample,
    BlockTensor,
    MarginProfile,
    block_combine,
    block_pad,
    block_sample,
)

from ._util import checkerboard, make_mask
from .reference import norm_pads, ref_combine, ref_pad, ref_sample

GRIDS = [(1, 1), (2, 3), (3, 2), (2, 2), (1, 3), (3, 3)]
CHANNELS = [1, 3, 5, 16]
SIDES = [4, 8, 16]
MASKS = ["all_hr", "all_lr", "mixed", "mixed"]


def _pad_choices(s):
    fixed = [0, 1, 2, 3, (0, 1, 0, 1), (1, 2, 1, 2), (2, 0, 3, 1), (1, 2), (2, 1), s, s - 1]
    fixed += [s // 2 + 1, (s, 0, 0, s), (0, s, s, 1)]
    return [p for p in fixed if max(norm_pads(p)) <= s]


def _random_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        s = rng.choice(SIDES)
        pads = rng.choice(_pad_choices(s) + [tuple(rng.randint(0, s) for _ in range(4))])
        cases.append(
            dict(
                seed=i,
                N=rng.randint(1, 3),
                grid=rng.choice(GRIDS),
                C=rng.choice(CHANNELS),
                s=s,
                pads=pads,
                mode=rng.choice(["avg", "strided", "zero"]),
                border=rng.choice(["zeros", "replicate"]),
                value=rng.choice([0.0, 0.0, float("-inf"), 1.5]),
                dtype=rng.choice([torch.float32, torch.float64]),
                channels_last=rng.random() < 0.5,
                mask=rng.choice(MASKS),
            )
        )
    return cases


def _case_id(c):
    dt = "f64" if c["dtype"] == torch.float64 else "f32"
    cl = "-cl" if c["channels_last"] else ""
    return (
        f"{c['seed']}-N{c['N']}-g{c['grid'][0]}x{c['grid'][1]}-C{c['C']}-s{c['s']}-"
        f"p{c['pads']}-{c['mode']}-{c['border']}-v{c['value']}-{dt}{cl}-{c['mask']}"
    ).replace(" ", "")


def _input(c):
    gen = torch.Generator().manual_seed(1000 + c["seed"])
    GH, GW = c["grid"]
    x = torch.randn(c["N"], c["C"], GH * c["s"], GW * c["s"], generator=gen, dtype=c["dtype"])
    if c["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    mask = make_mask(c["mask"], c["N"], GH, GW, gen)
    return x, mask


# Structured sweep: every mode x border x pad kind on a checkerboard (every cell has HR and LR
# neighbours), plus the random cases.
SWEEP = [
    dict(
        seed=10_000 + i,
        N=2,
        grid=(3, 3),
        C=3,
        s=s,
        pads=pads,
        mode=mode,
        border=border,
        value=value,
        dtype=torch.float64,
        channels_last=False,
        mask="checker",
    )
    for i, (s, pads, mode, border, value) in enumerate(
        (s, pads, mode, border, value)
        for s in (4, 8)
        for pads in (1, 2, (0, 1, 0, 1), (1, 2, 1, 2), (2, 0, 3, 1), s // 2 + 1, s)
        for mode in ("avg", "strided", "zero")
        for border in ("zeros", "replicate")
        for value in (0.0, float("-inf"))
    )
]
PAD_CASES = SWEEP + _random_cases(160, seed=1234)


def _case_input(c):
    if c["mask"] == "checker":
        gen = torch.Generator().manual_seed(c["seed"])
        GH, GW = c["grid"]
        x = torch.randn(c["N"], c["C"], GH * c["s"], GW * c["s"], generator=gen, dtype=c["dtype"])
        return x, checkerboard(c["N"], GH, GW)
    return _input(c)


def _ref_blocks(x, mask, s):
    return ref_sample(x, mask, s)


# ----------------------------------------------------------------------------- sample


@pytest.mark.parametrize("c", _random_cases(60, seed=99), ids=_case_id)
def test_sample_matches_reference(c):
    x, mask = _input(c)
    xb = block_sample(x, mask, c["s"], pad_mode=c["mode"])
    rh, rl = _ref_blocks(x, mask, c["s"])
    assert isinstance(xb, BlockTensor)
    assert xb.side == c["s"]
    assert xb.pad_mode == c["mode"]
    assert xb.hr.dtype == x.dtype and xb.lr.dtype == x.dtype
    assert tuple(xb.shape) == tuple(x.shape)
    assert_close(xb.hr, rh, rtol=0, atol=0)  # HR blocks are plain copies
    assert_close(xb.lr, rl)  # LR blocks are 2x2 means
    assert xb.grid.num_hr == int(mask.sum()) and xb.grid.num_lr == int((~mask).sum())


def test_sample_block_order_is_row_major():
    """HR and LR blocks are numbered row-major over (n, gy, gx) among their own kind."""
    N, GH, GW, s = 2, 2, 3, 4
    # every pixel of cell (n, gy, gx) holds its flat cell index
    idx = torch.arange(N * GH * GW, dtype=torch.float32).view(N, 1, GH, GW)
    x = idx.repeat_interleave(s, 2).repeat_interleave(s, 3)
    mask = torch.tensor([[[1, 0, 1], [0, 0, 1]], [[1, 1, 0], [0, 1, 0]]], dtype=torch.bool)
    xb = block_sample(x, mask, s)
    flat = mask.reshape(-1)
    hr_cells = [i for i in range(flat.numel()) if flat[i]]
    lr_cells = [i for i in range(flat.numel()) if not flat[i]]
    assert xb.hr[:, 0, 0, 0].tolist() == hr_cells
    assert xb.lr[:, 0, 0, 0].tolist() == lr_cells


def test_sample_accepts_grid_object_and_module():
    x = torch.randn(2, 3, 16, 24)
    mask = make_mask("mixed", 2, 2, 3, torch.Generator().manual_seed(3))
    grid = BlockGrid(mask, 8)
    a = block_sample(x, grid)
    b = block_sample(x, grid, 8)
    c = BlockSample(8)(x, mask)
    rh, rl = ref_sample(x, mask, 8)
    for xb in (a, b, c):
        assert_close(xb.hr, rh, rtol=0, atol=0)
        assert_close(xb.lr, rl)


# ----------------------------------------------------------------------------- pad


def _check_pad(hp, lp, rh, rl):
    assert hp.shape == rh.shape, (hp.shape, rh.shape)
    assert lp.shape == rl.shape, (lp.shape, rl.shape)
    assert_close(hp, rh)
    assert_close(lp, rl)


@pytest.mark.parametrize("c", PAD_CASES, ids=_case_id)
def test_pad_matches_reference(c):
    x, mask = _case_input(c)
    s, pads, mode, border, value = c["s"], c["pads"], c["mode"], c["border"], c["value"]
    rh, rl = ref_sample(x, mask, s)
    exp_h, exp_l = ref_pad(rh, rl, mask, s, pads, mode, border, value)

    # 1) autograd recording: every pad copies into a fresh buffer
    xb = block_sample(x, mask, s, pad_mode=mode, profile=MarginProfile())
    _check_pad(*block_pad(xb, pads, border=border, value=value), exp_h, exp_l)

    # 2) no autograd, unknown margins: copy into a padded buffer, fill the halo in place
    profile = MarginProfile()
    with torch.no_grad():
        xb = block_sample(x, mask, s, pad_mode=mode, profile=profile)
        _check_pad(*block_pad(xb, pads, border=border, value=value), exp_h, exp_l)
        # the block tensor still holds the right interiors (now views into the buffer)
        assert_close(xb.hr, rh, rtol=0, atol=0)
        assert_close(xb.lr, rl)
        # 3) learned margins: BlockSample writes into the padded buffer directly
        xb2 = block_sample(x, mask, s, pad_mode=mode, profile=profile)
        _check_pad(*block_pad(xb2, pads, border=border, value=value), exp_h, exp_l)
        # and the same request again (the halo is cached)
        _check_pad(*block_pad(xb2, pads, border=border, value=value), exp_h, exp_l)


@pytest.mark.parametrize("mode", ["avg", "strided", "zero"])
def test_pad_mode_argument_overrides_tensor_mode(mode):
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    mask = checkerboard(1, 3, 3)
    rh, rl = ref_sample(x, mask, 4)
    xb = block_sample(x, mask, 4, pad_mode="avg")
    _check_pad(
        *block_pad(xb, (1, 2, 0, 3), mode=mode), *ref_pad(rh, rl, mask, 4, (1, 2, 0, 3), mode)
    )
    # BlockPad module wrapper
    mod = BlockPad((1, 2, 0, 3), mode=mode, border="replicate", value=2.0)
    exp = ref_pad(rh, rl, mask, 4, (1, 2, 0, 3), mode, "replicate", 2.0)
    _check_pad(*mod(xb), *exp)


def test_pad_from_parts():
    """Block tensors wrapped from arbitrary parts (not from a dense image) pad correctly."""
    g = torch.Generator().manual_seed(5)
    mask = make_mask("mixed", 2, 3, 2, g)
    s = 8
    nh, nl = int(mask.sum()), int((~mask).sum())
    hr = torch.randn(nh, 4, s, s, generator=g, dtype=torch.float64)
    lr = torch.randn(nl, 4, s // 2, s // 2, generator=g, dtype=torch.float64)
    grid = BlockGrid(mask, s)
    for mode in ("avg", "strided", "zero"):
        xb = BlockTensor.from_parts(hr, lr, grid, pad_mode=mode)
        for pads in (1, (2, 0, 3, 1), s):
            exp = ref_pad(hr, lr, mask, s, pads, mode, "zeros", 0.0)
            _check_pad(*block_pad(xb, pads), *exp)


def test_pad_twice_no_grad_invalidates_halo_cache():
    """Different pads / values / modes / borders on one block tensor under no_grad."""
    x = torch.randn(2, 3, 24, 16)
    mask = make_mask("mixed", 2, 3, 2, torch.Generator().manual_seed(11))
    s = 8
    rh, rl = ref_sample(x, mask, s)
    requests = [
        dict(padding=1, value=0.0),
        dict(padding=1, value=float("-inf")),
        dict(padding=1, value=0.0),
        dict(padding=2, value=0.0),
        dict(padding=1, value=0.0, mode="strided"),
        dict(padding=1, value=0.0, border="replicate"),
        dict(padding=(0, 1, 0, 1), value=3.0),
        dict(padding=1, value=0.0, mode="zero"),
        dict(padding=1, value=0.0),
        dict(padding=s, value=-1.0),
        dict(padding=1, value=0.0),
    ]
    for profile in (MarginProfile(), MarginProfile()):
        # second loop iteration: BlockSample already writes into a padded buffer
        with torch.no_grad():
            xb = block_sample(x, mask, s, profile=profile)
            for r in requests:
                hp, lp = block_pad(
                    xb,
                    r["padding"],
                    mode=r.get("mode"),
                    border=r.get("border", "zeros"),
                    value=r["value"],
                )
                exp = ref_pad(
                    rh,
                    rl,
                    mask,
                    s,
                    r["padding"],
                    r.get("mode", "avg"),
                    r.get("border", "zeros"),
                    r["value"],
                )
                _check_pad(hp.clone(), lp.clone(), *exp)
            assert_close(xb.hr, rh, rtol=0, atol=0)
            assert_close(xb.lr, rl)


def test_pad_result_not_mutated_by_later_pad():
    x = torch.randn(1, 2, 16, 16)
    mask = torch.tensor([[[True, False], [False, True]]])
    with torch.no_grad():
        xb = block_sample(x, mask, 8, profile=MarginProfile())
        h1, l1 = block_pad(xb, 1, value=0.0)
        h1_copy, l1_copy = h1.clone(), l1.clone()
        block_pad(xb, 1, value=5.0)
    assert torch.equal(h1, h1_copy) and torch.equal(l1, l1_copy)


def test_grid_reused_across_inputs():
    mask = make_mask("mixed", 2, 2, 3, torch.Generator().manual_seed(2))
    grid = BlockGrid(mask, 8)
    xs = [torch.randn(2, 3, 16, 24), torch.randn(2, 5, 16, 24, dtype=torch.float64)]
    for _ in range(2):
        for x in xs:
            for ng in (False, True):
                with torch.set_grad_enabled(not ng):
                    xb = block_sample(x, grid)
                    rh, rl = ref_sample(x, mask, 8)
                    for pads, mode in ((1, "avg"), ((2, 0, 3, 1), "strided"), (8, "avg")):
                        exp = ref_pad(rh, rl, mask, 8, pads, mode)
                        _check_pad(*block_pad(xb, pads, mode=mode), *exp)
                    assert_close(block_combine(xb), ref_combine(rh, rl, mask, 8))
                    assert_close(
                        block_combine(xb, "bilinear"), ref_combine(rh, rl, mask, 8, "bilinear")
                    )
    # the grid's cached plans did not leak across inputs: a fresh grid gives the same results
    x = xs[0]
    a = block_pad(block_sample(x, grid), 2)
    b = block_pad(block_sample(x, BlockGrid(mask.clone(), 8)), 2)
    assert_close(a[0], b[0], rtol=0, atol=0)
    assert_close(a[1], b[1], rtol=0, atol=0)


# ----------------------------------------------------------------------------- combine


@pytest.mark.parametrize("c", _random_cases(60, seed=4321), ids=_case_id)
@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_combine_matches_reference(c, upsample):
    gen = torch.Generator().manual_seed(c["seed"])
    GH, GW = c["grid"]
    s, C = c["s"], c["C"]
    mask = make_mask(c["mask"], c["N"], GH, GW, gen)
    nh, nl = int(mask.sum()), int((~mask).sum())
    hr = torch.randn(nh, C, s, s, generator=gen, dtype=c["dtype"])
    lr = torch.randn(nl, C, s // 2, s // 2, generator=gen, dtype=c["dtype"])
    if c["channels_last"]:
        hr = hr.contiguous(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)
    xb = BlockTensor.from_parts(hr, lr, BlockGrid(mask, s), pad_mode=c["mode"])
    exp = ref_combine(hr, lr, mask, s, upsample, c["mode"])
    for ng in (False, True):
        with torch.set_grad_enabled(not ng):
            out = block_combine(xb, upsample)
            assert out.shape == (c["N"], C, GH * s, GW * s)
            assert out.dtype == c["dtype"]
            if upsample == "nearest":
                assert_close(out, exp, rtol=0, atol=0)
            else:
                assert_close(out, exp)
    assert_close(BlockCombine(upsample)(xb), exp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_combine_identities(dtype, channels_last):
    """all-HR: combine(sample(x)) == x; all-LR: == the 2x-pooled image upsampled 2x (nearest,
    or bilinear exactly like F.interpolate on the whole low-res image)."""
    x = torch.randn(2, 3, 24, 32, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for mode in ("avg", "strided", "zero"):
        xb = block_sample(x, torch.ones(2, 3, 4, dtype=torch.bool), 8, pad_mode=mode)
        assert_close(block_combine(xb), x, rtol=0, atol=0)
        assert_close(block_combine(xb, "bilinear"), x, rtol=0, atol=0)
    low = F.avg_pool2d(x, 2)
    for mode in ("avg", "strided"):
        xb = block_sample(x, torch.zeros(2, 3, 4, dtype=torch.bool), 8, pad_mode=mode)
        assert_close(block_combine(xb), F.interpolate(low, scale_factor=2, mode="nearest"))
        assert_close(
            block_combine(xb, "bilinear"),
            F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False),
        )
    # mixed: HR cells come back exactly
    mask = checkerboard(2, 3, 4)
    out = block_combine(block_sample(x, mask, 8))
    up = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand_as(x)
    assert torch.equal(out[up], x[up])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_noncontiguous_masks(dtype):
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 3, 24, 16, generator=g).to(dtype)
    base = torch.rand(2, 2, 3, generator=g) > 0.5
    masks = [
        base.transpose(1, 2),  # non-contiguous
        torch.tensor([[True, False]]).view(1, 1, 2).expand(2, 3, 2),  # stride-0 expand
    ]
    for mask in masks:
        xb = block_sample(x, mask, 8)
        rh, rl = ref_sample(x, mask, 8)
        assert xb.hr.dtype == dtype
        assert_close(xb.hr, rh, rtol=0, atol=0)
        assert_close(xb.lr, rl)
        for pads, mode in ((3, "avg"), ((2, 0, 3, 1), "strided"), (8, "zero")):
            _check_pad(*block_pad(xb, pads, mode=mode), *ref_pad(rh, rl, mask, 8, pads, mode))
        assert_close(block_combine(xb, "bilinear"), ref_combine(rh, rl, mask, 8, "bilinear"))


@pytest.mark.parametrize("seed", range(8))
def test_canvas_gradients(seed):
    """hr_canvas / lr_canvas with autograd: their own backward (a gather of the cells'
    gradients) passes float64 gradcheck for random masks (all-HR and all-LR included), grids,
    sides, pads and both pad modes."""
    from torch.autograd import gradcheck

    from segblocks.blocks.pad import hr_canvas, lr_canvas

    rng = random.Random(100 + seed)
    gen = torch.Generator().manual_seed(seed)
    GH, GW = rng.choice(GRIDS)
    N, C, s = rng.randint(1, 2), rng.choice(CHANNELS[:3]), rng.choice(SIDES[:2])
    mode = rng.choice(["avg", "strided"])
    pads = tuple(rng.randint(0, s) for _ in range(4))
    grid = BlockGrid(make_mask(MASKS[seed % len(MASKS)], N, GH, GW, gen), s)
    hr = torch.randn(grid.num_hr, C, s, s, generator=gen, dtype=torch.float64)
    lr = torch.randn(grid.num_lr, C, s // 2, s // 2, generator=gen, dtype=torch.float64)
    for canvas in (hr_canvas, lr_canvas):

        def fn(hr, lr, canvas=canvas):
            return canvas(BlockTensor.from_parts(hr, lr, grid, pad_mode=mode), pads)

        out = fn(hr.requires_grad_(), lr.requires_grad_())
        assert "Canvas" in type(out.grad_fn).__name__  # the custom backward, not in-place views
        assert gradcheck(fn, (hr, lr))


@pytest.mark.parametrize("seed", range(12))
def test_canvas_windows_are_the_padded_blocks(seed):
    """hr_canvas / lr_canvas: the window of every cell is that block padded by BlockPad (the
    reference), for random masks, grids, sides, pads and both pad modes with a halo."""
    from segblocks.blocks.pad import hr_canvas, lr_canvas

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    GH, GW = rng.choice(GRIDS)
    N, C, s = rng.randint(1, 3), rng.choice(CHANNELS), rng.choice(SIDES)
    mode = rng.choice(["avg", "strided"])
    pads = tuple(rng.randint(0, s) for _ in range(4))
    mask = make_mask(rng.choice(MASKS), N, GH, GW, gen)
    grid = BlockGrid(mask, s)
    hr = torch.randn(grid.num_hr, C, s, s, generator=gen)
    lr = torch.randn(grid.num_lr, C, s // 2, s // 2, generator=gen)
    x = BlockTensor.from_parts(hr, lr, grid, pad_mode=mode)
    ref_hr, ref_lr = ref_pad(hr, lr, mask, s, pads, mode=mode)
    pt, pb, pl, pr = pads
    levels = ((hr_canvas, ref_hr, s, True), (lr_canvas, ref_lr, s // 2, False))
    for canvas, ref, side, want in levels:
        c = canvas(x, pads)
        wins = [
            c[n, :, gy * side : gy * side + side + pt + pb, gx * side : gx * side + side + pl + pr]
            for n in range(N)
            for gy in range(GH)
            for gx in range(GW)
            if bool(mask[n, gy, gx]) == want
        ]
        assert len(wins) == ref.shape[0]
        if wins:
            assert_close(torch.stack(wins), ref)
