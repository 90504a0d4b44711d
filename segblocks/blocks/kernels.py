"""Block ops as ``torch.library`` custom ops: compiled CPU kernels with a pure-PyTorch fallback.

The ops work on "flat stores": a contiguous ``[R + 1, C]`` tensor (channels-last rows) holding
the padded HR blocks ``[Nh, s+pt+pb, s+pl+pr]`` (HR block ``b`` at rows
``[b*hp*wp, (b+1)*hp*wp)``, its padded pixel ``(y, x)`` at row ``b*hp*wp + y*wp + x``), then the
padded LR blocks ``[Nl, t+pt+pb, t+pl+pr]`` (``t = s/2``, starting at ``rows_hr = Nh*hp*wp``),
then row ``R``, the pad-value row. A halo plan (:class:`segblocks.blocks.grid.PadPlan`) is five
int64 row-index tensors ``copy_dst, copy_src, avg_dst, avg_src, const_dst`` plus a value.

Ops (namespace ``segblocks``, callable as ``torch.ops.segblocks.<name>`` or as this module's
attributes of the same name):

* ``halo_fill_(flat, copy_dst, copy_src, avg_dst, avg_src, const_dst, value)``: fills the
  halo in place: ``flat[R] = value``; ``flat[copy_dst] = flat[copy_src]``;
  ``flat[avg_dst[i]] = mean(flat[avg_src[4i:4i+4]])`` (float32 accumulation for bf16/fp16);
  ``flat[const_dst] = value``. Entries of ``avg_dst`` equal to ``R`` are fillers and skipped,
  so ``flat[R] == value`` afterwards.
* ``halo_fill_backward_(grad, <plan tensors>)``: its adjoint in place on a gradient store:
  ``grad[R] = 0``; ``grad[const_dst] = 0``; ``grad[avg_src] += grad[avg_dst] / 4`` then
  ``grad[avg_dst] = 0``; ``grad[copy_src] += grad[copy_dst]``. Only the interior rows are
  meaningful afterwards (copy destinations keep their incoming gradient).
* ``pad_blocks(hr, lr, <plan tensors>, geometry=[s, pt, pb, pl, pr], value)
  -> (hr_padded, lr_padded)``: the padded blocks ``hr_padded [Nh, C, s+pt+pb, s+pl+pr]`` and
  ``lr_padded [Nl, C, t+pt+pb, t+pl+pr]`` from blocks ``hr [Nh, C, s, s]`` and
  ``lr [Nl, C, t, t]`` (any strides) with the halo filled; two channels-last tensors, each
  backed by its own contiguous ``[rows, C]`` buffer, that together are the store above without
  its row ``R`` (the plan's rows address HR rows, then LR rows, then the pad value).
  Differentiable; its backward takes the gradients of both outputs (either may be absent, any
  strides) and returns ``(grad_hr [Nh, C, s, s], grad_lr [Nl, C, t, t])`` channels-last, by the
  adjoint above: interior gradient plus, per halo row, its contribution to its source (const rows
  none; an avg destination only through its 2x2 sources; filler entries skipped; duplicates
  accumulate). The C++ kernel needs no store-sized temporary; the PyTorch path assembles one.
* ``sample_blocks(x, hr_cells, lr_cells, geometry=[GH, GW, s, pt, pb, pl, pr]) -> flat``:
  BlockSample of ``x [N, C, GH*s, GW*s]`` into a store (HR interiors hold the block, LR
  interiors its 2x2 mean; halo rows and row ``R`` are zero); differentiable.
* ``combine_blocks(hr, lr, hr_cells, lr_cells, geometry=[N, GH, GW, s]) -> [N, C, H, W]``:
  BlockCombine (LR blocks nearest-upsampled), channels-last; differentiable.
* ``depthwise_conv_blocks(hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi)
  -> out [Ph' + Pl', C]`` (the HR output pixels, then the LR ones): a depthwise convolution
  of unpadded blocks ``hr [Nh, s, s, C]`` / ``lr [Nl, t, t, C]`` (or their ``[pixels, C]``
  matrices; contiguous, i.e. channels-last pixels) read through indirection tables
  (``segblocks.blocks.indirection``).
  Output pixel ``p`` is ``clamp(bias + sum_k weight[k] * src(table[p, k]), lo, hi)`` with
  source ids ``[0, Ph)`` HR pixels, ``[Ph, Ph + Pl)`` LR pixels, ``Ph + Pl`` the pad
  ``value``, ``Ph + Pl + 1 + j`` the mean of the four HR pixels ``avg_ids[j]`` (rounded to the
  dtype, as a padded store holds it); ``weight [taps, C]``. Float32 accumulation (float64 for
  float64). Inference only (no autograd).

``hr_cells`` / ``lr_cells`` are int64 flat cell ids ``n*GH*GW + gy*GW + gx``, ascending.

Backends: CPU tensors run the C++ kernels of ``segblocks/csrc/block_ops.cpp``
(``torch.ops.segblocks_C``, built once per machine by :mod:`.extension`) when they are
available, otherwise pure-PyTorch index ops; other devices (CUDA) always take the PyTorch path.
``SEGBLOCKS_BACKEND=auto|cpp|python`` picks the backend (``auto``: C++ when it loads); at run
time use :func:`set_backend` / :func:`use_backend` and :func:`backend`. In float32 both
backends give bit-identical results.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
from torch import Tensor

from . import extension
from .tracing import exporting

__all__ = [
    "BACKENDS",
    "FLOAT_DTYPES",
    "backend",
    "set_backend",
    "use_backend",
    "halo_fill_",
    "halo_fill_backward_",
    "pad_blocks",
    "sample_blocks",
    "combine_blocks",
    "depthwise_conv_blocks",
]

#: Accepted values of ``SEGBLOCKS_BACKEND`` and :func:`set_backend`.
BACKENDS = ("auto", "cpp", "python")
_ENV = "SEGBLOCKS_BACKEND"

_requested: str | None = None  # None until resolved from SEGBLOCKS_BACKEND
_cpp: bool | None = None  # resolved: do CPU tensors take the C++ kernels?
_C = SimpleNamespace()  # OpOverloads of torch.ops.segblocks_C, bound once loaded

#: Dtypes the kernels support (the C++ ones dispatch on exactly these).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LOW = (torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- backend choice
def _check_name(name: str, origin: str) -> str:
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"{origin} is {name!r}; expected one of {', '.join(BACKENDS)}")
    return key


def _select(name: str) -> bool:
    """Make ``name`` the backend; returns whether CPU tensors take the C++ kernels."""
    global _requested, _cpp
    use = False
    if name != "python":
        use = extension.cpp_available()
        if not use and name == "cpp":
            raise RuntimeError(
                "segblocks: the C++ block kernels were requested (SEGBLOCKS_BACKEND=cpp or "
                f"set_backend('cpp')) but are unavailable: {extension.failure_reason()}. "
                "Install a C++ compiler and ninja, or use the 'python' backend"
            )
        if use and not hasattr(_C, "halo_fill_"):
            ops = torch.ops.segblocks_C
            for op in (
                "halo_fill_",
                "halo_fill_backward_",
                "pad_blocks",
                "pad_blocks_backward",
                "sample_blocks",
                "sample_blocks_backward",
                "combine_blocks",
                "combine_blocks_backward",
                "pad_plan",
                "depthwise_conv_blocks",
                "conv_taps",
            ):
                setattr(_C, op, getattr(ops, op).default)
    _requested, _cpp = name, use
    return use


def _resolve() -> bool:
    return _select(_check_name(os.environ.get(_ENV, "auto") or "auto", _ENV))


def backend() -> str:
    """``"cpp"`` when CPU tensors run the compiled kernels, else ``"python"``."""
    use = _cpp if _cpp is not None else _resolve()
    return "cpp" if use else "python"


class _Restore:
    """Returned by :func:`set_backend`; as a context manager it restores the previous choice."""

    def __init__(self, previous):
        self._previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _requested, _cpp
        _requested, _cpp = self._previous
        return False


def set_backend(name: str) -> _Restore:
    """Select ``"auto"``, ``"cpp"`` or ``"python"`` for all later calls.

    Raises RuntimeError for ``"cpp"`` when the kernels cannot be built. The return value can
    be used as a context manager that restores the previous backend on exit::

        with kernels.set_backend("python"):
            ...
    """
    previous = (_requested, _cpp)
    _select(_check_name(name, "backend"))
    return _Restore(previous)


def use_backend(name: str) -> _Restore:
    """Context manager form of :func:`set_backend`: ``with use_backend("python"): ...``."""
    return set_backend(name)


def _on_cpp(t: Tensor) -> bool:
    """Does this call take the C++ kernels? (Never for non-CPU tensors: no build for them.)"""
    if not t.is_cpu:
        return False
    use = _cpp
    return use if use is not None else _resolve()


# ----------------------------------------------------------------------------- PyTorch path
def _pool4(a: Tensor, b: Tensor, c: Tensor, d: Tensor, scale: float) -> Tensor:
    """``scale * (((a + b) + c) + d)`` (the C++ kernels' order), float32 math for bf16/fp16."""
    dt = a.dtype
    low = dt in _LOW
    acc = (a.float() if low else a) + b
    acc += c
    acc += d
    if scale != 1.0:
        acc *= scale
    return acc.to(dt) if low else acc


def _store_geometry(s, pt, pb, pl, pr, nh, nl):
    t = s // 2
    hp, wp, tp, tw = s + pt + pb, s + pl + pr, t + pt + pb, t + pl + pr
    rows_hr = nh * hp * wp
    return t, hp, wp, tp, tw, rows_hr, rows_hr + nl * tp * tw


def _interiors(flat: Tensor, geometry, nh: int, nl: int) -> tuple[Tensor, Tensor]:
    """Views ``[Nh, s, s, C]`` and ``[Nl, t, t, C]`` of the block interiors of a store."""
    s, pt, pb, pl, pr = geometry
    t, hp, wp, tp, tw, rows_hr, R = _store_geometry(s, pt, pb, pl, pr, nh, nl)
    C = flat.shape[1]
    hv = flat[:rows_hr].view(nh, hp, wp, C)[:, pt : pt + s, pl : pl + s]
    lv = flat[rows_hr:R].view(nl, tp, tw, C)[:, pt : pt + t, pl : pl + t]
    return hv, lv


def _cell_index(cells: Tensor, GH: int, GW: int) -> tuple[Tensor, Tensor, Tensor]:
    per = GH * GW
    n = cells // per
    r = cells - n * per
    gy = r // GW
    return n, gy, r - gy * GW


def _py_halo_fill_(flat, copy_dst, copy_src, avg_dst, avg_src, const_dst, value):
    last = flat[-1]
    last.fill_(value)
    if copy_dst.numel():
        flat.index_copy_(0, copy_dst, flat.index_select(0, copy_src))
    if avg_dst.numel():
        v = flat.index_select(0, avg_src).view(-1, 4, flat.shape[1])
        flat.index_copy_(0, avg_dst, _pool4(v[:, 0], v[:, 1], v[:, 2], v[:, 3], 0.25))
        last.fill_(value)  # filler entries aimed at row R
    if const_dst.numel():
        flat.index_fill_(0, const_dst, value)


def _py_halo_fill_backward_(grad, copy_dst, copy_src, avg_dst, avg_src, const_dst):
    grad[-1].zero_()
    if const_dst.numel():
        grad.index_fill_(0, const_dst, 0)
    if avg_dst.numel():
        C = grad.shape[1]
        gd = grad.index_select(0, avg_dst).mul_(0.25)
        grad.index_fill_(0, avg_dst, 0)
        grad.index_add_(0, avg_src, gd.unsqueeze(1).expand(-1, 4, C).reshape(-1, C))
    if copy_dst.numel():
        grad.index_add_(0, copy_src, grad.index_select(0, copy_dst))


def _padded_shapes(geometry, nh: int, nl: int, C: int):
    s, pt, pb, pl, pr = geometry
    t = s // 2
    return (nh, s + pt + pb, s + pl + pr, C), (nl, t + pt + pb, t + pl + pr, C)


def _py_pad_blocks(hr, lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, value):
    s, pt, pb, pl, pr = geometry
    nh, nl, C = hr.shape[0], lr.shape[0], hr.shape[1]
    _t, _hp, _wp, _tp, _tw, rows_hr, R = _store_geometry(s, pt, pb, pl, pr, nh, nl)
    # A temporary store (plan rows address it); the HR output keeps its head, the LR part is
    # copied out (outputs must not share storage).
    flat = hr.new_empty(R + 1, C)
    hv, lv = _interiors(flat, geometry, nh, nl)
    if nh:
        hv.copy_(hr.permute(0, 2, 3, 1))
    if nl:
        lv.copy_(lr.permute(0, 2, 3, 1))
    _py_halo_fill_(flat, copy_dst, copy_src, avg_dst, avg_src, const_dst, value)
    hshape, lshape = _padded_shapes(geometry, nh, nl, C)
    hp = flat[:rows_hr].view(hshape)
    lp = flat[rows_hr:R].clone().view(lshape)
    return hp.permute(0, 3, 1, 2), lp.permute(0, 3, 1, 2)


def _py_pad_blocks_backward(
    grad_hr, grad_lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, nh, nl
):
    ref = grad_hr if grad_hr is not None else grad_lr
    C = ref.shape[1]
    hshape, lshape = _padded_shapes(geometry, nh, nl, C)
    parts = []
    for g, shape in ((grad_hr, hshape), (grad_lr, lshape)):
        rows = shape[0] * shape[1] * shape[2]
        if g is None:
            parts.append(ref.new_zeros(rows, C))
        else:
            parts.append(g.permute(0, 2, 3, 1).reshape(rows, C))
    parts.append(ref.new_zeros(1, C))
    work = torch.cat(parts)  # the gradient store (the fallback may afford the temporary)
    _py_halo_fill_backward_(work, copy_dst, copy_src, avg_dst, avg_src, const_dst)
    # clone, not contiguous(): without a halo the interiors are contiguous views of `work`, and
    # a custom op's outputs must not share storage.
    hv, lv = (
        v.clone(memory_format=torch.contiguous_format) for v in _interiors(work, geometry, nh, nl)
    )
    return hv.permute(0, 3, 1, 2), lv.permute(0, 3, 1, 2)


def _py_sample_blocks(x, hr_cells, lr_cells, geometry):
    GH, GW, s, pt, pb, pl, pr = geometry
    nh, nl, C = hr_cells.shape[0], lr_cells.shape[0], x.shape[1]
    R = _store_geometry(s, pt, pb, pl, pr, nh, nl)[-1]
    flat = x.new_zeros(R + 1, C)
    hv, lv = _interiors(flat, geometry[2:], nh, nl)
    x6 = x.unflatten(2, (GH, s)).unflatten(4, (GW, s)).permute(0, 2, 4, 3, 5, 1)
    if nh:
        hv.copy_(x6[_cell_index(hr_cells, GH, GW)])
    if nl:
        v = x6[_cell_index(lr_cells, GH, GW)].unflatten(1, (s // 2, 2)).unflatten(3, (s // 2, 2))
        lv.copy_(
            _pool4(v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1], 0.25)
        )
    return flat


def _py_sample_blocks_backward(grad, hr_cells, lr_cells, geometry, N):
    GH, GW, s, pt, pb, pl, pr = geometry
    t = s // 2
    nh, nl, C = hr_cells.shape[0], lr_cells.shape[0], grad.shape[1]
    grad = grad.contiguous()
    hv, lv = _interiors(grad, geometry[2:], nh, nl)
    alloc = grad.new_empty if nh + nl == N * GH * GW else grad.new_zeros
    out = alloc(N, GH * s, GW * s, C)
    if nh:
        o6 = out.view(N, GH, s, GW, s, C).permute(0, 1, 3, 2, 4, 5)
        o6.index_put_(_cell_index(hr_cells, GH, GW), hv)
    if nl:
        o8 = out.view(N, GH, t, 2, GW, t, 2, C).permute(0, 1, 4, 2, 3, 5, 6, 7)
        v = (lv * 0.25)[:, :, None, :, None, :].expand(-1, t, 2, t, 2, C)
        o8.index_put_(_cell_index(lr_cells, GH, GW), v)
    return out.permute(0, 3, 1, 2)


def _py_combine_blocks(hr, lr, hr_cells, lr_cells, geometry):
    N, GH, GW, s = geometry
    t = s // 2
    nh, nl, C = hr.shape[0], lr.shape[0], hr.shape[1]
    alloc = hr.new_empty if nh + nl == N * GH * GW else hr.new_zeros
    out = alloc(N, GH * s, GW * s, C)
    if nh:
        o6 = out.view(N, GH, s, GW, s, C).permute(0, 1, 3, 2, 4, 5)
        o6.index_put_(_cell_index(hr_cells, GH, GW), hr.permute(0, 2, 3, 1))
    if nl:
        o8 = out.view(N, GH, t, 2, GW, t, 2, C).permute(0, 1, 4, 2, 3, 5, 6, 7)
        v = lr.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(-1, t, 2, t, 2, C)
        o8.index_put_(_cell_index(lr_cells, GH, GW), v)
    return out.permute(0, 3, 1, 2)


def _py_combine_blocks_backward(grad, hr_cells, lr_cells, geometry):
    N, GH, GW, s = geometry
    t = s // 2
    nh, nl, C = hr_cells.shape[0], lr_cells.shape[0], grad.shape[1]
    if nh:
        g6 = grad.unflatten(2, (GH, s)).unflatten(4, (GW, s)).permute(0, 2, 4, 3, 5, 1)
        gh = g6[_cell_index(hr_cells, GH, GW)].contiguous()
    else:
        gh = grad.new_empty(0, s, s, C)
    if nl:
        g8 = grad.unflatten(2, (GH, t, 2)).unflatten(5, (GW, t, 2))
        v = g8.permute(0, 2, 5, 3, 4, 6, 7, 1)[_cell_index(lr_cells, GH, GW)]
        gl = _pool4(v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1], 1.0)
        gl = gl.contiguous()
    else:
        gl = grad.new_empty(0, t, t, C)
    return gh.permute(0, 3, 1, 2), gl.permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- custom ops
_PLAN = "Tensor copy_dst, Tensor copy_src, Tensor avg_dst, Tensor avg_src, Tensor const_dst"


@torch.library.custom_op(
    "segblocks::halo_fill_",
    mutates_args=("flat",),
    schema=f"(Tensor(a!) flat, {_PLAN}, float value) -> ()",
)
def _halo_fill_(
    flat: Tensor,
    copy_dst: Tensor,
    copy_src: Tensor,
    avg_dst: Tensor,
    avg_src: Tensor,
    const_dst: Tensor,
    value: float,
) -> None:
    """Fill the halo rows of a flat store in place (inference path; not differentiable)."""
    if _on_cpp(flat):
        _C.halo_fill_(flat, copy_dst, copy_src, avg_dst, avg_src, const_dst, value)
    else:
        _py_halo_fill_(flat, copy_dst, copy_src, avg_dst, avg_src, const_dst, value)


@_halo_fill_.register_fake
def _(flat, copy_dst, copy_src, avg_dst, avg_src, const_dst, value):
    return None


@torch.library.custom_op(
    "segblocks::halo_fill_backward_",
    mutates_args=("grad",),
    schema=f"(Tensor(a!) grad, {_PLAN}) -> ()",
)
def _halo_fill_backward_(
    grad: Tensor,
    copy_dst: Tensor,
    copy_src: Tensor,
    avg_dst: Tensor,
    avg_src: Tensor,
    const_dst: Tensor,
) -> None:
    """The adjoint of :func:`halo_fill_`, in place on a gradient store."""
    if _on_cpp(grad):
        _C.halo_fill_backward_(grad, copy_dst, copy_src, avg_dst, avg_src, const_dst)
    else:
        _py_halo_fill_backward_(grad, copy_dst, copy_src, avg_dst, avg_src, const_dst)


@_halo_fill_backward_.register_fake
def _(grad, copy_dst, copy_src, avg_dst, avg_src, const_dst):
    return None


# pad_blocks ------------------------------------------------------------------


@torch.library.custom_op(
    "segblocks::pad_blocks",
    mutates_args=(),
    schema=f"(Tensor hr, Tensor lr, {_PLAN}, int[] geometry, float value) -> (Tensor, Tensor)",
)
def _pad_blocks(hr, lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, value):
    """The padded HR and LR blocks (two channels-last tensors) with the halo filled by the plan."""
    if _on_cpp(hr):
        return _C.pad_blocks(
            hr, lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, value
        )
    return _py_pad_blocks(hr, lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, value)


@_pad_blocks.register_fake
def _(hr, lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, value):
    hshape, lshape = _padded_shapes(geometry, hr.shape[0], lr.shape[0], hr.shape[1])
    return hr.new_empty(hshape).permute(0, 3, 1, 2), lr.new_empty(lshape).permute(0, 3, 1, 2)


@torch.library.custom_op(
    "segblocks::_pad_blocks_backward",
    mutates_args=(),
    schema=(
        f"(Tensor? grad_hr, Tensor? grad_lr, {_PLAN}, int[] geometry, int num_hr, int num_lr) "
        "-> (Tensor, Tensor)"
    ),
)
def _pad_blocks_backward(
    grad_hr, grad_lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, nh, nl
):
    ref = grad_hr if grad_hr is not None else grad_lr
    if _on_cpp(ref):
        return _C.pad_blocks_backward(
            grad_hr, grad_lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, nh, nl
        )
    return _py_pad_blocks_backward(
        grad_hr, grad_lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, nh, nl
    )


@_pad_blocks_backward.register_fake
def _(grad_hr, grad_lr, copy_dst, copy_src, avg_dst, avg_src, const_dst, geometry, nh, nl):
    ref = grad_hr if grad_hr is not None else grad_lr
    s, C = geometry[0], ref.shape[1]
    return (
        ref.new_empty(nh, s, s, C).permute(0, 3, 1, 2),
        ref.new_empty(nl, s // 2, s // 2, C).permute(0, 3, 1, 2),
    )


def _pad_setup(ctx, inputs, output):
    hr, lr, *plan, geometry, _value = inputs
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
    ctx.save_for_backward(*plan)
    ctx.geometry = geometry
    ctx.nh, ctx.nl = hr.shape[0], lr.shape[0]


def _pad_backward(ctx, grad_hr, grad_lr):
    if grad_hr is None and grad_lr is None:
        return (None,) * 9
    gh, gl = _pad_blocks_backward(
        grad_hr, grad_lr, *ctx.saved_tensors, ctx.geometry, ctx.nh, ctx.nl
    )
    return gh, gl, None, None, None, None, None, None, None


_pad_blocks.register_autograd(_pad_backward, setup_context=_pad_setup)

# sample_blocks ---------------------------------------------------------------


@torch.library.custom_op(
    "segblocks::sample_blocks",
    mutates_args=(),
    schema="(Tensor x, Tensor hr_cells, Tensor lr_cells, int[] geometry) -> Tensor",
)
def _sample_blocks(x, hr_cells, lr_cells, geometry):
    """BlockSample of a dense map into a flat store (halo and pad-value rows zero)."""
    if _on_cpp(x):
        return _C.sample_blocks(x, hr_cells, lr_cells, geometry)
    return _py_sample_blocks(x, hr_cells, lr_cells, geometry)


@_sample_blocks.register_fake
def _(x, hr_cells, lr_cells, geometry):
    _GH, _GW, s, pt, pb, pl, pr = geometry
    R = _store_geometry(s, pt, pb, pl, pr, hr_cells.shape[0], lr_cells.shape[0])[-1]
    return x.new_empty(R + 1, x.shape[1])


@torch.library.custom_op(
    "segblocks::_sample_blocks_backward",
    mutates_args=(),
    schema="(Tensor grad, Tensor hr_cells, Tensor lr_cells, int[] geometry, int N) -> Tensor",
)
def _sample_blocks_backward(grad, hr_cells, lr_cells, geometry, N):
    if _on_cpp(grad):
        return _C.sample_blocks_backward(grad, hr_cells, lr_cells, geometry, N)
    return _py_sample_blocks_backward(grad, hr_cells, lr_cells, geometry, N)


@_sample_blocks_backward.register_fake
def _(grad, hr_cells, lr_cells, geometry, N):
    GH, GW, s = geometry[:3]
    return grad.new_empty(N, GH * s, GW * s, grad.shape[1]).permute(0, 3, 1, 2)


def _sample_setup(ctx, inputs, output):
    x, hr_cells, lr_cells, geometry = inputs
    ctx.save_for_backward(hr_cells, lr_cells)
    ctx.geometry = geometry
    ctx.N = x.shape[0]


def _sample_backward(ctx, grad):
    hr_cells, lr_cells = ctx.saved_tensors
    return _sample_blocks_backward(grad, hr_cells, lr_cells, ctx.geometry, ctx.N), None, None, None


_sample_blocks.register_autograd(_sample_backward, setup_context=_sample_setup)

# combine_blocks --------------------------------------------------------------


@torch.library.custom_op(
    "segblocks::combine_blocks",
    mutates_args=(),
    schema="(Tensor hr, Tensor lr, Tensor hr_cells, Tensor lr_cells, int[] geometry) -> Tensor",
)
def _combine_blocks(hr, lr, hr_cells, lr_cells, geometry):
    """BlockCombine (nearest): the dense channels-last map ``[N, C, GH*s, GW*s]``."""
    if _on_cpp(hr):
        return _C.combine_blocks(hr, lr, hr_cells, lr_cells, geometry)
    return _py_combine_blocks(hr, lr, hr_cells, lr_cells, geometry)


@_combine_blocks.register_fake
def _(hr, lr, hr_cells, lr_cells, geometry):
    N, GH, GW, s = geometry
    return hr.new_empty(N, GH * s, GW * s, hr.shape[1]).permute(0, 3, 1, 2)


@torch.library.custom_op(
    "segblocks::_combine_blocks_backward",
    mutates_args=(),
    schema="(Tensor grad, Tensor hr_cells, Tensor lr_cells, int[] geometry) -> (Tensor, Tensor)",
)
def _combine_blocks_backward(grad, hr_cells, lr_cells, geometry):
    if _on_cpp(grad):
        return _C.combine_blocks_backward(grad, hr_cells, lr_cells, geometry)
    return _py_combine_blocks_backward(grad, hr_cells, lr_cells, geometry)


@_combine_blocks_backward.register_fake
def _(grad, hr_cells, lr_cells, geometry):
    s, C = geometry[3], grad.shape[1]
    return (
        grad.new_empty(hr_cells.shape[0], s, s, C).permute(0, 3, 1, 2),
        grad.new_empty(lr_cells.shape[0], s // 2, s // 2, C).permute(0, 3, 1, 2),
    )


def _combine_setup(ctx, inputs, output):
    _hr, _lr, hr_cells, lr_cells, geometry = inputs
    ctx.save_for_backward(hr_cells, lr_cells)
    ctx.geometry = geometry


def _combine_backward(ctx, grad):
    hr_cells, lr_cells = ctx.saved_tensors
    gh, gl = _combine_blocks_backward(grad, hr_cells, lr_cells, ctx.geometry)
    return gh, gl, None, None, None


_combine_blocks.register_autograd(_combine_backward, setup_context=_combine_setup)

# Public entry points: the OpOverloads themselves (the fewest Python layers per call).
halo_fill_ = torch.ops.segblocks.halo_fill_.default
halo_fill_backward_ = torch.ops.segblocks.halo_fill_backward_.default
pad_blocks = torch.ops.segblocks.pad_blocks.default
sample_blocks = torch.ops.segblocks.sample_blocks.default
combine_blocks = torch.ops.segblocks.combine_blocks.default


# pad plans -------------------------------------------------------------------


def pad_plan_indices(mask_flat: Tensor, slot: Tensor, geometry) -> tuple | None:
    """``(copy_dst, copy_src, avg_dst, avg_src)`` of a halo plan (avg / strided mode, zero or
    replicate border) from the C++ builder, or ``None`` when it does not apply (python backend,
    non-CPU grid); the callers then build the same plan with tensor ops (``segblocks.blocks.pad``).

    ``mask_flat [N*GH*GW]`` bool decisions, ``slot [N*GH*GW]`` each cell's index among its
    level's blocks, ``geometry = [N, GH, GW, s, pt, pb, pl, pr, avg, replicate]`` (``replicate``
    optional, default 0). Plan building is not differentiable, so this is a plain function, not
    a registered op.
    """
    if not _on_cpp(mask_flat):
        return None
    if exporting():
        return pad_plan_op(mask_flat, slot, [int(g) for g in geometry])
    return _C.pad_plan(mask_flat, slot, [int(g) for g in geometry])


def conv_taps_indices(mask_flat: Tensor, slot: Tensor, geometry, num_hr=None) -> tuple | None:
    """``(table_hr, table_lr, avg_ids)`` of :func:`segblocks.blocks.indirection.conv_taps`
    from the C++ builder, or ``None`` off the C++ backend (the caller then builds them with
    tensor ops). ``geometry = [N, GH, GW, s, pt, pl, kh, kw, stride, dh, dw, mode]`` with mode
    0 / 1 / 2 for avg / strided / zero. Not differentiable: a plain function."""
    if not _on_cpp(mask_flat):
        return None
    if exporting():
        return conv_taps_op(mask_flat, slot, num_hr, [int(g) for g in geometry])
    return _C.conv_taps(mask_flat, slot, [int(g) for g in geometry])


# The table builders as registered ops: only ``torch.export`` calls them through the op layer
# (eager calls go straight to the C++ function), so that an exported program builds its plans
# at run time from the mask it gets. The table lengths depend on the mask: the fake kernels
# give them in terms of the number of HR blocks where that decides them, else as new symbols.


def _cpp_only(name: str):
    raise RuntimeError(
        f"segblocks::{name} needs the compiled kernels (segblocks.blocks.extension), which did "
        f"not load: {extension.failure_reason()}"
    )


@torch.library.custom_op(
    "segblocks::pad_plan",
    mutates_args=(),
    schema="(Tensor mask_flat, Tensor slot, int[] geometry) -> (Tensor, Tensor, Tensor, Tensor)",
)
def _pad_plan_op(mask_flat, slot, geometry):
    """:func:`pad_plan_indices` as an op (C++ backend only)."""
    if not _on_cpp(mask_flat):
        _cpp_only("pad_plan")
    return _C.pad_plan(mask_flat, slot, geometry)


@_pad_plan_op.register_fake
def _(mask_flat, slot, geometry):
    ctx = torch.library.get_ctx()
    copies, avgs = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    new = lambda n: mask_flat.new_empty(n, dtype=torch.long)  # noqa: E731
    return new(copies), new(copies), new(avgs), new(avgs * 4)


@torch.library.custom_op(
    "segblocks::conv_taps",
    mutates_args=(),
    schema=(
        "(Tensor mask_flat, Tensor slot, SymInt num_hr, int[] geometry) -> (Tensor, Tensor, Tensor)"
    ),
)
def _conv_taps_op(mask_flat, slot, num_hr, geometry):
    """:func:`conv_taps_indices` as an op (C++ backend only); ``num_hr`` (the number of
    ``True`` in ``mask_flat``) only gives the fake kernel the tables' lengths."""
    if not _on_cpp(mask_flat):
        _cpp_only("conv_taps")
    return _C.conv_taps(mask_flat, slot, geometry)


@_conv_taps_op.register_fake
def _(mask_flat, slot, num_hr, geometry):
    s, kh, kw, stride = geometry[3], geometry[6], geometry[7], geometry[8]
    o, t = s // stride, (s // 2) // stride
    num_lr = mask_flat.shape[0] - num_hr
    avgs = torch.library.get_ctx().new_dynamic_size()
    new = lambda *shape: mask_flat.new_empty(shape, dtype=torch.int32)  # noqa: E731
    return new(num_hr * o * o, kh * kw), new(num_lr * t * t, kh * kw), new(avgs, 4)


pad_plan_op = torch.ops.segblocks.pad_plan.default
conv_taps_op = torch.ops.segblocks.conv_taps.default


# convolution of a block batch, channels-last, for traced programs -----------------------------


@torch.library.custom_op(
    "segblocks::conv2d_channels_last",
    mutates_args=(),
    schema=(
        "(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
        "int groups) -> Tensor"
    ),
)
def _conv2d_channels_last(x, weight, bias, stride, padding, dilation, groups):
    """``F.conv2d`` with a channels-last output, whatever the batch size.

    Why an op: exported programs run a conv on a batch of blocks whose size is the traced
    HR / LR count. ATen picks the output layout from the input's strides, which for an unknown
    batch size (possibly 0) the tracer cannot decide; it assumes NCHW, eager returns NHWC, and
    AOTInductor then reads the result with the wrong strides. As an op the layout is stated.
    """
    y = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return y.contiguous(memory_format=torch.channels_last)


@_conv2d_channels_last.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    n, _, h, w = x.shape
    kh, kw = weight.shape[-2:]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty(n, oh, ow, weight.shape[0]).permute(0, 3, 1, 2)


conv2d_channels_last = torch.ops.segblocks.conv2d_channels_last.default


# depthwise convolution through indirection tables ------------------------------------------


def _py_depthwise_conv_blocks(hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi):
    C = hr.shape[-1]
    hr_rows, lr_rows = hr.reshape(-1, C), lr.reshape(-1, C)
    acc = torch.float32 if hr.dtype in _LOW else hr.dtype
    g = avg_ids.long()
    avg = _pool4(*(hr_rows[g[:, i]] for i in range(4)), 0.25).to(acc)
    pad = torch.full((1, C), value, dtype=hr.dtype, device=hr.device).to(acc)
    src = torch.cat([hr_rows.to(acc), lr_rows.to(acc), pad, avg])
    w = weight.to(acc)
    y = (src[torch.cat([table_hr, table_lr]).long()] * w).sum(1)  # [P, taps, C] -> [P, C]
    if bias is not None:
        y = y + bias.to(acc)
    return y.clamp(lo, hi).to(hr.dtype)


@torch.library.custom_op(
    "segblocks::depthwise_conv_blocks",
    mutates_args=(),
    schema=(
        "(Tensor hr, Tensor lr, Tensor weight, Tensor? bias, Tensor table_hr, Tensor table_lr, "
        "Tensor avg_ids, float value, float lo, float hi) -> Tensor"
    ),
)
def _depthwise_conv_blocks(hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi):
    """Depthwise conv of unpadded blocks through indirection tables (see the module doc)."""
    return depthwise_conv_blocks_direct(
        hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi
    )


@_depthwise_conv_blocks.register_fake
def _(hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi):
    return hr.new_empty(table_hr.shape[0] + table_lr.shape[0], hr.shape[-1])


depthwise_conv_blocks = torch.ops.segblocks.depthwise_conv_blocks.default


def depthwise_conv_blocks_direct(hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi):
    """:func:`depthwise_conv_blocks` without the op-dispatch layer on the C++ backend (the
    layers' inference path calls it once per depthwise conv; ~10 us less per call)."""
    if exporting():
        # traced: through the registered op, so the program calls it (the fake kernel sizes it)
        return depthwise_conv_blocks(
            hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi
        )
    if _on_cpp(hr):
        return _C.depthwise_conv_blocks(
            hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi
        )
    return _py_depthwise_conv_blocks(
        hr, lr, weight, bias, table_hr, table_lr, avg_ids, value, lo, hi
    )
