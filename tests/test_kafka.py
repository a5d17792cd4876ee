"""Kafka against the real Apache Kafka (KRaft): the verdict sink, broker outages, and
streams spread over replicas by the consumer group on deepfake.sources."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from tests.conftest import SCHEMA_FILE, run_cli, synthetic_clip
from tests.servers import Service, Toxiproxy, wait_until
from tests.servers.kafka import KafkaBroker

FAST = {"DFM_FPS": "10", "DFM_WINDOW_FRAMES": "20", "DFM_HOP_FRAMES": "10", "DFM_LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def clip(photos_dir: Path) -> Path:
    return synthetic_clip(
        0, videos=1, frames=150, seed=6, size=(320, 240), identities=["astronaut"]
    )


class ExternalBroker:
    """A broker the tests did not start (DFM_TEST_KAFKA_BOOTSTRAP): it cannot be stopped."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def stop(self) -> None:
        pytest.skip("the broker of DFM_TEST_KAFKA_BOOTSTRAP cannot be stopped by a test")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """One broker for the module's tests (each has its own topics and groups)."""
    external = os.environ.get("DFM_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield ExternalBroker(external)
        return
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as b:
        yield b


@pytest.fixture
def topics() -> dict[str, str]:
    """Topic and group names of this test alone, so tests can share a broker."""
    tag = uuid.uuid4().hex[:8]
    return {
        "DFM_KAFKA_VERDICTS_TOPIC": f"verdicts.{tag}",
        "DFM_KAFKA_VIDEO_TOPIC": f"video.{tag}",
        "DFM_KAFKA_SOURCES_TOPIC": f"sources.{tag}",
        "DFM_KAFKA_DLQ_TOPIC": f"video-dlq.{tag}",
        "DFM_KAFKA_EVIDENCE_TOPIC": f"evidence.{tag}",
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
        # The tests write video before the service's group has joined: read it all.
        "DFM_KAFKA_VIDEO_START": "earliest",
        **extra,
    }


def test_verdicts_arrive_in_kafka_keyed_valid_and_whole_through_failing_writes(
    broker, topics, clip, tmp_path
):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    # A third of the sink's writes fail before they reach the broker (DFM_FAULTS): each is
    # retried in order, counted, and none is lost or written twice.
    faults = json.dumps({"sink_error_rate": 0.35, "seed": 3})
    # Threshold 0: the first window is FAKE, and its evidence goes to deepfake.evidence.
    env = kafka_env(broker, topics, DFM_FAULTS=faults, DFM_MAX_STREAMS="1", DFM_THRESHOLD="0")
    with Service(env, tmp_path) as svc:
        spec = {"id": "cam-k", "url": f"file://{clip}", "options": {"loop": True}}
        assert svc.client.post("/v1/streams", json=spec).status_code == 202
        wait_until(lambda: svc.metric("deepfake_verdicts_total", stream="cam-k", label="REAL")
                   or svc.metric("deepfake_verdicts_total", stream="cam-k", label="FAKE"),
                   60, "verdicts")  # fmt: skip
        records = read_verdicts(broker.bootstrap, topics["DFM_KAFKA_VERDICTS_TOPIC"], until=8)
        assert len(records) >= 8
        assert {r.key for r in records} == {b"cam-k"}
        values = [json.loads(r.value) for r in records]
        for v in values:
            validator.validate(v)
        assert [v["seq"] for v in values] == list(range(len(values)))
        assert svc.metric("deepfake_sink_errors_total", sink="kafka") >= 1
        assert svc.metric("deepfake_kafka_publish_errors_total") == 0
        # The first FAKE window's evidence record, rebuilt by a consumer from its messages:
        # the manifest the verdict links, then the sheet and the context frame as JPEGs.
        linked = values[0]["evidence"]
        parts = read_verdicts(broker.bootstrap, topics["DFM_KAFKA_EVIDENCE_TOPIC"], until=3)
        assert [dict(r.headers)["name"] for r in parts] == [
            b"manifest.json", b"sheet.jpg", b"context.jpg"]  # fmt: skip
        assert {r.key for r in parts} == {b"cam-k"}
        assert {dict(r.headers)["evidence-id"] for r in parts} == {linked["id"].encode()}
        manifest = json.loads(parts[0].value)
        assert manifest["id"] == linked["id"] and manifest["verdict"]["seq"] == 0
        sheet = cv2.imdecode(np.frombuffer(parts[1].value, np.uint8), cv2.IMREAD_COLOR)
        assert sheet is not None and sheet.shape[1] == 8 * 112
        assert max(len(r.value) for r in parts) < 500_000
        assert svc.client.get(linked["url"]).content == parts[0].value  # the same record
        wait_until(lambda: svc.client.get("/readyz").status_code == 200, 10, "ready")

        # A second stream finds the replica full (DFM_MAX_STREAMS=1): it is refused and
        # counted, and the autoscaler's metric asks for 2. The full replica stays ready:
        # with Kafka the directory places streams, and its own are reached through it.
        second = {**spec, "id": "cam-2"}
        assert svc.client.post("/v1/streams", json=second).status_code == 202
        wait_until(lambda: svc.metric("deepfake_streams_desired") == 2, 30, "2 streams desired")
        assert svc.metric("deepfake_streams_active") == 1
        assert svc.metric("deepfake_streams_refused_total", reason="limit") >= 1
        assert svc.client.get("/readyz").status_code == 200
        # Deleting the first makes room: the refused one starts at once, not at the next
        # rebalance.
        assert svc.client.delete("/v1/streams/cam-k").status_code == 202

        def running() -> list[str]:
            return [s["id"] for s in svc.client.get("/v1/streams").json()["streams"]]

        wait_until(lambda: running() == ["cam-2"], 40, "the refused stream to start")
        assert svc.metric("deepfake_streams_desired") == 1
        assert svc.terminate() == 0


@pytest.mark.slow
def test_verdicts_stay_whole_through_broker_restarts_and_a_faulty_network(topics, clip, tmp_path):
    """The broker restarted 5 times, and Toxiproxy between it and the service delays (2 s),
    resets and stalls its connections, while verdicts flow: in every session ``seq`` is
    gapless and unique in the topic."""
    if os.environ.get("DFM_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("needs a broker of its own, behind a proxy")
    with Toxiproxy() as toxi:
        broker = KafkaBroker(tmp_path / "kafka")
        broker.advertised_port = toxi.proxy("kafka", broker.port)
        with broker, Service(kafka_env(broker, topics), tmp_path) as svc:
            spec = {"id": "cam-o", "url": f"file://{clip}", "options": {"loop": True}}
            assert svc.client.post("/v1/streams", json=spec).status_code == 202

            def made() -> int:
                return int(sum(svc.metric("deepfake_verdicts_total", stream="cam-o", label=lb)
                               or 0 for lb in ("REAL", "FAKE", "NO_FACE")))  # fmt: skip

            def held() -> float:  # buffered, and handed to the producer unacknowledged
                return sum(svc.metric("deepfake_queue_depth", queue=q) or 0
                           for q in ("kafka_verdicts", "kafka_in_flight"))  # fmt: skip

            def delivered() -> bool:
                return held() == 0 and svc.metric("deepfake_sink_up", sink="kafka") == 1

            wait_until(lambda: made() >= 1, 60, "the first verdicts")
            for kind, attributes in (("latency", {"latency": 2000}),
                                     ("reset_peer", {"timeout": 0}),
                                     ("timeout", {"timeout": 0})):  # fmt: skip
                toxi.add_toxic("kafka", kind, kind, **attributes)
                before = made()
                time.sleep(6)
                toxi.remove_toxic("kafka", kind)
                assert made() > before, kind  # analysis went on through it
                wait_until(delivered, 60, f"the held verdicts to go out after {kind}")
            for restart in range(5):
                frames_before = svc.metric("deepfake_frames_decoded_total", stream="cam-o")
                broker.stop()
                time.sleep(8 if restart == 0 else 3)
                if restart == 0:
                    # The service kept ingesting and held its verdicts while Kafka was away;
                    # that shows in a metric, and the replica stays ready.
                    decoded = svc.metric("deepfake_frames_decoded_total", stream="cam-o")
                    assert decoded > frames_before + 10  # slow under load: it goes on
                    assert held() > 2
                    assert svc.metric("deepfake_sink_up", sink="kafka") == 0
                    assert svc.client.get("/readyz").status_code == 200
                broker.start()
                wait_until(delivered, 60, f"the held verdicts to go out after restart {restart}")
            assert svc.metric("deepfake_sink_up", sink="kafka") == 1
            produced = made()
            records = read_verdicts(
                broker.bootstrap, topics["DFM_KAFKA_VERDICTS_TOPIC"], until=produced
            )
            sessions: dict[str, list[int]] = {}
            for r in records:
                v = json.loads(r.value)
                sessions.setdefault(v["session"], []).append(v["seq"])
            assert len(sessions) == 1  # the stream never restarted
            (seqs,) = sessions.values()
            assert seqs == list(range(len(seqs))) and len(seqs) >= produced
            assert svc.metric("deepfake_kafka_publish_errors_total") == 0
            errors = svc.metric("deepfake_sink_errors_total", sink="kafka")
            print(f"broker faults: {len(seqs)} verdicts, gapless, none twice; "
                  f"{errors:.0f} failed writes retried")  # fmt: skip
            # A shutdown with Kafka away ends cleanly (a traceback from aiokafka's
            # consumer, and a commit waiting for ever for its coordinator, before), and
            # within what the service promises (the pod's grace period is built on it:
            # drain, source threads, flush, producer close, last commit, HTTP; 42 s here)
            # plus 10 s for what that sum leaves out (the consumers leaving their groups,
            # the interpreter's exit). Measured: 6 to 44 s, depending on how many windows
            # are due and verdicts held at the signal.
            from streamer.config import load_settings
            from streamer.service import shutdown_worst_case_s

            env = kafka_env(broker, topics)
            promised = shutdown_worst_case_s(
                load_settings(**{k.removeprefix("DFM_").lower(): v for k, v in env.items()})
            )
            broker.stop()
            time.sleep(2)
            began = time.monotonic()
            assert svc.terminate() == 0  # and no traceback in its log
            took = time.monotonic() - began
            print(f"shutdown with Kafka away: {took:.1f} s (promised {promised:.0f} s)")
            assert took < promised + 10


async def test_a_partition_without_a_leader_keeps_the_producers_records():
    """After a broker restart a partition has no leader for a while. aiokafka fails a batch
    that waited longer than its request timeout for one, even with idempotence, though an
    earlier attempt may have been written (its response lost to the restart); the sink
    would then send it again as a new record: a verdict twice in the topic, which
    test_verdicts_stay_whole_through_broker_restarts_and_a_faulty_network caught once. The
    sink's producer keeps such a batch and retries it with its own sequence number."""
    from aiokafka.structs import TopicPartition

    from streamer.config import load_settings
    from streamer.metrics import Metrics
    from streamer.sinks.kafka import KafkaSink

    sink = KafkaSink(load_settings(kafka_bootstrap="127.0.0.1:1"), Metrics())
    producer = sink.new_producer()  # not started: no broker needed
    try:
        tp = TopicPartition("deepfake.verdicts", 0)
        acc = producer._message_accumulator
        fut = await acc.add_message(tp, b"cam", b"{}", timeout=1)
        acc._cluster.leader_for_partition = lambda _tp: -1  # electing one
        for batch in acc._batches[tp]:
            batch._retry_count = 1  # sent once already, its response lost to the restart
            batch._ctime -= 600  # ten minutes without a leader since
        acc.drain_by_nodes(ignore_nodes=set())
        assert not fut.done(), fut.exception()
    finally:
        await producer.stop()


@pytest.mark.slow
def test_a_replica_joining_and_leaving_restarts_only_the_streams_that_move(
    broker, topics, clip, tmp_path
):
    """Every rebalance stopped every stream of the replicas (eager, revoke-everything)."""
    env = kafka_env(broker, topics, DFM_SINK="stdout", DFM_FPS="5", DFM_WINDOW_FRAMES="10",
                    DFM_HOP_FRAMES="5")  # fmt: skip
    ids = {f"s{i}" for i in range(12)}

    def sessions(*replicas: Service) -> dict[str, str]:
        """Stream id -> its session, over the replicas; None if two run one stream."""
        out: dict[str, str] = {}
        for svc in replicas:
            for s in svc.client.get("/v1/streams").json()["streams"]:
                if s["id"] in out:
                    return {}
                out[s["id"]] = s["session"]
        return out

    def settled(*replicas: Service) -> dict[str, str]:
        """Sessions once every stream runs exactly once and nothing changed for 3 s."""
        got: dict[str, str] = {}

        def steady() -> bool:
            nonlocal got
            now = sessions(*replicas)
            if set(now) != ids or any(not sessions(r) for r in replicas):
                return False
            time.sleep(3)
            got = sessions(*replicas)
            return got == now

        wait_until(steady, 90, "every stream to run once")
        return got

    def on(svc: Service) -> set[str]:
        return {s["id"] for s in svc.client.get("/v1/streams").json()["streams"]}

    with Service(env, tmp_path) as one, Service(env, tmp_path) as two:
        for sid in sorted(ids):
            spec = {"id": sid, "url": f"file://{clip}", "options": {"loop": True}}
            assert one.client.post("/v1/streams", json=spec).status_code == 202
        before = settled(one, two)
        with Service(env, tmp_path) as three:
            joined = settled(one, two, three)
            restarted = {sid for sid in ids if joined[sid] != before[sid]}
            assert restarted == on(three), (restarted, on(three))
            assert len(restarted) < len(ids), restarted  # eager rebalancing restarted all 12
            moved_in = on(three)
            started = time.monotonic()
            assert three.terminate() == 0
            left = settled(one, two)
        back = {sid for sid in ids if left[sid] != joined[sid]}
        assert back == moved_in, (back, moved_in)
        counts = {sid: len(one.verdicts(sid)) + len(two.verdicts(sid)) for sid in back}
        wait_until(lambda: all(len(one.verdicts(s)) + len(two.verdicts(s)) > counts[s]
                               for s in back), 30, "verdicts resume")  # fmt: skip
        moved_back_s = time.monotonic() - started
        # SIGTERM leaves the group at once: well within the 10 s session timeout plus the
        # time the streams take to restart and give a verdict (about 14 s measured).
        assert moved_back_s < 40, moved_back_s
        print(
            f"rebalance, 12 streams: a third replica joining restarted {len(restarted)} "
            f"(the ones it took), leaving restarted {len(back)}; the others kept their "
            f"sessions; moved back within {moved_back_s:.1f} s of SIGTERM"
        )
        assert one.terminate() == 0 and two.terminate() == 0


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

    # An inbox of 2 frames: a burst of a topic's frames waits for room instead of losing
    # frames (live sources drop their oldest; a topic keeps them for us).
    env = kafka_env(broker, topics, DFM_SINK="stdout", DFM_KAFKA_IDLE_S="30", DFM_FRAME_QUEUE="2")
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

    video = topics["DFM_KAFKA_VIDEO_TOPIC"]
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
        for sid in ("ts-cam", "jpg-cam"):
            assert not svc.metric(
                "deepfake_frames_dropped_total", stream=sid, reason="backpressure"
            )
        assert "offset" in svc.log() and "not whole 188-byte MPEG-TS packets" in svc.log()
        # What an operator reads: the partitions were assigned (a rebalance counted for
        # each group), and once every message is taken the consumer's lag is 0.
        group = topics["DFM_KAFKA_GROUP"]
        for name in (f"{group}.video", f"{group}.sources"):
            assert svc.metric("deepfake_kafka_rebalances_total", group=name) >= 1, name
        wait_until(lambda: svc.metric("deepfake_kafka_consumer_lag", topic=video) == 0, 30,
                   "the video lag to reach 0")  # fmt: skip
        assert svc.terminate() == 0


def test_poison_messages_are_skipped_and_counted_while_a_healthy_key_flows(
    broker, topics, clip, tmp_path
):
    """A null header value used to kill the consumer task: no key flowed after it."""
    import cv2
    from aiokafka import AIOKafkaProducer

    env = kafka_env(broker, topics, DFM_SINK="stdout", DFM_KAFKA_IDLE_S="30", DFM_MAX_GAP_S="5")
    jpegs = jpeg_frames(clip, 120)
    small = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    bomb = bytearray(small)
    sof = bomb.index(b"\xff\xc0")
    bomb[sof + 5 : sof + 9] = (16000).to_bytes(2, "big") * 2  # a 16000x16000 frame header

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            topic = topics["DFM_KAFKA_VIDEO_TOPIC"]
            ct = ("content-type", b"image/jpeg")
            poison = [
                (b"null-hdr", small, [("content-type", None)]),
                (b"bin-hdr", small, [("content-type", b"\xff\xfe")]),
                (b"far-pts", small, [ct, ("pts", b"1e300")]),
                (b"nan-pts", small, [ct, ("pts", b"nan")]),
                (b"bomb", bytes(bomb), [ct, ("pts", b"0.0")]),
                (b"bad key!", small, [ct, ("pts", b"0.0")]),
                (None, small, [ct, ("pts", b"0.0")]),
            ]
            for key, value, headers in poison:
                await producer.send_and_wait(topic, value, key=key, headers=headers)
            # A healthy key after them, whose clock jumps by 3,000,000 s half-way.
            for i, (t, data) in enumerate(jpegs):
                pts = t if i < 60 else 3_000_000 + t
                headers = [ct, ("pts", f"{pts:.4f}".encode())]
                await producer.send_and_wait(topic, data, key=b"good-cam", headers=headers)
        finally:
            await producer.stop()

    with Service(env, tmp_path) as svc:
        asyncio.run(produce())
        wait_until(lambda: len(svc.verdicts("good-cam")) >= 2, 90, "verdicts from the good key")
        rejected = {
            reason: svc.metric("deepfake_kafka_messages_rejected_total", reason=reason)
            for reason in ("bad_header", "bad_key", "bad_payload")
        }
        assert rejected == {"bad_header": 4, "bad_key": 2, "bad_payload": 1}, rejected
        # Each is in the dead-letter topic as it was sent, with its reason.
        dead = read_verdicts(broker.bootstrap, topics["DFM_KAFKA_DLQ_TOPIC"], until=7)
        reasons = {}
        for rec in dead:
            headers = dict(rec.headers)
            reasons[rec.key] = headers["reason"].decode()
            assert rec.value == (bytes(bomb) if rec.key == b"bomb" else small)
        assert reasons == {
            b"null-hdr": "bad_header", b"bin-hdr": "bad_header", b"far-pts": "bad_header",
            b"nan-pts": "bad_header", b"bomb": "bad_payload", b"bad key!": "bad_key",
            None: "bad_key",
        }, reasons  # fmt: skip
        assert dict(next(r for r in dead if r.key == b"null-hdr").headers)["content-type"] in (
            None, b"",
        )  # fmt: skip
        dlq = {r: svc.metric("deepfake_dlq_messages_total", reason=r) for r in rejected}
        assert dlq == rejected, dlq
        wait_until(
            lambda: svc.metric("deepfake_stream_discontinuities_total", stream="good-cam") == 1,
            30,
            "the jump counted",
        )
        text = svc.client.get("/metrics").text
        for key in ("null-hdr", "bin-hdr", "far-pts", "nan-pts", "bomb", "bad key!"):
            assert f'stream="{key}"' not in text  # no series for keys that never became streams
        streams = [s["id"] for s in svc.client.get("/v1/streams").json()["streams"]]
        assert streams == ["good-cam"]
        # 2 s, a jump, 2 s more at 10 fps: about 20 + 20 frames, nothing filled in between,
        # and each part gives its own window.
        frames = svc.client.get("/v1/streams/good-cam").json()["frames"]
        assert 35 <= frames <= 45, frames
        assert [v["seq"] for v in svc.verdicts("good-cam")] == [0, 1]

        # The cluster's directory: the API refuses a bad URL before it reaches the topic,
        # and a bad record written there by someone else does not stop the directory.
        bad = {"id": "bad-port", "url": "rtsp://u:p@cam:99999/x"}
        r = svc.client.post("/v1/streams", json=bad)
        assert r.status_code == 400 and "(port)" in r.json()["error"]

        async def write_sources() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await producer.start()
            try:
                topic = topics["DFM_KAFKA_SOURCES_TOPIC"]
                for spec in (bad, {"id": "crlf", "url": "rtsp://h/a\r\nSET x 1"}):
                    await producer.send_and_wait(topic, json.dumps(spec).encode(),
                                                 key=spec["id"].encode())  # fmt: skip
                await producer.send_and_wait(topic, b"\xff not json", key=b"junk")
            finally:
                await producer.stop()

        asyncio.run(write_sources())
        good = {"id": "after-bad", "url": f"file://{clip}", "options": {"loop": True}}
        assert svc.client.post("/v1/streams", json=good).status_code == 202
        wait_until(lambda: svc.verdicts("after-bad"), 60, "a stream started after bad records")
        assert "rejected (port)" in svc.log() and "Traceback" not in svc.log()
        assert svc.terminate() == 0


def fuzz_messages(clip: Path, count: int, seed: int = 18) -> list[tuple]:
    """``count`` hostile video messages: garbled keys, headers and payloads, cut TS, bad JPEGs."""
    import random

    rng = random.Random(seed)
    ts = ts_bytes(clip)
    jpegs = [data for _, data in jpeg_frames(clip, 10)]
    keys = [b"fz0", b"fz1", b"fz2", b"fz3", b"fz4", None, b"", b"bad key", b"\xff\xfe", b"x" * 80]
    types = [b"video/mp2t", b"image/jpeg", b"image/png", b"", b"video/mp2t; x=1", None, b"\x00"]
    ptses = [b"0", b"0.1", b"-5", b"nan", b"inf", b"1e300", b"abc", b"", None, b"\xff"]
    out = []
    for _ in range(count):
        kind = rng.randrange(6)
        if kind == 0:  # TS cut anywhere, mostly on packet boundaries
            step = 188 if rng.random() < 0.8 else 1
            start = rng.randrange(0, len(ts) // step - 40) * step
            payload = ts[start : start + step * rng.randrange(1, 40)]
        elif kind == 1:  # whole TS packets, bytes flipped
            start = rng.randrange(0, len(ts) // 188 - 20) * 188
            data = bytearray(ts[start : start + 188 * rng.randrange(1, 20)])
            for _ in range(rng.randrange(1, 30)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            payload = bytes(data)
        elif kind == 2:  # a JPEG cut or flipped
            data = bytearray(rng.choice(jpegs))
            if rng.random() < 0.5:
                data = data[: rng.randrange(2, len(data))]
            else:
                for _ in range(rng.randrange(1, 30)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            payload = bytes(data)
        elif kind == 3:
            payload = rng.randbytes(rng.randrange(0, 4000))
        elif kind == 4:
            payload = b""
        else:
            payload = rng.choice(jpegs)
        headers = []
        if rng.random() < 0.95:
            fitting = b"video/mp2t" if kind in (0, 1) else b"image/jpeg"
            headers.append(("content-type", fitting if rng.random() < 0.7 else rng.choice(types)))
        if rng.random() < 0.8:
            good = f"{rng.uniform(0, 10):.3f}".encode()
            headers.append(("pts", good if rng.random() < 0.7 else rng.choice(ptses)))
        if rng.random() < 0.1:
            headers.append((rng.choice(["x-junk", "Content-Type", "PTS"]), rng.randbytes(8)))
        own = keys[:3] if kind in (0, 1) else keys[3:5]  # a key keeps one content type
        key = rng.choice(own) if rng.random() < 0.7 else rng.choice(keys)
        out.append((key, payload, headers))
    return out


def test_fuzzed_video_messages_never_stop_ingest(broker, topics, clip, tmp_path):
    from aiokafka import AIOKafkaProducer

    count = int(1000 * float(os.environ.get("DFM_TEST_FUZZ_SCALE", "1")))
    messages = fuzz_messages(clip, count)
    env = kafka_env(
        broker, topics, DFM_SINK="stdout", DFM_KAFKA_IDLE_S="6", DFM_MAX_STREAMS="8",
        DFM_LOG_LEVEL="WARNING",
    )  # fmt: skip
    # 5 s of healthy video: two windows of 20 frames at 10 fps even if the node sheds half
    # of them (the fuzzed streams and a busy machine can push it into overload). A key
    # idles out after 6 s: on a busy machine the consumer can leave a key 3 s without a
    # message while it works through the fuzz.
    jpegs = jpeg_frames(clip, 150)

    async def produce(batch: list[tuple]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        try:
            topic = topics["DFM_KAFKA_VIDEO_TOPIC"]
            for key, value, headers in batch:
                await producer.send(topic, value, key=key, headers=headers)
            await producer.flush()
        finally:
            await producer.stop()

    with Service(env, tmp_path) as svc:
        asyncio.run(produce(messages))
        healthy = [
            (b"good-cam", data, [("content-type", b"image/jpeg"), ("pts", f"{t:.4f}".encode())])
            for t, data in jpegs
        ]
        asyncio.run(produce(healthy))
        wait_until(lambda: len(svc.verdicts("good-cam")) >= 1, 120, "verdicts after the fuzz")
        assert svc.client.get("/readyz").status_code == 200
        text = svc.client.get("/metrics").text
        rejected = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("deepfake_kafka_messages_rejected_total{")
        )
        print(
            f"fuzz kafka: {count} messages, {rejected:.0f} rejected as unusable, the rest decoded"
        )
        assert count // 10 <= rejected < count  # some reached the decoders, many did not
        # The fuzzed keys idle out; their streams and series go with them.
        wait_until(
            lambda: (
                [s["id"] for s in svc.client.get("/v1/streams").json()["streams"]]
                in (["good-cam"], [])
            ),
            60,
            "fuzzed streams to end",
        )
        assert 'stream="bad key"' not in svc.client.get("/metrics").text
        assert svc.terminate() == 0


def test_the_pipelined_sink_outruns_one_write_at_a_time(broker, tmp_path):
    """bench --parts sink: the same verdicts to the same broker, side by side in one run."""
    out = tmp_path / "sink.json"
    result = run_cli("bench", "--quick", "--parts", "sink", "--kafka", broker.bootstrap,
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipelined / one at a time" in result.stdout
    sink = json.loads(out.read_text())["sink"]
    one, many = sink["rows"]
    assert one["in_flight"] == 1 and many["in_flight"] > 1
    assert one["delivered"] and many["delivered"] and many["verdicts"] == 5_000
    assert sink["ratio_pipelined_over_one_at_a_time"] > 3, sink


def committed(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets, per partition (read without joining the group)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    return asyncio.run(run())


@pytest.mark.slow
def test_a_replica_killed_mid_stream_leaves_no_window_without_a_verdict(
    broker, topics, clip, tmp_path
):
    """Offsets were committed once frames were decoded: a crash lost the windows between."""
    from aiokafka import AIOKafkaProducer

    total = 400  # frames at 10 fps (the model's rate: one tick per message)
    jpegs = jpeg_frames(clip, 150)
    # A slowed engine, so the kill lands mid-stream on any machine.
    env = kafka_env(broker, topics, DFM_KAFKA_IDLE_S="8",
                    DFM_FAULTS=json.dumps({"engine_delay_ms": 40}))  # fmt: skip
    group = f"{topics['DFM_KAFKA_GROUP']}.video"

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        try:
            for i in range(total):
                headers = [("content-type", b"image/jpeg"), ("pts", f"{i / 10:.1f}".encode())]
                await producer.send(topics["DFM_KAFKA_VIDEO_TOPIC"], jpegs[i % len(jpegs)][1],
                                    key=b"cam-x", headers=headers)  # fmt: skip
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    first = Service(env, tmp_path).start()
    try:
        wait_until(lambda: sum(committed(broker.bootstrap, group).values()) >= 60, 120,
                   "offsets committed", step=0.1)  # fmt: skip
        first.proc.kill()  # SIGKILL: nothing is flushed, nothing committed on the way out
        first.proc.wait(10)
    finally:
        first.stop()
    (resume,) = committed(broker.bootstrap, group).values()
    assert 60 <= resume < total - 100, resume
    with Service(env, tmp_path) as second:
        # The second replica starts at the committed offset and runs to the end of the input.
        wait_until(lambda: second.metric("deepfake_streams_active") == 0
                   and second.metric("deepfake_frames_decoded_total", stream="cam-x") is None
                   and second.metric("deepfake_queue_depth", queue="kafka_verdicts") == 0
                   and second.metric("deepfake_queue_depth", queue="kafka_in_flight") == 0
                   and "idle for" in second.log(), 180, "the input to be analysed")  # fmt: skip
        assert second.terminate() == 0
    records = read_verdicts(broker.bootstrap, topics["DFM_KAFKA_VERDICTS_TOPIC"], until=10**6,
                            timeout=15)  # fmt: skip
    sessions: dict[str, list[dict]] = {}
    for rec in records:
        v = json.loads(rec.value)
        sessions.setdefault(v["session"], []).append(v)
    assert len(sessions) == 2, list(sessions)
    one, two = sorted(sessions.values(), key=lambda vs: vs[0]["emitted_at"])
    # Frame numbers of the input: the first session starts at message 0, the second at the
    # committed offset (one message per frame, and one partition holds the key).
    covered = np.zeros(total, bool)
    spans = []
    for origin, verdicts in ((0, one), (resume, two)):
        for v in verdicts:
            first_frame = origin + round(v["window"]["start_pts_s"] * 10)
            last_frame = origin + round(v["window"]["end_pts_s"] * 10)
            assert v["window"]["frames"] == last_frame - first_frame + 1 == 20
            covered[first_frame : last_frame + 1] = True
            spans.append((origin, first_frame, last_frame))
    last_window_end = max(last for _, _, last in spans)
    # The tail after the last window (under two hops: the last frame is let go when the
    # idle stream stops) is in no window in an uninterrupted run either.
    assert last_window_end >= total - 20, last_window_end
    gaps = np.flatnonzero(~covered[: last_window_end + 1])
    assert gaps.size == 0, f"frames without a verdict: {gaps.tolist()}"
    again = sum(1 for origin, first_frame, _ in spans if origin == 0 and first_frame >= resume)
    for vs in (one, two):
        assert [v["seq"] for v in vs] == list(range(len(vs)))
    print(
        f"SIGKILL mid-stream: resumed at offset {resume} of {total}; {len(one)} + {len(two)} "
        f"verdicts; {again} windows of the first session analysed again (duplicates)"
    )
