"""The sink interface: where verdicts go.

A sink is a long-lived component: ``async start()``, ``async publish(verdict)``,
``async stop()`` (flushes; safe to call twice) and ``ready`` for ``/readyz``. ``publish``
may wait, but only up to the sink's own bounded timeout: a sink never blocks the streams
for long, and what it cannot take it counts.
"""

from __future__ import annotations

from typing import Protocol

from streamer.verdict import Verdict


class InMemorySink:
    """Base of sinks that keep verdicts in this process: nothing to start, stop or wait for."""

    name = "memory"

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Sink(Protocol):
    name: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def publish(self, verdict: Verdict) -> None: ...

    async def stop(self) -> None: ...
