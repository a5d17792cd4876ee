"""Verdicts to Kafka: topic ``deepfake.verdicts``, key = stream id, value = verdict v1 JSON.

An idempotent producer with ``acks=all`` and gzip compression. Verdicts wait in a
drop-oldest :class:`~streamer.buffers.BoundedBuffer` (queue ``kafka_verdicts``,
``DFM_KAFKA_BUFFER``) and leave it strictly in order, one acknowledged write at a time, so a broker
outage holds them back instead of losing or reordering them; when it returns they go out
in order. A full buffer drops its oldest verdict, logs it and counts it in
``deepfake_kafka_publish_errors_total``. ``ready`` is false while the producer cannot
write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streamer.buffers import BoundedBuffer, Policy
from streamer.config import Settings
from streamer.faults import InjectedFault
from streamer.kafka_common import client_options
from streamer.metrics import Metrics
from streamer.tasks import Supervisor
from streamer.verdict import Verdict

log = logging.getLogger(__name__)


class KafkaSink:
    name = "kafka"

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        flush_timeout_s: float = 10.0,
        supervisor: Supervisor | None = None,
    ):
        self.settings = settings
        self.supervisor = supervisor or Supervisor(metrics.task_restarts)
        self.metrics = metrics
        self.topic = settings.kafka_verdicts_topic
        self.flush_timeout_s = flush_timeout_s
        self.stall_s = 2.0  # an acknowledgement this late means Kafka is away: not ready
        self._buffer: BoundedBuffer[Verdict] = BoundedBuffer(
            "kafka_verdicts",
            settings.kafka_buffer,
            Policy.DROP_OLDEST,
            metrics=metrics.queues,
            on_drop=self._lost,
        )
        self._progress = asyncio.Event()
        self._fault_rng = random.Random(settings.faults.seed)
        metrics.sink_errors.labels(self.name).inc(0)
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self._healthy = False
        self.sent = 0

    @property
    def ready(self) -> bool:
        return self._healthy

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def start(self) -> None:
        self.supervisor.spawn("kafka-sink", self._run)
        self._started = True

    async def publish(self, verdict: Verdict) -> None:
        self._buffer.put_nowait(verdict)

    def _lost(self, verdict: Verdict) -> None:
        self.metrics.kafka_publish_errors.inc()
        log.error(
            "kafka: buffer full (DFM_KAFKA_BUFFER=%d); dropped verdict %s seq %d",
            self.settings.kafka_buffer,
            verdict.stream_id,
            verdict.seq,
        )

    async def _connect(self) -> AIOKafkaProducer:
        delay = 0.5
        while True:
            producer = AIOKafkaProducer(
                **client_options(self.settings),
                enable_idempotence=True,
                acks="all",
                compression_type="gzip",
                linger_ms=0,
                request_timeout_ms=5000,
            )
            try:
                await producer.start()
                return producer
            except KafkaError as exc:
                with contextlib.suppress(KafkaError):
                    await producer.stop()
                log.warning("kafka: cannot connect (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _run(self) -> None:
        if self._producer is not None:  # restarted after a failure: a fresh producer
            with contextlib.suppress(KafkaError):
                await self._producer.stop()
        self._healthy = False
        self._producer = await self._connect()
        self._healthy = True
        delay = 0.5
        while True:
            verdict = await self._buffer.apeek()
            try:
                self.settings.faults.sink_write(self._fault_rng)  # DFM_FAULTS, tests only
                sent = await self._producer.send(
                    self.topic, verdict.to_json().encode(), key=verdict.stream_id.encode()
                )
                # Wait for the acknowledgement without giving the record up: aiokafka keeps
                # retrying it, and sending it again could write it twice.
                while True:
                    try:
                        await asyncio.wait_for(asyncio.shield(sent), self.stall_s)
                        break
                    except TimeoutError:
                        if self._healthy:
                            log.warning(
                                "kafka: no acknowledgement for %.0f s; holding %d verdicts",
                                self.stall_s,
                                len(self._buffer),
                            )
                        self._healthy = False
            except (KafkaError, InjectedFault) as exc:
                self.metrics.sink_errors.labels(self.name).inc()
                if self._healthy:
                    log.warning(
                        "kafka: publish failed (%s); holding %d verdicts", exc, len(self._buffer)
                    )
                self._healthy = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if not self._healthy:
                log.info("kafka: publishing again")
            self._healthy, delay = True, 0.5
            self._buffer.remove_first(verdict)
            self.sent += 1
            self._progress.set()

    async def flush(self, timeout_s: float, *, give_up_when_away: bool = False) -> bool:
        """Wait until every buffered verdict is acknowledged; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._buffer and loop.time() < deadline:
            if give_up_when_away and not self._healthy and self._producer is not None:
                break
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), max(0.0, deadline - loop.time()))
        return not self._buffer

    async def stop(self) -> None:
        """Flush what is buffered (up to ``flush_timeout_s``), then close. Safe twice."""
        if not self._started:
            return
        await self.flush(self.flush_timeout_s, give_up_when_away=True)
        if self._buffer:
            log.error("kafka: %d verdicts not delivered at shutdown", len(self._buffer))
            self.metrics.kafka_publish_errors.inc(len(self._buffer))
        await self.supervisor.cancel("kafka-sink")
        self._started = False
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                await self._producer.stop()
            self._producer = None
        self._healthy = False
