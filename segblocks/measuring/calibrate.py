"""Latency calibration for millisecond budgets (``segblocks calibrate``, issue 11).

Latency of a SegBlocks model on one machine is close to affine in the number ``k`` of HR
blocks per image: ``ms(k) = intercept + per_block * k``. :func:`calibrate` measures it: for a
few counts from all-LR to all-HR, the median latency over runs with a fresh random mask of
exactly ``k`` HR blocks each run (counts interleaved round by round, so that load drifts hit
all alike), plus the median time of the policy's ranking (which a budgeted forward adds).
The least-squares line through the medians is saved to JSON together with what it was
measured with: model, input size, block size, dtype, threads and CPU. A millisecond budget
loads it with :meth:`LatencyCalibration.load`, which refuses a file made for another model,
size, block size, dtype, thread count or machine.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..policies.budget import AffineCost
from ..policies.masks import random_mask

__all__ = ["LatencyCalibration", "calibrate", "cpu_name"]

FORMAT = "segblocks-latency-calibration"


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class LatencyCalibration:
    """An affine latency model ``ms(k) = intercept_ms + per_block_ms * k`` of one model, input
    size, block size, dtype and thread count on one machine (``cpu``).

    ``points``: ``[k, median ms]`` measured; ``policy_ms``: the policy's share (in the
    intercept); ``residual_ms``: the largest distance of a measured median from the line."""

    model: str
    size: tuple[int, int]
    block_size: int
    dtype: str
    threads: int
    cpu: str
    intercept_ms: float
    per_block_ms: float
    policy_ms: float = 0.0
    residual_ms: float = 0.0
    points: list = field(default_factory=list)
    #: what ran: ``"eager"`` (the Python model), ``"aoti"`` (an AOTInductor package) or
    #: ``"pt2"`` (an exported program); files without the field are eager calibrations
    engine: str = "eager"

    def cost(self, hp: int, wp: int, block_size: int) -> AffineCost:
        """The :class:`AffineCost` in ms of a ``hp x wp`` (padded) image; raises if the image
        or block size is not the calibrated one."""
        if (int(hp), int(wp)) != tuple(self.size) or int(block_size) != self.block_size:
            raise ValueError(
                f"the latency calibration was measured at {self.size[0]}x{self.size[1]} with "
                f"block size {self.block_size}, but this image is {hp}x{wp} (padded) with block "
                f"size {block_size}; run segblocks calibrate --size {hp}x{wp} "
                f"--block-size {block_size}"
            )
        return AffineCost(self.intercept_ms, self.per_block_ms, "ms")

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        d = asdict(self)
        d["size"] = list(self.size)
        path.write_text(json.dumps({"format": FORMAT, **d}, indent=2))
        return path

    @classmethod
    def load(
        cls,
        path,
        model: str | None = None,
        size: tuple[int, int] | None = None,
        block_size: int | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        check_cpu: bool = True,
        engine: str | None = None,
    ) -> LatencyCalibration:
        """Read ``path``; every given expectation must match the file (``ValueError`` naming
        the field, both values and the command that makes a fitting file)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read latency calibration {path}: {e}") from None
        if not isinstance(d, dict) or d.pop("format", None) != FORMAT:
            raise ValueError(f"{path} is not a segblocks latency calibration (segblocks calibrate)")
        try:
            d["size"] = tuple(int(v) for v in d["size"])
            cal = cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"latency calibration {path} is incomplete or edited ({e})") from None
        want = {
            "model": model,
            "size": tuple(size) if size is not None else None,
            "block_size": block_size,
            "dtype": dtype,
            "threads": threads,
            "cpu": cpu_name() if check_cpu else None,
            "engine": engine,
        }
        for key, value in want.items():
            if value is not None and getattr(cal, key) != value:
                raise ValueError(
                    f"latency calibration {path} was measured with {key} {getattr(cal, key)!r}, "
                    f"this run uses {value!r}; calibrate for this setting (segblocks calibrate "
                    "--model ... --size HxW --block-size B --dtype ... --threads N --engine E)"
                )
        return cal


def calibrate(
    model,
    name: str,
    size: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    counts: int = 6,
    runs: int = 7,
    warmup: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> LatencyCalibration:
    """Measure ``model`` (a :class:`~segblocks.models.segblocks_model.SegBlocksModel`, eval
    mode) at ``size`` (a multiple of its block size) and fit the affine latency model.

    An exported program (:class:`~segblocks.deploy.ExportedSegBlocks`) is measured at the
    size it takes (``size`` must be that size or its padded size); its policy runs inside
    every timed call, so no separate policy time is added.

    Args:
        counts: number of HR counts measured, evenly spread from 0 to all blocks.
        runs: timed runs per count (each with a fresh random mask); warmup: untimed runs.
    """
    from tqdm import tqdm

    from ..deploy import ExportedSegBlocks

    exported = isinstance(model, ExportedSegBlocks)
    if exported:
        if tuple(size) not in (model.size, model.padded_size):
            raise ValueError(
                f"calibration size {size[0]}x{size[1]}: this exported program takes "
                f"{model.size[0]}x{model.size[1]} images; calibrate at that size"
            )
        size = model.padded_size
    bs = model.block_size
    # the model pads to whole blocks, so an image size is measured (and recorded) padded
    H, W = (-(-s // bs) * bs for s in size)
    if counts < 2 or runs < 1 or warmup < 0:
        raise ValueError("calibrate needs counts >= 2, runs >= 1 and warmup >= 0")
    gh, gw = H // bs, W // bs
    B = gh * gw
    ks = sorted({round(i * B / (counts - 1)) for i in range(counts)})
    p = next(iter(model.parameters()), torch.empty(0))  # (an AOTI package has none)
    gen = torch.Generator().manual_seed(seed)
    if exported:  # float32 in, whatever the program computes in
        x = torch.randn(1, 3, *model.size, generator=gen)
    else:
        x = torch.randn(1, 3, H, W, generator=gen).to(device=p.device, dtype=dtype)
        model = model.to(dtype=dtype).eval()
    times: dict[int, list[float]] = {k: [] for k in ks}
    policy_times: list[float] = []
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    total = (warmup + runs) * (len(ks) + (0 if exported else 1))
    with torch.inference_mode(), tqdm(total=total, desc="calibrate", disable=not progress) as bar:
        for r in range(warmup + runs):
            order = ks[r % len(ks) :] + ks[: r % len(ks)]
            for k in order:
                mask = random_mask(1, (gh, gw), k, generator=gen, device=p.device)
                sync()
                t0 = time.perf_counter()
                model(x, mask=mask)
                sync()
                if r >= warmup:
                    times[k].append(1000 * (time.perf_counter() - t0))
                bar.update(1)
            if exported:
                continue
            sync()
            t0 = time.perf_counter()
            model.policy(x, (gh, gw))
            sync()
            if r >= warmup:
                policy_times.append(1000 * (time.perf_counter() - t0))
            bar.update(1)
    med = [(k, statistics.median(times[k])) for k in ks]
    n = len(med)
    mk = sum(k for k, _ in med) / n
    mt = sum(t for _, t in med) / n
    var = sum((k - mk) ** 2 for k, _ in med)
    slope = sum((k - mk) * (t - mt) for k, t in med) / var if var else 0.0
    policy_ms = statistics.median(policy_times) if policy_times else 0.0
    intercept = mt - slope * mk
    residual = max(abs(t - (intercept + slope * k)) for k, t in med)
    if slope <= 0:
        raise ValueError(
            f"measured latency does not grow with the number of HR blocks (medians "
            f"{[round(t, 1) for _, t in med]} ms at {ks} blocks): the machine is too noisy or "
            "the runs too few; raise --runs / --warmup and keep other jobs off the machine"
        )
    return LatencyCalibration(
        model=name,
        size=(H, W),
        block_size=bs,
        dtype=str(dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        cpu=cpu_name(),
        intercept_ms=intercept + policy_ms,
        per_block_ms=slope,
        policy_ms=policy_ms,
        residual_ms=residual,
        points=[[k, t] for k, t in med],
        engine=model.kind if exported else "eager",
    )
