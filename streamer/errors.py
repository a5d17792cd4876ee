"""Errors raised by the streamer package.

``retriable`` tells a caller whether the same request can succeed later (a camera that
is down) or never will (a file that is not a video).
"""


class StreamerError(Exception):
    """Base class of every error the streamer raises on purpose."""

    retriable = False


class SourceError(StreamerError):
    """A video source cannot be opened or read."""


class SourceUnreachable(SourceError):
    """A network source did not answer; it may answer later."""

    retriable = True


class ConfigError(StreamerError):
    """A setting has a value the service cannot use."""
