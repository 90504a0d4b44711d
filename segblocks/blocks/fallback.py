"""Dense fallback: run a layer that needs the whole map on the combined map, then re-split."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable

from torch import Tensor, nn

from .combine import block_combine
from .sample import check_dense, split_dense
from .tensor import BlockTensor

__all__ = ["dense_fallback", "run_densely"]


def dense_fallback(fn: Callable[..., Tensor], x: BlockTensor, *args, **kwargs) -> BlockTensor:
    """Run ``fn`` on the dense map of ``x`` and split the result with the same decisions.

    For layers that need the whole map (global pooling, SPP): combine (nearest) -> ``fn`` ->
    re-sample (LR blocks average-pooled). The output's spatial size must be a whole multiple
    of the grid, e.g. ``fn`` keeps ``H x W``.
    """
    dense = block_combine(x)
    y = fn(dense, *args, **kwargs)
    check_dense(y, "dense_fallback output")
    g = x.grid
    Ho, Wo = y.shape[-2:]
    if Ho % g.GH or Wo % g.GW or Ho // g.GH != Wo // g.GW:
        raise ValueError(
            f"dense_fallback output is {Ho}x{Wo}, which does not split into the {g.GH}x{g.GW} "
            "block grid; the wrapped layer must keep the spatial size (or scale it evenly)"
        )
    side = Ho // g.GH
    g.check_side(side, "dense_fallback output")
    return split_dense(y, g, side, pad_mode=x.pad_mode, trace=x.trace)


@contextlib.contextmanager
def run_densely(root: nn.Module, names: Iterable[str]):
    """Within the ``with`` block, the submodules ``names`` of ``root`` run through
    :func:`dense_fallback` when they receive a block tensor (dense inputs are unchanged).

    The modules themselves (weights, hooks, state-dict keys) stay as they are: only their
    ``forward`` is wrapped for the duration, so a network lists the layers that need the whole
    map (e.g. ``{"spp": "pyramid pooling to 8/4/2-row grids"}``) instead of being rewritten.
    The wrapper only changes what a block tensor input does, so several threads may run the
    same model at once: the first one in installs it, the last one out removes it.
    """
    names = list(names)
    modules = [root.get_submodule(name) for name in names]
    with _LOCK:
        for name, m in zip(names, modules, strict=True):
            if _USERS.get(id(m), 0) == 0 and "forward" in m.__dict__:
                raise ValueError(f"submodule {name!r} already has its forward replaced")
        for m in modules:
            if _USERS.get(id(m), 0) == 0:
                m.forward = _dense_forward(m.forward)
            _USERS[id(m)] = _USERS.get(id(m), 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            for m in modules:
                _USERS[id(m)] -= 1
                if _USERS[id(m)] == 0:
                    del _USERS[id(m)]
                    del m.forward


_LOCK = threading.Lock()
#: threads inside :func:`run_densely` per wrapped module (``id``)
_USERS: dict[int, int] = {}


def _dense_forward(orig: Callable) -> Callable:
    def fwd(x, *args, **kwargs):
        if isinstance(x, BlockTensor):
            return dense_fallback(orig, x, *args, **kwargs)
        return orig(x, *args, **kwargs)

    return fwd
