"""Encoded video from Kafka: topic ``deepfake.video``, key = stream id.

Header ``content-type`` says what a message holds:

* ``video/mp2t``: the next piece of one continuous MPEG-TS byte stream (whole 188-byte
  packets), demuxed incrementally by PyAV in the stream's reader thread and decoded in the
  node's decode pool (``DFM_DECODE_WORKERS``; with ``0``, in the reader too);
* ``image/jpeg``: one frame, its stream time in header ``pts`` (seconds), decoded in the
  decode pool too.

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
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import av
import cv2
import numpy as np
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import KafkaError

from streamer.buffers import BoundedBuffer, Empty, Ended, Policy, QueueMetrics
from streamer.config import STREAM_ID, Settings, StreamSpec
from streamer.errors import Rejected, SourceError
from streamer.kafka_common import (
    CLOSE_S,
    client_options,
    ensure_topic,
    sticky_assignor,
    stop_client,
)
from streamer.metrics import Metrics
from streamer.sources.base import Opener, SourceState
from streamer.sources.decode import (
    DecodeLimits,
    Feed,
    PacketFeed,
    Picture,
    Resampler,
    VideoFrame,
    run_feed,
)
from streamer.tasks import Backoff

log = logging.getLogger(__name__)

TS = "video/mp2t"
JPEG = "image/jpeg"
# Pictures a decoder may still hand out from a chunk it has finished reading (H.264 keeps
# at most 16 reference pictures; frame threads add one each): a chunk is wholly before the
# picture decoded this many pictures after the demuxer finished it.
TS_DELAY = 32
DLQ_BATCH = 256  # dead letters sent at once, at most


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    payload: bytes
    pts_s: float | None = None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class OffsetTracker:
    """Per partition: the offset up to which every message is done, so safe to commit.

    A message is started when it is read and done when its input is: unusable (it went to
    the dead-letter topic), released by its stream once every window over its frames is
    acknowledged (``streamer/delivery.py``), or left over when its stream ended. A
    message a full stream refused is handed back (:meth:`refused`): it is read again.
    """

    def __init__(self) -> None:
        self.pending: dict[int, dict[int, str | None]] = {}  # partition -> offset -> stream
        self.seen: dict[int, int] = {}

    def started(self, partition: int, offset: int, stream: str | None = None) -> None:
        self.pending.setdefault(partition, {})[offset] = stream
        self.seen[partition] = max(self.seen.get(partition, -1), offset)

    def done(self, partition: int, offset: int) -> None:
        self.pending.get(partition, {}).pop(offset, None)

    def refused(self, partition: int, offset: int) -> None:
        """Not taken after all: the consumer reads it again from here."""
        self.done(partition, offset)
        if self.seen.get(partition) == offset:
            self.seen[partition] = offset - 1

    def stream_ended(self, stream: str) -> int:
        """Every message of an ended stream is done (what no window used never will be)."""
        n = 0
        for offsets in self.pending.values():
            for offset in [o for o, sid in offsets.items() if sid == stream]:
                del offsets[offset]
                n += 1
        return n

    def committable(self) -> dict[int, int]:
        """Next offset to consume, per partition (Kafka's commit convention)."""
        out = {}
        for partition, last in self.seen.items():
            waiting = self.pending.get(partition)
            out[partition] = min(waiting) if waiting else last + 1
        return out

    def position(self, partition: int) -> int | None:
        """The next offset to read in a partition read here, or None."""
        last = self.seen.get(partition)
        return None if last is None else last + 1

    def forget(self, partitions: set[int]) -> None:
        """Partitions that moved to another replica: it reads them from their commit."""
        for p in partitions:
            self.pending.pop(p, None)
            self.seen.pop(p, None)


class _ChunkReader(io.RawIOBase):
    """A file for PyAV that reads the TS chunks of one stream as they arrive."""

    def __init__(
        self,
        chunks: BoundedBuffer[Message],
        idle_s: float,
        on_finished: Callable[[Message], None],
    ):
        self.chunks = chunks
        self.idle_s = idle_s
        self.on_finished = on_finished
        self.buf = b""
        self.current: Message | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            if self.current is not None:
                self.on_finished(self.current)  # the demuxer has taken all of it
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


class _TsFeed(PacketFeed):
    """One key's MPEG-TS byte stream, read from its chunks as they arrive: demuxed in the
    reader thread, decoded where its :class:`PacketFeed` is (the decode pool, or the
    reader).

    A chunk the demuxer has read to its end is wholly before the pictures of packets
    demuxed ``TS_DELAY`` packets later (a decoder may hold that many pictures back): the
    first picture decoded after that packet carries it as a delivery mark.
    """

    def __init__(
        self,
        chunks: BoundedBuffer[Message],
        idle_s: float,
        limits: DecodeLimits,
        *,
        fps: float,
        max_gap_s: float | None,
    ) -> None:
        # (packets demuxed when the demuxer finished a chunk, the chunk): the reader
        # appends, the decoding thread takes from the left.
        self.finished: deque[tuple[int, Message]] = deque()
        self.fed = 0  # packets decoded so far
        reader = _ChunkReader(chunks, idle_s, lambda m: self.finished.append((self.demuxed, m)))
        self.demuxed = 0  # the reader counts (Demuxed.packets); set before probing reads
        try:
            container = av.open(
                io.BufferedReader(reader), format="mpegts", mode="r", metadata_errors="replace"
            )
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot demux the MPEG-TS stream: {exc}") from None
        if not container.streams.video:
            container.close()
            raise SourceError("cannot demux the MPEG-TS stream: it has no video stream")
        super().__init__(container, "the MPEG-TS stream", limits, fps=fps, max_gap_s=max_gap_s)

    def pictures(self, packet: av.Packet | None) -> list[tuple[float, Picture]]:
        if packet is not None:
            self.fed += 1
        out = super().pictures(packet)
        if out:
            marks = []
            while self.finished and self.finished[0][0] + TS_DELAY <= self.fed:
                marks.append(self.finished.popleft()[1])
            out[0][1].marks = tuple(marks)
        return out

    def check(self) -> None:
        """A key that sent nothing decodable ends like one that went idle (the messages
        it sent are done with its stream); a frame too large fails it."""
        if self.error is None and self.decoded == 0:
            log.warning("%s: no decodable frame (%s)", self.name, self.failed or "no picture")
            return
        super().check()


class _JpegFeed:
    """One key's JPEG messages, a picture each: read in the reader thread, decoded where
    the feed is decoded (the decode pool, or the reader). A message that does not decode
    goes to ``on_bad``; each picture carries the message shown before it as its delivery
    mark (one message, one picture)."""

    def __init__(
        self,
        items: BoundedBuffer[Message],
        idle_s: float,
        on_bad: Callable[[Message, str], None],
        *,
        fps: float,
        max_gap_s: float | None,
    ) -> None:
        self.items = items
        self.idle_s = idle_s
        self.on_bad = on_bad
        self.clock = Resampler(fps, max_gap_s=max_gap_s)
        self.first: float | None = None  # the first picture's pts
        self.before: Message | None = None  # the last message shown: wholly before the next
        self.decoded = 0
        self.failed: str | None = None  # never: a bad message is skipped
        self.resync = False
        self.last: float | None = None

    def packets(self, *, realtime: bool = False) -> Generator[Message, None, None]:
        while True:
            try:
                yield self.items.get(timeout=self.idle_s)
            except (Empty, Ended):
                return

    def keyframe(self, packet: Message) -> bool:
        return True

    def decode(self, packet: Message | None, *, gap: bool = False) -> list[VideoFrame]:
        if packet is None:
            out = self.clock.end()
        else:
            bgr = cv2.imdecode(np.frombuffer(packet.payload, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                self.on_bad(packet, "not a decodable JPEG")
                return []
            assert packet.pts_s is not None
            self.first = packet.pts_s if self.first is None else self.first
            picture = Picture(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if self.before is not None:
                picture.marks = (self.before,)
            self.before = packet
            self.decoded += 1
            out = self.clock.push(packet.pts_s - self.first, picture, gap=gap)
        if out:
            self.last = out[-1].pts_s
        return out

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


class KafkaOpener(Opener):
    """Frames of one key, read in its reader thread and decoded in the node's decode
    pool (``packets``): MPEG-TS demuxed in the reader, JPEG messages read there.

    Each picture carries, as delivery marks, the messages wholly before it: for JPEG the
    message before (one message, one picture), for MPEG-TS the chunks the demuxer finished
    ``TS_DELAY`` packets earlier (:class:`_TsFeed`). Its stream hands them back to
    :meth:`release` once the windows over them are acknowledged.
    """

    ends = True
    waits = True  # the topic keeps the messages; a busy node lags instead of dropping

    def __init__(
        self,
        kind: str,
        fps: float,
        idle_s: float,
        on_bad: Callable[[Message, str], None],
        on_release: Callable[[Sequence[object]], None] = lambda marks: None,
        size: int = 256,
        *,
        partition: int = 0,
        max_pixels: int = 3840 * 2160,
        max_gap_s: float | None = None,
        queues: QueueMetrics | None = None,
        threads: int = 1,
        gpu: str | None = None,
    ) -> None:
        self.kind = kind
        self.packets = True  # decoded in the decode pool
        self.threads = threads  # FFmpeg threads of the MPEG-TS decoder
        self.gpu = gpu  # NVDEC's device for the MPEG-TS video (DFM_DECODE), or None
        self.partition = partition
        self.max_pixels = max_pixels
        self.max_gap_s = max_gap_s
        self.fps = fps
        self.idle_s = idle_s
        self.on_bad = on_bad
        self.on_release = on_release
        # Never dropped from: a full buffer refuses a message before it is read (the
        # ingest pauses the partition and reads it again), so lag shows the overload.
        self.items: BoundedBuffer[Message] = BoundedBuffer(
            "kafka_video", size, Policy.BLOCK, metrics=queues
        )
        self.last_message = time.monotonic()

    def push(self, msg: Message) -> bool:
        """On the event loop; False when the buffer is full or ended (nothing is lost)."""
        self.last_message = time.monotonic()  # offered: the key is not idle, even if full
        if self.items.full:
            return False
        return self.items.put_nowait(msg)

    def release(self, marks: Sequence[object]) -> None:
        self.on_release(marks)

    def close(self) -> None:
        self.items.end()

    def open(self) -> Iterator[VideoFrame]:
        """Without a decode pool: read and decoded here."""
        return run_feed(self.demux())

    def demux(self) -> Feed:
        if self.kind == JPEG:
            return _JpegFeed(
                self.items, self.idle_s, self.on_bad, fps=self.fps, max_gap_s=self.max_gap_s
            )
        limits = DecodeLimits(max_pixels=self.max_pixels, threads=self.threads, gpu=self.gpu)
        return _TsFeed(self.items, self.idle_s, limits, fps=self.fps, max_gap_s=self.max_gap_s)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, ingest: KafkaVideoIngest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.ingest.revoked()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        group = f"{self.ingest.settings.kafka_group}.video"
        self.ingest.metrics.kafka_rebalances.labels(group).inc()
        await self.ingest.assigned({tp.partition for tp in assigned})


class KafkaVideoIngest:
    """Consumes ``deepfake.video`` in the service's group; one stream per key.

    At least once: a message's offset is committed once its input is done (see
    :class:`OffsetTracker`). A stream whose buffer is full refuses a message before it is
    read: the partition is paused and read again from that offset, so the consumer's lag
    shows the overload and nothing is lost. Unusable messages go to the dead-letter topic
    (``DFM_KAFKA_DLQ_TOPIC``) with a ``reason`` header. Partitions are assigned by a sticky
    assignor; on a rebalance only the streams of partitions that moved stop, after what
    is done has been committed.
    """

    RESUME_S = 0.2  # a paused partition is read again this soon

    def __init__(self, settings: Settings, manager: Any, metrics: Metrics) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics
        self.offsets = OffsetTracker()
        self.openers: dict[str, KafkaOpener] = {}
        self.partitions: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dlq: asyncio.Queue[tuple[Message, str | None, str, str]] = asyncio.Queue(1000)
        self._paused: dict[TopicPartition, float] = {}
        self._next: dict[int, int] = {}  # partition -> the next offset to take
        self._tasks: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        await ensure_topic(
            s, s.kafka_video_topic, s.kafka_dlq_topic, partitions=s.kafka_sources_partitions
        )
        self._producer = AIOKafkaProducer(**client_options(s), acks="all", enable_idempotence=True)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **client_options(s),
            group_id=f"{s.kafka_group}.video",
            enable_auto_commit=False,
            auto_offset_reset=s.kafka_video_start,
            partition_assignment_strategy=(sticky_assignor(),),
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
        )
        self._consumer.subscribe([s.kafka_video_topic], listener=_Rebalance(self))
        await self._consumer.start()
        self.metrics.kafka_lag.labels(s.kafka_video_topic).set_function(self.lag)
        for name, run in (
            ("kafka-video", self._consume),
            ("kafka-video-commit", self._housekeeping),
            ("kafka-video-dlq", self._dead_letters),
        ):
            self.manager.supervisor.spawn(name, run)
            self._tasks.append(name)

    def lag(self) -> int:
        """Messages in this replica's partitions not yet taken: the high watermark of the
        last fetch minus the next offset to take (a paused, full stream's show here)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        total = 0
        for partition in self.partitions:
            tp = TopicPartition(self.settings.kafka_video_topic, partition)
            try:  # a scrape during a rebalance finds the partition unassigned
                high = consumer.highwater(tp)
            except (AssertionError, AttributeError):
                continue
            taken = self._next.get(partition)
            if high is not None and taken is not None:
                total += max(0, high - taken)
        return total

    async def stop_consuming(self) -> None:
        """Read no more; the streams end with what they have. Safe to call twice."""
        for name in self._tasks:
            await self.manager.supervisor.cancel(name)
        self._tasks = []
        for opener in self.openers.values():
            opener.close()

    async def close(self) -> None:
        """After the streams drained and the sinks flushed: commit what is done, leave."""
        await self.stop_consuming()
        if self._consumer is not None:
            try:  # a commit waits for the group coordinator, for ever if Kafka is away
                await asyncio.wait_for(self._commit(), CLOSE_S)
            except TimeoutError:
                log.warning(
                    "kafka video: no commit within %.0f s at shutdown (Kafka away?); "
                    "the messages since the last commit will be read again",
                    CLOSE_S,
                )
            await stop_client(self._consumer)
            self._consumer = None
        if self._producer is not None:
            await stop_client(self._producer)
            self._producer = None
        self.openers.clear()

    # -- worker-thread callbacks -------------------------------------------------------
    def _bad_threadsafe(self, sid: str) -> Callable[[Message, str], None]:
        def bad(msg: Message, why: str) -> None:
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._reject_nowait, sid, msg, why)

        return bad

    # -- loop side ---------------------------------------------------------------------
    def _release(self, marks: Sequence[object]) -> None:
        for msg in marks:
            assert isinstance(msg, Message)
            self.offsets.done(msg.partition, msg.offset)

    def _reject_nowait(self, sid: str | None, msg: Message, why: str) -> None:
        try:
            self._dlq.put_nowait((msg, sid, "bad_payload", why))
        except asyncio.QueueFull:  # a flood of bad frames: counted, not kept
            self._skipped(sid, msg, why, "bad_payload")
            self.offsets.done(msg.partition, msg.offset)

    def _skipped(self, sid: str | None, msg: Message, why: str, reason: str) -> None:
        """Count and log an unusable message; a series per key only for streams."""
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

    async def _dead_letters(self) -> None:
        """Writes unusable messages to the dead-letter topic; then their offsets move on.

        Up to ``DLQ_BATCH`` at a time, pipelined; one that fails is tried again (five times
        in all), and one the topic never takes is logged and let go.
        """
        while True:
            batch = [await self._dlq.get()]
            while len(batch) < DLQ_BATCH and not self._dlq.empty():
                batch.append(self._dlq.get_nowait())
            for msg, sid, reason, why in batch:
                self._skipped(sid, msg, why, reason)
            backoff = Backoff(0.5, 5.0)
            for attempt in range(5):
                batch = await self._write_dead_letters(batch)
                if not batch:
                    break
                log.warning(
                    "kafka video: %d dead-letter writes failed; attempt %d", len(batch), attempt + 1
                )
                await asyncio.sleep(backoff.delay(attempt + 1))
            for msg, _, _, _ in batch:
                log.error(
                    "kafka video: partition %d offset %d lost: the dead-letter topic cannot "
                    "be written",
                    msg.partition,
                    msg.offset,
                )
                self.offsets.done(msg.partition, msg.offset)

    async def _write_dead_letters(
        self, batch: list[tuple[Message, str | None, str, str]]
    ) -> list[tuple[Message, str | None, str, str]]:
        """Sends ``batch`` and waits for every acknowledgement; returns the ones that failed."""
        assert self._producer is not None
        sent: list[tuple[tuple[Message, str | None, str, str], asyncio.Future[Any]]] = []
        failed = []
        for item in batch:
            msg, _, reason, why = item
            headers = [*msg.headers, ("reason", reason.encode()),
                       ("detail", why[:200].encode("utf-8", "replace"))]  # fmt: skip
            try:
                fut = await self._producer.send(
                    self.settings.kafka_dlq_topic, msg.payload, key=msg.key, headers=headers
                )
            except KafkaError:
                failed.append(item)
                continue
            sent.append((item, fut))
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (item, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(item)
                continue
            msg, _, reason, _ = item
            self.metrics.dlq_messages.labels(reason).inc()
            self.offsets.done(msg.partition, msg.offset)
        return failed

    async def _consume(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for rec in records:
                    try:
                        taken = await self._handle(tp, rec)
                    except Exception as exc:  # one message must never stop ingest of every key
                        log.exception("kafka video: offset %d could not be handled", rec.offset)
                        msg = _message(tp.partition, rec)
                        self.offsets.started(tp.partition, rec.offset)
                        await self._dlq.put((msg, None, "internal", f"internal error: {exc!r}"))
                        taken = True
                    if taken:
                        self._next[tp.partition] = rec.offset + 1
                    if not taken:  # its stream is full: read it again a little later
                        self.offsets.refused(tp.partition, rec.offset)
                        self._consumer.seek(tp, rec.offset)
                        self._consumer.pause(tp)
                        self._paused[tp] = time.monotonic() + self.RESUME_S
                        break

    async def _handle(self, tp: TopicPartition, rec: Any) -> bool:
        """Take one record; False when its stream has no room for it yet."""
        msg = _message(tp.partition, rec)
        parsed = _parse_record(rec, self.settings.kafka_max_message_bytes)
        if isinstance(parsed, _Unusable):
            self.offsets.started(tp.partition, rec.offset)
            await self._dlq.put((msg, parsed.sid, parsed.reason, parsed.why))
            return True
        sid, kind, pts = parsed
        msg = _message(tp.partition, rec, pts)
        why = _check(kind, msg, self.settings.max_frame_pixels)
        opener = self.openers.get(sid)
        if why is None and opener is not None and opener.kind != kind:
            why = f"content-type {kind} in a {opener.kind} stream"
        if why is not None:
            self.offsets.started(tp.partition, rec.offset)
            await self._dlq.put((msg, sid, "bad_payload", why))
            return True
        if opener is None:
            opener = KafkaOpener(
                kind,
                self.settings.fps,
                self.settings.kafka_idle_s,
                self._bad_threadsafe(sid),
                self._release,
                partition=tp.partition,
                max_pixels=self.settings.max_frame_pixels,
                max_gap_s=self.settings.max_gap_s,
                queues=self.metrics.queues,
                threads=self.settings.decoder_threads(),
                gpu=getattr(self.manager, "gpu_decode", None),
            )
            try:
                await self.manager.add_with_opener(
                    StreamSpec(id=sid, url=f"kafka:{self.settings.kafka_video_topic}"), opener
                )
            except Rejected as exc:
                self._skipped(None, msg, f"cannot start stream {sid}: {exc.reason}", "no_room")
                return True
            self.openers[sid] = opener
        if not opener.push(msg):
            return False
        self.offsets.started(tp.partition, rec.offset, sid)
        return True

    async def _housekeeping(self) -> None:
        last_commit = time.monotonic()
        while True:
            await asyncio.sleep(self.RESUME_S)
            now = time.monotonic()
            assert self._consumer is not None
            for tp, when in list(self._paused.items()):
                if now >= when:
                    del self._paused[tp]
                    if tp in self._consumer.assignment():
                        self._consumer.resume(tp)
            for sid, opener in list(self.openers.items()):
                runner = self.manager.streams.get(sid)
                if runner is None or runner.source_state == SourceState.FAILED:
                    why = "removed" if runner is None else f"failed ({runner.reason})"
                    await self._end(sid, f"stream {why}")
                elif now - opener.last_message > self.settings.kafka_idle_s and not opener.items:
                    await self._end(sid, f"idle for {self.settings.kafka_idle_s:.0f} s", drain=True)
            if now - last_commit >= 1.0:
                last_commit = now
                await self._commit()

    async def _end(self, sid: str, why: str, *, drain: bool = False) -> None:
        """A stream ends: what is left once it drained is done (no window will use it)."""
        log.info("kafka video %s: %s; ending", sid, why)
        opener = self.openers.pop(sid)
        opener.close()
        await self.manager.remove(sid, drain=drain)
        self.offsets.stream_ended(sid)

    async def revoked(self) -> None:
        """Before a rebalance: commit what is done (the next owner starts there)."""
        await self._commit()

    async def assigned(self, partitions: set[int]) -> None:
        """After a rebalance: stop the streams whose partitions moved; keep the others.

        A kept partition is read on from where this replica was (the group would go back
        to the last commit, and repeat what the streams already have).
        """
        gone = self.partitions - partitions
        self.partitions = set(partitions)
        for partition in gone:
            self._next.pop(partition, None)
        assert self._consumer is not None
        moved = [sid for sid, o in self.openers.items() if o.partition in gone]
        for sid in moved:
            opener = self.openers.pop(sid)
            opener.close()
            await self.manager.remove(sid)
        self.offsets.forget(gone)
        for tp in list(self._paused):
            if tp.partition in gone:
                del self._paused[tp]
        for p in partitions:
            position = self.offsets.position(p)
            if position is not None:
                self._consumer.seek(TopicPartition(self.settings.kafka_video_topic, p), position)
        log.info(
            "kafka video: assigned partitions %s; %d streams moved away %s",
            sorted(partitions), len(moved), moved,
        )  # fmt: skip

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
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:  # the next owner re-reads from the last commit
                log.warning(
                    "kafka video: commit failed (%s); those messages may be read again", exc
                )


def _message(partition: int, rec: Any, pts: float | None = None) -> Message:
    value = rec.value if isinstance(rec.value, bytes) else b""
    key = rec.key if isinstance(rec.key, bytes) else None
    return Message(partition, rec.offset, value, pts, key, tuple(rec.headers or ()))


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
