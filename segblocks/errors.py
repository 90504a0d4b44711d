"""The project's error types: user errors with a one-line message that says what to do.

The ``segblocks`` command catches :class:`SegBlocksError` and prints ``segblocks CMD: error:
MESSAGE`` without a traceback (``segblocks --debug ...`` shows it). The subclasses that are
about a bad value also derive from ``ValueError``, so code that caught ``ValueError`` before
still does.
"""

from __future__ import annotations

import difflib

__all__ = [
    "SegBlocksError",
    "ConfigError",
    "CheckpointError",
    "OutputDirError",
    "InputError",
    "ExportError",
    "TrainingInterrupted",
    "did_you_mean",
    "short_repr",
]


class SegBlocksError(Exception):
    """A user error: the message (one line) names the file, key or value and the fix."""


class ConfigError(SegBlocksError, ValueError):
    """A training config that cannot be used (unknown key, wrong type, out of range, bad YAML,
    or a resume whose stored config differs)."""


class CheckpointError(SegBlocksError, ValueError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


class OutputDirError(SegBlocksError):
    """An output folder that holds another run, or is in use by another trainer."""


class InputError(SegBlocksError, ValueError):
    """Input files that cannot be used (no images, name collisions, unreadable images)."""


class ExportError(SegBlocksError, RuntimeError):
    """A model that cannot be exported, scripted or traced in the form asked for; the message
    names what works (``segblocks export --format pt2``)."""


#: the one way to export that works, named by every refusal
EXPORT_HINT = (
    "export SegBlocks models with `segblocks export CKPT OUT.pt2 --format pt2 --size HxW` or "
    "segblocks.deploy.export_program(model, (H, W))"
)


class TrainingInterrupted(SegBlocksError):
    """Training stopped by Ctrl-C (``KeyboardInterrupt``).

    Attributes:
        epoch: the epoch that was running (1-based), or ``None`` before the first one.
        epochs: the configured number of epochs.
        saved_epoch: the epoch ``checkpoint`` holds (0: no checkpoint written yet).
        checkpoint: path of ``last.pt``.
    """

    def __init__(
        self, message: str, epoch=None, saved_epoch: int = 0, checkpoint=None, epochs=None
    ):
        super().__init__(message)
        self.epoch, self.saved_epoch, self.checkpoint = epoch, saved_epoch, checkpoint
        self.epochs = epochs


def did_you_mean(word, choices) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
