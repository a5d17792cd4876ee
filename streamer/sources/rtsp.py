"""RTSP source: PyAV over TCP with open and read timeouts.

A read timeout (no packet for ``stall_timeout_s``) ends the decode; the worker then
treats the source as down and reconnects.
"""

from __future__ import annotations

from collections.abc import Iterator

from streamer.sources.base import Opener
from streamer.sources.decode import VideoFrame, decode, resample


class RtspOpener(Opener):
    ends = False

    def __init__(self, url: str, fps: float, *, stall_timeout_s: float) -> None:
        self.url = url
        self.fps = fps
        self.stall_timeout_s = stall_timeout_s
        self._offset = 0.0

    def open(self) -> Iterator[VideoFrame]:
        last = 0.0
        for frame in resample(decode(self.url, timeout_s=self.stall_timeout_s), self.fps):
            last = frame.pts_s
            yield VideoFrame(frame.index, self._offset + frame.pts_s, frame.rgb)
        self._offset += last + 1.0 / self.fps
