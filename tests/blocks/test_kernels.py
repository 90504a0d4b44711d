"""segblocks.blocks.kernels: the block ops on both backends (C++ and pure PyTorch).

Every op is checked against the slow definitions of ``reference.py`` (plans from
``BlockGrid``), by gradcheck in float64, by the adjoint identity of the halo fill, and the two
backends against each other (bit-identical in float32).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch.autograd import gradcheck

from segblocks.blocks import BlockGrid, extension, kernels

from ._util import make_mask
from .reference import ref_combine, ref_pad, ref_sample

C = 3
MASK_KINDS = ["mixed", "all_hr", "all_lr"]
# (block side, (top, bottom, left, right)): asymmetric halos, halos wider than an LR block.
GEOMS = [(4, (0, 1, 0, 1)), (8, (1, 2, 1, 2)), (6, (3, 3, 3, 3)), (16, (2, 0, 5, 1))]
MODE_BORDERS = [
    ("avg", "zeros"),
    ("avg", "replicate"),
    ("strided", "zeros"),
    ("strided", "replicate"),
    ("zero", "zeros"),
    ("zero", "replicate"),
]
DTYPES = [torch.float32, torch.bfloat16]


def _cpp_or_skip():
    if not extension.cpp_available():
        pytest.skip(f"the C++ block kernels could not be built: {extension.failure_reason()}")


@pytest.fixture(params=["python", "cpp"])
def backend(request):
    if request.param == "cpp":
        _cpp_or_skip()
    with kernels.use_backend(request.param):
        assert kernels.backend() == request.param
        yield request.param


def _plan(grid, side, pads, mode, border):
    """The halo plan of ``grid`` (``BlockGrid.pad_plan`` or the ``pad`` module's function)."""
    if hasattr(grid, "pad_plan"):
        plan = grid.pad_plan(side, pads, mode, border)
    else:
        from segblocks.blocks.pad import pad_plan

        plan = pad_plan(grid, side, pads, mode, border)
    return plan.copy_dst, plan.copy_src, plan.avg_dst, plan.avg_src, plan.const_dst


def _mask(kind, N=2, GH=2, GW=3, seed=0):
    return make_mask(kind, N, GH, GW, torch.Generator().manual_seed(seed))


def _layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values with other strides: ``cl`` channels-last, ``view`` a channel slice."""
    if kind == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "view":
        big = torch.zeros(t.shape[0], t.shape[1] + 2, *t.shape[2:], dtype=t.dtype)
        big[:, 1:-1] = t
        return big[:, 1:-1]
    return t.contiguous()


def _blocks(grid, s, dtype=torch.float32, c=C, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    hr = torch.randn(grid.num_hr, c, s, s, generator=g, dtype=torch.float64)
    lr = torch.randn(grid.num_lr, c, s // 2, s // 2, generator=g, dtype=torch.float64)
    hr, lr = hr.to(dtype), lr.to(dtype)
    return hr.requires_grad_(requires_grad), lr.requires_grad_(requires_grad)


def _padded_shapes(nh, nl, s, pads, c):
    pt, pb, pl, pr = pads
    t = s // 2
    return (nh, c, s + pt + pb, s + pl + pr), (nl, c, t + pt + pb, t + pl + pr)


def _as_store(hp, lp, value: float):
    """The flat store ``[R + 1, C]`` of padded blocks (row ``R`` holds ``value``)."""
    c = hp.shape[1]
    rows = [hp.permute(0, 2, 3, 1).reshape(-1, c), lp.permute(0, 2, 3, 1).reshape(-1, c)]
    return torch.cat([*rows, hp.new_full((1, c), value)])


def _padded_views(flat, nh, nl, s, pads):
    """``[Nh, C, hp, wp]`` and ``[Nl, C, tp, tw]`` views of the padded blocks of a store."""
    pt, pb, pl, pr = pads
    t, c = s // 2, flat.shape[1]
    rows_hr = nh * (s + pt + pb) * (s + pl + pr)
    hp = flat[:rows_hr].view(nh, s + pt + pb, s + pl + pr, c).permute(0, 3, 1, 2)
    lp = flat[rows_hr:-1].view(nl, t + pt + pb, t + pl + pr, c).permute(0, 3, 1, 2)
    return hp, lp


def _interior_rows(nh, nl, s, pads) -> torch.Tensor:
    """Bool ``[R + 1]``: True on the interior rows of a store."""
    pt, pb, pl, pr = pads
    t = s // 2
    R = nh * (s + pt + pb) * (s + pl + pr) + nl * (t + pt + pb) * (t + pl + pr)
    m = torch.zeros(R + 1, 1, dtype=torch.bool)
    hp, lp = _padded_views(m, nh, nl, s, pads)
    hp[:, :, pt : pt + s, pl : pl + s] = True
    lp[:, :, pt : pt + t, pl : pl + t] = True
    return m[:, 0]


def _close(a, b, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-6, atol=1e-6)
    else:
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------- forward vs reference
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode,border", MODE_BORDERS)
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"s{g[0]}-{'_'.join(map(str, g[1]))}")
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_pad_blocks_matches_reference(backend, mask_kind, geom, mode, border, dtype):
    s, pads = geom
    mask = _mask(mask_kind)
    grid = BlockGrid(mask, s)
    hr, lr = _blocks(grid, s, dtype)
    layout = ["plain", "cl", "view"][GEOMS.index(geom) % 3]
    value = -1.5 if border == "zeros" else 0.0
    plan = _plan(grid, s, pads, mode, border)
    got_hr, got_lr = kernels.pad_blocks(
        _layout(hr, layout), _layout(lr, layout), *plan, [s, *pads], value
    )
    shapes = _padded_shapes(grid.num_hr, grid.num_lr, s, pads, C)
    for got, shape in zip((got_hr, got_lr), shapes, strict=True):
        assert got.shape == shape and got.dtype == dtype
        assert got.is_contiguous(memory_format=torch.channels_last)
    assert got_hr.untyped_storage().data_ptr() != got_lr.untyped_storage().data_ptr()
    ref_hr, ref_lr = ref_pad(hr.float(), lr.float(), mask, s, pads, mode, border, value)
    _close(got_hr, ref_hr, dtype)
    _close(got_lr, ref_lr, dtype)


@pytest.mark.parametrize("mode,border", MODE_BORDERS)
@pytest.mark.parametrize("geom", GEOMS[:3], ids=lambda g: f"s{g[0]}")
def test_halo_fill_matches_pad_blocks(backend, geom, mode, border):
    """The in-place fill of a store with stale halo rows == the functional pad_blocks."""
    s, pads = geom
    grid = BlockGrid(_mask("mixed", seed=1), s)
    hr, lr = _blocks(grid, s)
    plan = _plan(grid, s, pads, mode, border)
    want = _as_store(*kernels.pad_blocks(hr, lr, *plan, [s, *pads], 2.0), 2.0)
    flat = torch.randn_like(want)  # stale halo
    interior = _interior_rows(grid.num_hr, grid.num_lr, s, pads)
    flat[interior] = want[interior]
    kernels.halo_fill_(flat, *plan, 2.0)
    assert torch.equal(flat, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["plain", "cl", "view"])
@pytest.mark.parametrize("N,mask_kind", [(1, "mixed"), (2, "mixed"), (2, "all_hr"), (2, "all_lr")])
def test_sample_blocks_matches_reference(backend, N, mask_kind, layout, dtype):
    s, pads = 8, (1, 2, 0, 3)
    GH, GW = 2, 3
    mask = _mask(mask_kind, N, GH, GW)
    grid = BlockGrid(mask, s)
    x = torch.randn(N, C, GH * s, GW * s).to(dtype)
    flat = kernels.sample_blocks(
        _layout(x, layout), grid.hr_cells, grid.lr_cells, [GH, GW, s, *pads]
    )
    ref_hr, ref_lr = ref_sample(x.float(), mask, s)
    got_hr, got_lr = _padded_views(flat, grid.num_hr, grid.num_lr, s, pads)
    pt, _, pl, _ = pads
    _close(got_hr[:, :, pt : pt + s, pl : pl + s], ref_hr, dtype)
    _close(got_lr[:, :, pt : pt + s // 2, pl : pl + s // 2], ref_lr, dtype)
    halo = ~_interior_rows(grid.num_hr, grid.num_lr, s, pads)
    assert torch.all(flat[halo] == 0)  # halo rows and the pad-value row


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["plain", "cl", "view"])
@pytest.mark.parametrize("N,mask_kind", [(1, "mixed"), (2, "mixed"), (2, "all_hr"), (2, "all_lr")])
def test_combine_blocks_matches_reference(backend, N, mask_kind, layout, dtype):
    s, GH, GW = 8, 3, 2
    mask = _mask(mask_kind, N, GH, GW)
    grid = BlockGrid(mask, s)
    hr, lr = _blocks(grid, s, dtype)
    out = kernels.combine_blocks(
        _layout(hr, layout), _layout(lr, layout), grid.hr_cells, grid.lr_cells, [N, GH, GW, s]
    )
    assert out.shape == (N, C, GH * s, GW * s)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.float(), ref_combine(hr.float(), lr.float(), mask, s))


# ----------------------------------------------------------------------------- gradients
GC_MASKS = {
    "mixed": torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]]),
    "all_hr": torch.ones(2, 2, 2, dtype=torch.bool),
    "all_lr": torch.zeros(2, 2, 2, dtype=torch.bool),
}


@pytest.mark.parametrize(
    "mask_kind,mode,border,pads",
    [
        ("mixed", "avg", "zeros", (1, 1, 1, 1)),
        ("mixed", "avg", "replicate", (0, 1, 2, 1)),
        ("mixed", "strided", "zeros", (4, 4, 4, 4)),
        ("mixed", "zero", "zeros", (1, 2, 1, 2)),
        ("all_hr", "avg", "replicate", (1, 1, 1, 1)),
        ("all_lr", "avg", "zeros", (2, 1, 1, 0)),
        ("mixed", "avg", "zeros", (0, 0, 0, 0)),  # no halo: interiors are the whole blocks
    ],
)
def test_gradcheck_pad_blocks(backend, mask_kind, mode, border, pads):
    s = 4
    mask = GC_MASKS[mask_kind]
    grid = BlockGrid(mask, s)
    hr, lr = _blocks(grid, s, torch.float64, c=2, requires_grad=True)
    plan = _plan(grid, s, pads, mode, border)

    def fn(hr, lr):
        return kernels.pad_blocks(hr, lr, *plan, [s, *pads], -0.5)

    assert gradcheck(fn, (hr, lr), fast_mode=False)


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("mode,border", [("avg", "zeros"), ("avg", "replicate"), ("zero", "zeros")])
def test_gradcheck_pad_blocks_one_output(backend, mode, border, which):
    """Only one padded level is used: the other one's gradient reaches the backward as None."""
    s, pads = 4, (1, 2, 2, 1)
    grid = BlockGrid(GC_MASKS["mixed"], s)
    hr, lr = _blocks(grid, s, torch.float64, c=2, requires_grad=True)
    plan = _plan(grid, s, pads, mode, border)

    def fn(hr, lr):
        return kernels.pad_blocks(hr, lr, *plan, [s, *pads], 0.25)[which]

    assert gradcheck(fn, (hr, lr), fast_mode=False)


def _strided(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as a gradient of other strides."""
    if kind == "expanded" and t.numel():
        return t[:1, :1, :1, :1].expand(t.shape)
    return _layout(t, kind)


@pytest.mark.parametrize("mode,border", MODE_BORDERS)
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"s{g[0]}")
def test_pad_backward_absent_and_strided_grads(backend, geom, mode, border):
    """``_pad_blocks_backward`` == the store adjoint, for absent (None) and any-strided grads."""
    s, pads = geom
    grid = BlockGrid(_mask("mixed", seed=5), s)
    plan = _plan(grid, s, pads, mode, border)
    nh, nl = grid.num_hr, grid.num_lr
    geo = [s, *pads]
    gen = torch.Generator().manual_seed(7)
    shapes = _padded_shapes(nh, nl, s, pads, 3)
    gh, gl = (torch.randn(sh, generator=gen, dtype=torch.float64) for sh in shapes)
    op = torch.ops.segblocks._pad_blocks_backward
    pt, _, pl, _ = pads
    t = s // 2
    for kind in ("plain", "cl", "view", "expanded"):
        for use_h, use_l in ((True, True), (True, False), (False, True)):
            a = _strided(gh, kind) if use_h else None
            b = _strided(gl, kind) if use_l else None
            got = op(a, b, *plan, geo, nh, nl)
            # The store adjoint on the same gradient (absent = zeros), interiors read back.
            za = a if use_h else gh.new_zeros(shapes[0])
            zb = b if use_l else gl.new_zeros(shapes[1])
            store = _as_store(za.contiguous(), zb.contiguous(), 0.0)
            kernels.halo_fill_backward_(store, *plan)
            hp, lp = _padded_views(store, nh, nl, s, pads)
            want = (hp[:, :, pt : pt + s, pl : pl + s], lp[:, :, pt : pt + t, pl : pl + t])
            for g_, w_ in zip(got, want, strict=True):
                assert g_.is_contiguous(memory_format=torch.channels_last)
                assert torch.equal(g_, w_), (kind, use_h, use_l)


@pytest.mark.parametrize("mask_kind", list(GC_MASKS))
def test_gradcheck_sample_blocks(backend, mask_kind):
    s, pads = 4, (1, 0, 2, 1)
    mask = GC_MASKS[mask_kind]
    grid = BlockGrid(mask, s)
    x = torch.randn(2, 2, 2 * s, 2 * s, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return kernels.sample_blocks(x, grid.hr_cells, grid.lr_cells, [2, 2, s, *pads])

    assert gradcheck(fn, (x,), fast_mode=False)


@pytest.mark.parametrize("mask_kind", list(GC_MASKS))
def test_gradcheck_combine_blocks(backend, mask_kind):
    s = 4
    mask = GC_MASKS[mask_kind]
    grid = BlockGrid(mask, s)
    hr, lr = _blocks(grid, s, torch.float64, c=2, requires_grad=True)

    def fn(hr, lr):
        return kernels.combine_blocks(hr, lr, grid.hr_cells, grid.lr_cells, [2, 2, 2, s])

    assert gradcheck(fn, (hr, lr), fast_mode=False)


@pytest.mark.parametrize("mode,border", MODE_BORDERS)
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"s{g[0]}")
def test_halo_fill_backward_is_the_adjoint(backend, geom, mode, border):
    """``<fill(a), b> == <a, fill_adjoint(b)>`` with ``a`` zero on halo rows and row R.

    (The fill overwrites those rows of ``a``; with value 0 it is linear in the interiors.)
    """
    s, pads = geom
    grid = BlockGrid(_mask("mixed", seed=2), s)
    plan = _plan(grid, s, pads, mode, border)
    interior = _interior_rows(grid.num_hr, grid.num_lr, s, pads)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(interior.numel(), 4, generator=g, dtype=torch.float64)
    a[~interior] = 0
    b = torch.randn(a.shape, generator=g, dtype=torch.float64)
    fa = a.clone()
    kernels.halo_fill_(fa, *plan, 0.0)
    atb = b.clone()
    kernels.halo_fill_backward_(atb, *plan)
    lhs, rhs = (fa * b).sum(), (a * atb).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    # The interiors of the adjoint are what the autograd of pad_blocks returns.
    hr, lr = _blocks(grid, s, torch.float64, c=4, requires_grad=True)
    outs = kernels.pad_blocks(hr, lr, *plan, [s, *pads], 0.0)
    torch.autograd.backward(outs, _padded_views(b, grid.num_hr, grid.num_lr, s, pads))
    ghp, glp = _padded_views(atb, grid.num_hr, grid.num_lr, s, pads)
    pt, _, pl, _ = pads
    t = s // 2
    assert torch.equal(hr.grad, ghp[:, :, pt : pt + s, pl : pl + s])
    assert torch.equal(lr.grad, glp[:, :, pt : pt + t, pl : pl + t])


def test_backward_accepts_any_grad_strides(backend):
    s, N, GH, GW = 4, 2, 2, 3
    mask = _mask("mixed", N, GH, GW)
    grid = BlockGrid(mask, s)
    hr, lr = _blocks(grid, s, requires_grad=True)
    out = kernels.combine_blocks(hr, lr, grid.hr_cells, grid.lr_cells, [N, GH, GW, s])
    g = torch.randn(out.shape)
    grads = []
    for gl in (g.contiguous(), g.contiguous(memory_format=torch.channels_last)):
        grads.append(torch.autograd.grad(out, (hr, lr), gl, retain_graph=True))
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))
    # combine's backward is the adjoint of combine: <combine(h, l), g> == <h, gh> + <l, gl>.
    gh, gl = grads[0]
    torch.testing.assert_close((out * g).sum(), (hr * gh).sum() + (lr * gl).sum())


# ----------------------------------------------------------------------------- cpp == python
def _run_all(grid, s, pads, mode, border, x, hr, lr):
    """Forward and backward of every op (float32), as a flat list of tensors."""
    N, _, H, W = x.shape
    GH, GW = H // s, W // s
    plan = _plan(grid, s, pads, mode, border)
    geo = [s, *pads]
    out = []
    hr, lr, x = (t.detach().requires_grad_(True) for t in (hr, lr, x))
    hp, lp = kernels.pad_blocks(hr, lr, *plan, geo, -1.0)
    flat = _as_store(hp.detach(), lp.detach(), -1.0)
    g = torch.randn(flat.shape, generator=torch.Generator().manual_seed(5))
    gh, gl = _padded_views(g, hr.shape[0], lr.shape[0], s, pads)
    out += [hp, lp, *torch.autograd.grad((hp, lp), (hr, lr), (gh, gl), retain_graph=True)]
    # Gradient of one output only (the other one's is absent: None).
    out += list(torch.autograd.grad(hp, (hr, lr), gh, retain_graph=True, allow_unused=True))
    out += list(torch.autograd.grad(lp, (hr, lr), gl, allow_unused=True))
    f2 = flat.clone()
    kernels.halo_fill_(f2, *plan, 3.0)
    g2 = g.clone()
    kernels.halo_fill_backward_(g2, *plan)
    out += [f2, g2]
    st = kernels.sample_blocks(x, grid.hr_cells, grid.lr_cells, [GH, GW, s, *pads])
    out += [st, *torch.autograd.grad(st, (x,), torch.randn_like(st))]
    cb = kernels.combine_blocks(hr, lr, grid.hr_cells, grid.lr_cells, [N, GH, GW, s])
    out += [cb, *torch.autograd.grad(cb, (hr, lr), torch.randn_like(cb))]
    return out


@pytest.mark.parametrize("mode,border", MODE_BORDERS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_cpp_and_python_identical(mask_kind, mode, border):
    _cpp_or_skip()
    s, pads, N, GH, GW = 8, (1, 2, 2, 1), 2, 3, 3
    mask = _mask(mask_kind, N, GH, GW)
    grid = BlockGrid(mask, s)
    hr, lr = _blocks(grid, s, c=5)
    x = torch.randn(N, 5, GH * s, GW * s).contiguous(memory_format=torch.channels_last)
    results = {}
    for name in ("python", "cpp"):
        with kernels.use_backend(name):
            torch.manual_seed(0)
            results[name] = _run_all(grid, s, pads, mode, border, x, hr, lr)
    for i, (a, b) in enumerate(zip(results["python"], results["cpp"], strict=True)):
        if a is None or b is None:
            assert a is None and b is None, i
            continue
        assert a.shape == b.shape, i
        assert torch.equal(a, b), (i, (a - b).abs().max())


@pytest.mark.parametrize("mode,border", [("avg", "zeros"), ("avg", "replicate")])
def test_results_do_not_depend_on_the_thread_count(backend, mode, border):
    """Every op, forward and backward, is bit-identical on 1 and 2 threads (large enough for
    the C++ kernels to split their loops and the adjoint's plan decoding)."""
    s, pads, N, GH, GW, c = 16, (1, 1, 1, 1), 8, 8, 8, 4
    grid = BlockGrid(_mask("mixed", N, GH, GW, seed=6), s)
    hr, lr = _blocks(grid, s, c=c)
    x = torch.randn(N, c, GH * s, GW * s).contiguous(memory_format=torch.channels_last)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            results.append(_run_all(grid, s, pads, mode, border, x, hr, lr))
    finally:
        torch.set_num_threads(threads)
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        assert (a is None) == (b is None), i
        assert a is None or torch.equal(a, b), i


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_other_dtypes_agree(dtype):
    _cpp_or_skip()
    s, pads = 4, (1, 1, 1, 1)
    grid = BlockGrid(_mask("mixed"), s)
    hr, lr = _blocks(grid, s, dtype)
    plan = _plan(grid, s, pads, "avg", "zeros")
    outs = []
    for name in ("python", "cpp"):
        with kernels.use_backend(name):
            outs.append(kernels.pad_blocks(hr, lr, *plan, [s, *pads], 0.0))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-3)
    for a in outs:
        assert all(t.dtype == dtype for t in a)


def test_schema_fake_and_autograd_registration():
    s, pads = 4, (1, 0, 1, 0)
    grid = BlockGrid(_mask("mixed"), s)
    hr, lr = _blocks(grid, s, torch.float64, requires_grad=True)
    plan = _plan(grid, s, pads, "avg", "zeros")
    x = torch.randn(2, C, 2 * s, 3 * s, dtype=torch.float64, requires_grad=True)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    cells = (grid.hr_cells, grid.lr_cells)
    for op, args in [
        (kernels.pad_blocks, (hr, lr, *plan, [s, *pads], 0.0)),
        (kernels.sample_blocks, (x, *cells, [2, 3, s, *pads])),
        (kernels.combine_blocks, (hr, lr, *cells, [2, 2, 3, s])),
        (kernels.halo_fill_, (torch.zeros(200, C, dtype=torch.float64), *plan, 1.0)),
    ]:
        torch.library.opcheck(op, args, test_utils=tests)
    # The backward op itself, with both gradients and with one absent.
    gh, gl = (
        torch.randn(sh, dtype=torch.float64)
        for sh in _padded_shapes(grid.num_hr, grid.num_lr, s, pads, C)
    )
    bwd = torch.ops.segblocks._pad_blocks_backward.default
    for a, b in ((gh, gl), (None, gl), (gh, None)):
        args = (a, b, *plan, [s, *pads], grid.num_hr, grid.num_lr)
        torch.library.opcheck(bwd, args, test_utils=("test_schema", "test_faketensor"))


# ----------------------------------------------------------------------------- backend choice
def test_backend_selection(monkeypatch):
    with kernels.use_backend("python"):
        assert kernels.backend() == "python"
    with pytest.raises(ValueError, match="expected one of"):
        kernels.set_backend("fortran")
    # SEGBLOCKS_BACKEND is read when nothing was chosen yet.
    monkeypatch.setattr(kernels, "_requested", None)
    monkeypatch.setattr(kernels, "_cpp", None)
    monkeypatch.setenv("SEGBLOCKS_BACKEND", "python")
    assert kernels.backend() == "python"
    monkeypatch.setattr(kernels, "_cpp", None)
    monkeypatch.setenv("SEGBLOCKS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="SEGBLOCKS_BACKEND"):
        kernels.backend()


def test_forced_cpp_without_kernels_raises(monkeypatch):
    monkeypatch.setattr(kernels, "_requested", None)
    monkeypatch.setattr(kernels, "_cpp", None)
    monkeypatch.setattr(extension, "cpp_available", lambda: False)
    monkeypatch.setattr(extension, "failure_reason", lambda: "no compiler (test)")
    with pytest.raises(RuntimeError, match="no compiler"):
        kernels.set_backend("cpp")
    with kernels.use_backend("auto"):
        assert kernels.backend() == "python"


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(extension, "_loaded", None)
    monkeypatch.setattr(extension, "_reason", None)
    monkeypatch.setattr(extension, "SOURCES", (tmp_path / "missing.cpp",))
    with pytest.warns(RuntimeWarning, match="unavailable.*missing.cpp"):
        assert extension.load() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension.cpp_available() is False  # no second warning
    assert "missing.cpp" in extension.failure_reason()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_takes_the_pytorch_path():
    s, pads = 8, (1, 1, 1, 1)
    grid = BlockGrid(_mask("mixed"), s)
    hr, lr = _blocks(grid, s)
    plan = _plan(grid, s, pads, "avg", "replicate")
    want = kernels.pad_blocks(hr, lr, *plan, [s, *pads], 0.0)
    got = kernels.pad_blocks(hr.cuda(), lr.cuda(), *(p.cuda() for p in plan), [s, *pads], 0.0)
    torch.testing.assert_close([t.cpu() for t in got], list(want))


def test_bad_plan_is_an_error(backend):
    s, pads = 4, (1, 1, 1, 1)
    grid = BlockGrid(_mask("mixed"), s)
    hr, lr = _blocks(grid, s)
    cd, cs, ad, as_, kd = _plan(grid, s, pads, "avg", "zeros")
    bad = cs.clone()
    bad[0] = 10**9
    with pytest.raises((RuntimeError, IndexError)):
        kernels.pad_blocks(hr, lr, cd, bad, ad, as_, kd, [s, *pads], 0.0)


def test_cpp_pad_backward_rejects_non_interior_avg_source():
    """The C++ adjoint bucketises by source block: 2x2-mean sources must be interior rows."""
    _cpp_or_skip()
    s, pads = 4, (1, 1, 1, 1)
    grid = BlockGrid(_mask("mixed"), s)
    cd, cs, ad, as_, kd = _plan(grid, s, pads, "avg", "zeros")
    assert ad.numel()
    bad = as_.clone()
    bad[0] = 0  # row 0: the top-left halo pixel of HR block 0
    gh, gl = (torch.randn(sh) for sh in _padded_shapes(grid.num_hr, grid.num_lr, s, pads, C))
    with kernels.use_backend("cpp"), pytest.raises(RuntimeError, match="not a block interior"):
        torch.ops.segblocks._pad_blocks_backward(
            gh, gl, cd, cs, ad, bad, kd, [s, *pads], grid.num_hr, grid.num_lr
        )


def test_copy_runs_stop_at_the_end_of_a_level(backend):
    """Consecutive copy entries whose rows cross from the HR to the LR buffer are no run."""
    s, pads, value = 4, (1, 2, 2, 1), 7.5
    # Last HR block bottom-right and first LR block top-left: both corner rows take the value.
    grid = BlockGrid(torch.tensor([[[False, True], [True, True]]]), s)
    cd, cs, ad, as_, kd = _plan(grid, s, pads, "avg", "zeros")
    rows_hr = grid.num_hr * (s + pads[0] + pads[1]) * (s + pads[2] + pads[3])
    j1 = int((cd == rows_hr - 1).nonzero())
    j2 = int((cd == rows_hr).nonzero())
    R = rows_hr + grid.num_lr * (s // 2 + pads[0] + pads[1]) * (s // 2 + pads[2] + pads[3])
    assert cs[j1] == R and cs[j2] == R
    order = [j for j in range(cd.numel()) if j != j2]
    order.insert(order.index(j1) + 1, j2)
    perm = torch.tensor(order)
    hr, lr = _blocks(grid, s)
    want = kernels.pad_blocks(hr, lr, cd, cs, ad, as_, kd, [s, *pads], value)
    got = kernels.pad_blocks(hr, lr, cd[perm], cs[perm], ad, as_, kd, [s, *pads], value)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_plans_cover_every_halo_row():
    """pad_blocks allocates stores uninitialised: every halo row must be written by the plan."""
    for (s, pads), (mode, border) in itertools.product(GEOMS, MODE_BORDERS):
        grid = BlockGrid(_mask("mixed", seed=4), s)
        cd, _, ad, _, kd = _plan(grid, s, pads, mode, border)
        interior = _interior_rows(grid.num_hr, grid.num_lr, s, pads)
        written = interior.clone()
        written[-1] = True
        for idx in (cd, ad, kd):
            written[idx] = True
        assert written.all(), (s, pads, mode, border)


@pytest.mark.parametrize("border", ["zeros", "replicate"])
@pytest.mark.parametrize("mode", ["avg", "strided"])
@pytest.mark.parametrize("geom", GEOMS + [(8, (4, 4, 4, 4)), (8, (0, 0, 0, 0))], ids=str)
def test_cpp_pad_plan_equals_the_python_builders(geom, mode, border):
    """The C++ plan builder gives the plan of the tensor-op builders: every halo row once, from
    the same source (order aside), so halo fills agree bit for bit."""
    _cpp_or_skip()
    from segblocks.blocks.grid import BlockGrid
    from segblocks.blocks.pad import pad_plan

    s, pads = geom
    mask = make_mask("mixed", 2, 5, 7, torch.Generator().manual_seed(3))
    plans = {}
    for name in ("python", "cpp"):
        with kernels.use_backend(name):
            plans[name] = pad_plan(BlockGrid(mask, 4 * s), s, pads, mode, border)
    py, cc = plans["python"], plans["cpp"]
    assert (py.rows, py.rows_hr) == (cc.rows, cc.rows_hr)
    R = py.rows
    flat = torch.randn(R + 1, 3, dtype=torch.float64)
    outs = []
    for p in (py, cc):
        f = flat.clone()
        kernels.halo_fill_(f, *p.tensors(), -2.5)
        outs.append(f)
    assert torch.equal(outs[0], outs[1])
    # one entry per halo row: no duplicates, no filler entries in the C++ plan
    dst = torch.cat([cc.copy_dst, cc.avg_dst])
    assert dst.unique().numel() == dst.numel() and bool((dst < R).all())


def test_kernels_build_where_a_compiler_is_present():
    """With a C++ compiler on the machine (CI has one) a failing build fails here instead of
    every C++ test skipping quietly."""
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the pure-PyTorch backend is the one tested")
    assert extension.cpp_available(), f"the C++ kernels did not build: {extension.failure_reason()}"
