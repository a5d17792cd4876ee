"""The sink interface: where verdicts go.

A sink is a long-lived component: ``async start()``, ``async publish(verdict)``,
``async stop()`` (flushes; safe to call twice) and ``ready`` for ``/readyz``. ``publish``
may wait, but only up to the sink's own bounded timeout: a sink never blocks the streams
for long, and what it cannot take it counts.
"""

from __future__ import annotations

from typing import Protocol

from streamer.verdict import Verdict


class Sink(Protocol):
    name: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def publish(self, verdict: Verdict) -> None: ...

    async def stop(self) -> None: ...
