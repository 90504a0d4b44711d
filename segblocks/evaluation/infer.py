"""Inference on image files: colour segmentation and block-decision overlay per image.

:func:`infer` reads an image (PNG / JPEG) or every image of a folder, runs the model at the
image's own size (a :class:`~segblocks.models.segblocks_model.SegBlocksModel` pads to whole
blocks itself and crops the logits back) and writes, for an image ``NAME.ext``:

- ``NAME_seg.png``: the predicted classes coloured with ``palette``;
- ``NAME_hr.png``: the image with high-resolution blocks tinted and outlined (paper Fig. 9;
  a dense network counts as all high resolution).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .visualize import colorize, decision_overlay, save_png

__all__ = ["IMAGE_SUFFIXES", "infer", "list_images", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(inputs) -> list[Path]:
    """An image file -> ``[it]``; a folder -> its ``IMAGE_SUFFIXES`` files, sorted by name."""
    p = Path(inputs)
    if not p.exists():
        raise FileNotFoundError(f"input path {str(p)!r} does not exist")
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    return [p]


def read_image(path) -> Tensor:
    """RGB image file -> float32 ``[3, H, W]`` in [0, 1]; ``ValueError`` naming the file if it
    cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def infer(
    model: nn.Module,
    inputs,
    out_dir,
    *,
    normalize,
    palette,
    skip_bad: bool = False,
    device=None,
) -> list[dict]:
    """Segment the image(s) at ``inputs`` and write ``<name>_seg.png`` / ``<name>_hr.png``.

    Args:
        model: a ``SegBlocksModel`` or a dense network returning logits ``[N, K, H, W]``.
        inputs: an image file or a folder of images (``.png``, ``.jpg``, ``.jpeg``).
        out_dir: output folder (created).
        normalize: transform ``(image, label) -> (image, label)`` applied to the ``[0, 1]``
            image before the model (e.g. ``Normalize()``); ``None`` for none.
        palette: RGB triple per class for the segmentation image.
        skip_bad: warn about and skip unreadable images instead of raising.
        device: where to run (default: the model's device).

    Returns:
        one dict per written image: ``input``, ``seg``, ``hr`` (paths) and ``hr_fraction``.

    Raises:
        FileNotFoundError: ``inputs`` does not exist.
        ValueError: an image cannot be read (its path is in the message), unless ``skip_bad``.
    """
    from segblocks.models.segblocks_model import SegBlocksModel

    files = list_images(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    results = []
    try:
        for f in files:
            try:
                image = read_image(f)
            except ValueError as e:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping {f}: {e}", stacklevel=2)
                continue
            x = image
            if normalize is not None:
                label = torch.zeros(image.shape[-2:], dtype=torch.long)
                x, _ = normalize(x, label)
            with torch.inference_mode():
                y = model(x.unsqueeze(0).to(device))
            if isinstance(model, SegBlocksModel):
                logits, grid = y.logits, y.grid[0].cpu()
                bs = model.block_size
            else:
                logits = y if isinstance(y, Tensor) else y.logits
                grid, bs = torch.ones(1, 1, dtype=torch.bool), None
            pred = logits[0].argmax(0).cpu()
            seg_path = save_png(out / f"{f.stem}_seg.png", colorize(pred, palette))
            hr_path = save_png(
                out / f"{f.stem}_hr.png", decision_overlay(image, grid, block_size=bs)
            )
            results.append(
                {
                    "input": str(f),
                    "seg": str(seg_path),
                    "hr": str(hr_path),
                    "hr_fraction": float(grid.float().mean()),
                }
            )
    finally:
        for m, t in was_training:
            m.training = t
    return results
