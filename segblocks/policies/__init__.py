"""Block policies: which blocks of each image run at high resolution (SegBlocks section 3.1).

Every policy is an ``nn.Module`` called as ``policy(image, (GH, GW)) -> PolicyOutput``:

- ``dense``: :class:`Dense`, no blocks: the plain network (optionally on a resized image);
- ``all_hr`` / ``all_lr``: :class:`AllHR`, :class:`AllLR`;
- ``fixed``: :class:`FixedMask`, a given mask;
- ``random``: :class:`RandomPolicy`, exactly ``round(tau * B)`` random HR blocks per image;
- ``heuristic``: :class:`HeuristicPolicy`, the ECCVW Eq. 1 detail criterion;
- ``learned``: :class:`LearnedPolicy`, the policy network trained with REINFORCE.

Build one by name with :func:`create_policy`.
"""

from .base import POLICIES, Policy, PolicyOutput, create_policy, num_hr_blocks, register_policy
from .learned import LearnedPolicy, conv_stack_macs
from .simple import AllHR, AllLR, Dense, FixedMask, HeuristicPolicy, RandomPolicy

__all__ = [
    "Policy",
    "PolicyOutput",
    "POLICIES",
    "create_policy",
    "register_policy",
    "num_hr_blocks",
    "conv_stack_macs",
    "Dense",
    "AllHR",
    "AllLR",
    "FixedMask",
    "RandomPolicy",
    "HeuristicPolicy",
    "LearnedPolicy",
]
