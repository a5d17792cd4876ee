"""Connection settings shared by every aiokafka client of the service (TLS, SASL)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError

from streamer.config import Settings

log = logging.getLogger(__name__)

CLOSE_S = 5.0  # at shutdown, a last commit or a producer's close waits this long for Kafka


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer from ``DFM_KAFKA_*``."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": "deepfake-monitor",
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password
    return opts


async def ensure_topic(
    settings: Settings, *names: str, partitions: int, compact: bool = False
) -> None:
    """Create the topics ``names`` that do not exist yet (idempotent across replicas)."""
    import contextlib

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        configs = {"cleanup.policy": "compact"} if compact else {}
        for name in names:  # one by one: a topic that exists must not hide one that does not
            topic = NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=settings.kafka_replication_factor,
                topic_configs=configs,
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()


def sticky_assignor() -> type[StickyPartitionAssignor]:
    """Kafka's sticky assignor, one class per consumer.

    A rebalance then moves only the partitions it must (a member joining takes its share
    from the others; the rest stay where they are). The assignor keeps the member's last
    assignment in class attributes, so two consumers of one process need a class each.
    """
    return type(
        "StickyAssignor",
        (StickyPartitionAssignor,),
        {
            "member_assignment": None,
            "generation": StickyPartitionAssignor.DEFAULT_GENERATION_ID,
            "_latest_partition_movements": None,
        },
    )


async def stop_client(client: _Stoppable) -> None:
    """Stop an aiokafka producer or consumer, quietly when Kafka is away.

    A consumer stopped while a fetch waits to retry raises the ``CancelledError`` of its
    own fetch task (aio-libs/aiokafka#647: ``Fetcher.close`` awaits the tasks it has
    just cancelled); that is not a cancellation of the caller, so it is logged and the
    shutdown goes on. A cancellation of the caller still propagates.
    """
    try:
        await client.stop()
    except KafkaError as exc:
        log.info("kafka: %s stopped with an error: %s", type(client).__name__, exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.info("kafka: %s stopped while a request was being retried", type(client).__name__)
