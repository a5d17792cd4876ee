"""Kafka against the real Apache Kafka (KRaft): the verdict sink, broker outages, and
streams spread over replicas by the consumer group on deepfake.sources."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer

from analyzer.synthetic import synthesize
from tests.conftest import SCHEMA_FILE
from tests.servers import Service, wait_until
from tests.servers.kafka import KafkaBroker

FAST = {"DFM_FPS": "10", "DFM_WINDOW_FRAMES": "20", "DFM_HOP_FRAMES": "10", "DFM_LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("kafka-clip")
    spec = synthesize(out, videos=1, frames=150, seed=6, size=(320, 240), identities=["astronaut"])[
        0
    ]
    return out / spec.file


class ExternalBroker:
    """A broker the tests did not start (DFM_TEST_KAFKA_BOOTSTRAP): it cannot be stopped."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def stop(self) -> None:
        pytest.skip("the broker of DFM_TEST_KAFKA_BOOTSTRAP cannot be stopped by a test")


@pytest.fixture
def broker(tmp_path: Path):
    external = os.environ.get("DFM_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield ExternalBroker(external)
        return
    with KafkaBroker(tmp_path / "kafka") as b:
        yield b


@pytest.fixture
def topics() -> dict[str, str]:
    """Topic and group names of this test alone, so tests can share a broker."""
    tag = uuid.uuid4().hex[:8]
    return {
        "DFM_KAFKA_VERDICTS_TOPIC": f"verdicts.{tag}",
        "DFM_KAFKA_VIDEO_TOPIC": f"video.{tag}",
        "DFM_KAFKA_SOURCES_TOPIC": f"sources.{tag}",
        "DFM_KAFKA_GROUP": f"dfm.{tag}",
    }


def read_verdicts(bootstrap: str, topic: str, until: int, timeout: float = 60) -> list:
    """Every record of ``topic`` from the start, until ``until`` records or the timeout."""

    async def run() -> list:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        got: list = []
        try:
            deadline = time.monotonic() + timeout
            while len(got) < until and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    got.extend(records)
        finally:
            await consumer.stop()
        return got

    return asyncio.run(run())


def kafka_env(broker: KafkaBroker, topics: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        **FAST,
        **topics,
        "DFM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "DFM_SINK": "kafka",
        "DFM_ALLOW_FILE_SOURCES": "true",
        **extra,
    }


def test_verdicts_arrive_in_kafka_keyed_and_valid(broker, topics, clip, tmp_path):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    with Service(kafka_env(broker, topics), tmp_path) as svc:
        spec = {"id": "cam-k", "url": f"file://{clip}", "options": {"loop": True}}
        assert svc.client.post("/v1/streams", json=spec).status_code == 202
        wait_until(lambda: svc.metric("deepfake_verdicts_total", stream="cam-k", label="REAL")
                   or svc.metric("deepfake_verdicts_total", stream="cam-k", label="FAKE"),
                   60, "verdicts")  # fmt: skip
        records = read_verdicts(broker.bootstrap, topics["DFM_KAFKA_VERDICTS_TOPIC"], until=5)
        assert len(records) >= 5
        assert {r.key for r in records} == {b"cam-k"}
        values = [json.loads(r.value) for r in records]
        for v in values:
            validator.validate(v)
        assert [v["seq"] for v in values] == list(range(len(values)))
        assert svc.client.get("/readyz").status_code == 200
        assert svc.terminate() == 0


def test_broker_outage_holds_verdicts_and_delivers_each_once_in_order(
    broker, topics, clip, tmp_path
):
    with Service(kafka_env(broker, topics), tmp_path) as svc:
        spec = {"id": "cam-o", "url": f"file://{clip}", "options": {"loop": True}}
        assert svc.client.post("/v1/streams", json=spec).status_code == 202
        wait_until(lambda: svc.metric("deepfake_queue_depth", queue="kafka_verdicts") is not None,
                   60, "the first verdicts")  # fmt: skip
        frames_before = svc.metric("deepfake_frames_decoded_total", stream="cam-o")
        broker.stop()
        time.sleep(12)
        # The service kept ingesting and kept its verdicts while Kafka was away.
        assert svc.metric("deepfake_frames_decoded_total", stream="cam-o") > frames_before + 60
        assert svc.metric("deepfake_queue_depth", queue="kafka_verdicts") > 3
        assert svc.client.get("/readyz").status_code == 503
        broker.start()
        wait_until(lambda: svc.metric("deepfake_queue_depth", queue="kafka_verdicts") == 0, 60,
                   "the held verdicts to go out")  # fmt: skip
        produced = int(sum(svc.metric("deepfake_verdicts_total", stream="cam-o", label=lb) or 0
                           for lb in ("REAL", "FAKE", "NO_FACE")))  # fmt: skip
        records = read_verdicts(
            broker.bootstrap, topics["DFM_KAFKA_VERDICTS_TOPIC"], until=produced
        )
        seqs = [json.loads(r.value)["seq"] for r in records]
        assert seqs == list(range(len(seqs))) and len(seqs) >= produced
        assert svc.metric("deepfake_kafka_publish_errors_total") == 0
        assert svc.terminate() == 0


def test_streams_are_spread_over_replicas_and_move_when_one_leaves(broker, topics, clip, tmp_path):
    env = kafka_env(broker, topics, DFM_SINK="stdout", DFM_FPS="5", DFM_WINDOW_FRAMES="10",
                    DFM_HOP_FRAMES="5")  # fmt: skip
    with Service(env, tmp_path) as one, Service(env, tmp_path) as two:
        ids = [f"s{i}" for i in range(6)]
        for sid in ids:
            spec = {"id": sid, "url": f"file://{clip}", "options": {"loop": True}}
            assert one.client.post("/v1/streams", json=spec).status_code == 202

        def running(svc: Service) -> set[str]:
            return {s["id"] for s in svc.client.get("/v1/streams").json()["streams"]}

        wait_until(lambda: len(running(one) | running(two)) == 6, 60, "all six to run")
        a, b = running(one), running(two)
        assert not a & b, (a, b)
        assert a and b, "both replicas got streams"
        started = time.monotonic()
        assert one.terminate() == 0
        wait_until(lambda: running(two) == set(ids), 30, "the streams to move")
        moved_after = time.monotonic() - started
        counts = {sid: len(two.verdicts(sid)) for sid in a}
        wait_until(lambda: all(len(two.verdicts(s)) > counts[s] for s in a), 30, "verdicts resume")
        print(f"streams running elsewhere {moved_after:.1f} s after SIGTERM to their replica")
        assert two.terminate() == 0


def ts_bytes(clip: Path) -> bytes:
    """The clip remuxed into one MPEG-TS byte stream."""
    import io

    import av

    out = io.BytesIO()
    with av.open(str(clip)) as src, av.open(out, "w", format="mpegts") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)
    return out.getvalue()


def jpeg_frames(clip: Path, count: int) -> list[tuple[float, bytes]]:
    import cv2

    from streamer.sources.decode import decode

    out = []
    for t, rgb in decode(str(clip)):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        out.append((t, data.tobytes()))
        if len(out) == count:
            break
    return out


def test_video_from_kafka_ts_and_jpeg_with_bad_messages_skipped(broker, topics, clip, tmp_path):
    from aiokafka import AIOKafkaProducer

    env = kafka_env(broker, topics, DFM_SINK="stdout", DFM_KAFKA_IDLE_S="30", DFM_FRAME_QUEUE="600")
    ts = ts_bytes(clip)
    chunk = 188 * 40
    pieces = [ts[i : i + chunk] for i in range(0, len(ts), chunk)]
    jpegs = jpeg_frames(clip, 60)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            topic = topics["DFM_KAFKA_VIDEO_TOPIC"]
            ct_ts = [("content-type", b"video/mp2t")]
            half = len(pieces) // 2
            for piece in pieces[:half]:
                await producer.send_and_wait(topic, piece, key=b"ts-cam", headers=ct_ts)
            # Four bad messages in the middle of the stream.
            await producer.send_and_wait(topic, b"\x47" + bytes(range(187)) * 3, key=b"ts-cam",
                                         headers=ct_ts)  # fmt: skip
            await producer.send_and_wait(topic, b"", key=b"ts-cam", headers=ct_ts)
            await producer.send_and_wait(topic, b"hello", key=b"ts-cam",
                                         headers=[("content-type", b"text/plain")])  # fmt: skip
            await producer.send_and_wait(topic, pieces[half][:1000], key=b"ts-cam", headers=ct_ts)
            for piece in pieces[half:]:
                await producer.send_and_wait(topic, piece, key=b"ts-cam", headers=ct_ts)
            for t, data in jpegs:
                headers = [("content-type", b"image/jpeg"), ("pts", f"{t:.4f}".encode())]
                await producer.send_and_wait(topic, data, key=b"jpg-cam", headers=headers)
        finally:
            await producer.stop()

    with Service(env, tmp_path) as svc:
        asyncio.run(produce())
        # 150 frames at 30 fps are 50 at 10 fps: (50 - 20) / 10 + 1 = 4 windows; 60 JPEGs: 1.
        wait_until(lambda: len(svc.verdicts("ts-cam")) >= 3 and len(svc.verdicts("jpg-cam")) >= 1,
                   90, "verdicts from both keys")  # fmt: skip
        for sid in ("ts-cam", "jpg-cam"):
            seqs = [v["seq"] for v in svc.verdicts(sid)]
            assert seqs == list(range(len(seqs)))
            assert any(v["faces"] for v in svc.verdicts(sid))
        bad = svc.metric("deepfake_frames_dropped_total", stream="ts-cam", reason="bad_message")
        assert bad == 4
        assert "offset" in svc.log() and "not whole 188-byte MPEG-TS packets" in svc.log()
        assert svc.terminate() == 0
