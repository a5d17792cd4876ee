"""RTSP source: PyAV over TCP with open and read timeouts.

A read timeout (no packet for ``stall_timeout_s``) ends the decode; the worker then
treats the source as down and reconnects.
"""

from __future__ import annotations

from collections.abc import Iterator

from streamer.sources.base import Opener
from streamer.sources.decode import (
    DecodeLimits,
    Feed,
    PacketFeed,
    VideoFrame,
    decode_pictures,
    resample,
)
from streamer.urls import SourceUrl


class RtspOpener(Opener):
    ends = False
    network = True
    packets = True

    def __init__(
        self,
        url: SourceUrl,
        fps: float,
        *,
        stall_timeout_s: float,
        limits: DecodeLimits,
        max_gap_s: float | None = None,
    ) -> None:
        self.url = url
        self.fps = fps
        self.stall_timeout_s = stall_timeout_s
        self.limits = limits
        self.max_gap_s = max_gap_s
        self._offset = 0.0

    def open(self) -> Iterator[VideoFrame]:
        last = 0.0
        frames = decode_pictures(self.url, timeout_s=self.stall_timeout_s, limits=self.limits)
        for frame in resample(frames, self.fps, max_gap_s=self.max_gap_s):
            last = frame.pts_s
            yield VideoFrame(frame.index, self._offset + frame.pts_s, frame.picture, frame.restart)
        self._offset += last + 1.0 / self.fps

    def demux(self) -> PacketFeed:
        return PacketFeed.open(
            self.url,
            fps=self.fps,
            offset=self._offset,
            timeout_s=self.stall_timeout_s,
            limits=self.limits,
            max_gap_s=self.max_gap_s,
        )

    def demuxed(self, feed: Feed) -> None:
        self._offset += (feed.last if feed.last is not None else 0.0) + 1.0 / self.fps
