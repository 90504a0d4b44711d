"""Whether the engine is being traced by ``torch.export`` (or compiled), and what changes then.

Under ``torch.export`` the block engine runs on fake tensors: the number of HR blocks is a
symbol, not a Python int. Code that branches on it or keeps Python-side state between calls
(buffer pools, in-place halo fills, learned halo widths, plans cached by mask contents) takes
its functional path instead, which computes the same values (tested in
``tests/deploy/test_export.py``).
"""

from __future__ import annotations

import torch
from torch.fx.experimental.symbolic_shapes import guard_or_false

__all__ = ["exporting", "known_zero", "op_float"]


def exporting() -> bool:
    """``True`` while ``torch.export`` / ``torch.compile`` traces the forward pass."""
    return torch.compiler.is_compiling()


def known_zero(n) -> bool:
    """``n == 0`` for an int; for a traced size (a symbol) ``False`` unless provably zero,
    never a guard: code that skips empty levels runs them, which is correct for any count."""
    if isinstance(n, int):
        return n == 0
    return guard_or_false(n == 0)


#: the largest finite float32, standing in for an infinite scalar argument while traced
_FINITE_MAX = 3.4028234663852886e38


def op_float(v: float) -> float:
    """A float argument of a ``segblocks::`` op: itself, but while traced ``+-inf`` becomes
    ``+-FLT_MAX``. Why: AOTInductor serialises the arguments of custom-op calls as JSON, which
    has no infinity, and its loader refuses the string it writes instead. The uses are clamp
    bounds (no clamp) and max pooling's pad value, where the two agree for every finite input."""
    v = float(v)
    if exporting() and v in (float("inf"), float("-inf")):
        return _FINITE_MAX if v > 0 else -_FINITE_MAX
    return v
