"""Budgeted inference: the policy ranks the blocks, the budget decides how many run in HR.

A budget per image is a fraction or count of HR blocks, GMACs, or milliseconds (issue 11).
Given one, :class:`~segblocks.models.segblocks_model.SegBlocksModel` ranks each image's blocks
by the policy's own score (learned: the logit; heuristic: the complexity ``C_b``; random: a
seeded random key) and runs the top ``k`` in high resolution, ``k`` being the most blocks whose
cost fits the budget: deterministic, never over the budget, and no fewer blocks than fit.

Costs are affine in ``k`` for a fixed image size: GMACs exactly (every HR block adds the same
MACs over an LR block), latency nearly (measured by ``segblocks calibrate``). A budget below
the all-LR cost or above the all-HR cost is clamped, with a warning that states the cost used.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .masks import top_k_mask  # re-exported: callers import it from here

__all__ = [
    "Budget",
    "AffineCost",
    "CostModel",
    "budget_count",
    "default_cost_model",
    "no_calibration",
    "register_cost_model",
    "top_k_mask",
]

UNITS = ("fraction", "blocks", "gmacs", "ms")
_SUFFIX = {"%": "percent", "blocks": "blocks", "block": "blocks", "gmacs": "gmacs", "ms": "ms"}


@dataclass(frozen=True)
class Budget:
    """A per-image budget: ``value`` in ``unit`` (``fraction`` of HR blocks in [0, 1],
    ``blocks``, ``gmacs`` or ``ms``)."""

    value: float
    unit: str = "fraction"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"budget unit {self.unit!r} must be one of {', '.join(UNITS)}")
        v = self.value
        if not isinstance(v, (int, float)) or math.isnan(v) or v < 0 or math.isinf(v):
            raise ValueError(
                f"budget {v!r} {self.unit} must be a finite number >= 0 (e.g. 0.4 of the "
                "blocks, '12blocks', '2.1gmacs', '35ms')"
            )
        if self.unit == "fraction" and v > 1:
            raise ValueError(
                f"budget fraction {v:g} must be in [0, 1]; for a percentage write '{v:g}%'"
            )

    @classmethod
    def parse(cls, spec) -> Budget:
        """``0.4`` / ``"0.4"`` (fraction), ``"40%"``, ``"12blocks"``, ``"2.1gmacs"``,
        ``"35ms"`` -> :class:`Budget`."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(float(spec), "fraction")
        text = str(spec).strip().lower().replace(" ", "")
        m = re.fullmatch(r"([-+0-9.e]+|nan|inf)(%|blocks?|gmacs|ms)?", text)
        if m is None:
            raise ValueError(
                f"budget {spec!r} is not a number with an optional unit; write e.g. 0.4, "
                "'40%', '12blocks', '2.1gmacs' or '35ms'"
            )
        try:
            value = float(m.group(1))
        except ValueError:
            raise ValueError(f"budget {spec!r}: {m.group(1)!r} is not a number") from None
        unit = _SUFFIX.get(m.group(2) or "", "fraction")
        if unit == "percent":
            return cls(value / 100.0, "fraction")
        return cls(value, unit)

    def __str__(self) -> str:
        return {
            "fraction": f"{100 * self.value:g} % of the blocks",
            "blocks": f"{self.value:g} blocks",
            "gmacs": f"{self.value:g} GMACs",
            "ms": f"{self.value:g} ms",
        }[self.unit]


@dataclass(frozen=True)
class AffineCost:
    """Cost of an image with ``k`` HR blocks: ``base + per_block * k`` (GMACs or ms)."""

    base: float
    per_block: float
    unit: str

    def __call__(self, k: int) -> float:
        return self.base + self.per_block * k


class CostModel(Protocol):
    """What converts a budget in GMACs or ms into a block count: the cost of one ``hp x wp``
    (padded) image as ``base + per_block * k``. A SegBlocks model is given one per unit
    (``model.mac_cost_model``: :class:`segblocks.measuring.macs.MacCostModel`;
    ``model.latency_calibration``: :class:`segblocks.measuring.calibrate.LatencyCalibration`)."""

    def cost(self, hp: int, wp: int, block_size: int) -> AffineCost: ...


# unit -> factory(model) of the cost model a SegBlocks model uses when none was given. Filled
# by the layer that can count (``import segblocks`` registers the exact MAC counter of
# ``segblocks.measuring.macs``), so that models/ need not import measuring/.
_DEFAULT_COST_MODELS: dict[str, Callable[[object], CostModel]] = {}


def register_cost_model(unit: str, factory: Callable[[object], CostModel]) -> None:
    """Make ``factory(model)`` the default cost model of budgets in ``unit`` (``"gmacs"``)."""
    if unit not in UNITS:
        raise ValueError(f"budget unit {unit!r} must be one of {', '.join(UNITS)}")
    _DEFAULT_COST_MODELS[unit] = factory


def default_cost_model(unit: str, model) -> CostModel:
    """The registered default cost model of ``unit`` for ``model`` (see
    :func:`register_cost_model`); raises ``ValueError`` when there is none."""
    factory = _DEFAULT_COST_MODELS.get(unit)
    if factory is None:
        raise ValueError(
            f"no cost model for budgets in {unit}: set model.mac_cost_model = "
            "segblocks.measuring.MacCostModel(model), or give the budget as a fraction"
        )
    return factory(model)


def no_calibration() -> ValueError:
    """The error of a budget in ms without a latency calibration (CLI and Python users)."""
    return ValueError(
        "a budget in ms needs a latency calibration of this model on this machine: make one "
        "with segblocks calibrate --checkpoint CKPT --size HxW --out cal.json and pass "
        "--calibration cal.json (in Python: model.latency_calibration = "
        "LatencyCalibration.load(path)), or give the budget in GMACs or as a fraction"
    )


def budget_count(budget: Budget, num_blocks: int, cost: AffineCost | None = None) -> int:
    """The number of HR blocks per image a budget allows (clamped to ``[0, num_blocks]``
    with a warning naming the cost actually used)."""
    if budget.unit == "fraction":
        return math.floor(budget.value * num_blocks + 1e-9)
    if budget.unit == "blocks":
        k = math.floor(budget.value + 1e-9)
        if k > num_blocks:
            warnings.warn(
                f"budget of {budget.value:g} blocks exceeds the {num_blocks} blocks of the image; "
                f"using all {num_blocks} blocks in high resolution",
                stacklevel=3,
            )
        return min(k, num_blocks)
    if cost is None or cost.unit != budget.unit:
        raise ValueError(f"a budget in {budget.unit} needs the model's cost in {budget.unit}")
    lo, hi = cost(0), cost(num_blocks)
    unit = "GMACs" if budget.unit == "gmacs" else "ms"
    if budget.value < lo:
        warnings.warn(
            f"budget {budget.value:g} {unit} is below the all-low-resolution cost {lo:.4g} "
            f"{unit}; using all-LR ({lo:.4g} {unit})",
            stacklevel=3,
        )
        return 0
    if budget.value >= hi:
        if budget.value > hi * (1 + 1e-9):
            warnings.warn(
                f"budget {budget.value:g} {unit} is above the all-high-resolution cost "
                f"{hi:.4g} {unit}; using all-HR ({hi:.4g} {unit})",
                stacklevel=3,
            )
        return num_blocks
    k = math.floor((budget.value - cost.base) / cost.per_block + 1e-9)
    return max(0, min(num_blocks, k))
