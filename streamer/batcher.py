"""Cross-stream batching into the engine, which runs in a thread of its own.

Streams submit face crops (backbone work), due windows (head work) and, with the PyTorch
face detector, letterboxed frames due for detection (detection work: see
``streamer/detection.py``). One loop task gathers them into batches, up to ``max_batch``
crops or ``max_wait_ms`` after the first one (``detect_batch`` frames or
``detect_wait_ms`` for detection), head work first, then detection (a stream's thread
waits for it), then the backbone, and runs each batch in the engine thread. Results go
back through futures on the event loop.

A backbone batch also closes as soon as it holds crops from every stream that sent
crops in the last ``RECENT_S`` (as DeepStream's muxer forms a batch of one frame per
source): the service waits up to one frame interval for them (``DFM_MAX_WAIT_MS`` unset),
so streams whose frames arrive spread over the interval share one call, and streams whose
frames arrive together do not wait at all.

Health: every failed call is counted (``deepfake_engine_errors_total{stage}``) and every
finished one beats ``deepfake_engine_last_batch_timestamp_seconds``; :meth:`stalled_for`
feeds ``/healthz``. The batching loop runs under the service's :class:`Supervisor`.

Backpressure: at most ``max_inflight`` crops may wait for the engine, and no more than
about ``QUEUE_S`` seconds of its work at the rate it has been measured to run (but always
two full batches). A stream that finds no room waits (:meth:`reserve`); meanwhile its own
frame inbox fills and drops its oldest frames, counted as
``frames_dropped_total{reason="backpressure"}``, which the overload governor reads. So
memory and latency stay bounded when the engine falls behind: a slow engine (a CPU node,
a throttled GPU) no longer queues 256 crops, tens of seconds during which every stream
waits for features behind the backlog and takes no frame at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import torch

from analyzer.blazeface import stack_squares
from analyzer.engine import Engine
from streamer.faults import Faults, InjectedFault
from streamer.metrics import Metrics
from streamer.tasks import Supervisor

if TYPE_CHECKING:
    from analyzer.faces import Pixels

log = logging.getLogger(__name__)
T = TypeVar("T")

QUEUE_S = 1.0  # crops admitted to the engine queue: about this many seconds of its work
RATE_WEIGHT = 0.3  # weight of the newest backbone call in the measured rate (crops/s)
MAX_HEAD_BATCH = 256  # windows per head call: a burst of due windows goes in slices
RECENT_S = 1.0  # a stream that sent crops this recently is waited for by a backbone batch


class FaceNetwork(Protocol):
    """The batched part of a face detector (:class:`analyzer.blazeface.TorchFaceDetector`):
    its network over letterboxed frames, on the engine's device."""

    def network(self, squares: Pixels) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class _Request:
    # crops, (S, S, 3) uint8 on the host or (3, S, S) uint8 on the engine's device
    # (DFM_CROP=device); letterboxes, (128, 128, 3) on either; or windows of features
    items: Sequence[Pixels]
    future: asyncio.Future[np.ndarray] = field(repr=False)
    queued: float = field(default_factory=time.monotonic)
    source: str | None = None  # the stream (backbone work): None is never waited for


class Batcher:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 1000 / 30,
        max_inflight: int = 256,
        faults: Faults | None = None,
        supervisor: Supervisor | None = None,
        face_network: FaceNetwork | None = None,
        detect_batch: int = 32,
        detect_wait_ms: float = 5.0,
    ) -> None:
        self.engine = engine
        self.face_network = face_network
        self.detect_batch = detect_batch
        self.detect_wait = detect_wait_ms / 1000.0
        self.supervisor = supervisor or Supervisor(metrics.task_restarts)
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_inflight = max(max_inflight, 2 * max_batch)  # a batch queues as one runs
        self.faults = faults or Faults()
        self._fault_rng = random.Random(self.faults.seed)
        self._engine_calls = 0
        self._call_started: float | None = None  # monotonic start of the call in flight
        self._crops: asyncio.Queue[_Request] = asyncio.Queue()
        self._heads: asyncio.Queue[_Request] = asyncio.Queue()
        self._detects: asyncio.Queue[_Request] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._room = asyncio.Condition()
        self._inflight = 0
        self._rate: float | None = None  # crops/s the backbone ran at (moving average)
        self.room = self.max_inflight  # crops admitted now: max_inflight until measured
        self._executor: ThreadPoolExecutor | None = None
        # The streams that sent crops within RECENT_S, the least recent first.
        self._senders: OrderedDict[str, float] = OrderedDict()

    async def start(self) -> None:
        self.metrics.engine_max_batch.labels("backbone").set(self.max_batch)
        self.metrics.engine_max_batch.labels("head").set(MAX_HEAD_BATCH)
        if self.face_network is not None:
            self.metrics.engine_max_batch.labels("detect").set(self.detect_batch)
        self.metrics.queue_capacity.labels("engine_crops").set(self.max_inflight)
        self.metrics.queue_depth.labels("engine_crops").set(0)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.supervisor.spawn("batcher", self._run)

    async def stop(self) -> None:
        """Finish nothing new; fail what waits. Safe to call twice."""
        await self.supervisor.cancel("batcher")
        for queue in (self._crops, self._heads, self._detects):
            while not queue.empty():
                req = queue.get_nowait()
                if not req.future.done():
                    req.future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> Batcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def inflight(self) -> int:
        return self._inflight

    def stalled_for(self) -> float:
        """Seconds the engine call in flight has run (0 when none): a hung GPU shows here."""
        started = self._call_started
        return 0.0 if started is None else time.monotonic() - started

    async def reserve(self, crops: int) -> None:
        """Wait until ``crops`` more crops may be queued for the engine."""
        async with self._room:
            # A frame with more faces than there is room for still goes, alone.
            await self._room.wait_for(
                lambda: self._inflight + crops <= self.room or self._inflight == 0
            )
            self._inflight += crops
            self.metrics.queue_depth.labels("engine_crops").set(self._inflight)

    def backbone(
        self, crops: list[Pixels], source: str | None = None
    ) -> asyncio.Future[np.ndarray]:
        """Queue crops (already reserved) for the backbone; the future gets (N, F) features.
        ``source``: the stream, which later batches wait for while it keeps sending."""
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        req = _Request(crops, fut, source=source)
        if source is not None:
            self._senders[source] = req.queued
            self._senders.move_to_end(source)
            self._forget(req.queued)
        self._crops.put_nowait(req)
        self._wake.set()
        return fut

    async def head(self, windows: list[np.ndarray]) -> np.ndarray:
        """P(FAKE) for each window of cached features."""
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._heads.put_nowait(_Request(windows, fut))
        self._wake.set()
        return await fut

    @property
    def idle(self) -> bool:
        """Nothing queued and no call running: low-priority work may go now."""
        queues = (self._crops, self._heads, self._detects)
        return self._call_started is None and all(q.empty() for q in queues)

    async def detect(self, square: Pixels) -> np.ndarray:
        """The face network's output for one letterboxed frame, batched with the other
        streams' frames: (896, 17), box regressors then the face score of each anchor."""
        if self.face_network is None:
            raise RuntimeError("this batcher has no face network (DFM_DETECTOR=torch)")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._detects.put_nowait(_Request([square], fut))
        self._wake.set()
        return (await fut)[0]

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the engine thread, between batches (e.g. a Grad-CAM pass)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while not (self._heads.empty() and self._detects.empty() and self._crops.empty()):
                if not self._heads.empty():
                    await self._run_heads()
                elif not self._detects.empty():
                    await self._run_detects()
                else:
                    await self._run_backbone()

    async def _run_heads(self) -> None:
        """One head call for the queued windows, up to ``MAX_HEAD_BATCH`` of them (a
        request larger than that still goes, alone)."""
        reqs = [self._heads.get_nowait()]
        count = len(reqs[0].items)
        while not self._heads.empty():
            size = len(self._heads._queue[0].items)  # type: ignore[attr-defined]
            if count + size > MAX_HEAD_BATCH:
                break
            reqs.append(self._heads.get_nowait())
            count += size
        await self._dispatch("head", reqs)

    async def _run_detects(self) -> None:
        """One network call for the frames due for detection, up to ``detect_batch`` of
        them or ``detect_wait_ms`` after the first (each is one stream's waiting thread)."""
        reqs = [self._detects.get_nowait()]
        deadline = time.monotonic() + self.detect_wait
        while len(reqs) < self.detect_batch:
            if self._detects.empty():
                left = deadline - time.monotonic()
                if left <= 0 or not self._heads.empty():
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
                continue
            reqs.append(self._detects.get_nowait())
        await self._dispatch("detect", reqs)

    async def _run_backbone(self) -> None:
        reqs = [self._crops.get_nowait()]
        count = len(reqs[0].items)
        sources = {reqs[0].source}
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            if self._crops.empty():
                left = deadline - time.monotonic()
                others = not (self._heads.empty() and self._detects.empty())
                if left <= 0 or others or self._everyone_in(sources):
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
                continue
            size = len(self._crops._queue[0].items)  # type: ignore[attr-defined]
            if count + size > self.max_batch:
                break
            reqs.append(self._crops.get_nowait())
            sources.add(reqs[-1].source)
            count += size
        self.metrics.queue_depth.labels("engine_backlog").set(self._crops.qsize())
        started = time.perf_counter()
        try:
            if await self._dispatch("backbone", reqs):
                self._measured(count, time.perf_counter() - started)
        finally:
            async with self._room:
                self._inflight -= count
                self.metrics.queue_depth.labels("engine_crops").set(self._inflight)
                self._room.notify_all()

    def _everyone_in(self, sources: set[str | None]) -> bool:
        """Whether a batch of crops from ``sources`` holds every stream that sent crops
        within RECENT_S (so waiting longer would add none); never with unnamed crops."""
        if None in sources:
            return False
        self._forget(time.monotonic())
        return len(sources) >= len(self._senders)

    def _forget(self, now: float) -> None:
        """Drop the streams that sent nothing within RECENT_S of ``now`` (oldest first, so
        each call costs what it drops: the record stays the last second's streams)."""
        senders, old = self._senders, now - RECENT_S
        while senders and next(iter(senders.values())) < old:
            senders.popitem(last=False)

    def _measured(self, crops: int, seconds: float) -> None:
        """One backbone call's rate moves the room: ``QUEUE_S`` of work, two batches at least."""
        rate = crops / max(seconds, 1e-6)
        if self._rate is not None:
            rate = (1 - RATE_WEIGHT) * self._rate + RATE_WEIGHT * rate
        self._rate = rate
        room = int(min(self.max_inflight, max(2 * self.max_batch, rate * QUEUE_S)))
        if room != self.room:
            self.room = room
            self.metrics.queue_capacity.labels("engine_crops").set(room)

    async def _dispatch(self, stage: str, reqs: list[_Request]) -> bool:
        """Run one engine call for ``reqs`` and hand each its slice of the result."""
        items = [x for r in reqs for x in r.items]
        loop = asyncio.get_running_loop()
        fns: dict[str, Callable[[list[Any]], np.ndarray]] = {
            "backbone": self._backbone,
            "head": self._head,
            "detect": self._detect,
        }
        fn = fns[stage]
        started = time.perf_counter()
        self._call_started = now = time.monotonic()
        self.metrics.engine_queue_wait.labels(stage).observe(now - min(r.queued for r in reqs))
        try:
            result = await loop.run_in_executor(self._executor, fn, items)
        except Exception as exc:
            self.metrics.engine_errors.labels(stage).inc()
            if isinstance(exc, InjectedFault):
                log.warning("engine %s batch of %d failed: %s", stage, len(items), exc)
            else:
                log.exception("engine %s batch of %d failed", stage, len(items))
            for req in reqs:
                if not req.future.done():
                    req.future.set_exception(exc)
            return False
        finally:
            self._call_started = None
        self.metrics.engine_last_batch.set(time.time())
        self.metrics.inference_seconds.labels(stage).observe(time.perf_counter() - started)
        self.metrics.inference_batch.labels(stage).observe(len(items))
        at = 0
        for req in reqs:
            n = len(req.items)
            if not req.future.done():
                req.future.set_result(result[at : at + n])
            at += n
        return True

    def _inject(self) -> None:
        """DFM_FAULTS (tests only), in the engine thread before each call."""
        self._engine_calls += 1
        limit = self.faults.calls
        if self.faults.any and (limit is None or self._engine_calls <= limit):
            self.faults.engine_call(self._fault_rng)

    def _backbone(self, crops: list[Pixels]) -> np.ndarray:
        self._inject()
        if isinstance(crops[0], torch.Tensor):  # cut on the engine's device (DFM_CROP)
            return self.engine.backbone_on_device(torch.stack(crops))  # type: ignore[arg-type]
        return self.engine.backbone(np.stack(crops))

    def _head(self, windows: list[np.ndarray]) -> np.ndarray:
        self._inject()
        return self.engine.head(windows)

    def _detect(self, squares: list[Pixels]) -> np.ndarray:
        self._inject()
        assert self.face_network is not None  # detect() refuses without one
        regressors, scores = self.face_network.network(stack_squares(squares))
        return np.concatenate([regressors, scores[..., None]], axis=-1)
