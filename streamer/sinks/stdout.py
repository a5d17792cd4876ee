"""Verdicts as JSON lines on stdout (the embedded default), and the recent-verdicts ring."""

from __future__ import annotations

import sys
from collections import deque
from typing import TextIO

from streamer.sinks.base import Ack, InMemorySink
from streamer.verdict import Verdict


class StdoutSink:
    """One JSON line per verdict, flushed at once so a pipe reader sees it live."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._out = stream
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def publish(self, verdict: Verdict, on_ack: Ack | None = None) -> None:
        out = self._out or sys.stdout
        out.write(verdict.to_json() + "\n")
        out.flush()
        if on_ack is not None:
            on_ack()

    async def stop(self) -> None:
        if self._started:
            (self._out or sys.stdout).flush()
            self._started = False


class RecentVerdicts(InMemorySink):
    """The last ``size`` verdicts of each stream, for ``GET /v1/streams/{id}/verdicts``."""

    name = "recent"

    def __init__(self, size: int) -> None:
        self.size = size
        self._rings: dict[str, deque[Verdict]] = {}

    async def publish(self, verdict: Verdict, on_ack: Ack | None = None) -> None:
        ring = self._rings.setdefault(verdict.stream_id, deque(maxlen=self.size))
        ring.append(verdict)
        if on_ack is not None:
            on_ack()

    def recent(self, stream_id: str, limit: int | None = None) -> list[Verdict]:
        ring = list(self._rings.get(stream_id, ()))
        return ring[-limit:] if limit else ring

    def forget(self, stream_id: str) -> None:
        self._rings.pop(stream_id, None)
