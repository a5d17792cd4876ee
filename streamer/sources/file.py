"""File source: a local video, optionally looped and paced as if it were live."""

from __future__ import annotations

import time
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


class FileOpener(Opener):
    packets = True

    def __init__(
        self,
        source: SourceUrl,
        fps: float,
        *,
        loop: bool,
        realtime: bool,
        limits: DecodeLimits | None = None,
        max_gap_s: float | None = None,
    ) -> None:
        self.source = source
        self.fps = fps
        self.loop = loop
        self.realtime = realtime
        self.limits = limits
        self.max_gap_s = max_gap_s
        self.ends = not loop
        self.restarts = loop
        self._offset = 0.0  # stream time keeps running across loops

    def open(self) -> Iterator[VideoFrame]:
        start = time.monotonic()
        last = -1.0 / self.fps
        frames = decode_pictures(self.source, limits=self.limits)
        for frame in resample(frames, self.fps, max_gap_s=self.max_gap_s):
            last = frame.pts_s
            if self.realtime:
                wait = start + frame.pts_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            yield VideoFrame(frame.index, self._offset + frame.pts_s, frame.picture, frame.restart)
        self._offset += last + 1.0 / self.fps

    def demux(self) -> PacketFeed:
        return PacketFeed.open(
            self.source,
            fps=self.fps,
            offset=self._offset,
            limits=self.limits,
            max_gap_s=self.max_gap_s,
        )

    def demuxed(self, feed: Feed) -> None:
        last = feed.last if feed.last is not None else -1.0 / self.fps
        self._offset += last + 1.0 / self.fps
