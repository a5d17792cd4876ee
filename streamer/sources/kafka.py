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
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import av
import cv2
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamer.buffers import BoundedBuffer, Empty, Ended, Policy, QueueMetrics
from streamer.config import STREAM_ID, Settings, StreamSpec
from streamer.errors import Rejected, SourceError
from streamer.kafka_common import client_options, ensure_topic
from streamer.metrics import Metrics
from streamer.sources.base import Opener
from streamer.sources.decode import Picture, VideoFrame, resample

log = logging.getLogger(__name__)

TS = "video/mp2t"
JPEG = "image/jpeg"


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

    def __init__(
        self, chunks: BoundedBuffer[Message], idle_s: float, on_done: Callable[[Message], None]
    ):
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
            except (Empty, Ended):
                return 0
            self.current, self.buf = item, item.payload
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


class KafkaOpener(Opener):
    """Frames of one key, decoded in the stream's worker thread."""

    ends = True
    waits = True  # the topic keeps the messages; a busy node lags instead of dropping

    def __init__(
        self,
        kind: str,
        fps: float,
        idle_s: float,
        on_done: Callable[[Message], None],
        on_bad: Callable[[Message, str], None],
        size: int = 256,
        *,
        max_pixels: int = 3840 * 2160,
        max_gap_s: float | None = None,
        queues: QueueMetrics | None = None,
    ) -> None:
        self.kind = kind
        self.max_pixels = max_pixels
        self.max_gap_s = max_gap_s
        self.fps = fps
        self.idle_s = idle_s
        self.on_done = on_done
        self.on_bad = on_bad
        # drop-newest: the caller counts a refused message and marks its offset done
        self.items: BoundedBuffer[Message] = BoundedBuffer(
            "kafka_video", size, Policy.DROP_NEWEST, metrics=queues
        )
        self.last_message = time.monotonic()

    def push(self, msg: Message) -> bool:
        """On the event loop; False when the buffer is full (the message is then dropped)."""
        self.last_message = time.monotonic()
        return self.items.put_nowait(msg)

    def close(self) -> None:
        self.items.end()

    def open(self) -> Iterator[VideoFrame]:
        frames = self._ts() if self.kind == TS else self._jpeg()
        return resample(frames, self.fps, max_gap_s=self.max_gap_s)

    def _jpeg(self) -> Iterator[tuple[float, Picture | np.ndarray]]:
        first: float | None = None
        while True:
            try:
                item = self.items.get(timeout=self.idle_s)
            except (Empty, Ended):
                return
            bgr = cv2.imdecode(np.frombuffer(item.payload, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                self.on_bad(item, "not a decodable JPEG")
                continue
            assert item.pts_s is not None
            first = item.pts_s if first is None else first
            yield item.pts_s - first, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            self.on_done(item)

    def _ts(self) -> Iterator[tuple[float, Picture]]:
        reader = _ChunkReader(self.items, self.idle_s, self.on_done)
        try:
            container = av.open(
                io.BufferedReader(reader), format="mpegts", mode="r", metadata_errors="replace"
            )
            container.streams.video[0].codec_context.options = {"max_pixels": str(self.max_pixels)}
        except (av.error.FFmpegError, IndexError) as exc:
            raise SourceError(f"cannot demux the MPEG-TS stream: {exc}") from None
        try:
            stream = container.streams.video[0]
            first: float | None = None
            try:
                for frame in container.decode(stream):
                    if frame.time is None or not math.isfinite(frame.time):
                        continue
                    if frame.width * frame.height > self.max_pixels:
                        raise SourceError(
                            f"MPEG-TS frames of {frame.width}x{frame.height} are larger than "
                            f"{self.max_pixels} pixels (DFM_MAX_FRAME_PIXELS)"
                        )
                    first = frame.time if first is None else first
                    yield frame.time - first, Picture(frame)
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
        self._tasks: list[str] = []
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
        for name, run in (
            ("kafka-video", self._consume),
            ("kafka-video-commit", self._housekeeping),
        ):
            self.manager.supervisor.spawn(name, run)
            self._tasks.append(name)

    async def stop(self) -> None:
        """Stop consuming, commit what is done. Safe to call twice."""
        for name in self._tasks:
            await self.manager.supervisor.cancel(name)
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
    def _bad(self, sid: str | None, msg: Message, why: str, reason: str = "bad_payload") -> None:
        """Count and skip an unusable message; a series per key only for keys that are streams."""
        self.metrics.kafka_rejected.labels(reason).inc()
        if sid is not None and sid in self.openers:
            self.metrics.frames_dropped.labels(sid, "bad_message").inc()
        log.warning(
            "kafka video %s: partition %d offset %d skipped: %s",
            sid if sid is not None else "(no stream id)",
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
                    try:
                        await self._handle(tp, rec)
                    except Exception:  # one message must never stop ingest of every key
                        log.exception("kafka video: offset %d could not be handled", rec.offset)
                        self._bad(None, Message(tp.partition, rec.offset, b""), "internal error",
                                  "internal")  # fmt: skip

    async def _handle(self, tp: TopicPartition, rec: Any) -> None:
        self.offsets.started(tp.partition, rec.offset)
        value = rec.value if isinstance(rec.value, bytes) else b""
        msg = Message(tp.partition, rec.offset, value)
        parsed = _parse_record(rec, self.settings.kafka_max_message_bytes)
        if isinstance(parsed, _Unusable):
            self._bad(parsed.sid, msg, parsed.why, parsed.reason)
            return
        sid, kind, pts = parsed
        msg = Message(tp.partition, rec.offset, value, pts)
        why = _check(kind, msg, self.settings.max_frame_pixels)
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
                max_pixels=self.settings.max_frame_pixels,
                max_gap_s=self.settings.max_gap_s,
                queues=self.metrics.queues,
            )
            try:
                await self.manager.add_with_opener(
                    StreamSpec(id=sid, url=f"kafka:{self.settings.kafka_video_topic}"), opener
                )
            except Rejected as exc:
                self._bad(None, msg, f"cannot start stream {sid}: {exc.reason}", "no_room")
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


@dataclass(frozen=True)
class _Unusable:
    sid: str | None
    why: str
    reason: str  # the metric label: bad_key, bad_header, oversized


def _parse_record(rec: Any, max_bytes: int) -> tuple[str, str, float | None] | _Unusable:
    """(stream id, content type, pts) of a record, or why it cannot be used."""
    key = rec.key
    try:
        sid = key.decode("ascii") if isinstance(key, bytes) else ""
    except UnicodeDecodeError:
        sid = ""
    if not STREAM_ID.match(sid):
        shown = repr(key[:64]) if isinstance(key, bytes) else repr(key)
        return _Unusable(None, f"key {shown} is not a stream id", "bad_key")
    if isinstance(rec.value, bytes) and len(rec.value) > max_bytes:
        return _Unusable(
            sid, f"{len(rec.value)} bytes, over DFM_KAFKA_MAX_MESSAGE_BYTES", "oversized"
        )
    headers: dict[str, str] = {}
    for name, value in rec.headers or ():
        if not isinstance(name, str) or not isinstance(value, bytes):
            return _Unusable(sid, f"header {name!r} has no value", "bad_header")
        try:
            headers[name.lower()] = value.decode("ascii").strip()
        except UnicodeDecodeError:
            return _Unusable(sid, f"header {name!r} is not ASCII text", "bad_header")
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    pts: float | None = None
    if "pts" in headers:
        try:
            pts = float(headers["pts"])
        except ValueError:
            pts = None
        if pts is None or not math.isfinite(pts) or abs(pts) > 1e12:
            return _Unusable(sid, f"header pts {headers['pts'][:40]!r} is not a time", "bad_header")
    return sid, kind, pts


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, read without decoding; None if absent."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _check(kind: str, msg: Message, max_pixels: int) -> str | None:
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
        size = jpeg_size(data)
        if size is None:
            return "JPEG without a frame header"
        if size[0] * size[1] > max_pixels:
            return (
                f"a {size[0]}x{size[1]} JPEG is larger than {max_pixels} pixels "
                "(DFM_MAX_FRAME_PIXELS)"
            )
        return None
    return f"unsupported content-type {kind!r}; use {TS} or {JPEG}"
