"""Layer dispatch: which block handler runs when a ``torch`` / ``F`` call gets a block tensor.

:class:`~segblocks.blocks.tensor.BlockTensor` implements ``__torch_function__``; every call that
receives one lands in :func:`dispatch`, which looks the *function object* up in one table
(``F.relu``, ``torch.relu`` and ``torch.Tensor.relu`` are three keys that may share a handler).
Tensor methods called on a block tensor (``x.relu_()``) are looked up as
``getattr(torch.Tensor, name)``, and Python operators (``x + y``, ``x += y``) as the matching
``torch.Tensor`` dunder, so there is one table and one registration style.

Adding an op: write a handler and register it with :func:`register_block_op`::

    @register_block_op(F.hardswish, torch.Tensor.hardswish)
    def hardswish(x, inplace=False):
        ...

Handler rules:

1. The handler receives the call's arguments unchanged (same positional order and keywords
   as the registered function); the block tensor is wherever the caller put it.
2. It returns a new :class:`BlockTensor` on the same grid (or a dense tensor if the op's
   result is not spatial), built from per-level results (``x.parts``: level 0 HR, level 1 LR;
   ``x.derive(parts)`` / ``map_parts``), never by reaching into another handler.
3. All-HR must reproduce the dense op exactly; all-LR must reproduce the dense op on the
   2x-pooled input where the op commutes with pooling. Write down what holds.
4. In-place variants rebind the block tensor (``x.assign(y)``); they may write into ``x``'s
   storage only when ``x.owned`` and autograd is not recording.
5. Ops that need neighbours pad with :func:`segblocks.blocks.pad.padded_parts` and run with
   padding 0; ops that need the whole image raise :class:`UnsupportedBlockOp` (users call
   the layer through ``segblocks.blocks.fallback.dense_call`` or wrap it in
   ``DenseFallback``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["UnsupportedBlockOp", "register_block_op", "dispatch", "method", "handler_for"]


class UnsupportedBlockOp(TypeError):
    """An op was called on a block tensor that has no block implementation."""


_HANDLERS: dict[Callable, Callable] = {}


def register_block_op(*funcs: Callable, replace: bool = False):
    """Decorator: ``handler`` runs whenever one of ``funcs`` is called with a block tensor.

    ``funcs`` are function objects (``F.relu``, ``torch.relu``, ``torch.Tensor.relu_``, ...).
    Registering a function twice raises unless ``replace=True``.
    """
    if not funcs:
        raise ValueError("register_block_op needs at least one function object")
    for f in funcs:
        if not callable(f) or isinstance(f, str):
            raise TypeError(
                f"register_block_op takes function objects (e.g. F.relu), got {f!r}; "
                "names are not accepted"
            )

    def deco(handler: Callable) -> Callable:
        for f in funcs:
            if f in _HANDLERS and not replace and _HANDLERS[f] is not handler:
                raise ValueError(
                    f"{_name(f)} already has a block handler ({_HANDLERS[f].__name__}); "
                    "pass replace=True to override it"
                )
            _HANDLERS[f] = handler
        return handler

    return deco


def handler_for(func: Callable) -> Callable | None:
    """The registered handler of ``func``, or ``None``."""
    return _HANDLERS.get(func)


def _name(func) -> str:
    mod = getattr(func, "__module__", None) or ""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or str(func)
    return f"{mod}.{qual}" if mod and not qual.startswith(mod) else qual


def dispatch(func: Callable, args: tuple, kwargs: dict):
    """Run the block handler of ``func`` (called from ``BlockTensor.__torch_function__``)."""
    handler = _HANDLERS.get(func)
    if handler is None:
        raise UnsupportedBlockOp(
            f"'{_name(func)}' has no block implementation; run the layer that calls it on the "
            "dense map with segblocks.blocks.fallback.dense_call(layer, x) (or wrap it: "
            "segblocks.blocks.DenseFallback(layer)), combine the blocks first with "
            "block_combine(x), or register one with segblocks.blocks.register_block_op"
        )
    return handler(*args, **kwargs)


def method(x, name: str):
    """``x.<name>`` for a tensor method with a handler (e.g. ``x.relu_()``, ``x.add(y)``)."""
    func = getattr(torch.Tensor, name, None)
    handler = _HANDLERS.get(func) if func is not None else None
    if handler is None:
        raise AttributeError(
            f"BlockTensor has no method '{name}' with a block implementation; call layers "
            "that need the dense map through segblocks.blocks.fallback.dense_call (or wrap "
            "them in segblocks.blocks.DenseFallback)"
        )
    return lambda *a, **k: handler(x, *a, **k)
