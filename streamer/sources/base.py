"""What every live source shares: an explicit state, a reader thread, reconnect backoff.

A :class:`SourceWorker` reads in its own thread: it opens the source, decodes and
resamples to the model fps (a file, RTSP or Kafka source only demuxes there: its
packets are decoded and resampled in the node's decode pool, and after packets lost to a
full lane, from the next keyframe on); the node's frame pool
(``streamer/sources/pool.py``) runs the stream's face tracker on each frame and hands its
faces to the event loop through ``on_item`` (called in the pool's thread; the receiver
must be thread-safe). On failure the reader reconnects with capped exponential backoff
and jitter, for ever: a camera that is down during a rolling update is watched again once
it is back. Only a local file that is not a video goes ``failed`` (no retry can change
it); an operator removes a stream, the service does not.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyzer.faces import FaceTracker, FrameFaces
from streamer.errors import SourceError, UrlRejected
from streamer.shedding import Pacer
from streamer.sources.decode import Feed, VideoFrame
from streamer.sources.pool import LANE_PACKETS_WAITING, FramePool, Lane
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

    #: Whether ``demux`` gives its packets to the node's decode pool (file, RTSP and
    #: Kafka sources); the others decode in their reader thread (``open``).
    packets: bool = False
    #: Whether packets are paced by their timestamps (a file played as if live).
    realtime: bool = False

    def open(self) -> Iterator[VideoFrame]:
        raise NotImplementedError

    def demux(self) -> Feed:
        """Opens a connection whose packets a decode pool worker decodes (``packets``)."""
        raise NotImplementedError

    def demuxed(self, feed: Feed) -> None:
        """The connection behind ``feed`` ended as it should: stream time goes on after it."""

    def release(self, marks: Sequence[object]) -> None:
        """The input behind ``marks`` is done: every window over it is acknowledged."""


@dataclass
class _Taken:
    """A frame the reader took (its stride kept it), on its way to the frame pool."""

    frame: VideoFrame
    arrival: float  # time.monotonic() when decoded
    stride: float
    restart: bool  # windows restart here (a discontinuity)
    fresh: bool  # face tracks start afresh here (a discontinuity or a new connection)
    marks: list[object]


@dataclass
class _Packet:
    """A packet the reader demuxed, on its way to the decode pool."""

    feed: Feed
    packet: Any  # what the feed reads (av.Packet, Kafka Message); None: the end, a flush
    gap: bool = False  # packets before it were lost (the lane was full)


class SourceWorker:
    """A stream's reader thread, and its frames' work in the node's :class:`FramePool`.

    The reader opens the source and reconnects; the pool's worker converts each frame,
    tracks its faces and hands the :class:`FrameItem` to ``on_item`` (which must be
    thread-safe), only while ``ready()`` says the receiver has room.
    """

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
        *,
        pool: FramePool,
        decoders: FramePool | None = None,
        ready: Callable[[], bool] = lambda: True,
        on_drop: Callable[[], None] = lambda: None,
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
        self.on_drop = on_drop  # a frame its worker had no time for (backpressure)
        # Evidence: every context_every frames with faces, context(rgb) rides on the item.
        self.context = context
        self.context_every = context_every
        self.pool = pool
        # The node's decode pool: packets of a source that demuxes (``Opener.packets``)
        # are decoded there instead of in the reader thread.
        self.decoders = decoders if opener.packets else None
        self._ready = ready
        self._lane: Lane[_Taken] | None = None  # the stream's lane in the pool, once started
        self._packets: Lane[_Packet] | None = None  # its lane in the decode pool, if any
        # What the reader (or the decode worker) passes on with the next frame it keeps.
        self._pacer = Pacer()  # the analysis stride, applied frame by frame
        self._restart = False  # a discontinuity not yet passed on (its frame may be shed)
        self._fresh = True  # new face tracks from the next frame on
        self._marks: list[object] = []  # delivery marks not yet passed on
        # (state, reason), set in one assignment: other threads read it (StreamRunner)
        self.now: tuple[SourceState, str | None] = (SourceState.STARTING, None)
        # CPU seconds per stage, for benchmarks: decode (the reader), faces and crop
        # (the pool worker, in the tracker).
        self.cpu_s = {"decode": 0.0, "faces": 0.0, "crop": 0.0}
        self._decode_s = 0.0  # the decode pool worker's, for this stream
        self._burst = 0  # frames the decode worker's last packet gave (see _decode)
        self.tracker: FaceTracker | None = None  # built by the reader, used by the pool worker
        self._since_context = 1 << 30  # the first frame with faces gives a context at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{stream_id}", daemon=True)

    @property
    def state(self) -> SourceState:
        return self.now[0]

    @property
    def reason(self) -> str | None:
        return self.now[1]

    def start(self) -> None:
        self._lane = self.pool.lane(
            self._work, waits=self.opener.waits, ready=self._ready, on_drop=self._dropped
        )
        if self.decoders is not None:
            waits = self.opener.waits
            self._packets = self.decoders.lane(
                self._decode,
                waits=waits,
                ready=self._room if waits else lambda: True,
                on_drop=self._lost,
                capacity=LANE_PACKETS_WAITING if waits else None,
            )
            if waits:  # its decode worker waits for the frame lane to empty: wake it
                self._lane.on_take = self._packets.poke
        self._thread.start()

    def _room(self) -> bool:
        """For a source that waits: its decode worker takes a packet only when the
        stream's frame lane is empty and the stream has room, and queues the packet's
        frames without waiting (past the lane's capacity when a slow source's packet
        gives more ticks), so waiting for room never holds up the other streams that
        worker decodes."""
        lane = self._lane
        return lane is not None and len(lane) == 0 and self._ready()

    def stop(self) -> None:
        """Ask the thread to end (frames not yet worked are let go); safe to call twice."""
        self._stop.set()
        if self._lane is not None:
            self._lane.close(timeout=0)  # a reader waiting for room in it goes on
        if self._packets is not None:
            self._packets.close(timeout=0)

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
        out["decode"] += self._decode_s
        if self.tracker is not None:
            out["faces"] += self.tracker.detect_s
            out["crop"] += self.tracker.crop_s
        return out

    def _add_tracker_times(self, tracker: FaceTracker) -> None:
        self.cpu_s["faces"] += tracker.detect_s
        self.cpu_s["crop"] += tracker.crop_s
        tracker.detect_s = tracker.crop_s = 0.0

    def _run(self) -> None:
        finished = False  # the source ended as it should: its last frames are worked
        lane = self._lane
        assert lane is not None  # start() opens it
        try:
            # Built here, not by the pool's worker on the first frame: a detector takes a
            # third of a second and more to load, which every other stream that worker
            # serves would lose frames to. A new connection only resets it (_work).
            if self.tracker is None:
                self.tracker = self.tracker_factory()
            while not self._stop.is_set():
                try:
                    if self._packets is not None:
                        self._read_packets(self._packets)
                    else:
                        self._read_frames(lane)
                    if self._stop.is_set() or self.opener.ends:
                        finished = not self._stop.is_set()
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
                self.attempts += 1
                attempt = self.attempts
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
                self._fresh = True  # a new connection starts new face tracks
        except Exception as exc:  # a bug must not pass silently, nor take other streams down
            self._crashed(exc)
            return
        finally:
            if finished:  # the last frames of a file are worked before it says stopped
                lane.finish()  # stop() closes the lane, which ends the wait
            if self._packets is not None:
                self._packets.close(timeout=5.0)
            self._close(lane)
        self._set(SourceState.STOPPED)

    def _running(self) -> None:
        if self.state != SourceState.RUNNING:
            self._set(SourceState.RUNNING)
            self.attempts = 0

    def _read_frames(self, lane: Lane[_Taken]) -> None:
        """One connection, decoded here: its frames to the frame pool until it ends."""
        frames = self.opener.open()
        while True:
            t0 = time.thread_time()
            frame = next(frames, None)
            self.cpu_s["decode"] += time.thread_time() - t0
            if frame is None or self._stop.is_set():
                return
            self._running()
            if not self._offer(frame, lane):
                return  # closed: stopped, or the frame work failed

    def _read_packets(self, packets: Lane[_Packet]) -> None:
        """One connection, demuxed here and decoded in the decode pool, until it ends; its
        last packets are decoded before this returns (or raises what ended it)."""
        feed = self.opener.demux()
        demuxed = feed.packets(realtime=self.opener.realtime)
        try:
            t0 = time.thread_time()
            for packet in demuxed:
                self.cpu_s["decode"] += time.thread_time() - t0
                if self._stop.is_set():
                    return
                if feed.decoded:
                    self._running()
                if not packets.put(_Packet(feed, packet)):
                    return  # closed: stopped, or the frame work failed
                t0 = time.thread_time()
            if not packets.put(_Packet(feed, None)) or not packets.finish():
                return
        finally:
            demuxed.close()
            # No packet of it may reach a worker once its container is closed.
            if packets.drain(timeout=5.0):
                feed.close()
            else:
                log.warning("stream %s: its decode worker is still busy; leaving it",
                            self.stream_id)  # fmt: skip
        if self._stop.is_set():
            return
        if feed.decoded:
            self._running()
        feed.check()
        self.opener.demuxed(feed)

    def _offer(
        self, frame: VideoFrame, lane: Lane[_Taken], *, wait: bool = True, burst: int = 0
    ) -> bool:
        """Pass a frame to the frame pool unless the stride sheds it; False once the lane
        is closed. Called by the reader, or for a demuxing source by its decode worker
        (which never waits for room: ``wait``, see :meth:`_room`; ``burst``: the frames
        of the same packet put just before this one, see :meth:`Lane.put`)."""
        if frame.restart:
            # A discontinuity: the faces seen before it are not these.
            self._restart = self._fresh = True
        if frame.picture.marks:  # taken with the picture's first tick
            self._marks.extend(frame.picture.marks)
            frame.picture.marks = ()
        stride = self.stride()
        if not self._pacer.take(stride):
            self.on_shed()  # overload: skipped before faces and RGB
            return True
        taken = _Taken(frame, time.monotonic(), stride, self._restart, self._fresh, self._marks)
        if not lane.put(taken, wait=wait, burst=burst):
            return False
        self._restart = self._fresh = False
        self._marks = []
        return True

    def _close(self, lane: Lane[_Taken]) -> None:
        """Take the lane off the pool; once its worker is done with it, end the tracker."""
        if not lane.close(timeout=5.0):
            log.warning("stream %s: its frame worker is still busy; leaving it", self.stream_id)
            return
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            self._end_tracker(tracker)

    def _end_tracker(self, tracker: FaceTracker) -> None:
        self._add_tracker_times(tracker)
        close = getattr(tracker.detector, "close", None)
        if close is not None:
            close()

    def _crashed(self, exc: BaseException) -> None:
        log.error("stream %s: source worker crashed: %s", self.stream_id, self.scrub(repr(exc)))
        self._set(SourceState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        self._stop.set()

    # -- in the decode pool's worker thread -----------------------------------------------
    def _lost(self, lost: _Packet, heir: _Packet) -> None:
        """The decode lane lost its oldest packet: decoding resumes at a keyframe."""
        heir.gap = True
        self.on_drop()

    def _decode(self, unit: _Packet) -> None:
        """One packet's frames, on to the frame pool; after lost packets, nothing until
        the next keyframe (each packet skipped counts as a dropped frame)."""
        feed, packet = unit.feed, unit.packet
        lane = self._lane
        assert lane is not None
        try:
            gap = False
            if unit.gap:
                feed.resync = True
            if feed.resync and packet is not None:
                if not feed.keyframe(packet):
                    self.on_drop()
                    return
                feed.resync, gap = False, True
            t0 = time.thread_time()
            frames = feed.decode(packet, gap=gap)
            self._decode_s += time.thread_time() - t0
            # One packet's frames come at once: the ticks of a source slower than the
            # model's fps (three of one picture at 10 fps), or what a decoder holds back
            # (for reordering, for its threads) until its flush, which follows the last
            # packet at once and so continues its burst. The lane keeps a burst whole
            # (``burst``): what it drops to make room is frames queued before it.
            burst = self._burst if packet is None else 0
            for frame in frames:
                if not self._offer(frame, lane, wait=False, burst=burst):
                    feed.failed = feed.failed or "the stream stopped"
                    return
                burst += 1
            self._burst = burst
        except Exception as exc:  # a bug in one stream's decoding ends that stream only
            self._crashed(exc)
            lane.close(timeout=0)
            if self._packets is not None:
                self._packets.close(timeout=0)

    # -- in the pool's worker thread ------------------------------------------------------
    def _dropped(self, lost: _Taken, heir: _Taken) -> None:
        """The lane lost its oldest frame: what it carried goes to the frame now first."""
        heir.restart |= lost.restart
        heir.fresh |= lost.fresh
        heir.marks[:0] = lost.marks
        self.on_drop()

    def _work(self, taken: _Taken) -> None:
        """One frame's faces, and its item to the stream."""
        try:
            tracker = self.tracker
            assert tracker is not None  # the reader builds it before its first frame
            if taken.fresh:
                tracker.reset()
            faces = tracker.update(taken.frame.picture.pixels(tracker.device))
            context = None
            if self.context is not None and faces.crops:
                self._since_context += 1
                if self._since_context >= self.context_every:
                    self._since_context = 0
                    context = self.context(taken.frame.rgb)
            item = FrameItem(
                taken.frame.pts_s, faces, taken.arrival, taken.restart, taken.stride,
                tuple(taken.marks), context,
            )  # fmt: skip
        except Exception as exc:  # a bug in one stream's frame work ends that stream only
            self._crashed(exc)
            if self._lane is not None:
                self._lane.close(timeout=0)
            return
        self.on_item(item)
