"""Figures of the paper: block decisions (Fig. 9), HR histogram (Fig. 8), mIoU vs GMACs (Fig. 7).

Arrays are ``uint8 [H, W, 3]`` RGB; all ``save_*`` functions write PNG files (matplotlib with
the non-interactive Agg backend, or Pillow for plain images) and return the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = [
    "to_numpy_image",
    "colorize",
    "decision_overlay",
    "segmentation_overlay",
    "save_png",
    "save_decision_figure",
    "save_hr_histogram",
    "save_miou_vs_gmacs",
    "save_miou_vs_cost",
]

HR_TINT = np.array([255, 40, 40], dtype=np.float32)  # red tint / outline of HR blocks


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_numpy_image(image) -> np.ndarray:
    """``[3, H, W]`` / ``[H, W, 3]`` float in [0, 1] or uint8 (tensor or array) -> uint8 HWC."""
    a = _np(image)
    if a.ndim != 3:
        raise ValueError(f"image must be [3, H, W] or [H, W, 3], got shape {a.shape}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def colorize(label, palette) -> np.ndarray:
    """Class ids ``[H, W]`` -> RGB ``uint8 [H, W, 3]``; ids outside the palette (e.g. 255) black."""
    lab = _np(label).astype(np.int64)
    if lab.ndim != 2:
        raise ValueError(f"label must be [H, W], got shape {lab.shape}")
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((len(pal) + 1, 3), dtype=np.uint8)  # last entry: black for unknown ids
    lut[: len(pal)] = pal
    lab = np.where((lab >= 0) & (lab < len(pal)), lab, len(pal))
    return lut[lab]


def decision_overlay(
    image, grid, alpha: float = 0.35, outline: int = 2, block_size: int | None = None
) -> np.ndarray:
    """Image with high-resolution blocks tinted red and outlined (paper Fig. 9).

    Args:
        image: ``[3, H, W]`` / ``[H, W, 3]`` in [0, 1] (or uint8).
        grid: ``[GH, GW]`` bool, ``True`` = HR block (a leading batch dim of 1 is dropped).
        alpha: tint strength inside HR blocks.
        outline: width in pixels of the HR block outlines (0: none).
        block_size: block side in pixels (default ``max(ceil(H / GH), ceil(W / GW))``; give it
            when the model padded the image to whole blocks).

    Returns:
        ``uint8 [H, W, 3]``; low-resolution blocks are slightly darkened.
    """
    img = to_numpy_image(image).astype(np.float32)
    H, W = img.shape[:2]
    g, bs = _grid_and_block(grid, H, W, block_size)
    pix = np.repeat(np.repeat(g, bs, 0), bs, 1)[:H, :W]
    out = img.copy()
    out[pix] = (1 - alpha) * out[pix] + alpha * HR_TINT
    out[~pix] *= 0.75
    _outline_blocks(out, g, bs, outline, HR_TINT)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _grid_and_block(grid, H: int, W: int, block_size: int | None) -> tuple[np.ndarray, int]:
    g = _np(grid).astype(bool)
    if g.ndim == 3 and g.shape[0] == 1:
        g = g[0]
    if g.ndim != 2:
        raise ValueError(f"grid must be [GH, GW], got shape {g.shape}")
    gh, gw = g.shape
    return g, int(block_size) if block_size else max(-(-H // gh), -(-W // gw))


def _outline_blocks(out: np.ndarray, g: np.ndarray, bs: int, width: int, colour) -> None:
    """Draw a ``width``-pixel outline in ``colour`` around the ``True`` blocks of ``g``
    (side ``bs``) into ``out [H, W, 3]`` (in place; blocks past the image are clipped)."""
    if width <= 0:
        return
    H, W = out.shape[:2]
    t = width
    for by, bx in zip(*np.nonzero(g), strict=True):
        y0, x0 = int(by) * bs, int(bx) * bs
        if y0 >= H or x0 >= W:
            continue
        y1, x1 = min(y0 + bs, H), min(x0 + bs, W)
        out[y0 : min(y0 + t, y1), x0:x1] = colour
        out[max(y1 - t, y0) : y1, x0:x1] = colour
        out[y0:y1, x0 : min(x0 + t, x1)] = colour
        out[y0:y1, max(x1 - t, x0) : x1] = colour


def segmentation_overlay(
    image,
    pred,
    palette,
    grid=None,
    alpha: float = 0.5,
    outline: int = 2,
    block_size: int | None = None,
    outline_colour=(255, 255, 255),
) -> np.ndarray:
    """The predicted classes' colours blended over the image, high-resolution blocks outlined
    (one frame of the overlay video of :func:`segblocks.evaluation.video.infer_stream`).

    Args:
        image: ``[3, H, W]`` / ``[H, W, 3]`` in [0, 1] (or uint8).
        pred: class ids ``[H, W]`` (coloured with :func:`colorize`; unknown ids black).
        palette: RGB triple per class.
        grid: ``[GH, GW]`` bool, ``True`` = HR block, or ``None`` for no outlines (a dense
            network).
        alpha: weight of the class colours (0: the image only, 1: the colours only).
        outline: width in pixels of the HR block outlines (0: none).
        block_size: block side in pixels (as in :func:`decision_overlay`).
        outline_colour: RGB of the outlines (white: stands out against every palette colour
            blended with the image).

    Returns:
        ``uint8 [H, W, 3]``.
    """
    img = to_numpy_image(image).astype(np.float32)
    seg = colorize(pred, palette).astype(np.float32)
    if seg.shape != img.shape:
        raise ValueError(f"pred {seg.shape[:2]} and image {img.shape[:2]} differ in size")
    out = (1 - alpha) * img + alpha * seg
    if grid is not None:
        g, bs = _grid_and_block(grid, *img.shape[:2], block_size)
        _outline_blocks(out, g, bs, outline, np.asarray(outline_colour, dtype=np.float32))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_png(path, array) -> Path:
    """Write a ``uint8 [H, W, 3]`` (or ``[H, W]``) array as PNG at its own size (Pillow)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    return path


def save_decision_figure(
    path, image, pred, grid, palette, title: str | None = None, block_size: int | None = None
) -> Path:
    """PNG with the block decisions over the image (left) and the predicted segmentation
    (right), in the style of paper Fig. 9."""
    plt = _plt()
    overlay = decision_overlay(image, grid, block_size=block_size)
    seg = colorize(pred, palette)
    g = _np(grid)
    frac = float(g.astype(bool).mean()) if g.size else 0.0
    H, W = overlay.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4.0, 4.0 * H / W + 0.6), dpi=100)
    axes[0].imshow(overlay)
    axes[0].set_title(f"HR blocks (red): {100 * frac:.0f} %", fontsize=9)
    axes[1].imshow(seg)
    axes[1].set_title("prediction", fontsize=9)
    for a in axes:
        a.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def save_hr_histogram(path, hr_fractions, bins: int = 10, title: str | None = None) -> Path:
    """Histogram of the per-image percentage of HR blocks (paper Fig. 8).

    ``hr_fractions`` are fractions in [0, 1] (as in
    :class:`~segblocks.evaluation.evaluate.EvalResult`).
    """
    plt = _plt()
    pct = 100 * np.asarray(list(hr_fractions), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(pct, bins=bins, range=(0, 100), color="tab:blue", edgecolor="black")
    if pct.size:
        ax.axvline(pct.mean(), color="tab:red", ls="--", label=f"mean {pct.mean():.1f} %")
        ax.legend(fontsize=8)
    ax.set_xlabel("high-resolution blocks per image (%)")
    ax.set_ylabel("images")
    ax.set_xlim(0, 100)
    ax.set_title(title or "Distribution of HR blocks per image", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def save_miou_vs_gmacs(path, runs, title: str | None = None) -> Path:
    """mIoU versus GMACs per image (paper Fig. 7).

    ``runs``: list of dicts with ``name``, ``gmacs`` and ``miou`` (0..1 or percent; values
    <= 1 are shown as percent). Runs with the same ``group`` key (default: the name up to the
    first space or ``@``) are joined by a line, sorted by GMACs.
    """
    return save_miou_vs_cost(
        path, runs, "gmacs", "GMACs per image", title or "mIoU vs. computational cost"
    )


def save_miou_vs_cost(path, runs, x_key: str, x_label: str, title: str | None = None) -> Path:
    """mIoU versus any cost ``run[x_key]`` (e.g. ``"latency_ms"``), drawn as
    :func:`save_miou_vs_gmacs` draws GMACs; runs without a finite cost are left out."""
    plt = _plt()
    runs = list(runs)
    for r in runs:
        missing = {"name", x_key, "miou"} - set(r)
        if missing:
            raise ValueError(f"run {r!r} lacks {sorted(missing)}")
    runs = [r for r in runs if r[x_key] is not None and np.isfinite(float(r[x_key]))]
    scale = 100.0 if runs and all(float(r["miou"]) <= 1.0 for r in runs) else 1.0
    groups: dict[str, list] = {}
    for r in runs:
        key = r.get("group") or str(r["name"]).split(" ")[0].split("@")[0]
        groups.setdefault(key, []).append(r)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: float(r[x_key]))
        xs = [float(r[x_key]) for r in rs]
        ys = [scale * float(r["miou"]) for r in rs]
        ax.plot(xs, ys, marker="o", label=key)
        for r, x, y in zip(rs, xs, ys, strict=True):
            ax.annotate(
                str(r["name"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel(x_label)
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    ax.set_title(title or f"mIoU vs. {x_label}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def read_val_curve(log_csv) -> list[tuple[int, float]]:
    """``[(epoch, val mIoU in [0, 1]), ...]`` from a training run's ``log.csv`` (the rows that
    ``eval_every`` / ``eval_at_end`` validations wrote)."""
    import csv

    with open(log_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_miou")]
    return [(int(r["epoch"]), float(r["val_miou"])) for r in rows]


def save_training_curves(
    path, curves: dict, title: str | None = None, xlabel: str = "epoch"
) -> Path:
    """Val mIoU against epoch (paper Fig. 11): ``curves`` maps a label to ``[(epoch, mIoU),
    ...]`` (mIoU in [0, 1] or in %), e.g. from :func:`read_val_curve`."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    for label, points in curves.items():
        if not points:
            continue
        xs, ys = zip(*sorted(points), strict=True)
        scale = 100.0 if max(ys) <= 1.0 else 1.0
        ax.plot(xs, [scale * y for y in ys], marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val mIoU (%)")
    ax.grid(True, alpha=0.3)
    if any(curves.values()):
        ax.legend(fontsize=8)
    ax.set_title(title or "Validation mIoU during training", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
