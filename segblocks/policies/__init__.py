"""Block policies: which blocks of each image run at high resolution (SegBlocks section 3.1).

Every policy is an ``nn.Module`` called as ``policy(image, (GH, GW)) -> PolicyOutput``:

- ``dense``: :class:`Dense`, no blocks: the plain network (optionally on a resized image);
- ``all_hr`` / ``all_lr``: :class:`AllHR`, :class:`AllLR`;
- ``fixed``: :class:`FixedMask`, a given mask;
- ``random``: :class:`RandomPolicy`, exactly ``round(tau * B)`` random HR blocks per image;
- ``heuristic``: :class:`HeuristicPolicy`, the ECCVW Eq. 1 detail criterion;
- ``learned``: :class:`LearnedPolicy`, the policy network trained with REINFORCE.

Build one by name with :func:`create_policy`, or the policy of a run (its ``policy_kwargs``,
target fraction ``tau`` and block size) with :func:`policy_from_config`; each policy fills in
its own defaults (:meth:`Policy.config_kwargs`). :mod:`segblocks.policies.masks` makes masks
of ``k`` random or top-scoring blocks.
"""

from .base import (
    POLICIES,
    Policy,
    PolicyConfigError,
    PolicyOutput,
    create_policy,
    num_hr_blocks,
    policy_from_config,
    policy_kwargs_from_config,
    register_policy,
)
from .learned import LearnedPolicy, conv_stack_macs
from .masks import random_mask, top_k_mask
from .simple import AllHR, AllLR, Dense, FixedMask, HeuristicPolicy, RandomPolicy

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
    "random_mask",
    "top_k_mask",
    "conv_stack_macs",
    "Dense",
    "AllHR",
    "AllLR",
    "FixedMask",
    "RandomPolicy",
    "HeuristicPolicy",
    "LearnedPolicy",
]
