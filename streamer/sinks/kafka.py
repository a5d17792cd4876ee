"""Verdicts to Kafka: topic ``deepfake.verdicts``, key = stream id, value = verdict v1 JSON.

An idempotent producer with ``acks=all`` and gzip compression. Verdicts wait in a
drop-oldest :class:`~streamer.buffers.BoundedBuffer` (queue ``kafka_verdicts``,
``DFM_KAFKA_BUFFER``); a full buffer drops its oldest verdict, logs it and counts it in
``deepfake_kafka_publish_errors_total``.

Delivery is pipelined: up to ``in_flight`` verdicts are handed to the producer at once
(it batches them, with up to 5 requests in flight per broker) and their acknowledgements
are awaited in order. No record is ever given up while aiokafka still retries it (sending
it again could write it twice), and aiokafka gives none up for want of a partition leader
(:meth:`KafkaSink.new_producer`). A record that fails goes back to the front of the buffer
with the ones after it that did not reach the broker, in their order, and is sent again
after a backoff; with the idempotent producer a partition takes no record after one of
its own that failed, so each stream's verdicts stay in order and none is written twice.
Verdicts handed to the producer and not yet acknowledged show in
``deepfake_queue_depth{queue="kafka_in_flight"}``, so the two depths together are what is
held. ``in_flight=1`` is the one-write-at-a-time path (``deepfake-monitor bench --parts sink``
compares the two).

Each verdict's ``on_ack`` runs once the broker has acknowledged it, or once it is given
up (dropped from a full buffer, counted): the Kafka video ingest commits an input offset
only after that (``streamer/delivery.py``). ``deepfake_sink_up{sink="kafka"}`` is 0 while
Kafka is away (no acknowledgement for ``stall_s``, or writes failing). That does not
make the replica unready: it keeps analysing and holds verdicts; the buffer's fill is in
``deepfake_queue_depth{queue="kafka_verdicts"}`` over its capacity (an alert past half).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from streamer.buffers import BoundedBuffer, Policy
from streamer.config import Settings
from streamer.faults import InjectedFault
from streamer.kafka_common import CLOSE_S, client_options, stop_client
from streamer.metrics import Metrics
from streamer.sinks.base import Ack
from streamer.tasks import Backoff, Restart, Supervisor
from streamer.verdict import Verdict

log = logging.getLogger(__name__)

IN_FLIGHT = 512  # verdicts handed to the producer and not yet acknowledged, at most
FAILING_LOG_S = 30.0  # while writes keep failing, say so this often

# The broker refused these for this producer's id for good (its sequence is lost, or it
# was fenced), or the producer is closed: sending again through it fails the same way for
# ever. The broker wrote none of the refused records, so a fresh producer sends them.
BROKEN = (OutOfOrderSequenceNumber, UnknownProducerId, ProducerFenced, ProducerClosed)


class ProducerBroken(Restart):
    """The producer can deliver nothing more; the sink's loop restarts with a fresh one."""


class KafkaSink:
    name = "kafka"

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        flush_timeout_s: float = 10.0,
        supervisor: Supervisor | None = None,
        in_flight: int = IN_FLIGHT,
    ):
        self.settings = settings
        self.supervisor = supervisor or Supervisor(metrics.task_restarts)
        self.metrics = metrics
        self.topic = settings.kafka_verdicts_topic
        self.flush_timeout_s = flush_timeout_s
        self.stall_s = 2.0  # an acknowledgement this late means Kafka is away
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
        self._up = metrics.sink_up.labels(self.name)
        self._up.set(0)
        self.in_flight = in_flight
        self._sending: list[Verdict] = []  # taken from the buffer, not yet acknowledged
        self._in_flight_depth = metrics.queue_depth.labels("kafka_in_flight")
        self._in_flight_depth.set(0)
        self._acks: dict[int, Ack] = {}  # id(verdict) -> its on_ack, while it is held here
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self._healthy_now = False

    @property
    def _healthy(self) -> bool:
        return self._healthy_now

    @_healthy.setter
    def _healthy(self, value: bool) -> None:
        self._healthy_now = value
        self._up.set(1 if value else 0)

    @property
    def pending(self) -> int:
        """Verdicts not yet acknowledged: buffered or in flight."""
        return len(self._buffer) + len(self._sending)

    async def start(self) -> None:
        self.supervisor.spawn("kafka-sink", self._run)
        self._started = True

    async def publish(self, verdict: Verdict, on_ack: Ack | None = None) -> None:
        if on_ack is not None:
            self._acks[id(verdict)] = on_ack
        self._buffer.put_nowait(verdict)

    def _acked(self, verdict: Verdict) -> None:
        on_ack = self._acks.pop(id(verdict), None)
        if on_ack is not None:
            on_ack()

    def _lost(self, verdict: Verdict) -> None:
        self._acked(verdict)  # given up and counted: its input is not held for ever
        self.metrics.kafka_publish_errors.inc()
        log.error(
            "kafka: buffer full (DFM_KAFKA_BUFFER=%d); dropped verdict %s seq %d",
            self.settings.kafka_buffer,
            verdict.stream_id,
            verdict.seq,
        )

    def new_producer(self) -> AIOKafkaProducer:
        """An idempotent producer (not started) whose records wait for a partition leader
        for as long as it takes."""
        producer = AIOKafkaProducer(
            **client_options(self.settings),
            enable_idempotence=True,
            acks="all",
            compression_type="gzip",
            linger_ms=0,
            request_timeout_ms=5000,
        )
        # aiokafka fails a batch that has waited longer than the request timeout for a
        # partition leader (after a broker restart, while one is elected), idempotence or
        # not, though an earlier attempt of it may have been written with its response
        # lost; sent again, it would be a verdict twice in the topic. Such a batch waits
        # for the leader instead and is retried with its own sequence number, which the
        # broker writes once. Private (aiokafka has no setting for it); tests/test_kafka.py
        # checks it.
        producer._message_accumulator._batch_ttl = math.inf
        return producer

    async def _connect(self) -> AIOKafkaProducer:
        backoff, attempt = Backoff(0.5, 10.0), 0
        while True:
            producer = self.new_producer()
            try:
                await producer.start()
                return producer
            except KafkaError as exc:
                await stop_client(producer)
                attempt += 1
                delay = backoff.delay(attempt)
                log.warning("kafka: cannot connect (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        if self._sending:  # restarted after a failure: what was in flight goes first again
            self._buffer.unget(self._sending)
            self._sending = []
            self._in_flight_depth.set(0)
        if self._producer is not None:  # restarted after a failure: a fresh producer
            await stop_client(self._producer)
        self._healthy = False
        self._producer = await self._connect()
        self._healthy = True
        backoff, attempt = Backoff(0.5, 5.0), 0
        said_at = -FAILING_LOG_S
        loop = asyncio.get_running_loop()
        while True:
            await self._buffer.wait()
            self._sending = self._buffer.take(self.in_flight)
            self._in_flight_depth.set(len(self._sending))
            delivered, failed, error = await self._deliver(self._producer, self._sending)
            for verdict in delivered:
                self._acked(verdict)
            self._sending = []
            self._in_flight_depth.set(0)
            self._buffer.unget(failed)
            if delivered:
                self._progress.set()
            if error is not None:
                self.metrics.sink_errors.labels(self.name).inc()
            if isinstance(error, BROKEN) or self._sender_dead(self._producer):
                self._healthy = False
                raise ProducerBroken(
                    f"the producer can deliver nothing more ({error!r}); "
                    f"holding {self.pending} verdicts for a fresh one"
                )
            if delivered:  # some got through: Kafka is there; the failed ones go again at once
                if not self._healthy:
                    log.info("kafka: publishing again")
                self._healthy, attempt = True, 0
            elif failed:
                if self._healthy or loop.time() - said_at >= FAILING_LOG_S:
                    log.warning(
                        "kafka: publish failed (%r); holding %d verdicts", error, self.pending
                    )
                    said_at = loop.time()
                self._healthy = False
                attempt += 1
                await asyncio.sleep(backoff.delay(attempt))

    @staticmethod
    def _sender_dead(producer: AIOKafkaProducer) -> bool:
        """aiokafka's sender task has ended: nothing sent through this producer goes out.

        aiokafka has no public word for it; a sender that ended with an error fails every
        later send with that error, one that was cancelled leaves them waiting for ever.
        """
        sender = getattr(producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return task is not None and task.done()

    async def _deliver(
        self, producer: AIOKafkaProducer, verdicts: list[Verdict]
    ) -> tuple[list[Verdict], list[Verdict], BaseException | None]:
        """Send ``verdicts`` and wait for each acknowledgement.

        Returns the ones delivered, the ones that were not (in their order: the ones
        whose acknowledgement failed, then the ones a failed send left unsent), and the
        first error.
        """
        sent: list[tuple[Verdict, asyncio.Future[object]]] = []
        unsent: list[Verdict] = []
        error: BaseException | None = None
        for i, verdict in enumerate(verdicts):
            try:
                self.settings.faults.sink_write(self._fault_rng)  # DFM_FAULTS, tests only
                fut = await producer.send(
                    self.topic, verdict.to_json().encode(), key=verdict.stream_id.encode()
                )
            except (KafkaError, InjectedFault) as exc:
                error, unsent = exc, verdicts[i:]
                break
            sent.append((verdict, fut))
        delivered: list[Verdict] = []
        failed: list[Verdict] = []
        for verdict, fut in sent:
            try:
                await self._acknowledged(fut)
            except (KafkaError, ProducerBroken) as exc:  # the ones before it are delivered
                error = error or exc
                failed.append(verdict)
            else:
                delivered.append(verdict)
        return delivered, failed + unsent, error

    async def _acknowledged(self, fut: asyncio.Future[object]) -> None:
        """Wait for one acknowledgement without giving the record up; a stall marks Kafka away."""
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.stall_s)
                return
            except TimeoutError:
                if self._producer is not None and self._sender_dead(self._producer):
                    raise ProducerBroken("aiokafka's sender ended") from None
                if self._healthy:
                    log.warning(
                        "kafka: no acknowledgement for %.0f s; holding %d verdicts",
                        self.stall_s,
                        self.pending,
                    )
                self._healthy = False

    async def flush(self, timeout_s: float, *, give_up_when_away: bool = False) -> bool:
        """Wait until every buffered verdict is acknowledged; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending and loop.time() < deadline:
            if give_up_when_away and not self._healthy and self._producer is not None:
                break
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), max(0.0, deadline - loop.time()))
        return not self.pending

    async def stop(self) -> None:
        """Flush what is buffered (up to ``flush_timeout_s``), then close. Safe twice."""
        if not self._started:
            return
        await self.flush(self.flush_timeout_s, give_up_when_away=True)
        if self.pending:
            log.error("kafka: %d verdicts not delivered at shutdown", self.pending)
            self.metrics.kafka_publish_errors.inc(self.pending)
        await self.supervisor.cancel("kafka-sink")
        self._started = False
        if self._producer is not None:
            try:  # it waits for what aiokafka still retries, for ever if Kafka is away
                await asyncio.wait_for(stop_client(self._producer), CLOSE_S)
            except TimeoutError:
                log.warning("kafka: the producer did not close within %.0f s; left", CLOSE_S)
            self._producer = None
        self._healthy = False
