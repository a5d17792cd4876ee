"""One bounded buffer for every queue of the service, each with a named policy for when it is full.

The service hands work between threads and the event loop in four places: a stream's
inbox (source thread -> loop), a WHIP publisher's frames (loop -> source thread), a Kafka
video stream's messages (loop -> source thread) and the Kafka verdict sink (loop ->
producer task). Each is a :class:`BoundedBuffer` with a ``capacity`` and a
:class:`Policy`:

* ``drop-oldest``: a full buffer loses its oldest item to take the new one (live frames:
  the newest frame is the one worth analysing);
* ``drop-newest``: a full buffer refuses the new item (the producer keeps its own copy or
  counts the loss itself);
* ``block``: a full buffer makes the producer wait for room, up to a timeout (None: until
  there is room or the buffer ends), and then refuses the item.

Every item lost is counted in ``deepfake_queue_dropped_total{queue}`` (and handed to the
buffer's ``on_drop``, which the owner uses for its per-stream counters); the depth and
capacity of all buffers of one name are summed at scrape time into
``deepfake_queue_depth{queue}`` and ``deepfake_queue_capacity{queue}``, so a queue that
fills shows in ``/metrics`` before it drops.

A buffer is safe to use from threads and from one event loop: ``put``/``get`` may block a
thread (never call them on the loop), ``put_nowait``/``get_nowait``/``take`` never block,
``aget``/``wait`` wait on the loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter, Gauge

T = TypeVar("T")


class Policy(StrEnum):
    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"
    BLOCK = "block"


class Empty(Exception):
    """``get`` found nothing within its timeout."""


class Ended(Exception):
    """The producer called :meth:`BoundedBuffer.end` and every item has been taken."""


class Measured(Protocol):
    """What a queue's series are computed from (a buffer, or a frame pool's lane)."""

    name: str
    capacity: int

    def __len__(self) -> int: ...


class QueueMetrics:
    """The three series every named queue has, computed from its live buffers."""

    def __init__(self, depth: Gauge, capacity: Gauge, dropped: Counter) -> None:
        self.depth = depth
        self.capacity = capacity
        self.dropped = dropped
        self._buffers: dict[str, weakref.WeakSet[Measured]] = {}
        self._lock = threading.Lock()

    def attach(self, buffer: Measured) -> None:
        name = buffer.name
        with self._lock:
            group = self._buffers.get(name)
            if group is None:
                group = self._buffers[name] = weakref.WeakSet()
                self.depth.labels(name).set_function(lambda: self._sum(name, len))
                self.capacity.labels(name).set_function(
                    lambda: self._sum(name, lambda b: b.capacity)
                )
                self.dropped.labels(name).inc(0)
            group.add(buffer)

    def detach(self, buffer: Measured) -> None:
        with self._lock:
            self._buffers.get(buffer.name, weakref.WeakSet()).discard(buffer)

    def _sum(self, name: str, value: Callable[[Measured], int]) -> float:
        with self._lock:
            members = list(self._buffers.get(name, ()))
        return float(sum(value(b) for b in members))


class BoundedBuffer(Generic[T]):
    """A FIFO of at most ``capacity`` items; what happens when it is full is ``policy``."""

    def __init__(
        self,
        name: str,
        capacity: int,
        policy: Policy,
        *,
        metrics: QueueMetrics | None = None,
        on_drop: Callable[[T], None] | None = None,
        block_timeout_s: float | None = 1.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"queue {name}: capacity must be at least 1, not {capacity}")
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self.block_timeout_s = block_timeout_s
        self.dropped = 0
        self._on_drop = on_drop
        self._metrics = metrics
        self._items: deque[T] = deque()
        self._ended = False
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set when an item or room appears
        if metrics is not None:
            metrics.attach(self)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def end(self) -> None:
        """No more items: consumers take what is left, then get :class:`Ended`. Safe twice."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        self._wake()

    def close(self) -> None:
        """Stop reporting this buffer in the queue's depth and capacity. Safe twice."""
        if self._metrics is not None:
            self._metrics.detach(self)

    # -- producers --------------------------------------------------------------------

    def put_nowait(self, item: T) -> bool:
        """Add ``item`` without waiting; False when it was refused (drop-newest or block).

        After :meth:`end` every item is refused, and not counted: nobody would take it.
        """
        with self._cond:
            if self._ended:
                return False
            lost: T | None = None
            taken = True
            if len(self._items) >= self.capacity:
                if self.policy is Policy.DROP_OLDEST:
                    lost = self._items.popleft()
                else:
                    lost, taken = item, False
            if taken:
                self._items.append(item)
                self._cond.notify()
        if lost is not None:
            self._lost(lost)
        if taken:
            self._wake()
        return taken

    def put(self, item: T, timeout: float | None = None) -> bool:
        """From a thread: like :meth:`put_nowait`, but ``block`` waits for room first."""
        if self.policy is Policy.BLOCK:
            wait = self.block_timeout_s if timeout is None else timeout
            with self._cond:
                self._cond.wait_for(lambda: not self.full or self._ended, wait)
        return self.put_nowait(item)

    # -- consumers --------------------------------------------------------------------

    def get_nowait(self) -> T:
        with self._cond:
            if not self._items:
                raise Ended if self._ended else Empty
            item = self._items.popleft()
            self._cond.notify()
        self._wake()
        return item

    def get(self, timeout: float | None = None) -> T:
        """From a thread: the oldest item, waiting up to ``timeout`` (None: for ever)."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items) or self._ended, timeout):
                raise Empty
            if not self._items:
                raise Ended
            item = self._items.popleft()
            self._cond.notify()
        self._wake()
        return item

    async def aget(self) -> T:
        """On the loop: the oldest item, waiting without blocking the loop."""
        await self.wait()
        return self.get_nowait()

    async def wait(self) -> None:
        """On the loop: until an item is waiting, or the buffer has ended."""
        while True:
            changed = self._event()
            changed.clear()
            if self._items or self._ended:
                return
            await changed.wait()

    def take(self, n: int) -> list[T]:
        """Up to ``n`` of the oldest items, taken out without waiting."""
        with self._cond:
            items = [self._items.popleft() for _ in range(min(n, len(self._items)))]
            self._cond.notify_all()
        if items:
            self._wake()
        return items

    def unget(self, items: list[T]) -> None:
        """Put ``items`` back in front, in their order (a consumer could not finish them).

        They are the oldest now: if the buffer overflows, drop-oldest loses them first
        (counted), the other policies lose the newest.
        """
        lost: list[T] = []
        with self._cond:
            self._items.extendleft(reversed(items))
            while len(self._items) > self.capacity:
                oldest = self.policy is Policy.DROP_OLDEST
                lost.append(self._items.popleft() if oldest else self._items.pop())
            self._cond.notify_all()
        for item in lost:
            self._lost(item)
        self._wake()

    # -- internals --------------------------------------------------------------------

    def _lost(self, item: T) -> None:
        self.dropped += 1
        if self._metrics is not None:
            self._metrics.dropped.labels(self.name).inc()
        if self._on_drop is not None:
            self._on_drop(item)

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:
            self._loop, self._changed = loop, asyncio.Event()
        return self._changed

    def _wake(self) -> None:
        loop, changed = self._loop, self._changed
        if loop is None or changed is None or changed.is_set():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            changed.set()
        else:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass
