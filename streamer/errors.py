"""Errors raised by the streamer package.

``retriable`` tells a caller whether the same request can succeed later (a camera that
is down) or never will (a file that is not a video).

:class:`Rejected` and its subclasses are the service's answers to a request it will not
take. The service raises them by kind; only ``api.py`` turns a kind into an HTTP status
(``STATUS`` there), so no other module knows about HTTP.
"""


class StreamerError(Exception):
    """Base class of every error the streamer raises on purpose."""

    retriable = False


class SourceError(StreamerError):
    """A video source cannot be opened or read."""


class SourceUnreachable(SourceError):
    """A network source did not answer; it may answer later."""

    retriable = True


class FrameTooLarge(SourceError):
    """Frames over ``DFM_MAX_FRAME_PIXELS``: refused before they are converted."""


class ConfigError(StreamerError):
    """A setting has a value the service cannot use."""


class Rejected(StreamerError):
    """A request the service will not take; ``reason`` is one line saying why and what to do."""

    def __init__(self, reason: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class BadRequest(Rejected):
    """The request itself is malformed (empty body, not UTF-8, not SDP...)."""


class UrlRejected(BadRequest):
    """A source URL broke a rule of the URL policy (``streamer/urls.py``)."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"url rejected ({rule}): {reason}")
        self.rule = rule


class Invalid(Rejected):
    """Well-formed, but a value the service cannot use (unknown option, no video track)."""


class NotFound(Rejected):
    """No such stream or session."""


class Conflict(Rejected):
    """The stream id is taken."""


class LimitReached(Rejected):
    """A configured limit (streams, sessions) is reached; remove something first."""


class Busy(Rejected):
    """Try again later: every slot or the spool quota is taken."""


class TooLarge(Rejected):
    """A body or a video over its configured limit."""


class Unsupported(Rejected):
    """A media type the service does not take (not a video, not SDP)."""
