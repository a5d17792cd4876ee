"""A fixed pool of frame workers: each does the per-frame work of many streams.

A stream's reader thread (``SourceWorker``) only reads and decodes: it takes frames from
its opener (PyAV's demuxer and decoder, aiortc's track, a Kafka topic) and puts each one
its stride keeps into the stream's :class:`Lane`. The pool's threads, ``DFM_FRAME_WORKERS``
of them for the whole node, take the lanes' frames and do what costs CPU and holds the
GIL: the picture's conversion to RGB, face detection and tracking, cropping, the evidence
context. So a node with hundreds of streams runs a few busy threads instead of hundreds
of threads contending for the GIL, and with the PyTorch detector the frames of all the
streams a worker serves reach the batched detection stage together.

A lane belongs to one worker (the one serving the fewest lanes when it was opened), so a
stream's frames are worked in order by one thread and its tracker is never shared. A
worker takes one frame from each of its lanes in turn. A lane holds a few frames: a live
stream whose worker falls behind loses its oldest (``on_drop(lost, heir)`` hands what
must not be lost with it, such as a discontinuity, to the frame now first; the stream
counts it as backpressure); a source whose frames wait for us (Kafka) makes its reader wait
instead. A lane whose consumer has no room (``ready`` false) is passed over, so one
stalled stream never holds up the others of its worker.

The node's decode pool is a second pool of this kind (``DFM_DECODE_WORKERS``, lanes named
``packet_lane``): a file, RTSP or Kafka stream's reader only demuxes, and its packets are
decoded there, in order, by one worker (``streamer/sources/base.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from streamer.buffers import QueueMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Frames a lane holds for its worker (decoded pictures: 0.6 MB at 480p, 3.1 MB at 1080p):
# 133 ms at 30 fps, so a worker that serves many streams may be late for one of them by a
# tenth of a second (another stream's slow frame, an interpreter pause) without a loss.
LANE_FRAMES = 4
# Packets a decode lane holds (streamer/sources/base.py): two seconds of 30-fps video, a
# few kB a packet; what is lost past that costs the packets up to the next keyframe.
LANE_PACKETS = 60
# Packets (or JPEG messages) a decode lane of a source that waits holds (Kafka): its reader
# waits for room, so a few keep the worker fed; the topic holds the rest.
LANE_PACKETS_WAITING = 8
NOT_READY_POLL_S = 0.01  # a worker with frames only for lanes without room looks again


class Lane(Generic[T]):
    """One stream's frames on their way from its reader to its pool worker (queue
    ``frame_lane`` in ``deepfake_queue_*``; ``packet_lane`` in the decode pool)."""

    def __init__(
        self,
        pool: FramePool,
        worker: _Worker,
        work: Callable[[T], None],
        *,
        waits: bool,
        capacity: int,
        ready: Callable[[], bool],
        on_drop: Callable[[T, T], None],
    ) -> None:
        self._pool = pool
        self.name = pool.name
        self._worker = worker
        self.work = work  # called in the worker's thread, one frame at a time, in order
        self.waits = waits
        self.capacity = capacity
        self.ready = ready
        self.on_drop = on_drop  # (lost, heir), the pool's lock held: keep it short
        # Called in the worker's thread as it takes an item (no lock held): what waits for
        # this lane to have room elsewhere is told at once (SourceWorker._room).
        self.on_take: Callable[[], None] | None = None
        self._items: deque[T] = deque()
        self._metrics = pool.metrics
        if self._metrics is not None:
            self._metrics.attach(self)
        self._closed = False
        self._busy = False  # the worker is in work() for this lane
        self._idle = threading.Condition(pool.lock)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, *, wait: bool = True, burst: int = 0) -> bool:
        """From the reader: queue a frame. A full lane drops its oldest, or (``waits``)
        blocks until there is room; with ``wait`` false (a thread that serves other
        streams too), a lane that waits takes it past its capacity: the caller bounds what
        it adds. ``burst``: the items put just before this one that came with it (one
        packet's frames, handed on at once): a lane that drops keeps them past its
        capacity and drops only what was queued before them, or it would lose part of
        every burst however idle its worker. False once the lane is closed."""
        with self._pool.lock:
            if self.waits and wait:
                self._idle.wait_for(lambda: self._closed or len(self._items) < self.capacity)
            if self._closed:
                return False
            self._items.append(item)
            while len(self._items) > self.capacity + burst and not self.waits:
                lost = self._items.popleft()
                self.on_drop(lost, self._items[0])
                if self._metrics is not None:
                    self._metrics.dropped.labels(self.name).inc()
            self._worker.wake.notify()
        return True

    def finish(self, timeout: float | None = None) -> bool:
        """From the reader: wait until every frame put so far has been worked."""
        with self._pool.lock:
            return self._idle.wait_for(
                lambda: self._closed or not (self._items or self._busy), timeout
            )

    def drain(self, timeout: float | None = None) -> bool:
        """From the reader: drop what is queued (not counted as lost) and wait (up to
        ``timeout``) for the item being worked; True once the worker is done with them."""
        with self._pool.lock:
            self._items.clear()
            self._idle.notify_all()
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def poke(self) -> None:
        """Another thread made room for this lane's work (its ``ready`` may be true now):
        its worker looks at once, not after its poll."""
        with self._pool.lock:
            self._worker.wake.notify()

    def close(self, timeout: float | None = None) -> bool:
        """Drop what is queued, take the lane off its worker, and wait (up to ``timeout``)
        for the frame being worked; True once the worker no longer touches the lane."""
        if self._metrics is not None:
            self._metrics.detach(self)
        with self._pool.lock:
            self._closed = True
            self._items.clear()
            if self in self._worker.lanes:
                self._worker.lanes.remove(self)  # type: ignore[arg-type]
            self._idle.notify_all()
            return self._idle.wait_for(lambda: not self._busy, timeout)

    # -- worker side (the pool's lock held) ----------------------------------------------
    def _take(self) -> T | None:
        if not self._items or not self.ready():
            return None
        self._busy = True
        item = self._items.popleft()
        self._idle.notify_all()  # a waiting reader has room now
        return item

    def _done(self) -> None:
        self._busy = False
        self._idle.notify_all()


class _Worker:
    def __init__(self, pool: FramePool, index: int) -> None:
        self.lanes: list[Lane[object]] = []
        self.wake = threading.Condition(pool.lock)
        self.thread = threading.Thread(
            target=pool._serve, args=(self,), name=f"{pool.thread_name}-{index}", daemon=True
        )
        self.next = 0  # the lane to look at first: each lane gets its turn


class FramePool:
    """Up to ``workers`` threads (one more started only when each has a lane) serving
    every stream's lane."""

    def __init__(
        self,
        workers: int,
        *,
        lane_frames: int = LANE_FRAMES,
        metrics: QueueMetrics | None = None,
        name: str = "frame_lane",
        thread_name: str = "frames",
    ) -> None:
        if workers < 1:
            raise ValueError(f"the frame pool needs at least 1 worker, not {workers}")
        self.workers = workers
        self.name = name  # the lanes' queue in deepfake_queue_*
        self.thread_name = thread_name
        self.metrics = metrics
        self.lane_frames = lane_frames
        self.lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._stopped = False

    @property
    def threads(self) -> int:
        """Worker threads running now."""
        return sum(w.thread.is_alive() for w in self._workers)

    def lane(
        self,
        work: Callable[[T], None],
        *,
        waits: bool = False,
        ready: Callable[[], bool] = lambda: True,
        on_drop: Callable[[T, T], None] = lambda _lost, _heir: None,
        capacity: int | None = None,
    ) -> Lane[T]:
        """A new stream's lane, served by the worker with the fewest lanes; it holds
        ``capacity`` items (default: the pool's ``lane_frames``)."""
        with self.lock:
            if self._stopped:
                raise RuntimeError("the frame pool has stopped")
            # An idle worker first: a stream coming and going starts no new thread.
            worker = min(self._workers, key=lambda w: len(w.lanes), default=None)
            if worker is None or (worker.lanes and len(self._workers) < self.workers):
                worker = _Worker(self, len(self._workers))
                self._workers.append(worker)
                worker.thread.start()
            lane: Lane[T] = Lane(
                self,
                worker,
                work,
                waits=waits,
                capacity=capacity or self.lane_frames,
                ready=ready,
                on_drop=on_drop,
            )
            worker.lanes.append(lane)  # type: ignore[arg-type]
            return lane

    def stop(self, timeout: float = 1.0) -> None:
        """End the workers, waiting ``timeout`` at most for all of them (lanes still open
        lose their frames; the threads are daemons). Safe to call twice."""
        with self.lock:
            self._stopped = True
            for worker in self._workers:
                for lane in worker.lanes:
                    if self.metrics is not None:
                        self.metrics.detach(lane)
                    lane._closed = True
                    lane._items.clear()
                    lane._idle.notify_all()
                worker.lanes.clear()
                worker.wake.notify_all()
        deadline = time.monotonic() + timeout  # for all of them together
        for worker in self._workers:
            if worker.thread is not threading.current_thread():
                worker.thread.join(max(0.0, deadline - time.monotonic()))

    def _serve(self, worker: _Worker) -> None:
        while True:
            with self.lock:
                lane, item = self._next(worker)
                while lane is None and not self._stopped:
                    waiting = any(ln._items for ln in worker.lanes)  # but none has room
                    worker.wake.wait(NOT_READY_POLL_S if waiting else None)
                    lane, item = self._next(worker)
                if lane is None:
                    return
            try:
                if lane.on_take is not None:
                    lane.on_take()
                lane.work(item)
            except Exception:  # the lane's own work reports its errors; this is a bug
                log.exception("frame worker: a stream's frame work failed")
            finally:
                with self.lock:
                    lane._done()

    def _next(self, worker: _Worker) -> tuple[Lane[object] | None, object]:
        """The next lane with a frame and room for its result, round robin (lock held)."""
        lanes = worker.lanes
        for k in range(len(lanes)):
            lane = lanes[(worker.next + k) % len(lanes)]
            item = lane._take()
            if item is not None:
                worker.next = (worker.next + k + 1) % len(lanes)
                return lane, item
        return None, None
