"""File source: a local video, optionally looped and paced as if it were live."""

from __future__ import annotations

import time
from collections.abc import Iterator

from streamer.sources.base import Opener
from streamer.sources.decode import VideoFrame, decode, resample


class FileOpener(Opener):
    def __init__(self, path: str, fps: float, *, loop: bool, realtime: bool) -> None:
        self.path = path
        self.fps = fps
        self.loop = loop
        self.realtime = realtime
        self.ends = not loop
        self.restarts = loop
        self._offset = 0.0  # stream time keeps running across loops

    def open(self) -> Iterator[VideoFrame]:
        start = time.monotonic()
        last = -1.0 / self.fps
        for frame in resample(decode(self.path), self.fps):
            last = frame.pts_s
            if self.realtime:
                wait = start + frame.pts_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            yield VideoFrame(frame.index, self._offset + frame.pts_s, frame.rgb)
        self._offset += last + 1.0 / self.fps
