"""Export a :class:`~segblocks.models.segblocks_model.SegBlocksModel` with ``torch.export``.

What is exported (:class:`ExportProgram`)::

    forward(image [N, 3, H, W] float32, normalised, k [N] int64, mask [N, GH, GW] bool)
        -> (logits [N, classes, H, W] float32, grid [N, GH, GW] bool)

for one input size ``H x W`` and batch ``N``. Per image, ``k[i] >= 0`` runs the ``k[i]`` blocks
the policy ranks highest in high resolution (budgets, :mod:`segblocks.policies.budget`);
``k[i] == USE_POLICY`` (-1) lets the policy decide (its threshold); ``k[i] == USE_MASK`` (-2)
takes ``mask[i]`` as the decisions (read only then). The program holds everything the eager
model runs: input padding, the policy network, BlockSample, the block execution of the
network, the dense SPP, BlockCombine and the final upsampling.

Why one program serves every mask: under ``torch.export`` the block grid counts its HR blocks
with ``.item()``, which becomes a symbol (``u0``), not a number; every block shape is an
expression in it (HR pixels ``u0 * s * s``, LR pixels ``(cells - u0) * s * s / 4``), the halo
plans and indirection tables are built at run time by the ``segblocks::pad_plan`` /
``segblocks::conv_taps`` ops from the mask the program computes, and the code paths that keep
state between calls (buffer pools, in-place halo fills) give way to their functional
equivalents (:mod:`segblocks.blocks.tracing`). The graph's block ops are ``segblocks::``
operators, so running the program needs ``import segblocks`` (which loads them and their C++
kernels); see :func:`segblocks.deploy.load_exported`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..blocks import kernels
from ..blocks.extension import failure_reason
from ..errors import ExportError
from ..models.segblocks_model import SegBlocksModel
from ..policies.budget import top_k_mask

__all__ = [
    "ExportError",
    "ExportProgram",
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "USE_MASK",
    "USE_POLICY",
    "export_metadata",
    "export_program",
    "package_aoti",
    "save_exported",
]

FORMAT = "segblocks-exported"
FORMAT_VERSION = 1
#: name of the metadata (JSON) inside a ``.pt2`` archive, and its key in an AOTI package
METADATA_FILE = "segblocks.json"


#: values of the program's ``k`` input other than a block count
USE_POLICY, USE_MASK = -1, -2


class ExportProgram(nn.Module):
    """The module :func:`export_program` traces: ``(image, k, mask) -> (logits, grid)`` (see
    the module docstring). ``dtype``: the model's parameter dtype; the image is cast to it and the
    logits back to float32, so the program's interface is float32 whatever it computes in."""

    def __init__(self, model: SegBlocksModel, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, image: Tensor, k: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        x = image.to(self.dtype)
        if m.dense:
            out = m(x)
        else:
            hp, wp = m.padded_size(*x.shape[-2:])
            grid_shape = (hp // m.block_size, wp // m.block_size)
            pol = m.policy(m.pad_input(x, hp, wp), grid_shape)
            decided = pol.mask
            if pol.scores is not None:
                ranked = top_k_mask(pol.scores, k)
                decided = torch.where((k >= 0).view(-1, 1, 1), ranked, decided)
            decided = torch.where((k == USE_MASK).view(-1, 1, 1), mask, decided)
            out = m(x, mask=decided)
        return out.logits.float(), out.grid


def _ranks_blocks(model: SegBlocksModel, size) -> bool:
    """Whether the model's policy ranks blocks (budgets need a ranking)."""
    if model.dense:
        return False
    p = next(iter(model.parameters()))
    hp, wp = model.padded_size(*size)
    x = torch.zeros(1, 3, hp, wp, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        pol = model.policy(x, (hp // model.block_size, wp // model.block_size))
    return pol.scores is not None


def export_metadata(model: SegBlocksModel, size, batch: int, dtype: torch.dtype) -> dict:
    """What a loaded program needs besides the graph: sizes, classes, normalisation, the
    GMAC cost model of budgets (exact, see :meth:`SegBlocksModel.mac_cost`)."""
    from ..version import __version__

    H, W = size
    hp, wp = model.padded_size(H, W)
    net = model.net
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "size": [H, W],
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "block_size": model.block_size,
        "padded_size": [hp, wp],
        "grid": [hp // model.block_size, wp // model.block_size],
        "policy": "dense" if model.dense else model.policy.name,
        "ranks_blocks": _ranks_blocks(model, size),
        "num_classes": int(getattr(net, "num_classes", 0) or 0),
        "dataset": getattr(model, "dataset", None),
        "class_names": getattr(model, "class_names", None),
        "palette": [list(c) for c in getattr(model, "palette", None) or ()] or None,
        "input_mean": list(getattr(net, "input_mean", None) or []) or None,
        "input_std": list(getattr(net, "input_std", None) or []) or None,
        "torch": torch.__version__,
        "segblocks": __version__,
    }
    if not model.dense:
        cost = model.mac_cost(hp, wp)
        meta["gmacs"] = {"base": cost.base, "per_block": cost.per_block}
    return meta


def _check_exportable(model) -> None:
    if not isinstance(model, SegBlocksModel):
        raise ExportError(
            f"export takes a SegBlocksModel, got {type(model).__name__}; a plain network "
            "exports with torch.export.export(net, (x,)) directly, or wrap it as "
            "SegBlocksModel(net, 'dense')"
        )
    if not model.dense and kernels.backend() != "cpp":
        raise ExportError(
            "exporting block execution needs the compiled kernels (the program builds its halo "
            "plans with segblocks::pad_plan / segblocks::conv_taps), but the block ops run on "
            f"the python backend ({failure_reason() or 'SEGBLOCKS_BACKEND=python'}); install "
            "a C++ compiler and unset SEGBLOCKS_BACKEND"
        )


def export_program(
    model: SegBlocksModel,
    size: tuple[int, int],
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    optimize: bool = True,
) -> torch.export.ExportedProgram:
    """``torch.export`` program of ``model`` for ``batch`` images of ``size = (H, W)``.

    Args:
        model: a SegBlocksModel (any policy; the dense one exports the plain network).
        size: input ``(H, W)``; need not be a multiple of the block size when the model pads
            (``pad_to_block``).
        batch: images per call (fixed in the program).
        dtype: compute dtype (``torch.float32`` or ``torch.bfloat16``); inputs and logits
            stay float32.
        optimize: export the fast inference form (:func:`~segblocks.models.inference.
            optimize_for_inference`: batch norm folded, activations fused, channels-last),
            as ``segblocks infer`` runs it; ``model`` itself is not modified.

    Returns the :class:`torch.export.ExportedProgram` of :class:`ExportProgram`.

    Example:
        >>> ep = export_program(model, (360, 480))
        >>> no_mask = torch.zeros(1, 12, 15, dtype=torch.bool)
        >>> logits, grid = ep.module()(image, torch.full((1,), USE_POLICY), no_mask)
    """
    from ..models.inference import optimize_for_inference

    _check_exportable(model)
    H, W = (int(v) for v in size)
    if H < 1 or W < 1 or batch < 1:
        raise ExportError(f"size {H}x{W} and batch {batch} must be positive")
    model.padded_size(H, W)  # raises for a size the model cannot take
    if optimize:
        m = optimize_for_inference(model, dtype=dtype, example_size=model.padded_size(H, W))
    else:
        m = copy.deepcopy(model).eval().to(dtype=dtype)
    p = next(iter(m.parameters()))
    image = torch.randn(batch, 3, H, W, device=p.device)
    k = torch.full((batch,), USE_POLICY, dtype=torch.long, device=p.device)
    hp, wp = m.padded_size(H, W)
    bs = m.block_size
    mask = torch.zeros(batch, hp // bs, wp // bs, dtype=torch.bool, device=p.device)
    with torch.no_grad():
        return torch.export.export(ExportProgram(m, dtype), (image, k, mask), strict=False)


@contextlib.contextmanager
def quiet_archive():
    """Silence torch's "No complete tensor found in the group" warning of ``.pt2`` archives
    (CPU weights that share storage, e.g. folded convs: harmless here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        yield


def _program_and_metadata(model, path, size, batch, dtype, optimize):
    """``(path, program, metadata)`` after checking that ``path`` can be written."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ExportError(f"output {path} is a folder; give a file name such as model.pt2")
    if not path.parent.exists():
        raise ExportError(f"output folder {path.parent} does not exist; create it first")
    ep = export_program(model, size, batch=batch, dtype=dtype, optimize=optimize)
    return path, ep, export_metadata(model, size, batch, dtype)


def save_exported(
    model: SegBlocksModel,
    path,
    size: tuple[int, int],
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    optimize: bool = True,
) -> Path:
    """Export ``model`` (:func:`export_program`) and save the program with its metadata to
    ``path`` (``torch.export.save``; load with :func:`segblocks.deploy.load_exported`)."""
    path, ep, meta = _program_and_metadata(model, path, size, batch, dtype, optimize)
    with quiet_archive():
        torch.export.save(ep, path, extra_files={METADATA_FILE: json.dumps(meta)})
    return path


def package_aoti(
    model: SegBlocksModel,
    path,
    size: tuple[int, int],
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    optimize: bool = True,
) -> Path:
    """Export ``model`` and compile the program with AOTInductor into a package at ``path``.

    The package holds a CPU shared library of the whole program (Inductor's kernels for the
    dense ops, calls into the ``segblocks::`` ops for the block ops) and the metadata. Running
    it needs this torch version and ``import segblocks`` (the ``segblocks::`` ops are
    registered by the Python package and run its C++ kernels), e.g. through
    :func:`segblocks.deploy.load_exported`. Compiling takes minutes and a C++ compiler.
    """
    from torch._inductor import aoti_compile_and_package

    path, ep, meta = _program_and_metadata(model, path, size, batch, dtype, optimize)
    configs = {
        # weights become constants, so their layout conversions are folded at compile time
        "freezing": True,
        "aot_inductor.metadata": {METADATA_FILE: json.dumps(meta)},
    }
    t = time.perf_counter()
    out = aoti_compile_and_package(ep, package_path=str(path), inductor_configs=configs)
    meta["compile_seconds"] = round(time.perf_counter() - t, 1)
    return Path(out)
