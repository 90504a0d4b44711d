"""The policy interface: which blocks of an image are processed at high resolution.

A policy maps a normalised image batch ``[N, 3, H, W]`` and a block grid ``(GH, GW)`` to a
:class:`PolicyOutput` whose ``mask`` (``[N, GH, GW]`` bool, ``True`` = high-res) feeds
:func:`segblocks.blocks.block_sample`. Policies are ``nn.Module`` so that learned ones train,
move between devices and save with the segmentation network; every output tensor lives on the
image's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "Policy",
    "PolicyOutput",
    "POLICIES",
    "create_policy",
    "register_policy",
    "num_hr_blocks",
]


@dataclass
class PolicyOutput:
    """What a policy decided for a batch.

    Attributes:
        mask: ``[N, GH, GW]`` bool, ``True`` where a block is processed at high resolution.
        probs: ``[N, GH, GW]`` float probability of high resolution per block, or ``None``
            when the policy has no such notion (the heuristic).
        log_probs: ``[N, GH, GW]`` log-probability of the action actually taken
            (``log p`` where ``mask``, ``log(1 - p)`` elsewhere), with gradients for
            REINFORCE; ``None`` for policies without parameters.
        hr_fraction: ``[N]`` float, fraction of high-res blocks per image.
        scores: ``[N, GH, GW]`` the policy's raw per-block score, when it has one (heuristic:
            the complexity ``C_b``; learned: the logit), else ``None``.
    """

    mask: Tensor
    probs: Tensor | None
    log_probs: Tensor | None
    hr_fraction: Tensor
    scores: Tensor | None = None

    @classmethod
    def from_mask(cls, mask: Tensor, probs=None, log_probs=None, scores=None) -> PolicyOutput:
        mask = mask.bool()
        frac = mask.flatten(1).float().mean(1)
        return cls(mask, probs, log_probs, frac, scores)


def num_hr_blocks(tau: float, num_blocks: int) -> int:
    """High-res blocks per image for a target fraction ``tau``: ``tau * B`` rounded half up.

    Half up (not Python's round-half-to-even) so that the count grows monotonically with
    ``B``: ``tau = 0.5`` gives 3 of 5 blocks and 4 of 7.
    """
    return int(math.floor(tau * num_blocks + 0.5 + 1e-9))


def check_tau(tau, what: str = "tau") -> float:
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1], got {tau!r}") from None
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"{what} {tau} must be in [0, 1] (a fraction of high-res blocks)")
    return tau


class Policy(nn.Module):
    """Base class: ``policy(image, grid_shape) -> PolicyOutput``.

    Subclasses implement :meth:`decide`; :meth:`forward` validates the arguments first.
    ``macs(image_hw)`` gives the policy network's multiply-accumulates per image (conv and
    linear layers only, as in the paper's GMACs), 0 for policies without a network.
    """

    #: name under which :func:`create_policy` builds this policy
    name: str = ""

    def forward(self, image: Tensor, grid_shape) -> PolicyOutput:
        if not isinstance(image, Tensor) or image.dim() != 4:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"image must be a tensor [N, C, H, W], got {shape}")
        gh, gw = _grid_shape(grid_shape)
        return self.decide(image, (gh, gw))

    def decide(self, image: Tensor, grid_shape: tuple[int, int]) -> PolicyOutput:
        raise NotImplementedError

    def macs(self, image_hw) -> int:
        """Multiply-accumulates of the policy network for one image of ``(H, W)`` pixels."""
        return 0


def _grid_shape(grid_shape) -> tuple[int, int]:
    try:
        gh, gw = (int(v) for v in grid_shape)
    except (TypeError, ValueError):
        raise ValueError(f"grid_shape must be (GH, GW), got {grid_shape!r}") from None
    if gh < 1 or gw < 1:
        raise ValueError(f"grid_shape {(gh, gw)} must be positive")
    return gh, gw


def block_side(image: Tensor, grid_shape: tuple[int, int], what: str) -> int:
    """Side of the square blocks that tile ``image`` into ``grid_shape``; raises otherwise."""
    H, W = image.shape[-2:]
    gh, gw = grid_shape
    if H % gh or W % gw or H // gh != W // gw:
        raise ValueError(
            f"{what}: image {H}x{W} does not split into a {gh}x{gw} grid of square blocks "
            f"(block side {H / gh:g} x {W / gw:g})"
        )
    return H // gh


POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str):
    """Class decorator: make the policy available as ``create_policy(name, ...)``."""

    def deco(cls):
        cls.name = name
        POLICIES[name] = cls
        return cls

    return deco


def create_policy(name: str, **kwargs) -> Policy:
    """Build a policy by name: ``all_hr``, ``all_lr``, ``fixed``, ``random``, ``heuristic``,
    ``learned``; keyword arguments go to its constructor.

    Example:
        >>> create_policy("random", tau=0.4, seed=0)(torch.zeros(2, 3, 256, 512), (2, 4)).mask
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return cls(**kwargs)


def _empty_like_grid(image: Tensor, grid_shape, value: bool) -> Tensor:
    return torch.full((image.shape[0], *grid_shape), value, dtype=torch.bool, device=image.device)
