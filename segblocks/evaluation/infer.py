"""Inference on image files: colour segmentation and block-decision overlay per image.

:func:`infer` reads an image or every image of a folder (any format Pillow reads: PNG, JPEG,
WebP, TIFF, BMP, ...; other files are listed as skipped), runs the model at the image's own
size (a :class:`~segblocks.models.segblocks_model.SegBlocksModel` pads to whole blocks itself
and crops the logits back) and writes, for an image ``NAME.ext``:

- ``NAME_seg.png``: the predicted classes coloured with ``palette``;
- ``NAME_hr.png``: the image with high-resolution blocks tinted and outlined (paper Fig. 9;
  a dense network counts as all high resolution);
- with ``class_names``, once: ``legend.csv`` (``id,name,r,g,b``).

Inputs are checked before anything runs: no images, an output folder that is a file, or two
inputs that would write the same output (``x.png`` and ``x.jpg``) raise
:class:`~segblocks.errors.InputError`. Images with 16 bits per channel are scaled to 8 bits
(with a note); grayscale, palette, RGBA and CMYK images are converted to RGB.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from .visualize import colorize, decision_overlay, save_png

__all__ = [
    "IMAGE_SUFFIXES",
    "image_suffixes",
    "infer",
    "list_images",
    "read_image",
    "write_legend",
]

#: the suffixes of the common formats (every format Pillow opens is accepted, see
#: :func:`image_suffixes`)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_suffixes() -> frozenset[str]:
    """File suffixes of the image formats this Pillow can open (lower case, with the dot)."""
    from PIL import Image

    Image.init()
    return frozenset(
        ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
    )


def _scan(inputs) -> tuple[list[Path], list[Path]]:
    """``(images, skipped)``: an image file -> ``[it]``; a folder -> its files with an image
    suffix (sorted by name) and the other files (not recursive)."""
    p = Path(inputs)
    if not p.exists():
        raise FileNotFoundError(f"input path {str(p)!r} does not exist")
    if not p.is_dir():
        return [p], []
    suffixes = image_suffixes()
    files = sorted(f for f in p.iterdir() if f.is_file())
    images = [f for f in files if f.suffix.lower() in suffixes]
    skipped = [f for f in files if f.suffix.lower() not in suffixes]
    return images, skipped


def list_images(inputs) -> list[Path]:
    """An image file -> ``[it]``; a folder -> its image files (formats Pillow opens), sorted."""
    return _scan(inputs)[0]


def _png_bit_depth(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 25:
        return head[24]
    return None


def read_image_with_note(path) -> tuple[Tensor, str | None]:
    """:func:`read_image` and a note of how the image was converted to 8 bits, if it was:
    ``(image [3, H, W] float32 in [0, 1], note or None)`` (the CLI prints the note)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    note = None
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I;16") or mode in ("I", "F"):
                a = np.asarray(im).astype(np.float64)
                if mode.startswith("I;16") or (mode == "I" and a.min() >= 0 and a.max() <= 65535):
                    a8 = np.round(a / 257.0)
                    note = f"{path.name}: 16-bit image (mode {mode}) scaled to 8 bits"
                elif mode == "F" and a.min() >= 0 and a.max() <= 1:
                    a8 = np.round(a * 255.0)
                    note = f"{path.name}: floating-point image (values 0-1) scaled to 8 bits"
                else:
                    lo, hi = float(a.min()), float(a.max())
                    a8 = np.round((a - lo) / max(hi - lo, 1e-12) * 255.0)
                    note = (
                        f"{path.name}: {mode} image with values {lo:g}..{hi:g} stretched to 8 bits"
                    )
                arr = np.repeat(np.clip(a8, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            else:
                bits = _png_bit_depth(path)
                if bits is None and getattr(im, "tag_v2", None) is not None:
                    bps = im.tag_v2.get(258)
                    bits = max(bps) if isinstance(bps, tuple) else bps
                if isinstance(bits, int) and bits > 8:
                    note = f"{path.name}: {bits}-bit image scaled to 8 bits per channel"
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read image {str(path)!r}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0), note


def read_image(path) -> Tensor:
    """Image file -> float32 ``[3, H, W]`` in [0, 1] (16-bit images scaled to 8 bits);
    :class:`~segblocks.errors.InputError` (a ``ValueError``) naming the file if it cannot be
    decoded."""
    return read_image_with_note(path)[0]


def _check_outputs(files: list[Path], out: Path) -> None:
    """Refuse two inputs writing one output, and outputs overwriting inputs."""
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    clash = [v for v in by_stem.values() if len(v) > 1]
    if clash:
        a, b = clash[0][:2]
        more = f" (and {len(clash) - 1} more name(s))" if len(clash) > 1 else ""
        raise InputError(
            f"{a.name} and {b.name} would both write {a.stem}_seg.png{more}; rename one of "
            "them or infer them into separate folders"
        )
    inputs = {f.resolve() for f in files}
    for f in files:
        for kind in ("seg", "hr"):
            target = (out / f"{f.stem}_{kind}.png").resolve()
            if target in inputs:
                raise InputError(
                    f"output {target} would overwrite an input image; write to another folder"
                )


def _check_creatable(out: Path) -> None:
    """Raise unless ``out`` exists as a writable folder or can be created (nothing is made)."""
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise InputError(f"cannot create output folder {out}: {p} is not a writable folder")


def write_legend(path, palette, class_names) -> Path:
    """``legend.csv``: ``id,name,r,g,b`` per class (black past the palette's end)."""
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "r", "g", "b"])
        for k, name in enumerate(class_names):
            r, g, b = (int(v) for v in pal[k]) if k < len(pal) else (0, 0, 0)
            w.writerow([k, name, r, g, b])
    return Path(path)


def infer(
    model: nn.Module,
    inputs,
    out_dir,
    *,
    normalize,
    palette,
    class_names=None,
    skip_bad: bool = False,
    device=None,
    report: Callable[[str], None] | None = None,
    budget=None,
) -> list[dict]:
    """Segment the image(s) at ``inputs`` and write ``<name>_seg.png`` / ``<name>_hr.png``.

    Args:
        model: a ``SegBlocksModel`` or a dense network returning logits ``[N, K, H, W]``.
        inputs: an image file or a folder of images (every format Pillow opens).
        out_dir: output folder (created).
        normalize: transform ``(image, label) -> (image, label)`` applied to the ``[0, 1]``
            image before the model (e.g. ``Normalize()``); ``None`` for none.
        palette: RGB triple per class for the segmentation image (e.g. from
            :func:`segblocks.data.palettes.palette_for`).
        class_names: names of the classes; writes ``legend.csv`` when given.
        skip_bad: report and skip unreadable images instead of raising.
        device: where to run (default: the model's device).
        report: called with notes (skipped files, 16-bit images scaled, ...); default
            ``warnings.warn``.
        budget: per-image budget of a SegBlocksModel (``0.4``, ``"2.1gmacs"``, ``"35ms"``,
            ...; see :mod:`segblocks.policies.budget`); ``None``: the policy decides.

    Returns:
        one dict per written image: ``input``, ``seg``, ``hr`` (paths), ``hr_fraction`` and
        ``note`` (or ``None``).

    Raises:
        FileNotFoundError: ``inputs`` does not exist.
        InputError (a ``ValueError``): no images at ``inputs``; ``out_dir`` is a file; two
            inputs would write the same outputs; an image cannot be read (its path is in the
            message), unless ``skip_bad``.
    """
    from segblocks.models.segblocks_model import SegBlocksModel

    def note(msg: str) -> None:
        if report is None:
            warnings.warn(msg, stacklevel=3)
        else:
            report(msg)

    files, skipped = _scan(inputs)
    if skipped:
        names = ", ".join(f.name for f in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        note(f"skipped {len(skipped)} file(s) that are not images Pillow reads: {names}")
    if not files:
        raise InputError(
            f"no images in {inputs} (formats Pillow reads, e.g. .png, .jpg, .webp, .tif); "
            "give an image file or a folder of images"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} is a file; give a folder path")
    _check_outputs(files, out)
    _check_creatable(out)

    def open_outputs() -> None:
        # only once an image was segmented: a run that reads no image writes nothing
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create output folder {out}: {e.strerror or e}") from None
        if class_names is not None:
            write_legend(out / "legend.csv", palette, class_names)

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
                image, msg = read_image_with_note(f)
            except InputError as e:
                if not skip_bad:
                    raise
                note(f"skipping {f}: {e}")
                continue
            if msg:
                note(msg)
            x = image
            if normalize is not None:
                label = torch.zeros(image.shape[-2:], dtype=torch.long)
                x, _ = normalize(x, label)
            with torch.inference_mode():
                xin = x.unsqueeze(0).to(device)
                y = model(xin) if budget is None else model(xin, budget=budget)
            if isinstance(model, SegBlocksModel):
                logits, grid = y.logits, y.grid[0].cpu()
                bs = model.block_size
            else:
                logits = y if isinstance(y, Tensor) else y.logits
                grid, bs = torch.ones(1, 1, dtype=torch.bool), None
            pred = logits[0].argmax(0).cpu()
            if not results:
                open_outputs()
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
                    "note": msg,
                }
            )
    finally:
        for m, t in was_training:
            m.training = t
    return results
