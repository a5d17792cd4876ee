"""What every live source shares: an explicit state, a worker thread, reconnect backoff.

A :class:`SourceWorker` runs in its own thread: it opens the source, decodes, resamples
to the model fps, runs the stream's face tracker, and hands each frame's faces to the
event loop through ``on_item`` (called in the worker thread; the receiver must be
thread-safe). On failure it reconnects with capped exponential backoff and jitter, for
ever: a camera that is down during a rolling update is watched again once it is back.
Only a local file that is not a video goes ``failed`` (no retry can change it); an
operator removes a stream, the service does not.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from analyzer.faces import FaceTracker, FrameFaces
from streamer.errors import SourceError, UrlRejected
from streamer.shedding import Pacer
from streamer.sources.decode import VideoFrame
from streamer.tasks import Backoff

log = logging.getLogger(__name__)


class SourceState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"


ALLOWED: dict[SourceState, set[SourceState]] = {
    SourceState.STARTING: {
        SourceState.RUNNING,
        SourceState.RECONNECTING,
        SourceState.STOPPED,
        SourceState.FAILED,
    },
    SourceState.RUNNING: {SourceState.RECONNECTING, SourceState.STOPPED, SourceState.FAILED},
    SourceState.RECONNECTING: {SourceState.RUNNING, SourceState.STOPPED, SourceState.FAILED},
    SourceState.STOPPED: set(),
    SourceState.FAILED: set(),
}


@dataclass(frozen=True)
class FrameItem:
    """One resampled frame's faces, on its way from the worker to the stream."""

    pts_s: float
    faces: FrameFaces
    arrival: float  # time.monotonic() when decoded
    restart: bool = False  # first frame after a discontinuity: tracks and windows restart
    stride: float = 1.0  # the node's analysis stride when it was taken (streamer/shedding.py)
    # Delivery marks of input wholly before this frame (Opener.release): done once a
    # window starting at or after this frame is acknowledged by every sink.
    marks: tuple[object, ...] = ()
    # Evidence: a JPEG of this frame (it has faces), made now and then (SourceWorker.context)
    context: bytes | None = None


class Opener:
    """Opens a source: returns resampled frames, or raises SourceError."""

    #: Whether an end of frames is normal (a file) or a drop-out to reconnect from.
    ends: bool = False
    #: Whether an end of frames means "start again at once" (a looped file).
    restarts: bool = False
    #: Whether it reaches over the network: then every failure is worth a retry.
    network: bool = False
    #: Whether its frames wait for us (a Kafka topic holds them: lag shows the overload)
    #: rather than going by in real time: then a full inbox makes the source wait instead
    #: of losing its oldest frame.
    waits: bool = False

    def open(self) -> Iterator[VideoFrame]:
        raise NotImplementedError

    def release(self, marks: Sequence[object]) -> None:
        """The input behind ``marks`` is done: every window over it is acknowledged."""


class SourceWorker:
    def __init__(
        self,
        stream_id: str,
        opener: Opener,
        tracker_factory: Callable[[], FaceTracker],
        on_item: Callable[[FrameItem], None],
        on_state: Callable[[SourceState, str | None], None],
        on_reconnect: Callable[[], None],
        backoff: Backoff,
        scrub: Callable[[str], str] = lambda text: text,
        stride: Callable[[], float] = lambda: 1.0,
        on_shed: Callable[[], None] = lambda: None,
        context: Callable[[np.ndarray], bytes] | None = None,
        context_every: int = 30,
    ) -> None:
        self.stream_id = stream_id
        self.opener = opener
        self.tracker_factory = tracker_factory
        self.on_item = on_item
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.backoff = backoff
        self.attempts = 0  # failed attempts in a row; 0 while frames flow
        self.scrub = scrub  # takes credentials out of every reason shown or logged
        self.stride = stride  # overload: analyse 1 frame in stride() (read per frame)
        self.on_shed = on_shed  # a frame skipped for that, before its faces were sought
        # Evidence: every context_every frames with faces, context(rgb) rides on the item.
        self.context = context
        self.context_every = context_every
        # (state, reason), set in one assignment: other threads read it (StreamRunner)
        self.now: tuple[SourceState, str | None] = (SourceState.STARTING, None)
        # CPU seconds of this thread per stage, for benchmarks: decode, faces, crop.
        self.cpu_s = {"decode": 0.0, "faces": 0.0, "crop": 0.0}
        self.tracker: FaceTracker | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{stream_id}", daemon=True)

    @property
    def state(self) -> SourceState:
        return self.now[0]

    @property
    def reason(self) -> str | None:
        return self.now[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; safe to call twice."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set(self, state: SourceState, reason: str | None = None) -> None:
        """Move to ``state``; in the same state, a new reason (the next attempt) is passed on."""
        if state != self.state and state not in ALLOWED[self.state]:
            return
        reason = self.scrub(reason) if reason is not None else None
        if state == self.state:
            if reason != self.reason:
                self.now = (state, reason)
                self.on_state(state, reason)
            return
        self.now = (state, reason)
        log.info("stream %s: source %s%s", self.stream_id, state, f" ({reason})" if reason else "")
        self.on_state(state, reason)

    def stage_cpu_s(self) -> dict[str, float]:
        """CPU seconds per stage so far, the live tracker included."""
        out = dict(self.cpu_s)
        if self.tracker is not None:
            out["faces"] += self.tracker.detect_s
            out["crop"] += self.tracker.crop_s
        return out

    def _add_tracker_times(self, tracker: FaceTracker) -> None:
        self.cpu_s["faces"] += tracker.detect_s
        self.cpu_s["crop"] += tracker.crop_s
        tracker.detect_s = tracker.crop_s = 0.0

    def _run(self) -> None:
        attempt = 0
        pacer = Pacer()  # the analysis stride, applied frame by frame
        restart = False  # a discontinuity not yet passed on (its frame may be shed)
        marks: list[object] = []  # delivery marks not yet passed on (their frame may be shed)
        since_context = 1 << 30  # the first frame with faces gives a context at once
        tracker = self.tracker = self.tracker_factory()
        try:
            while not self._stop.is_set():
                try:
                    frames = self.opener.open()
                    while True:
                        t0 = time.thread_time()
                        frame = next(frames, None)
                        self.cpu_s["decode"] += time.thread_time() - t0
                        if frame is None or self._stop.is_set():
                            break
                        if self.state != SourceState.RUNNING:
                            self._set(SourceState.RUNNING)
                            attempt = self.attempts = 0
                        if frame.restart:
                            # A discontinuity: the faces seen before it are not these.
                            self._add_tracker_times(tracker)
                            tracker = self.tracker = self.tracker_factory()
                            restart = True
                        if frame.picture.marks:  # taken with the picture's first tick
                            marks.extend(frame.picture.marks)
                            frame.picture.marks = ()
                        stride = self.stride()
                        if not pacer.take(stride):
                            self.on_shed()  # overload: skipped before faces and RGB
                            continue
                        faces = tracker.update(frame.rgb)
                        context = None
                        if self.context is not None and faces.crops:
                            since_context += 1
                            if since_context >= self.context_every:
                                since_context = 0
                                context = self.context(frame.rgb)
                        item = FrameItem(
                            frame.pts_s, faces, time.monotonic(), restart, stride,
                            tuple(marks), context,
                        )  # fmt: skip
                        restart = False
                        marks.clear()
                        self.on_item(item)
                    if self._stop.is_set() or self.opener.ends:
                        break
                    if self.opener.restarts:
                        continue
                    reason = "stream ended"
                except UrlRejected as exc:  # the destination policy: no retry changes it
                    self._set(SourceState.FAILED, exc.reason)
                    return
                except SourceError as exc:
                    if not exc.retriable and not self.opener.network:
                        self._set(SourceState.FAILED, str(exc))
                        return
                    reason = str(exc)
                attempt = self.attempts = attempt + 1
                delay = self.backoff.delay(attempt)
                # Never given up: the state says why and how often, until an operator acts.
                self._set(SourceState.RECONNECTING, f"{reason} (attempt {attempt})")
                log.warning(
                    "stream %s: %s; attempt %d, reconnecting in %.1f s",
                    self.stream_id,
                    self.scrub(reason),
                    attempt,
                    delay,
                )
                if self._stop.wait(delay):
                    break
                self.on_reconnect()
                # A new connection starts new face tracks.
                self._add_tracker_times(tracker)
                tracker = self.tracker = self.tracker_factory()
        except Exception as exc:  # a bug must not pass silently, nor take other streams down
            log.error("stream %s: source worker crashed: %s", self.stream_id, self.scrub(repr(exc)))
            self._set(SourceState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        finally:
            self._add_tracker_times(tracker)
            self.tracker = None
            close = getattr(tracker.detector, "close", None)
            if close is not None:
                close()
        self._set(SourceState.STOPPED)
