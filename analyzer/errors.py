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
