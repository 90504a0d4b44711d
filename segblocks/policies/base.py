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

from ..errors import ConfigError, did_you_mean, short_repr

__all__ = [
    "Policy",
    "PolicyOutput",
    "PolicyConfigError",
    "POLICIES",
    "create_policy",
    "policy_from_config",
    "policy_kwargs_from_config",
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


class PolicyConfigError(ConfigError):
    """Policy options that contradict the run they are configured for (raised by
    :meth:`Policy.config_kwargs`).

    Attributes:
        key: the option at fault, or ``None`` when it is the options as a whole.
        value: its value (the options dict when ``key`` is ``None``).
        why: what is wrong; fix: what to do (may be empty).

    :mod:`segblocks.training.config` reports it as config key ``policy_kwargs.KEY``.
    """

    def __init__(self, policy: str, key: str | None, value, why: str, fix: str = ""):
        self.policy, self.key, self.value, self.why, self.fix = policy, key, value, why, fix
        what = f"option {key}={short_repr(value)}" if key else f"options {short_repr(value)}"
        super().__init__(f"policy {policy}: {what} {why}" + (f"; {fix}" if fix else ""))


class Policy(nn.Module):
    """Base class: ``policy(image, grid_shape) -> PolicyOutput``.

    Subclasses implement :meth:`decide`; :meth:`forward` validates the arguments first.
    ``macs(image_hw)`` gives the policy network's multiply-accumulates per image (conv and
    linear layers only, as in the paper's GMACs), 0 for policies without a network.
    :meth:`from_config` builds the policy of a run from its options, the run's target
    fraction ``tau`` and its block size.
    """

    #: name under which :func:`create_policy` builds this policy
    name: str = ""
    #: ``False`` for a policy that selects the dense execution mode of a SegBlocks model (the
    #: plain network on the whole image, :class:`~segblocks.policies.Dense`) instead of
    #: deciding blocks
    runs_blocks: bool = True

    @classmethod
    def config_kwargs(
        cls, options: dict | None = None, *, tau: float | None = None, block_size: int | None = None
    ) -> dict:
        """Constructor arguments of this policy in a run with target HR fraction ``tau`` and
        block side ``block_size``: a copy of ``options`` (a config's ``policy_kwargs``) with
        the policy's defaults filled in. The base class fills in nothing; policies that take
        the run's ``tau`` or ``block_size`` override it. ``None`` fills in nothing.

        Raises:
            PolicyConfigError: the options contradict the run (e.g. another block size).
        """
        return dict(options or {})

    @classmethod
    def from_config(
        cls, options: dict | None = None, *, tau: float | None = None, block_size: int | None = None
    ) -> Policy:
        """The policy of a run: ``cls(**cls.config_kwargs(options, tau=..., block_size=...))``.

        ``options`` is a dict, not ``**kwargs``, because a policy's own ``tau`` /
        ``block_size`` options (which win) would collide with the run's.
        """
        return cls(**cls.config_kwargs(options, tau=tau, block_size=block_size))

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


def _policy_class(name: str) -> type[Policy]:
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown policy {name!r}{did_you_mean(name, POLICIES)}; "
            f"choose one of {sorted(POLICIES)}"
        )
    return cls


def create_policy(name: str, **kwargs) -> Policy:
    """Build a policy by name: ``all_hr``, ``all_lr``, ``fixed``, ``random``, ``heuristic``,
    ``learned``; keyword arguments go to its constructor.

    Example:
        >>> create_policy("random", tau=0.4, seed=0)(torch.zeros(2, 3, 256, 512), (2, 4)).mask
    """
    return _policy_class(name)(**kwargs)


def policy_kwargs_from_config(
    name: str,
    options: dict | None = None,
    *,
    tau: float | None = None,
    block_size: int | None = None,
) -> dict:
    """Constructor arguments of policy ``name`` in a run (:meth:`Policy.config_kwargs`): e.g.
    ``random`` / ``heuristic`` get ``tau`` unless ``options`` has ``tau`` (or ``threshold``),
    ``learned`` gets ``block_size``.

    For ``SegBlocksModel(net, name, block_size, **kwargs)`` leave ``block_size=None``: the model
    fills in ``learned``'s block size, and a ``block_size`` key would collide with its own
    argument (or pass the policy itself, :func:`policy_from_config`).

    Example:
        >>> policy_kwargs_from_config("random", {"seed": 0}, tau=0.4, block_size=128)
        {'seed': 0, 'tau': 0.4}
    """
    return _policy_class(name).config_kwargs(options, tau=tau, block_size=block_size)


def policy_from_config(
    name: str,
    options: dict | None = None,
    *,
    tau: float | None = None,
    block_size: int | None = None,
) -> Policy:
    """Policy ``name`` of a run with target fraction ``tau`` and block side ``block_size``
    (:meth:`Policy.from_config`); ``options`` are the config's ``policy_kwargs``."""
    return _policy_class(name).from_config(options, tau=tau, block_size=block_size)


def full_grid(image: Tensor, grid_shape, value: bool) -> Tensor:
    """A mask ``[N, GH, GW]`` (bool, on ``image``'s device) of one ``value`` for the batch of
    ``image: [N, C, H, W]``: the decisions of the all-HR / all-LR policies."""
    return torch.full((image.shape[0], *grid_shape), value, dtype=torch.bool, device=image.device)
