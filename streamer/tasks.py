"""The service's background tasks: one way to run them, see them fail, and restart them.

Every long-lived loop of the service (the batcher, the overload governor, the Kafka sink,
the stream directory, the Kafka video ingest) runs under :class:`Supervisor`:

* a loop that raises is logged with its traceback, counted in
  ``deepfake_task_restarts_total{task}``, and started again after a capped, jittered
  backoff;
* a loop that fails ``GIVE_UP_AFTER`` times in a row (without ``HEALTHY_S`` of running
  in between) is given up: :meth:`Supervisor.problems` names it, ``/healthz`` fails, and
  Kubernetes restarts the pod, which is the restart that clears what a loop cannot;
* a loop that returns has finished its work and is not restarted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)

GIVE_UP_AFTER = 5  # failures in a row before a loop is given up (and /healthz fails)
HEALTHY_S = 60.0  # a loop that ran this long before failing starts its count afresh


class Restart(Exception):
    """A loop asks for a fresh start, for a reason it knows (logged in one line, counted)."""


@dataclass(frozen=True)
class Backoff:
    """When to try again: sources reconnecting, supervised loops restarting."""

    initial_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform in [0.5, 1] of min(max, initial * 2^n)."""
        exponent = min(max(0, attempt - 1), 64)  # a source down for days: no float overflow
        base = min(self.max_s, self.initial_s * 2.0**exponent)
        return base * random.uniform(0.5, 1.0)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended; nothing happens for None or a done task."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task})  # a cancellation of the caller itself still goes through
    if not task.cancelled():
        task.result()  # it ended another way: its error is not lost


class Supervisor:
    """Starts named loops, restarts the ones that fail, and reports the ones given up."""

    def __init__(self, restarts: Counter | None = None, backoff: Backoff | None = None) -> None:
        self.restarts = restarts
        self.backoff = backoff or Backoff(0.5, 10.0)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._given_up: dict[str, BaseException] = {}

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``run()`` as task ``name`` under supervision; names are unique while running."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} is already running")
        self._given_up.pop(name, None)
        if self.restarts is not None:
            self.restarts.labels(name).inc(0)  # the series exists before the first failure
        task = asyncio.create_task(self._keep(name, run), name=name)
        self._tasks[name] = task
        return task

    async def cancel(self, name: str) -> None:
        """Stop task ``name`` (no restart); nothing happens when it is not running."""
        await cancel_and_wait(self._tasks.pop(name, None))

    async def cancel_all(self) -> None:
        for name in list(self._tasks):
            await self.cancel(name)

    def problems(self) -> list[str]:
        """The loops given up, each with why: the replica is unfit to live."""
        return [
            f"the {name} task failed {GIVE_UP_AFTER} times in a row: {exc!r}"
            for name, exc in self._given_up.items()
        ]

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except Exception as exc:
                failures = 1 if time.monotonic() - started >= HEALTHY_S else failures + 1
                if self.restarts is not None:
                    self.restarts.labels(name).inc()
                if failures >= GIVE_UP_AFTER:
                    log.error("task %s failed %d times in a row; giving up", name, failures,
                              exc_info=exc)  # fmt: skip
                    self._given_up[name] = exc
                    return
                delay = self.backoff.delay(failures)
                if isinstance(exc, Restart):
                    log.error("task %s: %s; restarting in %.1f s", name, exc, delay)
                else:
                    log.error("task %s failed; restarting in %.1f s", name, delay, exc_info=exc)
                await asyncio.sleep(delay)
