"""The sink interface: where verdicts go.

A sink is a long-lived component: ``async start()``, ``async publish(verdict, on_ack)``,
``async stop()`` (flushes; safe to call twice) and ``ready`` for ``/readyz``. ``publish``
may wait, but only up to the sink's own bounded timeout: a sink never blocks the streams
for long, and what it cannot take it counts. ``on_ack`` is called on the loop once the
verdict is delivered (for a sink in this process: once written), or once it is given up
and counted, so a source's input is never held for ever (``streamer/delivery.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from streamer.verdict import Verdict

Ack = Callable[[], None]


class InMemorySink:
    """Base of sinks that keep verdicts in this process: nothing to start, stop or wait for."""

    name = "memory"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...

    async def publish(self, verdict: Verdict, on_ack: Ack | None = None) -> None: ...

    async def stop(self) -> None: ...
