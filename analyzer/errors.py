"""Errors raised by the analyzer package.

Each message names the bad value and what to change. ``retriable`` says whether trying
the same thing again can help (it never can for a bad file; it may for a busy device).
"""


class AnalyzerError(Exception):
    """Base class of every error the analyzer raises on purpose."""

    retriable = False


class CheckpointError(AnalyzerError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


class FaceModelError(AnalyzerError):
    """The face detector model could not be loaded."""


class DataError(AnalyzerError):
    """Input data (videos, photos, labels) cannot be used as given."""


class AssetsMissingError(DataError):
    """Data fetched at set-up time (face photographs) is not where it should be."""


class DeviceError(AnalyzerError):
    """The device asked for (``--device``, ``DFM_DEVICE``) is not usable here."""


def first_line(exc: BaseException, limit: int = 200, *, text: str | None = None) -> str:
    """An exception said in one line, for a 4xx, a failed source or a skipped file: the first
    line of its message with words in it, cut at ``limit``, or its type's name where it says
    nothing. ``text``, where given and not empty, is said instead of ``str(exc)`` (an
    ``OSError``'s ``strerror``, which leaves out the file name or URL)."""
    lines = [line.strip() for line in str(text or exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
