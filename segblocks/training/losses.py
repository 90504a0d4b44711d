"""Training losses: the task criterion and the SegBlocks hybrid REINFORCE loss (paper Eqs. 5-13).

The policy is trained with REINFORCE on each block separately (Eq. 12), with the reward

    R_b = R_b,task + gamma * R_b,complexity                                    (Eq. 5)
    R_b,task       = +(L_b - L_img)   if a_b = HR, -(L_b - L_img) if LR         (Eq. 9)
    R_b,complexity = -(sigma - tau)   if a_b = HR, +(sigma - tau) if LR         (Eq. 7)

where ``L_b`` is the mean per-pixel task loss inside block b, ``L_img`` the mean over the image,
``sigma`` the image's HR fraction (Eq. 6) and ``tau`` the target. The hybrid loss is

    L = L_task + beta / N * sum_n sum_b ( -R_b * log p(a_b) )                   (Eq. 13)

Rewards are constants for the gradient (detached). Per-block losses always use the plain
per-pixel cross-entropy, also when the task loss is the bootstrapped one: the bootstrapped loss
keeps only the hardest pixels of the whole batch and has no per-block meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bootstrapped_cross_entropy",
    "block_mean",
    "policy_rewards",
    "HybridLoss",
    "HybridLossOutput",
]


def bootstrapped_cross_entropy(
    logits: Tensor, target: Tensor, k: int = 4096, threshold: float = 0.3, ignore_index=255
) -> Tensor:
    """Mean cross-entropy of the hardest pixels (SwiftNet / SegBlocks EfficientNet recipe).

    All pixels whose loss exceeds ``threshold`` when there are more than ``k`` of them,
    otherwise the ``k`` largest losses. ``logits [N, K, H, W]``, ``target [N, H, W]``.
    """
    pix = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    pix = pix[target.flatten() != ignore_index]
    if pix.numel() == 0:
        return logits.sum() * 0.0
    hard = pix[pix > threshold]
    if hard.numel() > k:
        return hard.mean()
    return torch.topk(pix, min(k, pix.numel())).values.mean()


def block_mean(
    values: Tensor, valid: Tensor, grid_shape: tuple[int, int], block_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-block and per-image means of ``values [N, H, W]`` over ``valid`` pixels.

    Returns ``(block [N, GH, GW], image [N])``. A block without valid pixels gets its image's
    mean (so its task reward is 0); an image without valid pixels gets 0. When the map was
    cropped from a padded input (``SegBlocksModel`` pads to the block size), pass
    ``block_size``: the missing border counts as invalid.
    """
    N, H, W = values.shape
    gh, gw = grid_shape
    if block_size is not None and (H, W) != (gh * block_size, gw * block_size):
        if H > gh * block_size or W > gw * block_size:
            raise ValueError(f"a {H}x{W} map is larger than {gh}x{gw} blocks of {block_size}")
        pad = (0, gw * block_size - W, 0, gh * block_size - H)
        values, valid = F.pad(values, pad), F.pad(valid, pad)
        H, W = values.shape[-2:]
    if H % gh or W % gw:
        raise ValueError(
            f"a {H}x{W} map does not split into a {gh}x{gw} block grid; if the input was "
            "padded to the block size, pass block_size"
        )
    v = (values * valid).view(N, gh, H // gh, gw, W // gw)
    c = valid.to(values.dtype).view(N, gh, H // gh, gw, W // gw)
    s_blk, n_blk = v.sum((2, 4)), c.sum((2, 4))
    image = s_blk.sum((1, 2)) / n_blk.sum((1, 2)).clamp_min(1)
    block = torch.where(n_blk > 0, s_blk / n_blk.clamp_min(1), image[:, None, None])
    return block, image


def policy_rewards(
    block_loss: Tensor, image_loss: Tensor, actions: Tensor, tau: float, gamma: float = 10.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-block rewards ``(total, task, complexity)``, each ``[N, GH, GW]`` (Eqs. 5, 7, 9).

    Args:
        block_loss: ``[N, GH, GW]`` mean task loss per block.
        image_loss: ``[N]`` mean task loss per image.
        actions: ``[N, GH, GW]`` bool, ``True`` = the block was processed at high resolution.
        tau: target HR fraction; gamma: weight of the complexity reward (paper: 10).
    """
    sign = actions.to(block_loss.dtype) * 2 - 1  # +1 for HR, -1 for LR
    sigma = actions.flatten(1).to(block_loss.dtype).mean(1)  # Eq. 6, per image
    task = sign * (block_loss - image_loss[:, None, None])
    complexity = -sign * (sigma - tau)[:, None, None]
    return (task + gamma * complexity).detach(), task.detach(), complexity.detach()


@dataclass
class HybridLossOutput:
    loss: Tensor  # L_task + beta * policy term (scalar)
    task_loss: Tensor  # scalar
    policy_loss: Tensor  # scalar, already multiplied by beta (0 without a learned policy)
    reward: Tensor  # [N, GH, GW] total reward per block (detached)
    hr_fraction: Tensor  # [N]


class HybridLoss(torch.nn.Module):
    """Eq. 13: task loss plus the per-block REINFORCE term for the policy.

    Args:
        tau: target fraction of HR blocks; gamma: complexity reward weight (10);
        beta: policy term weight (4); criterion: ``"ce"`` or ``"bootstrap"`` (hardest pixels,
        ``k=4096``, ``threshold=0.3``); ignore_index: label to ignore (255).

    Call with ``logits [N, K, H, W]``, ``target [N, H, W]`` and the model's ``SegBlocksOutput``
    (or anything with ``grid`` and ``log_probs``); with ``log_probs=None`` (fixed policies) the
    policy term is 0.
    """

    def __init__(
        self,
        tau: float,
        gamma: float = 10.0,
        beta: float = 4.0,
        criterion: str = "ce",
        ignore_index: int = 255,
        bootstrap_k: int = 4096,
        bootstrap_threshold: float = 0.3,
        block_size: int | None = None,
    ):
        super().__init__()
        self.block_size = block_size
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau {tau} must be a fraction in [0, 1]")
        if criterion not in ("ce", "bootstrap"):
            raise ValueError(f"criterion {criterion!r} must be 'ce' or 'bootstrap'")
        self.tau, self.gamma, self.beta = tau, gamma, beta
        self.criterion, self.ignore_index = criterion, ignore_index
        self.bootstrap_k, self.bootstrap_threshold = bootstrap_k, bootstrap_threshold

    def forward(self, logits: Tensor, target: Tensor, out) -> HybridLossOutput:
        if logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in size"
            )
        valid = target != self.ignore_index
        pix = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        if self.criterion == "bootstrap":
            task = bootstrapped_cross_entropy(
                logits, target, self.bootstrap_k, self.bootstrap_threshold, self.ignore_index
            )
        else:
            task = pix.sum() / valid.sum().clamp_min(1)
        grid = out.grid
        hr_fraction = grid.flatten(1).float().mean(1)
        log_probs = getattr(out, "log_probs", None)
        if log_probs is None:
            zero = task.new_zeros(())
            no_reward = torch.zeros_like(grid, dtype=task.dtype)
            return HybridLossOutput(task, task, zero, no_reward, hr_fraction)
        block_loss, image_loss = block_mean(
            pix.detach(), valid, tuple(grid.shape[-2:]), self.block_size
        )
        reward, _, _ = policy_rewards(block_loss, image_loss, grid, self.tau, self.gamma)
        N = grid.shape[0]
        policy = self.beta / N * (-reward * log_probs).sum()
        return HybridLossOutput(task + policy, task, policy, reward, hr_fraction)
