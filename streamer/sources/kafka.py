"""Encoded video from Kafka: topic ``deepfake.video``, key = stream id.

Header ``content-type`` says what a message holds:

* ``video/mp2t``: the next piece of one continuous MPEG-TS byte stream (whole 188-byte
  packets), demuxed and decoded incrementally by PyAV in the stream's worker thread;
* ``image/jpeg``: one frame, its stream time in header ``pts`` (seconds).

A key becomes a stream with its first message and ends after ``kafka_idle_s`` without
one. A message that is not what its header says (empty, not whole TS packets, not a
JPEG, no ``pts``, another content type than the stream's) is counted in
``frames_dropped_total{reason="bad_message"}``, logged with its offset and skipped; the
partition keeps flowing. Offsets are committed only once the frames a message carries have
been taken into the stream's buffer (:class:`OffsetTracker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av
import cv2
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamer.config import STREAM_ID, Settings, StreamSpec
from streamer.errors import SourceError
from streamer.kafka_common import client_options, ensure_topic
from streamer.metrics import Metrics
from streamer.sources.base import Opener
from streamer.sources.decode import VideoFrame, resample
from streamer.tasks import cancel_and_wait

log = logging.getLogger(__name__)

TS = "video/mp2t"
JPEG = "image/jpeg"
_END = object()


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    payload: bytes
    pts_s: float | None = None


class OffsetTracker:
    """Per partition: the offset up to which every message is done, so safe to commit."""

    def __init__(self) -> None:
        self.pending: dict[int, set[int]] = {}
        self.seen: dict[int, int] = {}

    def started(self, partition: int, offset: int) -> None:
        self.pending.setdefault(partition, set()).add(offset)
        self.seen[partition] = max(self.seen.get(partition, -1), offset)

    def done(self, partition: int, offset: int) -> None:
        self.pending.get(partition, set()).discard(offset)

    def committable(self) -> dict[int, int]:
        """Next offset to consume, per partition (Kafka's commit convention)."""
        out = {}
        for partition, last in self.seen.items():
            waiting = self.pending.get(partition)
            out[partition] = min(waiting) if waiting else last + 1
        return out

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.pending.pop(p, None)
            self.seen.pop(p, None)


class _ChunkReader(io.RawIOBase):
    """A file for PyAV that reads the TS chunks of one stream as they arrive."""

    def __init__(self, chunks: queue.Queue[Any], idle_s: float, on_done: Callable[[Message], None]):
        self.chunks = chunks
        self.idle_s = idle_s
        self.on_done = on_done
        self.buf = b""
        self.current: Message | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            if self.current is not None:
                self.on_done(self.current)  # the demuxer has taken all of it
                self.current = None
            try:
                item = self.chunks.get(timeout=self.idle_s)
            except queue.Empty:
                return 0
            if item is _END:
                return 0
            self.current, self.buf = item, item.payload
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


class KafkaOpener(Opener):
    """Frames of one key, decoded in the stream's worker thread."""

    ends = True

    def __init__(
        self,
        kind: str,
        fps: float,
        idle_s: float,
        on_done: Callable[[Message], None],
        on_bad: Callable[[Message, str], None],
        size: int = 256,
    ) -> None:
        self.kind = kind
        self.fps = fps
        self.idle_s = idle_s
        self.on_done = on_done
        self.on_bad = on_bad
        self.items: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.last_message = time.monotonic()

    def push(self, msg: Message) -> bool:
        """On the event loop; False when the queue is full (the message is then dropped)."""
        self.last_message = time.monotonic()
        try:
            self.items.put_nowait(msg)
            return True
        except queue.Full:
            return False

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self.items.put_nowait(_END)

    def open(self) -> Iterator[VideoFrame]:
        frames = self._ts() if self.kind == TS else self._jpeg()
        return resample(frames, self.fps)

    def _jpeg(self) -> Iterator[tuple[float, np.ndarray]]:
        first: float | None = None
        while True:
            try:
                item = self.items.get(timeout=self.idle_s)
            except queue.Empty:
                return
            if item is _END:
                return
            bgr = cv2.imdecode(np.frombuffer(item.payload, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                self.on_bad(item, "not a decodable JPEG")
                continue
            assert item.pts_s is not None
            first = item.pts_s if first is None else first
            yield item.pts_s - first, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            self.on_done(item)

    def _ts(self) -> Iterator[tuple[float, np.ndarray]]:
        reader = _ChunkReader(self.items, self.idle_s, self.on_done)
        try:
            container = av.open(io.BufferedReader(reader), format="mpegts", mode="r")
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot demux the MPEG-TS stream: {exc}") from None
        try:
            stream = container.streams.video[0]
            first: float | None = None
            try:
                for frame in container.decode(stream):
                    if frame.time is None:
                        continue
                    first = frame.time if first is None else first
                    yield frame.time - first, frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as exc:
                log.warning("MPEG-TS decoding stopped: %s", exc)
        finally:
            container.close()


class KafkaVideoIngest:
    """Consumes ``deepfake.video`` in the service's group; one stream per key."""

    def __init__(self, settings: Settings, manager: Any, metrics: Metrics) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics
        self.offsets = OffsetTracker()
        self.openers: dict[str, KafkaOpener] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        await ensure_topic(s, s.kafka_video_topic, s.kafka_sources_partitions, compact=False)
        self._consumer = AIOKafkaConsumer(
            self.settings.kafka_video_topic,
            **client_options(self.settings),
            group_id=f"{self.settings.kafka_group}.video",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        self._tasks = [
            asyncio.create_task(self._consume(), name="kafka-video"),
            asyncio.create_task(self._housekeeping(), name="kafka-video-commit"),
        ]

    async def stop(self) -> None:
        """Stop consuming, commit what is done. Safe to call twice."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._commit()
                await self._consumer.stop()
            self._consumer = None
        for sid, opener in list(self.openers.items()):
            opener.close()
            self.openers.pop(sid, None)

    async def __aenter__(self) -> KafkaVideoIngest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- worker-thread callbacks -------------------------------------------------------
    def _done_threadsafe(self, msg: Message) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.offsets.done, msg.partition, msg.offset)

    def _bad_threadsafe(self, sid: str) -> Callable[[Message, str], None]:
        def bad(msg: Message, why: str) -> None:
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._bad, sid, msg, why)

        return bad

    # -- loop side ---------------------------------------------------------------------
    def _bad(self, sid: str, msg: Message, why: str) -> None:
        self.metrics.frames_dropped.labels(sid, "bad_message").inc()
        log.warning(
            "kafka video %s: partition %d offset %d skipped: %s",
            sid,
            msg.partition,
            msg.offset,
            why,
        )
        self.offsets.done(msg.partition, msg.offset)

    async def _consume(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for rec in records:
                    await self._handle(tp, rec)

    async def _handle(self, tp: TopicPartition, rec: Any) -> None:
        self.offsets.started(tp.partition, rec.offset)
        headers = {k.lower(): v for k, v in (rec.headers or ())}
        sid = rec.key.decode(errors="replace") if rec.key else ""
        kind = headers.get("content-type", b"").decode(errors="replace").split(";")[0].strip()
        pts: float | None = None
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            pts = float(headers["pts"].decode()) if "pts" in headers else None
        msg = Message(tp.partition, rec.offset, rec.value or b"", pts)
        if not STREAM_ID.match(sid):
            self._bad("_invalid", msg, f"key {sid!r} is not a stream id")
            return
        why = _check(kind, msg)
        opener = self.openers.get(sid)
        if why is None and opener is not None and opener.kind != kind:
            why = f"content-type {kind} in a {opener.kind} stream"
        if why is not None:
            self._bad(sid, msg, why)
            return
        if opener is None:
            opener = KafkaOpener(
                kind,
                self.settings.fps,
                self.settings.kafka_idle_s,
                self._done_threadsafe,
                self._bad_threadsafe(sid),
            )
            try:
                await self.manager.add_with_opener(
                    StreamSpec(id=sid, url=f"kafka:{self.settings.kafka_video_topic}"), opener
                )
            except Exception as exc:
                self._bad(sid, msg, f"cannot start the stream: {exc}")
                return
            self.openers[sid] = opener
        if not opener.push(msg):
            self.metrics.frames_dropped.labels(sid, "backpressure").inc()
            self.offsets.done(msg.partition, msg.offset)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self._commit()
            now = time.monotonic()
            for sid, opener in list(self.openers.items()):
                if now - opener.last_message > self.settings.kafka_idle_s:
                    log.info(
                        "kafka video %s: idle for %.0f s; ending", sid, self.settings.kafka_idle_s
                    )
                    opener.close()
                    del self.openers[sid]
                    await self.manager.remove(sid)

    async def _commit(self) -> None:
        if self._consumer is None:
            return
        assigned = {tp.partition for tp in self._consumer.assignment()}
        offsets = {
            TopicPartition(self.settings.kafka_video_topic, p): o
            for p, o in self.offsets.committable().items()
            if p in assigned
        }
        if offsets:
            with contextlib.suppress(KafkaError):
                await self._consumer.commit(offsets)


def _check(kind: str, msg: Message) -> str | None:
    """Why ``msg`` is not what its content type says, or None."""
    data = msg.payload
    if not data:
        return "empty message"
    if kind == TS:
        if len(data) % 188 or any(data[i] != 0x47 for i in range(0, len(data), 188)):
            return "not whole 188-byte MPEG-TS packets"
        return None
    if kind == JPEG:
        if not (data.startswith(b"\xff\xd8") and data.rstrip(b"\x00").endswith(b"\xff\xd9")):
            return "not a JPEG image"
        if msg.pts_s is None:
            return "JPEG frame without a numeric 'pts' header"
        return None
    return f"unsupported content-type {kind!r}; use {TS} or {JPEG}"
