"""Bad input never gives a silent wrong result: it raises, and the message names the value."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from segblocks.blocks import (
    BlockGrid,
    BlockSample,
    BlockTensor,
    DenseFallback,
    UnsupportedBlockOp,
    block_combine,
    block_pad,
    block_sample,
    dense_fallback,
)

from ._util import checkerboard
from .reference import ref_combine, ref_sample


def _xb(N=1, C=2, GH=2, GW=2, s=8, mask=None, **kw):
    x = torch.randn(N, C, GH * s, GW * s)
    if mask is None:
        mask = checkerboard(N, GH, GW)
    return block_sample(x, mask, s, **kw)


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "shape, bs, grid, pattern",
    [
        ((1, 3, 100, 128), 32, (4, 4), r"height 100 .*multiple of block size 32"),
        ((1, 3, 128, 100), 32, (4, 4), r"width 100 .*multiple of block size 32"),
        ((1, 3, 60, 64), 16, (4, 4), r"height 60"),
    ],
)
def test_size_not_multiple_of_block(shape, bs, grid, pattern):
    with pytest.raises(ValueError, match=pattern):
        block_sample(torch.randn(shape), torch.ones(shape[0], *grid, dtype=torch.bool), bs)


def test_mask_grid_shape_mismatch():
    x = torch.randn(1, 3, 64, 96)
    with pytest.raises(ValueError, match=r"3x3") as e:
        block_sample(x, torch.ones(1, 3, 3, dtype=torch.bool), 32)
    assert "2x3" in str(e.value)  # the grid the input actually has
    with pytest.raises(ValueError, match=r"2x2"):
        block_sample(x, torch.ones(1, 2, 2, dtype=torch.bool), 32)


def test_batch_size_mismatch():
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"batch size 2.*\b1\b"):
        block_sample(x, torch.ones(1, 2, 2, dtype=torch.bool), 16)
    with pytest.raises(ValueError, match=r"batch size 2.*\b3\b"):
        block_sample(x, torch.ones(3, 2, 2, dtype=torch.bool), 16)


@pytest.mark.parametrize(
    "mask, pattern",
    [
        (torch.ones(1, 2, 2, dtype=torch.int64), r"torch\.int64"),
        (torch.ones(1, 2, 2, dtype=torch.uint8), r"torch\.uint8"),
        (torch.ones(1, 2, 2, dtype=torch.int32), r"torch\.int32"),
        (torch.ones(1, 2, 2), r"torch\.float32"),
        (torch.full((1, 2, 2), 0.7, dtype=torch.float64), r"torch\.float64"),
        (torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]), r"NaN"),
        ([[[True, False], [False, True]]], r"list"),
    ],
    ids=["int64", "uint8", "int32", "float32", "float64", "nan", "list"],
)
def test_non_bool_mask(mask, pattern):
    x = torch.randn(1, 2, 16, 16)
    with pytest.raises(ValueError, match=pattern):
        block_sample(x, mask, 8)
    with pytest.raises(ValueError, match=pattern):
        BlockGrid(mask, 8)


def test_mask_wrong_rank_or_empty():
    x = torch.randn(1, 2, 16, 16)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        block_sample(x, torch.ones(2, 2, dtype=torch.bool), 8)
    with pytest.raises(ValueError, match=r"\(1, 1, 2, 2\)"):
        block_sample(x, torch.ones(1, 1, 2, 2, dtype=torch.bool), 8)
    with pytest.raises(ValueError, match=r"\(0, 2, 2\)"):
        BlockGrid(torch.ones(0, 2, 2, dtype=torch.bool), 8)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.int32, torch.bool])
def test_non_float_image(dtype):
    x = torch.ones(1, 3, 16, 16, dtype=dtype)
    with pytest.raises(ValueError, match=re.escape(str(dtype))):
        block_sample(x, torch.ones(1, 2, 2, dtype=torch.bool), 8)


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 1, 3, 16, 16), (16, 16)])
def test_non_4d_input(shape):
    with pytest.raises(ValueError, match=re.escape(str(tuple(shape)))):
        block_sample(torch.randn(shape), torch.ones(1, 2, 2, dtype=torch.bool), 8)


def test_non_tensor_input():
    with pytest.raises(ValueError, match="ndarray"):
        block_sample(torch.randn(1, 2, 16, 16).numpy(), torch.ones(1, 2, 2, dtype=torch.bool), 8)


@pytest.mark.parametrize("bs", [7, 9, 1, 0, -4])
def test_odd_or_tiny_block_size(bs):
    with pytest.raises(ValueError, match=rf"block size {bs}\b"):
        BlockGrid(torch.ones(1, 2, 2, dtype=torch.bool), bs)
    with pytest.raises(ValueError, match=rf"block size {bs}\b"):
        block_sample(torch.randn(1, 2, 14, 14), torch.ones(1, 2, 2, dtype=torch.bool), bs)


def test_block_size_disagrees_with_grid():
    grid = BlockGrid(torch.ones(1, 2, 2, dtype=torch.bool), 8)
    with pytest.raises(ValueError, match=r"16"):
        block_sample(torch.randn(1, 2, 16, 16), grid, 16)


def test_bad_pad_mode():
    with pytest.raises(ValueError, match="'foo'"):
        block_sample(
            torch.randn(1, 2, 16, 16), torch.ones(1, 2, 2, dtype=torch.bool), 8, pad_mode="foo"
        )
    xb = _xb()
    with pytest.raises(ValueError, match="'bar'"):
        block_pad(xb, 1, mode="bar")


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize("padding", [9, (9, 0), (0, 9), (0, 0, 0, 9), (9, 1, 1, 1), 16])
def test_padding_wider_than_block(padding):
    for ng in (False, True):
        with torch.set_grad_enabled(not ng):
            xb = _xb(s=8)
            with pytest.raises(ValueError, match=r"\b(9|16)\b.*8-px"):
                block_pad(xb, padding)


def test_padding_wider_than_block_at_deeper_scale():
    """After stride 2 the HR side is 4: a 5-px halo is too wide (and says 4-px blocks)."""
    xb = _xb(s=8, C=2)
    y = F.max_pool2d(xb, 2)
    assert y.side == 4
    with pytest.raises(ValueError, match=r"\b5\b.*4-px"):
        block_pad(y, 5)
    with pytest.raises(ValueError, match=r"4-px"):
        F.conv2d(y, torch.randn(2, 2, 11, 11), padding=5)


@pytest.mark.parametrize(
    "padding, pattern",
    [
        (-1, r"\(-1, -1, -1, -1\).*negative"),
        ((1, -1), r"\(1, 1, -1, -1\).*negative"),
        ((0, 0, -2, 0), r"\(0, 0, -2, 0\).*negative"),
        ((1, 2, 3), r"\(1, 2, 3\)"),
    ],
)
def test_bad_padding_spec(padding, pattern):
    xb = _xb()
    with pytest.raises(ValueError, match=pattern):
        block_pad(xb, padding)


def test_bad_border_and_upsample():
    xb = _xb()
    with pytest.raises(ValueError, match="'reflect'"):
        block_pad(xb, 1, border="reflect")
    with pytest.raises(ValueError, match="'bicubic'"):
        block_combine(xb, "bicubic")


def test_pad_and_combine_reject_dense_tensors():
    x = torch.randn(1, 2, 16, 16)
    with pytest.raises(ValueError, match="Tensor"):
        block_pad(x, 1)
    with pytest.raises(ValueError, match="Tensor"):
        block_combine(x)


def test_from_parts_shape_mismatch():
    grid = BlockGrid(checkerboard(1, 2, 2), 8)
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        BlockTensor.from_parts(torch.randn(3, 3, 8, 8), torch.randn(2, 3, 4, 4), grid)
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        BlockTensor.from_parts(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), grid)


# ----------------------------------------------------------------------------- layers


def test_conv_with_valid_padding_raises():
    xb = _xb(C=2)
    w = torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match=r"kernel 3.*padding 0"):
        F.conv2d(xb, w)  # 3x3 padding 0 shrinks the map
    with pytest.raises(ValueError, match=r"padding 0"):
        F.conv2d(xb, w, padding="valid")
    with pytest.raises(ValueError, match=r"padding 4"):
        F.conv2d(xb, w, padding=2)  # grows the map
    with pytest.raises(ValueError, match=r"padding 0"):
        nn.Conv2d(2, 2, 3)(xb)
    with pytest.raises(ValueError, match=r"padding 0"):
        F.max_pool2d(xb, 3, 1, 0)


def test_stride_too_deep_for_block():
    xb = _xb(s=8, C=2)
    y = F.max_pool2d(F.max_pool2d(xb, 2), 2)  # HR side 2, LR side 1
    with pytest.raises(ValueError, match=r"\b2 px"):
        F.max_pool2d(y, 2)


def test_unsupported_op_names_op_and_dense_fallback():
    xb = _xb()
    cases = {
        "adaptive_avg_pool2d": lambda: F.adaptive_avg_pool2d(xb, 2),  # only global is exact
        "mean": lambda: torch.mean(xb),
        "flatten": lambda: torch.flatten(xb, 1),
        "softmax": lambda: F.softmax(xb, 1),
    }
    for name, fn in cases.items():
        with pytest.raises(UnsupportedBlockOp, match=name) as e:
            fn()
        assert "DenseFallback" in str(e.value), name
    # tensor methods without a block form
    with pytest.raises(AttributeError, match="DenseFallback"):
        xb.cumsum(1)
    # nn modules that need the whole map
    with pytest.raises(UnsupportedBlockOp, match="adaptive_avg_pool2d"):
        nn.AdaptiveAvgPool2d(4)(xb)


def test_unsupported_variants_raise():
    xb = _xb(C=2)
    w = torch.randn(2, 2, 3, 3)
    cases = [
        lambda: F.interpolate(xb, scale_factor=3),
        lambda: F.interpolate(xb, scale_factor=2.5),
        lambda: F.interpolate(xb, scale_factor=2, mode="bilinear", align_corners=True),
        lambda: F.interpolate(xb, scale_factor=2, mode="bicubic"),
        lambda: F.interpolate(xb, size=(20, 20)),
        lambda: F.max_pool2d(xb, 3, 1, 1, return_indices=True),
        lambda: F.avg_pool2d(xb, 3, 1, 1, count_include_pad=False),
        lambda: F.pad(xb, (1, 1, 1, 1), mode="reflect"),
        lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")(xb),
        lambda: F.dropout2d(xb, 0.5, training=True),
        lambda: torch.cat([xb, xb], 0),
        lambda: F.conv2d(xb, w, stride=(1, 2), padding=1),
        lambda: F.relu(F.pad(xb, (1, 1, 1, 1))),
        lambda: torch.sub(torch.ones(1), xb),
    ]
    for fn in cases:
        with pytest.raises((UnsupportedBlockOp, ValueError)):
            fn()
    assert issubclass(UnsupportedBlockOp, TypeError)


def test_binary_op_between_different_grids():
    x = torch.randn(1, 2, 16, 16)
    a = block_sample(x, checkerboard(1, 2, 2), 8)
    b = block_sample(x, ~checkerboard(1, 2, 2), 8)
    for fn in (
        lambda: a + b,
        lambda: a * b,
        lambda: a - b,
        lambda: torch.add(a, b),
        lambda: torch.cat([a, b], 1),
    ):
        with pytest.raises(ValueError, match="different grids"):
            fn()
    with pytest.raises(ValueError, match="different grids"):
        a += b
    # same decisions but another block size
    c = block_sample(torch.randn(1, 2, 32, 32), checkerboard(1, 2, 2), 16)
    with pytest.raises(ValueError):
        a + c
    # same grid, different scale
    with pytest.raises(ValueError, match=r"sides 8 and 4"):
        a + F.max_pool2d(a, 2)
    # an equal mask in another BlockGrid object is fine
    d = block_sample(x, checkerboard(1, 2, 2).clone(), 8)
    assert_close((a + d).hr, 2 * a.hr)


def test_binary_op_with_full_dense_tensor_raises():
    xb = _xb(C=2)
    with pytest.raises(ValueError, match=r"\(1, 2, 16, 16\)"):
        xb + torch.randn(1, 2, 16, 16)
    with pytest.raises(ValueError, match=r"\(3, 2, 1, 1\)"):  # per image, wrong batch
        _xb(N=2, C=2, mask=torch.ones(2, 2, 2, dtype=torch.bool)) * torch.randn(3, 2, 1, 1)
    with pytest.raises(ValueError, match="batch and spatial size"):
        torch.cat([xb, torch.randn(1, 2, 8, 16)], 1)


def test_dense_fallback_keeps_size_and_works():
    x = torch.randn(1, 3, 16, 24, dtype=torch.float64)
    mask = checkerboard(1, 2, 3)
    xb = block_sample(x, mask, 8)
    hr, lr = ref_sample(x, mask, 8)
    dense = ref_combine(hr, lr, mask, 8)
    pool = DenseFallback(nn.AdaptiveAvgPool2d((16, 24)))  # size-keeping adaptive pool
    y = pool(xb)
    assert isinstance(y, BlockTensor) and y.side == 8
    assert_close(block_combine(y), dense)
    # global context broadcast back over the map
    y = dense_fallback(lambda t: t - t.mean((2, 3), keepdim=True), xb)
    eh, el = ref_sample(dense - dense.mean((2, 3), keepdim=True), mask, 8)
    assert_close(y.hr, eh)
    assert_close(y.lr, el)
    # a fallback that changes the size evenly (2x): side follows
    y = dense_fallback(lambda t: F.interpolate(t, scale_factor=2), xb)
    assert y.side == 16
    # one that does not split into the grid raises
    with pytest.raises(ValueError, match=r"1x1"):
        DenseFallback(nn.AdaptiveAvgPool2d(1))(xb)


def test_failed_pad_leaves_tensor_usable():
    """Errors are raised before any state changes: the block tensor is still usable."""
    x = torch.randn(1, 2, 16, 16)
    sampler = BlockSample(8)
    with torch.no_grad():
        xb = sampler(x, checkerboard(1, 2, 2))
        with pytest.raises(ValueError):
            block_pad(xb, 9)
        with pytest.raises(ValueError):
            block_pad(xb, 1, border="reflect")
        hr, lr = ref_sample(x, checkerboard(1, 2, 2), 8)
        assert_close(xb.hr, hr)
        assert_close(block_combine(xb), ref_combine(hr, lr, checkerboard(1, 2, 2), 8))


# ----------------------------------------------------------------------------- known bugs


def _raises_or_matches_dense(block_fn, dense_fn, x, s=8):
    """The block op must either raise (ValueError / UnsupportedBlockOp) or equal the dense op
    (all-HR grid)."""
    xb = block_sample(
        x, torch.ones(x.shape[0], x.shape[2] // s, x.shape[3] // s, dtype=torch.bool), s
    )
    try:
        y = block_fn(xb)
    except (ValueError, UnsupportedBlockOp):
        return
    dense = dense_fn(x)  # if the dense op rejects the input, the block op must too
    out = block_combine(y)
    assert out.shape == dense.shape, (
        f"silent shape change: block {tuple(out.shape)}, dense {tuple(dense.shape)}"
    )
    assert_close(out, dense)


def test_interpolate_fractional_tuple_scale_not_silently_2x():
    x = torch.randn(1, 2, 16, 16)
    _raises_or_matches_dense(
        lambda t: F.interpolate(t, scale_factor=(2.5, 2.5)),
        lambda t: F.interpolate(t, scale_factor=(2.5, 2.5)),
        x,
    )


def test_max_pool_ceil_mode_not_silently_ignored():
    x = torch.randn(1, 2, 16, 16)
    fn = lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True)  # noqa: E731
    _raises_or_matches_dense(fn, fn, x)


def test_avg_pool_ceil_mode_not_silently_ignored():
    x = torch.randn(1, 2, 16, 16)
    fn = lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True)  # noqa: E731
    _raises_or_matches_dense(fn, fn, x)


def test_negative_fpad_not_silently_wrong():
    x = torch.randn(1, 2, 16, 16)
    w = torch.randn(2, 2, 3, 3)
    fn = lambda t: F.conv2d(F.pad(t, (-1, -1, -1, -1)), w, padding=2)  # noqa: E731
    _raises_or_matches_dense(fn, fn, x)


def test_strided_same_padding_rejected_like_dense():
    x = torch.randn(1, 2, 16, 16)
    w = torch.randn(2, 2, 3, 3)
    xb = block_sample(x, torch.ones(1, 2, 2, dtype=torch.bool), 8)
    with pytest.raises((ValueError, UnsupportedBlockOp, RuntimeError)):
        F.conv2d(xb, w, stride=2, padding="same")
