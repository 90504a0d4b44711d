"""Build and load the C++ block kernels (``torch.ops.segblocks_C``), like torchvision's extension.

The kernels in ``segblocks/csrc/block_ops.cpp`` are compiled on first use with
:func:`torch.utils.cpp_extension.load` (needs a C++ compiler and ``ninja``) into a build
directory under torch's extensions dir keyed by a hash of the sources, torch and Python versions
and flags, so a machine compiles them once (about a minute) and later processes only load the
shared library. When anything fails (no compiler, no ninja, a compile error), one warning names
the reason and :mod:`segblocks.blocks.kernels` runs its pure-PyTorch implementations instead.

The kernels parallelise with ``at::parallel_for``, which for an OpenMP build of torch is an
inline ``#pragma omp parallel`` in the headers: without ``-fopenmp`` it silently runs on one
thread. So the kernels are compiled with ``-fopenmp`` when torch uses OpenMP (the library then
shares torch's already loaded ``libgomp``); if that build fails they are rebuilt without it
(single-threaded; :func:`parallel` tells which).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["cpp_available", "failure_reason", "load", "parallel", "NAME", "SOURCES"]

NAME = "segblocks_C"
SOURCES = (Path(__file__).resolve().parent.parent / "csrc" / "block_ops.cpp",)
_CFLAGS = ("-O3",)
_OPENMP_FLAGS = ("-fopenmp",)  # compile and link flags (GCC / Clang with libomp)
_MARKER = "segblocks_built.txt"  # path of the built library, written after build + load
_FAILED = "segblocks_failed.txt"  # written when a build with optional flags failed

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet
_reason: str | None = None
_parallel = False  # built with OpenMP (at::parallel_for really runs on several threads)


def cpp_available() -> bool:
    """True when the C++ kernels are (or can now be) built and loaded; builds on first call."""
    return _loaded if _loaded is not None else load()


def failure_reason() -> str | None:
    """Why the C++ kernels are unavailable (``None`` when they loaded or were not tried)."""
    return _reason


def parallel() -> bool:
    """True when the loaded kernels were built with OpenMP (multi-threaded ``parallel_for``)."""
    return _loaded is True and _parallel


def load() -> bool:
    """Build (once per machine) and load the kernels; warn once and return False on failure."""
    global _loaded, _reason
    with _lock:
        if _loaded is not None:
            return _loaded
        try:
            _build_and_load(SOURCES)
            _loaded, _reason = True, None
        except Exception as e:  # noqa: BLE001 - any failure means "use the Python path"
            msg = str(e).strip().splitlines()
            _loaded = False
            _reason = f"{type(e).__name__}: {msg[-1] if msg else ''}".strip().rstrip(":")
            warnings.warn(
                f"segblocks: the C++ block kernels are unavailable ({_reason}); using the "
                "pure-PyTorch implementations (same results, slower on CPU)",
                RuntimeWarning,
                stacklevel=3,
            )
        return _loaded


def _flag_sets() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """``(cflags, ldflags)`` to try in order: with OpenMP first when torch uses it."""
    plain = (_CFLAGS, ())
    if sys.platform != "win32" and torch.backends.openmp.is_available():
        return [(_CFLAGS + _OPENMP_FLAGS, _OPENMP_FLAGS), plain]
    return [plain]


def build_directory(sources=SOURCES, flags=None) -> Path:
    """Where the kernels of these sources are built for this torch / Python / platform / flags."""
    cflags, ldflags = _flag_sets()[0] if flags is None else flags
    h = hashlib.sha256()
    for src in sources:
        h.update(Path(src).read_bytes())
    h.update(
        repr(
            (
                torch.__version__,
                sys.version_info[:3],
                platform.machine(),
                cflags,
                ldflags,
                sys.platform,
            )
        ).encode()
    )
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        # torch.utils.cpp_extension.get_default_build_root(), without importing that module
        # (its import logs a CUDA warning on CPU-only machines) on the fast load path.
        try:
            root = os.path.realpath(torch._appdirs.user_cache_dir(appname="torch_extensions"))
        except AttributeError:
            root = _cpp_extension().get_default_build_root()
    return Path(root) / f"{NAME}_{h.hexdigest()[:16]}"


def _build_and_load(sources) -> None:
    global _parallel
    for src in sources:
        if not Path(src).is_file():
            raise FileNotFoundError(f"kernel source {src} is missing from the installation")
    sets = _flag_sets()
    for i, flags in enumerate(sets):
        last = i + 1 == len(sets)
        failed = build_directory(sources, flags) / _FAILED
        if not last and failed.is_file():
            continue  # this machine cannot build with these flags (remembered)
        try:
            _build_and_load_with(sources, flags)
        except Exception as e:
            if last:
                raise
            # e.g. no OpenMP support in the compiler: remember, and build without it
            if failed.parent.is_dir():
                failed.write_text(f"{type(e).__name__}: {e}\n")
            continue
        _parallel = bool(flags[1])
        return


def _build_and_load_with(sources, flags) -> None:
    cflags, ldflags = flags
    build_dir = build_directory(sources, flags)
    marker = build_dir / _MARKER
    lib = Path(marker.read_text().strip()) if marker.is_file() else None
    if lib is not None and lib.is_file():
        torch.ops.load_library(str(lib))
    else:
        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None:
            raise RuntimeError(f"no C++ compiler found ({cxx!r} is not on PATH)")
        cpp_extension = _cpp_extension()
        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not installed (pip install ninja)")
        print(
            "segblocks: compiling block kernels (once per machine, ~1 min)...",
            file=sys.stderr,
            flush=True,
        )
        build_dir.mkdir(parents=True, exist_ok=True)
        lib = cpp_extension.load(
            name=NAME,
            sources=[str(s) for s in sources],
            extra_cflags=list(cflags),
            extra_ldflags=list(ldflags),
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
        marker.write_text(f"{lib}\n")
    # The library registers its ops on load; make sure they are there.
    torch.ops.segblocks_C.halo_fill_.default  # noqa: B018


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported without its CUDA_HOME notice on CPU machines."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension
