"""Deployment: a SegBlocks model as one ``torch.export`` program, and an AOTInductor package.

- :func:`export_program` / :func:`save_exported` (``segblocks export --format pt2``): the
  whole model (policy, block execution, combine) for one input size, the number of HR blocks
  left free, so one artifact serves every mask from all-LR to all-HR.
- :func:`package_aoti` (``--format aoti``): that program compiled ahead of time by
  AOTInductor into a CPU shared library inside a ``.pt2`` package.
- :func:`load_exported`: either artifact as an :class:`ExportedSegBlocks` that runs like the
  eager model (``model(image, budget=...)`` -> :class:`SegBlocksOutput`) without the training
  stack.
"""

from .export import ExportError, export_program, package_aoti, save_exported
from .runtime import ExportedSegBlocks, load_exported

__all__ = [
    "ExportError",
    "ExportedSegBlocks",
    "export_program",
    "load_exported",
    "package_aoti",
    "save_exported",
]
