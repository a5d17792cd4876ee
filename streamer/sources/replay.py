"""Replayed video, a load generator for benchmarks: one clip demuxed once, its packets
handed to every stream that replays it, with fresh timestamps, for ever.

A stream of a looped file opens the file, probes and demuxes it again on each loop; at a
thousand streams that is work the node being measured does for the load generator. A
:class:`Recording` keeps a clip's packets (the bytes, times and keyframe flags, a few MB
for ten seconds of 480p); a :class:`ReplayOpener` gives them to its stream's decode pool
worker as if live, each loop's times shifted past the last, so decoding, faces and the
model see one endless camera (no new connection, no restart of tracks at the loop).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from fractions import Fraction
from pathlib import Path

import av

from streamer.errors import SourceError
from streamer.sources.base import Opener
from streamer.sources.decode import (
    DecodeLimits,
    Feed,
    LivePace,
    PacketFeed,
    VideoFrame,
    open_video,
    run_feed,
)
from streamer.urls import parse_source_url


class Recording:
    """A clip's video packets in decode order, read once."""

    def __init__(self, path: Path, *, limits: DecodeLimits | None = None) -> None:
        self.source = parse_source_url(str(path), kind="scan")
        with open_video(self.source, limits=limits) as container:
            stream = container.streams.video[0]
            self.time_base = stream.time_base or Fraction(1, 90000)
            rate = stream.average_rate or stream.guessed_rate or 30
            self.packets = [
                (bytes(p), p.pts, p.dts, bool(p.is_keyframe))
                for p in container.demux(stream)
                if p.size
            ]
        stamps = [pts for _data, pts, _dts, _key in self.packets if pts is not None]
        if not stamps:
            raise SourceError(f"{self.source.redacted} has no video packets with times to replay")
        # One loop's length in time-base units: the first frame to one frame past the last.
        frame = max(1, round(1 / (float(rate) * self.time_base)))
        self.span = max(stamps) - min(stamps) + frame


class _ReplayFeed(PacketFeed):
    """A :class:`PacketFeed` whose packets come from a :class:`Recording` instead of the
    container (opened for its decoder only), ``loops`` times (None: for ever)."""

    def __init__(
        self, recording: Recording, loops: int | None, limits: DecodeLimits, *, fps: float
    ) -> None:
        container = open_video(recording.source, limits=limits)
        super().__init__(container, recording.source.redacted, limits, fps=fps)
        self.recording = recording
        self.loops = loops

    def packets(self, *, realtime: bool = False) -> Generator[av.Packet, None, None]:
        live = LivePace()
        rec = self.recording
        loop = 0
        while self.loops is None or loop < self.loops:
            shift = loop * rec.span
            for data, pts, dts, key in rec.packets:
                if self.failed is not None:
                    return
                packet = av.Packet(data)
                packet.pts = None if pts is None else pts + shift
                packet.dts = None if dts is None else dts + shift
                packet.time_base = rec.time_base
                packet.is_keyframe = key
                if realtime:
                    live.wait(packet)
                self.demuxed += 1
                yield packet
            loop += 1


class ReplayOpener(Opener):
    """A stream that replays a :class:`Recording` as if live (``realtime``), decoded in
    the node's decode pool; ``loops`` times, or for ever."""

    packets = True
    restarts = False

    def __init__(
        self,
        recording: Recording,
        fps: float,
        *,
        limits: DecodeLimits,
        realtime: bool = True,
        loops: int | None = None,
    ) -> None:
        self.recording = recording
        self.fps = fps
        self.limits = limits
        self.realtime = realtime
        self.loops = loops
        self.ends = loops is not None

    def open(self) -> Iterator[VideoFrame]:
        """Without a decode pool: replayed and decoded in the reader."""
        return run_feed(self.demux(), realtime=self.realtime)

    def demux(self) -> Feed:
        return _ReplayFeed(self.recording, self.loops, self.limits, fps=self.fps)
