"""Small helpers shared by the block tests."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    nb = torch.linalg.norm(b)
    nd = torch.linalg.norm(a - b)
    if nb == 0:
        return float(nd)
    return float(nd / nb)


def make_mask(kind: str, N: int, GH: int, GW: int, gen: torch.Generator) -> torch.Tensor:
    """``all_hr`` / ``all_lr`` / ``mixed`` (random, with at least one HR and one LR cell
    whenever the batch has two or more cells)."""
    if kind == "all_hr":
        return torch.ones(N, GH, GW, dtype=torch.bool)
    if kind == "all_lr":
        return torch.zeros(N, GH, GW, dtype=torch.bool)
    assert kind == "mixed", kind
    m = torch.rand(N, GH, GW, generator=gen) > 0.5
    flat = m.view(-1)
    if flat.numel() >= 2:
        if flat.all():
            flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = False
        if not flat.any():
            flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = True
    return m


def checkerboard(N: int, GH: int, GW: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(GH), torch.arange(GW), indexing="ij")
    return ((yy + xx) % 2 == 0).expand(N, GH, GW).clone()
