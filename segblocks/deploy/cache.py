"""Compiled programs of checkpoints, built once per machine and reused.

``segblocks infer`` on a video or frame stream (and ``segblocks calibrate``) run the
AOTInductor package of the model by default, because it is faster than the eager model
(``benchmarks/camvid_latency.py``, key ``camvid_latency_ratio_tau04_aoti_vs_eager``).
Compiling takes about a minute, so the package is kept in a cache folder
(``$SEGBLOCKS_CACHE_DIR``, default ``~/.cache/segblocks/compiled``) under a key of everything
it depends on: the checkpoint's bytes, the policy, the input size, batch and dtype, and the
torch and segblocks versions. A second run with the same key loads it in a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .export import package_aoti
from .runtime import ExportedSegBlocks, load_exported

__all__ = ["cache_dir", "compile_available", "compiled_model"]


def cache_dir() -> Path:
    """Where compiled packages are kept (``$SEGBLOCKS_CACHE_DIR`` or
    ``~/.cache/segblocks/compiled``)."""
    env = os.environ.get("SEGBLOCKS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "segblocks" / "compiled"


def compile_available() -> str | None:
    """``None`` when AOTInductor packages can be built here, else the reason."""
    from ..blocks import kernels

    if kernels.backend() != "cpp":
        return "the compiled block kernels are not available"
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        return "no C++ compiler (g++ / c++) on PATH"
    return None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _code_digest() -> str:
    """A digest of the package's Python and C++ sources: a package compiled by other code
    (an edited or upgraded segblocks) is not reused."""
    global _CODE
    if _CODE is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".cpp") and f.is_file():
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
        _CODE = h.hexdigest()
    return _CODE


_CODE: str | None = None


def cache_key(checkpoint, model, size, batch: int, dtype: torch.dtype) -> str:
    """A digest of everything the compiled package depends on."""
    from ..version import __version__

    policy = "dense" if model.dense else model.policy.name
    what = {
        "checkpoint": _file_digest(Path(checkpoint)),
        "policy": policy,
        "policy_repr": repr(model.policy),
        "block_size": model.block_size,
        "size": list(size),
        "batch": batch,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "segblocks": __version__,
        "code": _code_digest(),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def compiled_model(
    model,
    checkpoint,
    size: tuple[int, int],
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    report=None,
) -> ExportedSegBlocks:
    """The AOTInductor package of ``model`` (loaded from ``checkpoint``) for ``size``, from
    the cache or compiled now (``report`` gets a note first: it takes about a minute).

    The attributes the checkpoint gave the model (``dataset``, ``class_names``) are in the
    package's metadata, as :func:`segblocks.deploy.export_metadata` records them.
    """
    key = cache_key(checkpoint, model, size, batch, dtype)
    folder = cache_dir()
    path = folder / f"{key}.pt2"
    if not path.is_file():
        if report is not None:
            report(
                f"compiling the model for {size[0]}x{size[1]} inputs with AOTInductor, once "
                f"(about a minute; cached in {folder}; --engine eager skips this)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
            out = Path(tmp) / f"{key}.pt2"
            package_aoti(model, out, size, batch=batch, dtype=dtype)
            os.replace(out, path)  # atomic: a concurrent run sees all of it or nothing
    return load_exported(path)
