"""Blocking decode with PyAV and resampling to the model frame rate.

Runs in a worker thread (or the calling thread for ``scan``), never on the event loop.
Every failure becomes a :class:`~streamer.errors.SourceError` with one line that names
the source and what went wrong.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamer.errors import SourceError, SourceUnreachable

log = logging.getLogger(__name__)

NETWORK_SCHEMES = (
    "rtsp://",
    "rtsps://",
    "rtmp://",
    "http://",
    "https://",
    "udp://",
    "tcp://",
    "srt://",
)


@dataclass(frozen=True)
class VideoFrame:
    index: int  # position in the resampled sequence
    pts_s: float  # stream time, seconds from the first frame
    rgb: np.ndarray  # (H, W, 3) uint8


def is_network(url: str) -> bool:
    return url.lower().startswith(NETWORK_SCHEMES)


def open_video(url: str, *, timeout_s: float = 10.0) -> Any:
    """Open a file or URL with PyAV; returns an input container with a video stream."""
    options: dict[str, str] = {}
    if is_network(url):
        if url.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
    else:
        path = Path(url)
        if not path.exists():
            raise SourceError(f"video {url} does not exist; check the path")
        if path.is_dir():
            raise SourceError(f"video {url} is a folder; pass a video file")
        if path.stat().st_size == 0:
            raise SourceError(f"video {url} is empty (0 bytes); pass a complete video file")
    started = time.monotonic()
    try:
        container = av.open(url, options=options, timeout=(timeout_s, timeout_s))
    except av.error.InvalidDataError:
        if is_network(url):
            # FFmpeg reports a server that stays silent past the timeout as bad data.
            if time.monotonic() - started >= 0.9 * timeout_s:
                raise SourceUnreachable(
                    f"{url} did not answer within {timeout_s:g} s; "
                    "check the address and that the server is up"
                ) from None
            raise SourceUnreachable(
                f"{url} answered, but not with video this program reads"
            ) from None
        raise SourceError(
            f"{url} is not a video this program can read (no known container format, "
            "or the file is truncated); pass an MP4, MKV, WebM, AVI or MPEG-TS file"
        ) from None
    except (av.error.ConnectionRefusedError, av.error.ConnectionResetError) as exc:
        raise SourceUnreachable(f"{url} refused the connection ({exc.strerror})") from None
    except (TimeoutError, av.error.ExitError) as exc:
        raise SourceUnreachable(
            f"{url} did not answer within {timeout_s:g} s ({_reason(exc)}); "
            "check the address and that the server is up"
        ) from None
    except (av.error.FFmpegError, OSError) as exc:
        if is_network(url):
            raise SourceUnreachable(f"cannot read {url}: {_reason(exc)}") from None
        raise SourceError(f"cannot read video {url}: {_reason(exc)}") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{url} has no video stream; pass a file with video in it")
    return container


def decode(url: str, *, timeout_s: float = 10.0) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (seconds from the first frame, RGB frame) for each decoded frame.

    A stream that breaks off after some frames ends with a warning (what was decoded is
    kept, as a player would show it); one that yields no frame at all raises.
    """
    container = open_video(url, timeout_s=timeout_s)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 30)
        first: float | None = None
        count = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else count / rate
                if first is None:
                    first = t
                count += 1
                yield t - first, frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError) as exc:
            if count == 0:
                raise SourceError(f"could not decode any frame of {url}: {_reason(exc)}") from None
            log.warning("%s: decoding stopped after %d frames: %s", url, count, _reason(exc))
        if count == 0:
            raise SourceError(f"{url} holds no decodable video frame; the file may be truncated")
    finally:
        container.close()


def resample(frames: Iterable[tuple[float, np.ndarray]], fps: float) -> Iterator[VideoFrame]:
    """Frames on a regular clock of ``fps``: each tick shows the latest frame at or before it.

    Faster sources lose frames, slower ones repeat them, so windows of N frames always
    span N / fps seconds of stream time.
    """
    step = 1.0 / fps
    eps = step * 1e-3
    k = 0
    prev: tuple[float, np.ndarray] | None = None
    for t, rgb in frames:
        if prev is not None:
            while k * step < t - eps:
                yield VideoFrame(k, k * step, prev[1])
                k += 1
        prev = (t, rgb)
    if prev is not None:
        while k * step <= prev[0] + eps:
            yield VideoFrame(k, k * step, prev[1])
            k += 1


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0][:200]
