"""Load and run an exported SegBlocks model (``segblocks export --format pt2 | aoti``).

:func:`load_exported` reads either artifact and returns an :class:`ExportedSegBlocks`: called
like the eager model (``model(image)``, ``model(image, budget="35ms")``) it returns a
:class:`~segblocks.models.segblocks_model.SegBlocksOutput` (``probs`` / ``log_probs`` are
``None``). No checkpoint, optimizer, dataset or training code is read; the graph's block ops
come from ``segblocks.blocks.kernels`` (imported here) and its C++ kernels.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from ..blocks import kernels  # noqa: F401  (registers the segblocks:: ops the graphs call)
from ..errors import CheckpointError
from ..models.segblocks_model import SegBlocksOutput
from ..policies.budget import AffineCost, Budget, budget_count, no_calibration
from .export import FORMAT, FORMAT_VERSION, METADATA_FILE, USE_MASK, USE_POLICY, quiet_archive

__all__ = ["ExportedSegBlocks", "load_exported"]


class ExportedSegBlocks(nn.Module):
    """An exported SegBlocks program with what it was exported with.

    Attributes (from the artifact's metadata): ``size`` ``(H, W)`` and ``batch`` it takes,
    ``block_size``, ``grid`` ``(GH, GW)``, ``num_classes``, ``dataset``, ``class_names``,
    ``input_mean`` / ``input_std`` (normalisation the network expects), ``kind``
    (``"pt2"`` or ``"aoti"``), ``metadata`` (all of it); ``latency_calibration``: set it
    (``segblocks calibrate``) for budgets in ms, as on the eager model.

    Call: ``image [batch, 3, H, W]`` float32, normalised -> ``SegBlocksOutput`` with ``logits
    [batch, classes, H, W]`` and ``grid [batch, GH, GW]``. ``budget`` (``0.4``, ``"40%"``,
    ``"12blocks"``, ``"2.1gmacs"``, ``"35ms"``) runs the policy's top-ranked blocks that fit.
    """

    def __init__(self, program, metadata: dict, kind: str, path=None):
        super().__init__()
        self.program = program  # a GraphModule (pt2) or an AOTICompiledModel (aoti)
        self.metadata = metadata
        self.kind = kind
        self.path = None if path is None else str(path)
        self.size = tuple(metadata["size"])
        self.batch = int(metadata["batch"])
        self.block_size = int(metadata["block_size"])
        self.grid = tuple(metadata["grid"])
        self.padded_size = tuple(metadata["padded_size"])
        self.num_classes = int(metadata["num_classes"])
        self.dataset = metadata.get("dataset")
        self.class_names = metadata.get("class_names")
        self.palette = [tuple(c) for c in metadata.get("palette") or ()] or None
        self.input_mean = metadata.get("input_mean")
        self.input_std = metadata.get("input_std")
        self.latency_calibration = None
        #: run the compiled package with denormal floats flushed to zero (see :meth:`forward`)
        self.flush_denormal = kind == "aoti"

    def __repr__(self) -> str:
        H, W = self.size
        return (
            f"ExportedSegBlocks({self.kind}, {self.batch}x3x{H}x{W}, block {self.block_size}, "
            f"policy {self.metadata.get('policy')!r}, {self.num_classes} classes)"
        )

    @property
    def dense(self) -> bool:
        """``True`` for a program of the plain network (dense policy): no blocks."""
        return self.metadata.get("policy") == "dense"

    def train(self, mode: bool = True) -> ExportedSegBlocks:
        """A no-op but for the flag: the program is an inference graph (exported programs
        refuse ``train()``)."""
        if mode:
            raise ValueError("an exported program is for inference; train the eager model")
        self.training = False
        return self

    def mac_cost(self, hp: int, wp: int) -> AffineCost:
        """GMACs with ``k`` HR blocks (recorded at export: exact for this size)."""
        g = self.metadata.get("gmacs")
        if g is None:
            raise ValueError("this program has no blocks (dense policy); budgets need blocks")
        return AffineCost(float(g["base"]), float(g["per_block"]), "gmacs")

    def latency_cost(self, hp: int, wp: int) -> AffineCost:
        cal = self.latency_calibration
        if cal is None:
            raise no_calibration()
        return cal.cost(hp, wp, self.block_size)

    def budget_count(self, budget) -> int:
        """HR blocks per image that ``budget`` allows (see :mod:`segblocks.policies.budget`)."""
        budget = Budget.parse(budget)
        if not self.metadata.get("ranks_blocks"):
            raise ValueError(
                f"policy {self.metadata.get('policy')!r} does not rank blocks; budgets need "
                "the learned, heuristic or random policy"
            )
        cost = None
        if budget.unit == "gmacs":
            cost = self.mac_cost(*self.padded_size)
        elif budget.unit == "ms":
            cost = self.latency_cost(*self.padded_size)
        return budget_count(budget, self.grid[0] * self.grid[1], cost)

    def forward(self, image: Tensor, mask: Tensor | None = None, budget=None) -> SegBlocksOutput:
        """``image [batch, 3, H, W]`` (normalised) -> :class:`SegBlocksOutput`; ``mask [batch,
        GH, GW]`` bool overrides the policy, ``budget`` ranks blocks (as the eager model)."""
        want = (self.batch, 3, *self.size)
        if not isinstance(image, Tensor) or tuple(image.shape) != want:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            H, W = self.size
            raise ValueError(
                f"this program was exported for images of shape {list(want)}, got {got}; "
                f"resize the input to {H}x{W} or export again with segblocks export --size "
                f"{image.shape[-2] if isinstance(image, Tensor) else 'H'}x"
                f"{image.shape[-1] if isinstance(image, Tensor) else 'W'} (--batch for another "
                "batch size)"
            )
        gshape = (self.batch, *self.grid)
        if mask is not None and budget is not None:
            raise ValueError("give a mask or a budget, not both")
        if mask is not None:
            if not isinstance(mask, Tensor) or tuple(mask.shape) != gshape:
                got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask must be a bool tensor of shape {list(gshape)}, got {got}")
            if self.metadata.get("policy") == "dense":
                raise ValueError("this program runs the plain network (dense policy): no mask")
            k = USE_MASK
        else:
            k = USE_POLICY if budget is None else self.budget_count(budget)
            mask = torch.zeros(gshape, dtype=torch.bool)
        ks = torch.full((self.batch,), k, dtype=torch.long, device=image.device)
        # contiguous NCHW, as exported: a compiled package reads its inputs with the strides
        # it was traced with (a channels-last frame, e.g. decoded video, would be garbage)
        args = (image.float().contiguous(), ks, mask.to(image.device, torch.bool).contiguous())
        if not self.flush_denormal:
            logits, grid = self.program(*args)
        else:
            # Inductor's generated kernels slow down on denormal activations, which real frames
            # with few HR blocks produce (CamVid, 2 HR blocks: 33 -> 21 ms). oneDNN flushes
            # them inside its own kernels; here the CPU does it for the call, and the setting
            # is back to PyTorch's default (off) afterwards. ``flush_denormal = False`` skips it.
            torch.set_flush_denormal(True)
            try:
                logits, grid = self.program(*args)
            finally:
                torch.set_flush_denormal(False)
        return SegBlocksOutput(logits, grid, None, None, grid.flatten(1).float().mean(1))


def _kind(path: Path) -> str | None:
    """``"aoti"``, ``"pt2"`` (a program saved with segblocks metadata) or ``None``."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any("/aotinductor/" in n for n in names):
        return "aoti"
    if any(n.endswith(f"/extra/{METADATA_FILE}") for n in names):
        return "pt2"
    return None


def _check_metadata(meta: dict | None, path: Path) -> dict:
    if not meta or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a segblocks export (no {METADATA_FILE} in it); make one with "
            "segblocks export CKPT OUT.pt2 --format pt2 --size HxW"
        )
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was exported by a newer segblocks (format {meta['version']}, this one reads "
            f"up to {FORMAT_VERSION}); upgrade segblocks"
        )
    return meta


def load_exported(path) -> ExportedSegBlocks:
    """Load a program written by ``segblocks export --format pt2`` or an AOTInductor package
    (``--format aoti``); see :class:`ExportedSegBlocks`.

    Example:
        >>> model = segblocks.load_exported("camvid_tau04.pt2")
        >>> out = model(image)            # image [1, 3, 360, 480], normalised
        >>> out.logits.shape, out.grid.shape
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not an exported program (not a .pt2 archive); make one with segblocks "
            "export CKPT OUT.pt2 --format pt2 --size HxW"
        )
    kind = _kind(path)
    if kind is None:
        _check_metadata(None, path)
    if kind == "aoti":
        from torch._inductor import aoti_load_package

        compiled = aoti_load_package(str(path))
        raw = compiled.get_metadata().get(METADATA_FILE)
        meta = _check_metadata(json.loads(raw) if raw else None, path)
        return ExportedSegBlocks(compiled, meta, "aoti", path)
    extra = {METADATA_FILE: ""}
    try:
        with quiet_archive():
            ep = torch.export.load(path, extra_files=extra)
    except Exception as e:  # noqa: BLE001 - torch.export.load raises many kinds
        raise CheckpointError(f"{path} cannot be read as an exported program: {e}") from None
    meta = _check_metadata(json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else None, path)
    return ExportedSegBlocks(ep.module(), meta, "pt2", path)
