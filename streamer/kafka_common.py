"""Connection settings shared by every aiokafka client of the service (TLS, SASL)."""

from __future__ import annotations

from typing import Any

from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from streamer.config import Settings


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
