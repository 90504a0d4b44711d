"""The two ways the package makes a block mask with a given number of HR blocks.

- :func:`random_mask`: ``k`` blocks per image at random positions (benchmarks, latency
  calibration, the demo);
- :func:`top_k_mask`: the ``k`` highest-scoring blocks per image (the heuristic and random
  policies, budgeted inference, exported programs).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["random_mask", "top_k_mask"]


def random_mask(
    n: int, grid_shape, k: int, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """``[n, GH, GW]`` bool mask with exactly ``k`` HR blocks per image at random positions.

    Image ``i`` gets the first ``k`` entries of ``torch.randperm(GH * GW, generator=generator)``
    (one permutation per image, in order, made on the CPU; ``generator=None`` uses the global
    RNG), so a seeded generator gives the same masks on every device. The mask is moved to
    ``device`` when given.
    """
    gh, gw = (int(v) for v in grid_shape)
    num_blocks = gh * gw
    if not 0 <= k <= num_blocks:
        raise ValueError(f"k={k} HR blocks must be in [0, {num_blocks}] for a {gh}x{gw} grid")
    mask = torch.zeros(n, num_blocks, dtype=torch.bool)
    for i in range(n):
        mask[i, torch.randperm(num_blocks, generator=generator)[:k]] = True
    mask = mask.view(n, gh, gw)
    return mask if device is None else mask.to(device)


def top_k_mask(scores: Tensor, k: int | Tensor) -> Tensor:
    """``[N, GH, GW]`` bool: the ``k`` highest-scoring blocks of each image (ties: the lower
    index first, so the result is deterministic). ``k`` is an int or an int tensor ``[N]`` (one
    count per image, as an exported program takes it)."""
    N = scores.shape[0]
    flat = scores.reshape(N, -1).float()
    if isinstance(k, Tensor):
        # each block's rank in its image's order, compared with that image's k
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        ranks = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, ranks)
        return (rank < k.view(-1, 1).to(rank.device)).view(scores.shape)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        mask.scatter_(1, order[:, :k], True)
    return mask.view(scores.shape)
