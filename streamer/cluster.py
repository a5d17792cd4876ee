"""Which replica watches which stream: Kafka's consumer group on ``deepfake.sources``.

The compacted topic holds one record per stream id: the stream spec, or a tombstone once
deleted. Every replica joins one consumer group on it; the partitions Kafka assigns to a
replica decide the streams it ingests. On assignment a replica reads its partitions from
the beginning (the compacted state), stops the streams of partitions it no longer has and
starts the new ones (a stream whose spec is unchanged keeps running); a new record starts,
restarts or stops a stream. No scheduler of our own: the group protocol spreads streams
over replicas and moves them when replicas come and go, and its sticky assignor moves
only the partitions it must, so a replica joining or leaving restarts only the streams
that really move.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streamer.config import Settings, StreamSpec
from streamer.errors import LimitReached, Rejected
from streamer.kafka_common import client_options, ensure_topic, sticky_assignor, stop_client
from streamer.manager import StreamManager
from streamer.urls import redact

log = logging.getLogger(__name__)

RETRY_REFUSED_S = 30.0  # how often streams refused at DFM_MAX_STREAMS are tried again


class _Listener(ConsumerRebalanceListener):
    def __init__(self, directory: SourceDirectory) -> None:
        self.directory = directory

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Nothing to do yet: most partitions come back in the next assignment.
        log.info("sources: rebalancing (partitions %s)", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.directory.manager.metrics.kafka_rebalances.labels(self.directory.group).inc()
        await self.directory.assigned(list(assigned))


class SourceDirectory:
    def __init__(self, settings: Settings, manager: StreamManager) -> None:
        self.settings = settings
        self.manager = manager
        self.topic = settings.kafka_sources_topic
        self.owned: dict[str, int] = {}  # stream id -> partition, for streams running here
        # stream id -> (partition, spec) for every live spec in this replica's partitions,
        # running or refused at DFM_MAX_STREAMS (not a bad spec: that one waits for a new
        # record): deepfake_streams_desired counts them; a refused one is tried again
        # when there is room.
        self.wanted: dict[str, tuple[int, StreamSpec]] = {}
        self.group = f"{settings.kafka_group}.sources"
        self.partitions: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._running = False

    async def start(self) -> None:
        opts = client_options(self.settings)
        s = self.settings
        await ensure_topic(s, self.topic, partitions=s.kafka_sources_partitions, compact=True)
        self._producer = AIOKafkaProducer(**opts, acks="all", enable_idempotence=True)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **opts,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(sticky_assignor(),),
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
        )
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        await self._consumer.start()
        self.manager.supervisor.spawn("source-directory", self._run)
        self._running = True

    async def stop(self) -> None:
        """Leave the group (its streams move to other replicas). Safe to call twice."""
        if self._running:
            await self.manager.supervisor.cancel("source-directory")
            self._running = False
        for client in (self._consumer, self._producer):
            if client is not None:
                await stop_client(client)
        self._consumer = self._producer = None

    async def __aenter__(self) -> SourceDirectory:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- writes (the API) --------------------------------------------------------------
    async def put(self, spec: StreamSpec) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(
            self.topic, spec.model_dump_json().encode(), key=spec.id.encode()
        )

    async def delete(self, stream_id: str) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(self.topic, None, key=stream_id.encode())

    # -- group membership --------------------------------------------------------------
    async def assigned(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self.partitions = {tp.partition for tp in partitions}
        gone = [sid for sid, p in self.owned.items() if p not in self.partitions]
        log.info(
            "sources: assigned partitions %s; stopping %d streams that moved away %s",
            sorted(self.partitions), len(gone), gone,
        )  # fmt: skip
        for sid in gone:
            del self.owned[sid]
            await self.manager.remove(sid)
        self.wanted = {k: v for k, v in self.wanted.items() if v[0] in self.partitions}
        # The compacted topic is the desired state: read it whole on every assignment.
        if partitions:
            await self._consumer.seek_to_beginning(*partitions)

    def refused(self) -> list[str]:
        """Streams this replica should watch and does not (refused at DFM_MAX_STREAMS)."""
        return [sid for sid in self.wanted if sid not in self.manager.streams]

    async def _retry_refused(self) -> None:
        """Start refused streams while there is room (a stream elsewhere was deleted)."""
        for sid in self.refused():
            if len(self.manager.streams) >= self.settings.max_streams:
                return
            partition, spec = self.wanted[sid]
            await self._apply(sid, partition, spec)

    async def _run(self) -> None:
        assert self._consumer is not None
        last_retry = time.monotonic()
        while True:
            if time.monotonic() - last_retry > RETRY_REFUSED_S:
                last_retry = time.monotonic()
                await self._retry_refused()
            batches = await self._consumer.getmany(timeout_ms=1000)
            desired: dict[str, tuple[int, StreamSpec | None]] = {}
            for tp, records in batches.items():
                for rec in records:
                    if rec.key is None:
                        continue
                    sid = rec.key.decode(errors="replace")
                    desired[sid] = (tp.partition, self._parse(sid, rec.value, rec.offset))
            for sid, (partition, spec) in desired.items():
                try:
                    await self._apply(sid, partition, spec)
                except Exception:  # one record must never stop the directory
                    log.exception("sources: cannot apply the record for %s", sid)
            if any(spec is None for _, spec in desired.values()):
                await self._retry_refused()  # a deleted stream made room

    def _parse(self, sid: str, value: bytes | None, offset: int) -> StreamSpec | None:
        if value is None:
            return None
        try:
            spec = StreamSpec.model_validate(json.loads(value))
        except (ValueError, UnicodeDecodeError) as exc:
            log.error("sources: bad spec for %s at offset %d: %s", sid, offset, redact(str(exc)))
            return None
        return spec if spec.id == sid else None

    async def _apply(self, sid: str, partition: int, spec: StreamSpec | None) -> None:
        if partition not in self.partitions:
            return
        if spec is None:
            self.wanted.pop(sid, None)
        else:
            self.wanted[sid] = (partition, spec)
        running = self.manager.streams.get(sid)
        if running is not None and (spec is None or running.spec != spec):
            self.owned.pop(sid, None)
            await self.manager.remove(sid)
        if spec is not None and (running is None or running.spec != spec):
            try:
                await self.manager.add(spec)
            except Rejected as exc:
                log.error("sources: cannot start %s: %s", sid, exc.reason)
                if not isinstance(exc, LimitReached):  # a bad spec waits for a new record
                    self.wanted.pop(sid, None)
                return
            self.owned[sid] = partition
