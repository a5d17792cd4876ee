"""One stream's pipeline: its source worker and its loop task.

The worker (decode and resample in its reader thread, faces in the node's frame pool)
hands frames to the stream's inbox, a drop-oldest :class:`~streamer.buffers.BoundedBuffer`
(queue ``stream_inbox``); the stream task feeds
them to its :class:`StreamState`, sends crops to the batcher, and publishes a verdict
whenever a window is due. A stream that fails is marked ``failed`` with its reason and
never disturbs the others (the directory of streams is ``streamer/manager.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, get_args

from analyzer.faces import Detector, FaceTracker
from streamer.batcher import Batcher
from streamer.buffers import BoundedBuffer, Ended, Policy
from streamer.config import Settings, StreamOptions, StreamSpec
from streamer.delivery import Acknowledgements
from streamer.evidence import (
    CropRing,
    EvidenceJob,
    EvidenceWriter,
    context_jpeg,
    evidence_link,
)
from streamer.metrics import Metrics
from streamer.shedding import LoadShedder
from streamer.sinks.base import Sink
from streamer.sources.base import FrameItem, Opener, SourceState, SourceWorker
from streamer.sources.pool import FramePool
from streamer.streams import PendingCrop, StreamState, WindowJob
from streamer.tasks import Backoff
from streamer.urls import SourceUrl
from streamer.verdict import Label, ModelRef, Verdict

log = logging.getLogger(__name__)

WORKER_JOIN_S = 5.0  # at most this long for a source thread to end once asked


@dataclass
class Counters:
    frames: int = 0
    faces: int = 0
    verdicts: int = 0
    dropped: int = 0  # backpressure: taken from the inbox's oldest end
    shed: int = 0  # skipped by the worker under overload (the analysis stride)
    skipped: int = 0  # due windows without a verdict (engine errors)


class StreamRunner:
    def __init__(
        self,
        spec: StreamSpec,
        options: StreamOptions,
        settings: Settings,
        opener: Opener,
        batcher: Batcher,
        sinks: Sequence[Sink],
        metrics: Metrics,
        model: ModelRef,
        detector_factory: Callable[[], Detector],
        source: SourceUrl | None = None,
        shedder: LoadShedder | None = None,
        evidence: EvidenceWriter | None = None,
        *,
        pool: FramePool,
        decoders: FramePool | None = None,
    ) -> None:
        self.spec = spec
        self.id = spec.id
        # What the API, logs and the page show of the URL: never its password.
        self.url = source.redacted if source is not None else spec.url
        self._scrub = source.scrub if source is not None else (lambda text: text)
        self.settings = settings
        self.batcher = batcher
        self.sinks = sinks
        self.opener = opener
        self.delivery = Acknowledgements(len(sinks))
        self.metrics = metrics
        self.model = model
        self.counters = Counters()
        self.windows = StreamState(
            spec.id,
            window=settings.window_frames,
            hop=settings.hop_frames,
            fps=settings.fps,
            threshold=batcher.engine.meta.served_threshold(settings.threshold)[0],
            feature_dim=batcher.engine.feature_dim,
        )
        # Evidence of windows turning FAKE: a small ring of JPEG crops per face.
        self.evidence = evidence
        self.crop_ring = CropRing(settings.window_frames) if evidence is not None else None
        self._evidence_wanted = False  # POST /v1/streams/{id}/evidence: the next window
        self._broken: str | None = None  # why the stream's own task ended in an error
        self.last_verdict: Verdict | None = None
        self.started_at = time.time()
        max_faces = options.max_faces or settings.max_faces
        self._stride = 1.0
        self._shed_metric = metrics.frames_dropped.labels(spec.id, "shed")
        self.worker = SourceWorker(
            spec.id,
            opener,
            lambda: FaceTracker(
                detector_factory(),
                max_tracks=max_faces,
                detect_every=settings.detect_every,
                device=batcher.engine.device if settings.crop == "device" else None,
            ),
            on_item=self._on_item,
            on_state=self._on_state_threadsafe,
            on_reconnect=self._on_reconnect,
            backoff=Backoff(settings.reconnect_initial_s, settings.reconnect_max_s),
            scrub=self._scrub,
            stride=(lambda: shedder.stride) if shedder is not None else (lambda: 1.0),
            on_shed=self._on_shed,
            context=context_jpeg if evidence is not None and evidence.context else None,
            context_every=max(1, settings.window_frames // 2),
            pool=pool,
            decoders=decoders,
            # A frame is worked only when the inbox has room for it: a full inbox holds
            # the frames back in the pool's lane, which loses its oldest (or, for a
            # topic, makes the reader wait) before any work is spent on them.
            ready=lambda: not self._inbox.full,
            on_drop=self._count_backpressure,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # Live frames go by: a full inbox drops its oldest. Frames a topic keeps for us
        # (Kafka) wait: the source blocks, and the consumer's lag shows the overload.
        self._inbox: BoundedBuffer[FrameItem] = BoundedBuffer(
            "stream_inbox",
            settings.frame_queue,
            Policy.BLOCK if opener.waits else Policy.DROP_OLDEST,
            metrics=metrics.queues,
            on_drop=self._dropped_backpressure,
            block_timeout_s=None,
        )
        self._task: asyncio.Task[None] | None = None
        self._last_features: asyncio.Future[Any] | None = None
        metrics.source_up.labels(spec.id).set(0)
        # Every verdict label's series exists from the start, at 0: a first burst of FAKE
        # windows is then an increase that increase() and rate() see, where a series born
        # at its final value shows none (DeepfakeDetected stayed quiet).
        for label in get_args(Label):
            metrics.verdicts.labels(spec.id, label)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"stream-{self.id}")
        self._task.add_done_callback(self._task_done)
        self.worker.start()

    async def stop(self, *, drain: bool, grace_s: float) -> None:
        """Stop intake; with ``drain``, finish queued frames and due windows first."""
        self.worker.stop()
        self._inbox.end()
        if self._task is not None:
            if not drain:
                self._task.cancel()
            # asyncio.wait: the stream task's own end (even a cancellation) is not raised
            # here, while a cancellation of the caller is (it must not be swallowed).
            await asyncio.wait({self._task}, timeout=grace_s)
            if not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task})
        # A worker blocked in a read sees the stop flag within its read timeout; it is a
        # daemon thread, so shutdown waits a bounded time for it and no longer.
        await asyncio.to_thread(self.worker.join, WORKER_JOIN_S)
        self._inbox.close()

    # -- worker-thread callbacks -------------------------------------------------------
    def _on_item(self, item: FrameItem) -> None:
        self._inbox.put(item)  # waits only under Policy.BLOCK, until there is room or the end

    def _on_state_threadsafe(self, state: SourceState, reason: str | None) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_state, state, reason)

    def _on_shed(self) -> None:
        self.counters.shed += 1
        self._shed_metric.inc()

    def _on_reconnect(self) -> None:
        self.metrics.source_reconnects.labels(self.id).inc()

    # -- loop side ---------------------------------------------------------------------
    @property
    def source_state(self) -> SourceState:
        """The source's state, owned by its worker; FAILED once the stream's task broke."""
        return SourceState.FAILED if self._broken is not None else self.worker.now[0]

    @property
    def reason(self) -> str | None:
        return self._broken if self._broken is not None else self.worker.now[1]

    def _on_state(self, state: SourceState, reason: str | None) -> None:
        self.metrics.source_up.labels(self.id).set(1 if state == SourceState.RUNNING else 0)
        if state in (SourceState.STOPPED, SourceState.FAILED):
            self._inbox.end()

    def _dropped_backpressure(self, _item: FrameItem) -> None:
        self._count_backpressure()

    def _count_backpressure(self) -> None:
        self.counters.dropped += 1
        self.metrics.frames_dropped.labels(self.id, "backpressure").inc()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("stream %s: stopped by an internal error: %s", self.id, self._scrub(repr(exc)))
        self.worker.stop()
        self._inbox.end()  # a source waiting for room must not wait for ever
        self._broken = self._scrub(f"internal error: {exc!r}")
        self.metrics.source_up.labels(self.id).set(0)

    async def _run(self) -> None:
        while True:
            try:
                item = await self._inbox.aget()
            except Ended:
                return
            if item.restart:
                log.warning("stream %s: timestamps jump; tracks and windows restart", self.id)
                self.metrics.discontinuities.labels(self.id).inc()
                self.windows.restart()
                if self.crop_ring is not None:
                    self.crop_ring.restart()
            if item.stride != self._stride:
                # The analysis stride changed: the verdicts say the frame rate analysed.
                self._stride = item.stride
                self.windows.fps = self.settings.fps / item.stride
            if item.marks:
                self.delivery.add_marks(self.windows.frames_seen, item.marks)
            self.counters.frames += 1
            self.metrics.frames_decoded.labels(self.id).inc()
            if item.faces.crops:
                self.counters.faces += len(item.faces.crops)
                self.metrics.faces_detected.labels(self.id).inc(len(item.faces.crops))
            pending = self.windows.add_frame(item.pts_s, item.faces, item.arrival)
            if self.crop_ring is not None:
                self.crop_ring.add(self.windows.frames_seen - 1, item.faces, item.context)
            if pending:
                await self.batcher.reserve(len(pending))
                fut = self.batcher.backbone([p.crop for p in pending], source=self.id)
                fut.add_done_callback(partial(self._features_done, pending))
                self._last_features = fut
            if self.windows.window_due():
                await self._emit_window()

    def _features_done(self, pending: list[PendingCrop], fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self.windows.features_failed(pending)
            return
        late = self.windows.set_features(pending, fut.result())
        if late:
            self.metrics.frames_dropped.labels(self.id, "late_features").inc(late)

    async def _emit_window(self) -> None:
        if self._last_features is not None and not self._last_features.done():
            await asyncio.wait([self._last_features])
        job = self.windows.build_window()
        if self.windows.lacks_features(job):
            self._skip_window(job, "engine_error", "features of some of its frames failed")
            return
        scores: list[float] = []
        if job.sequences:
            try:
                scores = await self._head(job.sequences)
            except Exception as exc:
                self._skip_window(job, "engine_error", f"the head failed twice ({exc})")
                # Its features may be what the engine chokes on: start the tracks afresh.
                self.windows.restart()
                return
        before = self.windows.label
        verdict = self.windows.make_verdict(job, scores, self.model, time.monotonic())
        if (verdict.label == "FAKE" and before != "FAKE") or self._evidence_wanted:
            self._evidence_wanted = False
            self._keep_evidence(job, verdict)
        self.last_verdict = verdict
        self.counters.verdicts += 1
        self.metrics.verdicts.labels(self.id, verdict.label).inc()
        if verdict.score is not None:
            self.metrics.score.labels(self.id).set(verdict.score)
            self.metrics.window_scores.labels(self.id).observe(verdict.score)
        self.metrics.verdict_latency.observe(verdict.latency_ms / 1000.0)
        acked = partial(self._acked, self.delivery.window(job.first_frame))
        for sink in self.sinks:
            await sink.publish(verdict, acked)

    def request_evidence(self) -> None:
        """Keep evidence of the next window, whatever its label (a window without a face
        has none to keep)."""
        self._evidence_wanted = True

    def _keep_evidence(self, job: WindowJob, verdict: Verdict) -> None:
        """Link the verdict to an evidence record and queue the record's making: the
        crops of its faces at or above the threshold (the top face at least)."""
        if self.evidence is None or self.crop_ring is None or not verdict.faces:
            return
        top = max(verdict.faces, key=lambda f: f.score)
        suspects = [f for f in verdict.faces if f.score >= verdict.threshold] or [top]
        faces = {
            f.track_id: self.crop_ring.window(f.track_id, job.first_frame, job.last_frame)
            for f in suspects
        }
        faces = {t: crops for t, crops in faces.items() if crops}
        if not faces:
            return
        link = evidence_link(f"{self.id}-{verdict.session[:8]}-{verdict.seq}")
        # A context frame of this window or the one before (one is taken every half window).
        context = self.crop_ring.context_since(job.first_frame - self.settings.window_frames)
        record = EvidenceJob(link, verdict, job.first_frame, job.last_frame, faces, context)
        if self.evidence.submit(record):
            verdict.evidence = link

    def _acked(self, window: int) -> None:
        """A sink acknowledged a window's verdict (on the loop)."""
        released = self.delivery.acked(window)
        if released:
            self.opener.release(released)

    async def _head(self, sequences: list[Any]) -> list[float]:
        """Head scores; one failed call is retried once (a flaky driver, an OOM blip)."""
        try:
            return [float(s) for s in await self.batcher.head(sequences)]
        except Exception as exc:
            log.warning("stream %s: head call failed (%s); retrying once", self.id, exc)
            return [float(s) for s in await self.batcher.head(sequences)]

    def _skip_window(self, job: WindowJob, reason: str, why: str) -> None:
        released = self.delivery.skipped(job.first_frame)
        if released:
            self.opener.release(released)
        self.counters.skipped += 1
        self.metrics.windows_skipped.labels(self.id, reason).inc()
        log.warning("stream %s: window skipped: %s", self.id, why)

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "options": self.spec.options,
            "state": str(self.source_state),
            "reason": self.reason,
            "attempts": self.worker.attempts,
            "session": self.windows.session,
            "frames": self.counters.frames,
            "faces": self.counters.faces,
            "verdicts": self.counters.verdicts,
            "dropped": self.counters.dropped,
            "shed": self.counters.shed,
            "stride": self._stride,
            "skipped_windows": self.counters.skipped,
            "tracks": sorted(self.windows.tracks),
            "last_verdict": self.last_verdict.to_dict() if self.last_verdict else None,
        }
