"""Policies without a network: all-HR, all-LR, a fixed mask, random, and the ECCVW heuristic."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    Policy,
    PolicyConfigError,
    PolicyOutput,
    block_side,
    check_tau,
    full_grid,
    num_hr_blocks,
    register_policy,
)
from .masks import top_k_mask

__all__ = ["Dense", "AllHR", "AllLR", "FixedMask", "RandomPolicy", "HeuristicPolicy"]


@register_policy("all_hr")
class AllHR(Policy):
    """Every block at high resolution (block execution then equals the dense network)."""

    def decide(self, image, grid_shape):
        mask = full_grid(image, grid_shape, True)
        return PolicyOutput.from_mask(mask, probs=mask.float())


@register_policy("dense")
class Dense(Policy):
    """Not a block decision but the static baseline's execution mode: with it
    (``runs_blocks = False``), :class:`~segblocks.models.segblocks_model.SegBlocksModel` runs
    the plain network on the whole (padded) image, resized by ``scale`` first, so that static
    and dynamic models share the padding, cropping, training and evaluation code.

    Its mask is all-HR (every pixel is processed, at the network's input scale); ``scale < 1``
    gives the static reduced-resolution network: the image is resized by ``scale`` (bilinear,
    antialiased), the network runs on it and its logits are upsampled back, so it trains and
    evaluates on the same full-resolution labels as every other model.

    Args:
        scale: input resize factor in (0, 2] (1 = full resolution).
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        scale = float(scale)
        if not 0.0 < scale <= 2.0:
            raise ValueError(f"dense policy scale {scale:g} must be in (0, 2]; 1 = full resolution")
        self.scale = scale

    runs_blocks = False
    decide = AllHR.decide  # every pixel is processed (at the network's input scale)

    def scaled_size(self, h: int, w: int) -> tuple[int, int]:
        """The network's input size for a ``h x w`` (padded) image."""
        return max(1, round(h * self.scale)), max(1, round(w * self.scale))

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


@register_policy("all_lr")
class AllLR(Policy):
    """Every block at low resolution (the dense network on the 2x average-pooled image)."""

    def decide(self, image, grid_shape):
        mask = full_grid(image, grid_shape, False)
        return PolicyOutput.from_mask(mask, probs=mask.float())


@register_policy("fixed")
class FixedMask(Policy):
    """A given mask: ``[GH, GW]`` (same for every image) or ``[N, GH, GW]`` (one per image).

    A ``[1, GH, GW]`` mask is broadcast over the batch like a ``[GH, GW]`` one.
    """

    def __init__(self, mask):
        super().__init__()
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool:
            if m.is_floating_point() or m.is_complex():
                raise ValueError(
                    f"mask has dtype {m.dtype}; give a bool (or 0/1 integer) mask, e.g. probs > 0.5"
                )
            if ((m != 0) & (m != 1)).any():
                raise ValueError("an integer mask must hold only 0 and 1")
            m = m.bool()
        if m.dim() == 2:
            m = m.unsqueeze(0)
        if m.dim() != 3 or min(m.shape) < 1:
            raise ValueError(f"mask has shape {tuple(m.shape)}; expected [GH, GW] or [N, GH, GW]")
        self.register_buffer("mask", m.clone(), persistent=False)

    @classmethod
    def config_kwargs(cls, options=None, *, tau=None, block_size=None) -> dict:
        """``options``, which must hold the ``mask`` (nothing is filled in)."""
        kw = dict(options or {})
        if "mask" not in kw:
            raise PolicyConfigError(
                cls.name,
                None,
                kw,
                "needs a mask for policy fixed",
                "e.g. policy_kwargs.mask=[[1, 0]]",
            )
        return kw

    def decide(self, image, grid_shape):
        m = self.mask
        N = image.shape[0]
        if tuple(m.shape[1:]) != tuple(grid_shape):
            raise ValueError(
                f"FixedMask: mask grid {tuple(m.shape[1:])} (mask shape {tuple(m.shape)}) does "
                f"not match the requested grid {tuple(grid_shape)}"
            )
        if m.shape[0] not in (1, N):
            raise ValueError(
                f"FixedMask: mask shape {tuple(m.shape)} holds {m.shape[0]} masks but the batch "
                f"has {N} images (image shape {tuple(image.shape)}); give one mask or one per image"
            )
        mask = m.to(image.device).expand(N, *grid_shape).clone()
        return PolicyOutput.from_mask(mask, probs=mask.float())

    def extra_repr(self) -> str:
        m = self.mask
        return f"shape={tuple(m.shape)}, hr={int(m.sum())}/{m.numel()}"


@register_policy("random")
class RandomPolicy(Policy):
    """Exactly ``num_hr_blocks(tau, GH*GW)`` high-res blocks per image, uniformly at random.

    Args:
        tau: target fraction of high-res blocks, in ``[0, 1]``.
        seed: with a seed, masks come from the policy's own ``torch.Generator`` (a fixed
            sequence of masks, independent of the global RNG); without, from the global RNG.
    """

    def __init__(self, tau: float, seed: int | None = None):
        super().__init__()
        self.tau = check_tau(tau)
        self.seed = seed
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def config_kwargs(cls, options=None, *, tau=None, block_size=None) -> dict:
        """``options`` with the run's ``tau`` filled in unless they set ``tau``."""
        kw = dict(options or {})
        if tau is not None and "tau" not in kw:
            kw["tau"] = tau
        return kw

    def decide(self, image, grid_shape):
        N = image.shape[0]
        B = grid_shape[0] * grid_shape[1]
        k = num_hr_blocks(self.tau, B)
        # Random keys on the CPU (the generator's device); the k smallest keys are HR.
        keys = torch.rand(N, B, generator=self.generator)
        scores = (-keys).view(N, *grid_shape)  # the k smallest keys rank first
        mask = top_k_mask(scores, k).to(image.device)
        probs = torch.full(mask.shape, k / B, device=image.device, dtype=torch.float32)
        return PolicyOutput.from_mask(mask, probs=probs, scores=scores.to(image.device))

    def extra_repr(self) -> str:
        return f"tau={self.tau}, seed={self.seed}"


@register_policy("heuristic")
class HeuristicPolicy(Policy):
    """The heuristic of the SegBlocks short paper (ECCVW, Eq. 1).

    Per block ``b`` the complexity is the mean absolute difference between the block and its
    down- and re-upsampled version::

        C_b = mean |I_b - nn_upsample(avg_pool_2x2(I_b))|

    averaged over channels and pixels of the (normalised) image, i.e. the detail that
    low-resolution processing of the block would lose. A block is high-res where
    ``C_b > threshold``, or, with ``tau``, the ``num_hr_blocks(tau, B)`` blocks of largest
    ``C_b`` in each image are (:func:`~segblocks.policies.masks.top_k_mask`; ties: the lower
    block index first). Exactly one of ``threshold`` / ``tau`` must be given; the threshold is
    in units of the normalised image.
    """

    def __init__(self, threshold: float | None = None, tau: float | None = None):
        super().__init__()
        if (threshold is None) == (tau is None):
            raise ValueError(
                "HeuristicPolicy needs exactly one of threshold= (C_b above which a block is "
                f"high-res) or tau= (fraction of high-res blocks); got threshold={threshold!r}, "
                f"tau={tau!r}"
            )
        self.threshold = None if threshold is None else float(threshold)
        self.tau = None if tau is None else check_tau(tau)

    @classmethod
    def config_kwargs(cls, options=None, *, tau=None, block_size=None) -> dict:
        """``options`` with the run's ``tau`` filled in unless they set ``tau`` or
        ``threshold``; setting both (not ``None``) is an error."""
        kw = dict(options or {})
        if kw.get("tau") is not None and kw.get("threshold") is not None:
            raise PolicyConfigError(cls.name, None, kw, "sets both tau and threshold", "keep one")
        if tau is not None and "tau" not in kw and "threshold" not in kw:
            kw["tau"] = tau
        return kw

    @staticmethod
    def complexity(image: Tensor, grid_shape) -> Tensor:
        """``C_b`` per block: ``[N, GH, GW]`` (float32 or the image's float dtype)."""
        s = block_side(image, grid_shape, "HeuristicPolicy")
        if s % 2:
            raise ValueError(f"HeuristicPolicy: block side {s} must be even (2x2 pooling)")
        x = image if image.is_floating_point() else image.float()
        low = F.avg_pool2d(x, 2)
        up = low.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        err = (x - up).abs().mean(1, keepdim=True)  # [N, 1, H, W]
        return F.avg_pool2d(err, s).squeeze(1)

    def decide(self, image, grid_shape):
        with torch.no_grad():
            c = self.complexity(image, grid_shape)
        if self.threshold is not None:
            mask = c > self.threshold
        else:
            mask = top_k_mask(c, num_hr_blocks(self.tau, grid_shape[0] * grid_shape[1]))
        return PolicyOutput.from_mask(mask, scores=c)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}" if self.tau is None else f"tau={self.tau}"
