"""Video and frame streams: segment every frame, write one overlay video and ``frames.csv``.

:func:`infer_stream` reads a video file (decoded with PyAV, ``pip install 'segblocks[video]'``)
or a folder of numbered frames (image files in natural order: ``frame_2`` before ``frame_10``)
one frame at a time, never the whole stream, runs the model on each frame at its own size (a
:class:`~segblocks.models.segblocks_model.SegBlocksModel` pads to whole blocks itself) and
writes into ``out_dir``:

- ``<input stem>_overlay.mp4``: every frame with the predicted classes' colours blended over
  it and the high-resolution blocks outlined
  (:func:`~segblocks.evaluation.visualize.segmentation_overlay`); H.264 (``libx264``) when
  PyAV's FFmpeg has it, else MPEG-4 Part 2; the input video's frame rate, or ``fps`` for a
  frame folder; an odd width or height is padded by one edge pixel (the encoders' 4:2:0
  chroma needs even sizes);
- ``frames.csv``: ``frame,latency_ms,hr_percent,gmacs`` per segmented frame (``frame``: the
  frame's 0-based position in the input, skipped frames included), plus
  ``over_budget_<unit>`` with a budget: the frame's cost minus the budget, in the budget's
  unit (``ms``: latency; ``gmacs``; ``percent``: HR percentage points for a fraction budget;
  ``blocks``), positive when the frame exceeded it;
- ``legend.csv`` with ``class_names`` (as :func:`~segblocks.evaluation.infer.infer`).

Latency is the wall-clock time of the model's forward alone (``time.perf_counter`` around it,
synchronised on CUDA; no decoding, drawing or encoding), after ``warmup`` untimed forwards
of the first frame. GMACs come from the model's own
accounting, cached per padded frame size: a SegBlocks model's MACs are affine in its number
of HR blocks (:meth:`~segblocks.models.segblocks_model.SegBlocksModel.mac_cost`, the policy
included), so a frame costs no second forward; a dense network counts as 100 % HR.

Bad inputs raise :class:`~segblocks.errors.InputError` naming the file before anything is
written: a file PyAV cannot open, a file without a video stream, an input without a single
decodable frame, an output folder that is a file or cannot be created. A frame that cannot be
decoded (a corrupt packet, an unreadable image in a folder) is skipped with a note and
counted in :attr:`StreamSummary.skipped`. ``out_dir`` is created only once the first frame has
been segmented.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .infer import image_suffixes, read_image_with_note, write_legend
from .visualize import segmentation_overlay

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoWriter",
    "StreamSummary",
    "infer_stream",
    "is_video",
    "list_frames",
    "natural_key",
]

#: file suffixes read as video (``segblocks infer`` without ``--stream``)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")

PYAV_HINT = "pip install 'segblocks[video]'"


def is_video(path) -> bool:
    """Whether ``path`` has a video suffix (:data:`VIDEO_SUFFIXES`, any case)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def natural_key(name: str) -> list:
    """Sort key that orders the numbers in a name by value: ``frame_2`` before ``frame_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frames(folder) -> tuple[list[Path], list[Path]]:
    """``(frames, others)``: the image files of ``folder`` (formats Pillow opens) in natural
    order, and its other files."""
    suffixes = image_suffixes()
    files = sorted((f for f in Path(folder).iterdir() if f.is_file()), key=lambda f: f.name)
    frames = sorted(
        (f for f in files if f.suffix.lower() in suffixes), key=lambda f: natural_key(f.name)
    )
    return frames, [f for f in files if f.suffix.lower() not in suffixes]


def _import_av(what: str):
    try:
        import av
    except ImportError:
        raise InputError(f"{what} needs PyAV: {PYAV_HINT}") from None
    return av


# --------------------------------------------------------------------------- frame sources
class _Frame(NamedTuple):
    index: int  # 0-based position in the input
    image: Tensor | None  # [3, H, W] float32 in [0, 1]; None: skipped
    note: str | None  # why it was skipped (or a note about the frame)
    lost: bool = True  # with image None: a frame of the input was skipped (else: just a note)


class _VideoSource:
    """Frames of a video file, decoded packet by packet (a packet that fails to decode is one
    skipped frame)."""

    def __init__(self, path: Path, av):
        self.path, self.av = path, av
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read video {str(path)!r}: {_av_message(e)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise InputError(f"{str(path)!r} has no video stream")
        self.stream = self.container.streams.video[0]
        # decode in the calling thread: FFmpeg's decoder threads would run beside the model
        self.stream.codec_context.thread_count = 1
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = Fraction(rate) if rate and rate > 0 else None
        self.total = int(self.stream.frames or 0) or None

    def __iter__(self) -> Iterator[_Frame]:
        av, name = self.av, self.path.name
        index = 0
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:  # the container itself is broken: nothing more to read
                msg = f"{name}: stopped reading at frame {index}, the rest is unreadable: {e}"
                yield _Frame(index, None, msg, lost=False)
                return
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                if packet.size:  # a flush packet that fails holds no frame of its own
                    msg = f"{name}: frame {index} cannot be decoded ({_av_message(e)}); skipped"
                    yield _Frame(index, None, msg)
                    index += 1
                continue
            for fr in frames:
                arr = fr.to_ndarray(format="rgb24")
                image = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
                yield _Frame(index, image, None)
                index += 1

    def close(self) -> None:
        self.container.close()


class _FolderSource:
    """Image files of a folder in natural order (an unreadable one is a skipped frame)."""

    def __init__(self, folder: Path, files: list[Path]):
        self.path, self.files = folder, files
        self.fps = None
        self.total = len(files)

    def __iter__(self) -> Iterator[_Frame]:
        for i, f in enumerate(self.files):
            try:
                image, msg = read_image_with_note(f)
            except InputError as e:
                yield _Frame(i, None, f"{e}; skipped")
                continue
            yield _Frame(i, image, msg)

    def close(self) -> None:
        pass


def _av_message(e: Exception) -> str:
    """PyAV's message without the file name it repeats (``[Errno N] text: 'path'``)."""
    text = getattr(e, "strerror", None) or str(e)
    return str(text).strip()


# --------------------------------------------------------------------------- the writer
def _encoder(av) -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - not in this FFmpeg build (av raises its own types)
            continue
        return name
    raise InputError("PyAV's FFmpeg has neither the libx264 nor the mpeg4 encoder")


class VideoWriter:
    """An mp4 (H.264 with ``libx264``, else MPEG-4 Part 2) written frame by frame.

    ``write(rgb)`` takes ``uint8 [height, width, 3]`` RGB; an odd width / height is padded by
    one edge pixel (4:2:0 chroma needs even sizes). ``close()`` flushes the encoder.
    ``av``: the PyAV module; ``fps``: a ``Fraction`` (or int)."""

    def __init__(self, av, path: Path, width: int, height: int, fps: Fraction, crf: int = 20):
        self.av, self.path = av, path
        self.codec = _encoder(av)
        self.width, self.height = width + width % 2, height + height % 2
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(self.codec, rate=fps)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        # Encode in the calling thread, frame by frame: libx264's default frame threads and
        # lookahead keep encoding in the background while the next frame's model runs, which
        # on a 2-core machine made the model ~1.4x slower than calibrated.
        self.stream.codec_context.thread_count = 1
        if self.codec == "libx264":
            self.stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        else:  # MPEG-4 Part 2's default 200 kb/s blurs the outlines
            self.stream.bit_rate = max(1_000_000, int(self.width * self.height * float(fps) / 4))
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if (h, w) != (self.height, self.width):
            rgb = np.pad(rgb, ((0, self.height - h), (0, self.width - w), (0, 0)), mode="edge")
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


# --------------------------------------------------------------------------- results
@dataclass
class StreamSummary:
    """What :func:`infer_stream` did.

    Attributes:
        source: the input (video file or frame folder).
        video: the overlay video written; ``csv``: ``frames.csv``.
        size: ``(width, height)`` of the frames (the video may be one pixel larger: even sizes).
        fps: frame rate of the overlay video; ``codec``: its encoder.
        frame_index: input position of each segmented frame.
        latency_ms, hr_percent, gmacs: per segmented frame.
        over: per segmented frame, the cost minus the budget in the budget's unit (``None``
            without a budget; see :attr:`over_unit`).
        budget: the :class:`~segblocks.policies.budget.Budget` or ``None``.
        skipped: frames that could not be decoded; ``resized``: frames of another size than
            the first, resized to it; ``wall_s``: the whole run (decode, model, encode).
    """

    source: str
    video: Path
    csv: Path
    size: tuple[int, int]
    fps: float
    codec: str
    budget: object = None
    frame_index: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    hr_percent: list[float] = field(default_factory=list)
    gmacs: list[float] = field(default_factory=list)
    over: list[float] | None = None
    skipped: int = 0
    resized: int = 0
    wall_s: float = 0.0

    @property
    def frames(self) -> int:
        """Segmented (written) frames."""
        return len(self.latency_ms)

    @property
    def mean_latency_ms(self) -> float:
        return float(np.mean(self.latency_ms)) if self.latency_ms else math.nan

    @property
    def model_fps(self) -> float:
        """Frames per second of the model alone (1000 / mean latency)."""
        m = self.mean_latency_ms
        return 1000.0 / m if m > 0 else math.nan

    @property
    def over_unit(self) -> str | None:
        """Unit of :attr:`over` (``ms``, ``gmacs``, ``percent``, ``blocks``)."""
        if self.budget is None:
            return None
        return {"fraction": "percent"}.get(self.budget.unit, self.budget.unit)

    @property
    def budget_value(self) -> float | None:
        """The budget in :attr:`over_unit`."""
        if self.budget is None:
            return None
        v = self.budget.value
        return 100.0 * v if self.budget.unit == "fraction" else v

    @property
    def over_budget(self) -> int:
        """Frames over the budget (0 without one)."""
        if not self.over:
            return 0
        tol = 1e-9 * max(1.0, abs(self.budget_value))
        return sum(o > tol for o in self.over)

    @property
    def over_budget_share(self) -> float | None:
        return self.over_budget / self.frames if self.over is not None and self.frames else None

    @property
    def worst_excess(self) -> float | None:
        """The largest cost minus budget (negative: every frame was under the budget)."""
        return max(self.over) if self.over else None

    @property
    def worst_excess_ratio(self) -> float | None:
        """:attr:`worst_excess` / budget (``None`` for a zero budget)."""
        w, b = self.worst_excess, self.budget_value
        return w / b if w is not None and b else None

    def lines(self) -> list[str]:
        """The summary printed by ``segblocks infer``."""
        w, h = self.size
        skipped = f"; {self.skipped} frame{'s' if self.skipped != 1 else ''} skipped"
        out = [
            f"wrote {self.video} ({self.frames} frame{'s' if self.frames != 1 else ''}, {w}x{h}, "
            f"{self.fps:g} fps, {self.codec}) and {self.csv.name}"
            + (skipped if self.skipped else ""),
            f"mean latency {self.mean_latency_ms:.1f} ms per frame ({self.model_fps:.1f} FPS, "
            f"model only; {self.frames / max(self.wall_s, 1e-9):.1f} FPS end to end), "
            f"HR {np.mean(self.hr_percent):.1f} %, {np.mean(self.gmacs):.3f} GMACs per frame",
        ]
        if self.budget is not None and self.frames:
            b = self.budget
            what = f"the {b} budget" if b.unit in ("ms", "gmacs") else f"the budget of {b}"
            unit = {"ms": "ms", "gmacs": "GMACs", "percent": "HR points", "blocks": "blocks"}[
                self.over_unit
            ]
            k, n = self.over_budget, self.frames
            text = f"{k} of {n} frames ({100 * k / n:.0f} %) exceeded {what}"
            worst, ratio = self.worst_excess, self.worst_excess_ratio
            pct = f" ({100 * abs(ratio):.1f} %)" if ratio is not None else ""
            if k:
                text += f", worst by {worst:.3g} {unit}{pct}"
            elif -worst > 1e-9 * max(1.0, abs(self.budget_value)):
                text += f"; the costliest frame was {-worst:.3g} {unit}{pct} under it"
            else:
                text += "; the costliest frame was at the budget"
            out.append(text)
        return out


# --------------------------------------------------------------------------- infer_stream
def _check_out_dir(out: Path) -> None:
    """Refuse an output folder that is a file or cannot be created, without creating it."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"output folder {out} is a file; give a folder path")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"output folder {out} is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create output folder {out}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create output folder {out}: {parent} is not writable")


def _open_source(p: Path, report) -> tuple[_VideoSource | _FolderSource, object]:
    """``(frame source, the av module)``; raises before anything is decoded."""
    if not p.exists():
        raise FileNotFoundError(f"input path {str(p)!r} does not exist")
    if p.is_dir():
        files, others = list_frames(p)
        names = ", ".join(f.name for f in others[:5]) + (", ..." if len(others) > 5 else "")
        if not files:
            also = f" (only {len(others)} other file(s): {names})" if others else ""
            raise InputError(
                f"no frames in {p}{also}: a frame stream is a folder of numbered images (e.g. "
                "frame_0001.png, formats Pillow reads) or a video file"
            )
        if others:
            report(f"skipped {len(others)} file(s) that are not images Pillow reads: {names}")
        return _FolderSource(p, files), _import_av("writing the overlay video")
    av = _import_av("reading video")
    return _VideoSource(p, av), av


class _MacCounter:
    """GMACs of one forward, cached per padded size (and HR count: affine for SegBlocks).

    A block model with ``mac_cost`` (a ``SegBlocksModel``, an exported program) gives its
    affine cost; a dense model is counted once per size with forward hooks; a model that
    cannot be counted gives NaN (noted once)."""

    def __init__(self, model: nn.Module, note):
        from segblocks.models.segblocks_model import SegBlocksModel

        self.model, self.note = model, note
        self.seg = isinstance(model, SegBlocksModel)
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, hw: tuple[int, int], hr_blocks: int, dense: bool) -> float:
        m = self.model
        if not dense and hasattr(m, "mac_cost"):
            return m.mac_cost(*hw)(hr_blocks)
        if hw not in self.cache:
            from segblocks.measuring.macs import count_macs_dense, count_macs_segblocks

            p = next(iter(m.parameters()), None)
            x = torch.zeros(1, 3, *hw, device=p.device if p is not None else "cpu")
            if p is not None and p.is_floating_point():
                x = x.to(p.dtype)
            try:
                rep = count_macs_segblocks(m, x) if self.seg else count_macs_dense(m, x)
                g = rep.total / 1e9 if rep.total > 0 else math.nan
            except Exception as e:  # noqa: BLE001 - a figure of the CSV, not of the run
                self.note(f"GMACs not counted for {type(m).__name__}: {type(e).__name__}: {e}")
                g = math.nan
            self.cache[hw] = g
        return self.cache[hw]


class LatencyGovernor:
    """Holds a stream's frames to a budget in ms: the calibration's cost model, corrected by
    what the frames of this stream actually take.

    Why: the calibration (``segblocks calibrate``) times the model back to back on random
    masks. In a stream it runs between decoding, drawing and encoding, with colder caches, and
    a frame the calibration puts exactly at the budget then takes longer about half the time
    (CamVid, 100 frames, budget halfway between all-LR and all-HR: 66 % of the frames over it
    without correction). So each frame's model gets the budget divided by ``c``, the largest
    ratio of measured to predicted latency over the last ``window`` frames: one slow frame
    makes the following ones leave that margin, and a stream that runs faster than predicted
    gets more HR blocks. Until ``window`` frames are measured the correction is at least
    ``start`` (a 5 % headroom: the first frames of a stream still pay lazy set-up). The
    reported excess is always against the user's budget.
    """

    def __init__(self, budget_ms: float, window: int = 48, start: float = 1.05):
        self.budget_ms, self.window, self.start = float(budget_ms), window, start
        self.ratios: list[float] = []

    @property
    def correction(self) -> float:
        seen = max(self.ratios[-self.window :], default=self.start)
        return seen if len(self.ratios) >= self.window else max(seen, self.start)

    def budget(self):
        """The budget to give the model for the next frame."""
        from segblocks.policies.budget import Budget

        return Budget(self.budget_ms / self.correction, "ms")

    def update(self, latency_ms: float, predicted_ms: float) -> None:
        if predicted_ms > 0 and math.isfinite(latency_ms):
            self.ratios.append(latency_ms / predicted_ms)


def _warm_every_count(run, x: Tensor, block_size: int) -> None:
    """Run ``run`` once at every number of HR blocks of a frame ``x [1, 3, H, W]``.

    Why, before a stream held to a budget in ms: oneDNN builds (JIT-compiles) a conv
    primitive per input shape, and a block batch's shape is its HR / LR count, so the first
    frame with a given count takes several ms longer (CamVid, compiled: spikes of 5-7 ms on
    a ~35 ms frame). One forward per count (``cells + 1`` forwards) moves that cost here."""
    H, W = x.shape[-2:]
    gh, gw = -(-H // block_size), -(-W // block_size)
    cells = torch.arange(gh * gw, device=x.device)
    for k in range(gh * gw + 1):
        run(x, mask=(cells < k).view(1, gh, gw))


def infer_stream(
    model: nn.Module,
    source,
    out_dir,
    *,
    normalize,
    palette,
    class_names=None,
    fps: float | None = None,
    max_frames: int | None = None,
    device=None,
    budget=None,
    report: Callable[[str], None] | None = None,
    progress: bool = True,
    alpha: float = 0.5,
    warmup: int = 1,
    prepare: Callable[[tuple[int, int]], nn.Module] | None = None,
) -> StreamSummary:
    """Segment a video or a folder of numbered frames into one overlay video + ``frames.csv``.

    Args:
        model: a ``SegBlocksModel`` (``out.logits [1, K, H, W]``, ``out.grid [1, GH, GW]``)
            or a dense network returning logits ``[1, K, H, W]``; one frame ``[1, 3, H, W]``
            (normalised) per forward.
        source: a video file (any container PyAV opens) or a folder of frames (every format
            Pillow opens, natural order of the names; other files are listed as skipped).
            Frames are ``[3, H, W]`` RGB, decoded one at a time; a frame whose size differs
            from the first frame's is resized (bilinear) to it, with a note.
        out_dir: output folder, created after the first frame is segmented.
        normalize: transform ``(image, label) -> (image, label)`` applied to the ``[0, 1]``
            frame before the model; ``None`` for none.
        palette: RGB triple per class; ``class_names``: writes ``legend.csv`` when given.
        fps: frame rate of the overlay video (default: the video's; 10 for a frame folder).
        max_frames: stop after this many segmented frames.
        device: where to run (default: the model's device).
        budget: per-frame budget of a SegBlocksModel (``0.4``, ``"2.1gmacs"``, ``"35ms"``
            with ``model.latency_calibration`` set; see :mod:`segblocks.policies.budget`),
            passed to every forward as ``model(x, budget=budget)``; a budget in ms is held
            by a :class:`LatencyGovernor` (the calibration corrected by the frames' measured
            latency).
        report: called with notes (skipped frames, resized frames, ...); default
            ``warnings.warn``.
        progress: a tqdm progress bar (stderr) with the running frame rate.
        alpha: weight of the class colours in the overlay.
        warmup: untimed forwards of the first frame before its timed one (the first forward
            of a model pays for lazy initialisation: kernel builds, caches, MAC counts).
        prepare: called once with the first frame's ``(H, W)`` before any forward; returns
            the module that runs the frames in place of ``model`` (e.g. the compiled program
            for that size, :func:`segblocks.deploy.cache.compiled_model`). ``model`` still
            gives the block size and the MAC accounting.

    Returns:
        a :class:`StreamSummary` (per-frame latency, HR %, GMACs, budget excess; paths).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        InputError (a ``ValueError``): see the module docstring; also PyAV missing
            (``pip install 'segblocks[video]'``).
        ValueError: a budget the model cannot take (e.g. ms without a fitting calibration),
            raised on the first frame, before anything is written.
    """
    from tqdm import tqdm

    from segblocks.models.segblocks_model import SegBlocksModel
    from segblocks.policies.budget import Budget

    def note(msg: str) -> None:
        if report is None:
            warnings.warn(msg, stacklevel=3)
        else:
            report(msg)

    budget = Budget.parse(budget) if budget is not None else None
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise InputError(f"frame rate {fps!r} must be a positive number")
    if warmup < 0:
        raise InputError(f"warmup {warmup!r} must be >= 0")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames {max_frames!r} must be >= 1")
    src_path, out = Path(source), Path(out_dir)
    _check_out_dir(out)
    src, av = _open_source(src_path, note)
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    # a block model: a SegBlocksModel, or one like it (an exported program): a block size, and
    # outputs with a grid; the dense policy and plain networks count as all HR
    block_model = isinstance(model, SegBlocksModel) or hasattr(model, "block_size")
    macs = _MacCounter(model, note)
    rate = Fraction(fps).limit_denominator(1001) if fps is not None else src.fps
    if rate is None:
        rate = Fraction(10)
        if isinstance(src, _VideoSource):
            note(f"{src_path.name}: no frame rate in the file; writing the overlay at 10 fps")

    summary: StreamSummary | None = None
    writer: VideoWriter | None = None
    csv_file = rows = None
    first_size = None
    skipped = resized = 0
    total = src.total if max_frames is None else min(src.total or max_frames, max_frames)
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    run = model  # what runs the frames (see ``prepare``)
    governor = LatencyGovernor(budget.value) if budget is not None and budget.unit == "ms" else None
    t_start = time.perf_counter()
    bar = tqdm(total=total, desc="infer", unit="frame", disable=not progress, leave=False)
    try:
        for fr in src:
            if fr.image is None:
                note(fr.note)
                skipped += fr.lost
                bar.update(fr.lost)
                continue
            if fr.note:
                note(fr.note)
            image = fr.image
            if first_size is None:
                first_size = tuple(image.shape[-2:])
            elif tuple(image.shape[-2:]) != first_size:
                if not resized:
                    note(
                        f"frame {fr.index} is {image.shape[-1]}x{image.shape[-2]}, the first "
                        f"{first_size[1]}x{first_size[0]}: frames of another size are resized"
                    )
                resized += 1
                image = F.interpolate(
                    image[None], size=first_size, mode="bilinear", antialias=True
                )[0].clamp_(0, 1)
            x = image
            if normalize is not None:
                x, _ = normalize(x, torch.zeros(image.shape[-2:], dtype=torch.long))
            if summary is None and prepare is not None:
                run = prepare(first_size)
            frame_budget = budget if governor is None else governor.budget()
            with torch.inference_mode():
                xin = x.unsqueeze(0).to(device)
                if summary is None:  # untimed runs: lazy initialisation, caches, kernels
                    for _ in range(warmup):
                        run(xin) if budget is None else run(xin, budget=frame_budget)
                    if (
                        governor is not None
                        and block_model
                        and warmup
                        and not getattr(model, "dense", False)
                    ):
                        _warm_every_count(run, xin, model.block_size)
                    t_start = time.perf_counter()  # end-to-end FPS: after the warm-up
                sync()
                t0 = time.perf_counter()
                y = run(xin) if budget is None else run(xin, budget=frame_budget)
                sync()
                latency = 1000.0 * (time.perf_counter() - t0)
                H, W = image.shape[-2:]
                logits = y if isinstance(y, Tensor) else y.logits
                pred = logits[0].argmax(0).cpu()
                grid = getattr(y, "grid", None) if block_model else None
                if grid is not None:
                    grid, bs = grid[0].cpu(), model.block_size
                    hw = (grid.shape[0] * bs, grid.shape[1] * bs)  # the padded size
                else:
                    bs, hw = None, (H, W)
                dense = grid is None or bool(getattr(model, "dense", False))
                # MACs depend on the padded size and the number of HR blocks only
                k = 0 if dense else int(grid.sum())
                hr = 100.0 if dense else 100.0 * float(grid.float().mean())
                gm = macs(hw, k, dense)
                if governor is not None:
                    governor.update(latency, run.latency_cost(*hw)(k))
            frame = segmentation_overlay(
                image, pred, palette, None if dense else grid, alpha=alpha, block_size=bs
            )
            if summary is None:  # the first frame: create the outputs now
                try:
                    out.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise InputError(
                        f"cannot create output folder {out}: {e.strerror or e}"
                    ) from None
                if class_names is not None:
                    write_legend(out / "legend.csv", palette, class_names)
                stem = src_path.stem if src_path.is_file() else src_path.resolve().name
                video = out / f"{stem}_overlay.mp4"
                writer = VideoWriter(av, video, W, H, rate)
                csv_file = open(out / "frames.csv", "w", newline="")
                rows = csv.writer(csv_file)
                summary = StreamSummary(
                    source=str(source),
                    video=video,
                    csv=out / "frames.csv",
                    size=(W, H),
                    fps=float(rate),
                    codec=writer.codec,
                    budget=budget,
                    over=[] if budget is not None else None,
                )
                header = ["frame", "latency_ms", "hr_percent", "gmacs"]
                if budget is not None:
                    header.append(f"over_budget_{summary.over_unit}")
                rows.writerow(header)
            writer.write(frame)
            row = [fr.index, f"{latency:.3f}", f"{hr:.2f}", f"{gm:.6f}"]
            summary.frame_index.append(fr.index)
            summary.latency_ms.append(latency)
            summary.hr_percent.append(hr)
            summary.gmacs.append(gm)
            if budget is not None:
                cost = {"ms": latency, "gmacs": gm, "percent": hr, "blocks": float(k)}
                over = cost[summary.over_unit] - summary.budget_value
                summary.over.append(over)
                row.append(f"{over:.4f}")
            rows.writerow(row)
            bar.update(1)
            wall = time.perf_counter() - t_start
            bar.set_postfix_str(f"avg {summary.frames / wall:.1f} fps, {latency:.0f} ms/forward")
            if max_frames is not None and summary.frames >= max_frames:
                break
    finally:
        bar.close()
        src.close()
        if csv_file is not None:
            csv_file.close()
        if writer is not None:
            writer.close()
        for m, t in was_training:
            m.training = t
    if summary is None:
        what = "decodable frame" if skipped else "frame"
        raise InputError(f"no {what} in {str(src_path)!r}; nothing written")
    summary.skipped, summary.resized = skipped, resized
    summary.wall_s = time.perf_counter() - t_start
    return summary
