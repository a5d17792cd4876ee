"""The live service against real servers: GStreamer RTSP, our HTTP API, SIGTERM."""

from __future__ import annotations

import json
import re
import signal

import jsonschema
import pytest

from tests.conftest import SCHEMA_FILE, run_cli
from tests.servers import (
    RtspServer,
    Service,
    SilentServer,
    in_process,
    metric_in,
    wait_until,
)

# Small windows at 10 fps: a verdict per stream every second, so tests stay short.
FAST = {
    "DFM_FPS": "10",
    "DFM_WINDOW_FRAMES": "20",
    "DFM_HOP_FRAMES": "10",
    "DFM_STALL_TIMEOUT_S": "2",
    "DFM_RECONNECT_INITIAL_S": "0.3",
    "DFM_RECONNECT_MAX_S": "1",
}


def gapless(verdicts: list[dict]) -> bool:
    by_session: dict[str, list[int]] = {}
    for v in verdicts:
        by_session.setdefault(v["session"], []).append(v["seq"])
    return all(seqs == list(range(len(seqs))) for seqs in by_session.values())


def test_three_rtsp_streams_give_gapless_verdicts_and_metrics(live_clip, tmp_path):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    mounts = {f"cam{i}": live_clip for i in range(3)}
    # Three streams' faces found by two frame workers (streamer/sources/pool.py).
    with RtspServer(mounts) as rtsp, Service({**FAST, "DFM_FRAME_WORKERS": "2"}, tmp_path) as svc:
        for i in range(3):
            r = svc.client.post("/v1/streams", json={"id": f"cam-{i}", "url": rtsp.url(f"cam{i}")})
            assert r.status_code == 201, r.text
            assert r.headers["location"] == f"/v1/streams/cam-{i}"
        for i in range(3):
            wait_until(lambda i=i: len(svc.verdicts(f"cam-{i}")) >= 3, 60, f"verdicts of cam-{i}")
        listed = {s["id"]: s for s in svc.client.get("/v1/streams").json()["streams"]}
        assert set(listed) == {"cam-0", "cam-1", "cam-2"}
        for i in range(3):
            sid = f"cam-{i}"
            verdicts = svc.verdicts(sid)
            for v in verdicts:
                validator.validate(v)
            assert gapless(verdicts)
            assert any(v["faces"] for v in verdicts)
            assert listed[sid]["state"] == "running"
            assert svc.metric("deepfake_frames_decoded_total", stream=sid) > 0
            assert svc.metric("deepfake_faces_detected_total", stream=sid) > 0
            assert svc.metric("deepfake_source_up", stream=sid) == 1
            labels = {v["label"] for v in verdicts}
            assert (
                sum(svc.metric("deepfake_verdicts_total", stream=sid, label=lb) for lb in labels)
                > 0
            )
            recent = svc.client.get(f"/v1/streams/{sid}/verdicts", params={"limit": 2}).json()
            assert len(recent["verdicts"]) == 2
        assert svc.metric("deepfake_inference_batch_size_count", stage="backbone") > 0
        assert svc.metric("deepfake_inference_batch_size_count", stage="head") > 0
        assert svc.metric("deepfake_streams_active") == 3
        assert svc.metric("deepfake_queue_capacity", queue="frame_lane") == 3 * 4

        assert svc.client.delete("/v1/streams/cam-2").status_code == 204
        assert svc.client.get("/v1/streams/cam-2").status_code == 404
        assert svc.metric("deepfake_frames_decoded_total", stream="cam-2") is None
        assert svc.metric("deepfake_streams_active") == 2
        assert svc.metric("deepfake_queue_capacity", queue="frame_lane") == 2 * 4
        assert svc.terminate() == 0


def test_backpressure_drops_frames_and_bounds_latency(live_clip, tmp_path):
    env = {
        **FAST,
        "DFM_FPS": "30",
        "DFM_ALLOW_FILE_SOURCES": "true",
        "DFM_FAULTS": '{"engine_delay_ms": 250}',  # at least 250 ms per engine call
        "DFM_MAX_BATCH": "4",
        "DFM_MAX_INFLIGHT_CROPS": "8",
        "DFM_FRAME_QUEUE": "8",
        "DFM_SHED_MAX_STRIDE": "1",  # the layer under overload shedding (test_supervision)
    }
    with Service(env, tmp_path) as svc:
        spec = {"id": "slow", "url": f"file://{live_clip}", "options": {"loop": True}}
        assert svc.client.post("/v1/streams", json=spec).status_code == 201
        wait_until(lambda: len(svc.verdicts("slow")) >= 4, 90, "verdicts under backpressure")
        dropped = svc.metric("deepfake_frames_dropped_total", stream="slow", reason="backpressure")
        assert dropped and dropped > 30
        # Queues are bounded, so a window's last frame waits at most the queued frames
        # (8 + 8 crops) times 250 ms / 4 per crop, plus one head call.
        latencies = [v["latency_ms"] for v in svc.verdicts("slow")]
        assert max(latencies[1:]) < 8000, latencies
        status = svc.client.get("/v1/streams/slow").json()
        assert status["dropped"] == dropped
        assert svc.terminate() == 0


def test_bad_requests_get_a_4xx_with_a_reason_and_the_service_carries_on(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    env = {
        **FAST,
        "DFM_API_TOKEN": "s3cret",
        "DFM_ALLOW_FILE_SOURCES": "true",
        "DFM_MAX_STREAMS": "3",
    }
    auth = {"Authorization": "Bearer s3cret"}
    with SilentServer() as silent, Service(env, tmp_path) as svc:
        c = svc.client
        r = c.get("/v1/streams")
        assert r.status_code == 401 and "token" in r.json()["error"]
        assert c.get("/v1/streams", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200

        def post(body: object, raw: bytes | None = None) -> tuple[int, str]:
            if raw is not None:
                headers = {**auth, "content-type": "application/json"}
                r = c.post("/v1/streams", content=raw, headers=headers)
            else:
                r = c.post("/v1/streams", json=body, headers=auth)
            return r.status_code, r.json().get("error", "")

        code, reason = post(None, raw=b'{"id": "x", "url": ')
        assert code == 422 and "JSON" in reason
        code, reason = post({"id": "x", "url": "rtsp://h/x", "colour": "red"})
        assert code == 422 and "colour" in reason
        code, reason = post({"id": "bad id!", "url": "rtsp://h/x"})
        assert code == 422 and reason.startswith("id")
        code, reason = post({"id": "x", "url": "http://example.invalid/x.mp4"})
        assert code == 400 and "unsupported URL scheme 'http'" in reason
        code, reason = post({"id": "x", "url": "rtsp://h/x", "options": {"speed": 2}})
        assert code == 422
        assert reason == "bad options: speed: unknown option; options are loop, realtime, max_faces"

        port = silent.port
        assert post({"id": "mute", "url": f"rtsp://127.0.0.1:{port}/cam"})[0] == 201
        code, reason = post({"id": "mute", "url": f"rtsp://127.0.0.1:{port}/cam"})
        assert code == 409 and "exists" in reason
        assert post({"id": "junk", "url": f"file://{corrupt}"})[0] == 201
        assert post({"id": "third", "url": f"file://{corrupt}"})[0] == 201
        code, reason = post({"id": "fourth", "url": f"file://{corrupt}"})
        assert code == 429 and "DFM_MAX_STREAMS" in reason

        def state(sid: str) -> dict:
            return c.get(f"/v1/streams/{sid}", headers=auth).json()

        wait_until(lambda: state("junk")["state"] == "failed", 30, "corrupt file to fail")
        assert "not a video" in state("junk")["reason"]

        # A camera that does not answer is never given up on: it says so and keeps trying.
        def attempt_in_reason() -> int:
            found = re.search(r"\(attempt (\d+)\)$", state("mute")["reason"] or "")
            return int(found.group(1)) if found else 0

        wait_until(lambda: attempt_in_reason() >= 2, 60, "silent URL retried")
        mute = state("mute")
        assert mute["state"] == "reconnecting" and "did not answer" in mute["reason"]
        assert mute["attempts"] >= 2
        assert c.get("/healthz").status_code == 200
        assert c.get("/v1/streams/nope", headers=auth).status_code == 404
        assert c.delete("/v1/streams/mute", headers=auth).status_code == 204
        assert svc.terminate() == 0


def test_sigterm_drains_and_flushes(live_clip, tmp_path):
    # A slow engine makes the drain last: meanwhile the pod is unready, refuses new work,
    # and still answers /metrics (HTTP closes last).
    env = {**FAST, "DFM_ALLOW_FILE_SOURCES": "true", "DFM_FAULTS": '{"engine_delay_ms": 400}'}
    spec = json.dumps([{"id": "loop", "url": f"file://{live_clip}", "options": {"loop": True}}])
    with Service({**env, "DFM_SOURCES": spec}, tmp_path) as svc:
        wait_until(lambda: len(svc.verdicts("loop")) >= 3, 60, "verdicts")
        svc.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: svc.client.get("/readyz").status_code == 503, 5, "unready on SIGTERM")
        assert svc.client.get("/metrics").status_code == 200
        r = svc.client.post("/v1/streams", json={"id": "late", "url": "rtsp://127.0.0.1/x"})
        assert r.status_code == 503 and "shutting down" in r.json()["error"]
        assert svc.terminate(timeout=30, signalled=True) == 0
        assert svc.lines[-1].endswith("\n")  # the last verdict is whole
        verdicts = svc.verdicts("loop")
        assert gapless(verdicts)
        assert "draining" in svc.log()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DFM_HOP_FRAMES": "abc"}, "DFM_HOP_FRAMES"),
        ({"DFM_THRESHOLD": "1.5"}, "DFM_THRESHOLD"),
        ({"DFM_DEVICE": "tpu"}, "DFM_DEVICE"),
        ({"DFM_DECODE": "nvdec"}, "DFM_DECODE=nvdec cannot run"),
        ({"DFM_COMPILE": "cudagraphs"}, "DFM_COMPILE=cudagraphs cannot run"),
        ({"DFM_HOP_FRAMES": "500"}, "DFM_HOP_FRAMES"),
        ({"DFM_NOT_A_SETTING": "1"}, "unknown setting DFM_NOT_A_SETTING"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(env, needle, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DFM_RANDOM_WEIGHTS", "true")
    result = run_cli("serve", timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_unknown_key_in_a_yaml_config_is_named(tmp_path):
    config = tmp_path / "dfm.yaml"
    config.write_text("http_port: 8081\nwindow_frame: 100\n")
    result = run_cli("serve", "--config", str(config), timeout=60)
    assert result.returncode == 2
    assert "window_frame" in result.stderr and "Traceback" not in result.stderr


async def test_a_new_stream_has_every_verdict_series_at_zero(tmp_path):
    """DeepfakeDetected counts increase() of a stream's FAKE series: a series born at its
    final value shows no increase, so a first burst of FAKE windows went unalerted."""
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    async with in_process({"DFM_ALLOW_FILE_SOURCES": "true"}) as (_, c):
        spec = {"id": "cam", "url": f"file://{corrupt}"}
        assert (await c.post("/v1/streams", json=spec)).status_code == 201
        text = (await c.get("/metrics")).text
        for label in ("REAL", "FAKE", "NO_FACE"):
            assert metric_in(text, "deepfake_verdicts_total", stream="cam", label=label) == 0
        assert (await c.delete("/v1/streams/cam")).status_code == 204
        assert 'stream="cam"' not in (await c.get("/metrics")).text


async def test_operator_metrics_and_readiness_say_what_the_replica_can_take(tmp_path):
    """What an on-call engineer reads (issue 20): process metrics, HTTP answers by route
    template, refused streams by reason, the model's sha256 and device in build_info, the
    served threshold, the engine's batch limit; and /readyz turns 503 once the replica is
    full (it can take no stream), while /healthz stays 200 (nothing is wrong with it)."""
    from prometheus_client.parser import text_string_to_metric_families

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    env = {
        "DFM_ALLOW_FILE_SOURCES": "true", "DFM_MAX_STREAMS": "1", "DFM_THRESHOLD": "0.7",
        "DFM_RANDOM_WEIGHTS": "false",  # the bundled demo checkpoint: it has a sha256
    }  # fmt: skip
    async with in_process(env) as (svc, c):
        assert (await c.get("/readyz")).json()["checks"]["room"] is True
        spec = {"id": "cam", "url": f"file://{corrupt}"}
        assert (await c.post("/v1/streams", json=spec)).status_code == 201
        assert (await c.post("/v1/streams", json={**spec, "id": "two"})).status_code == 429
        assert (await c.post("/v1/streams", json=spec)).status_code == 409
        assert (await c.get("/v1/streams/nope")).status_code == 404
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["room"] is False
        assert (await c.get("/healthz")).status_code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families((await c.get("/metrics")).text)
            for s in family.samples
        }

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        assert value("deepfake_streams_refused_total", reason="limit") == 1
        assert value("deepfake_streams_refused_total", reason="conflict") == 1
        assert value("deepfake_streams_refused_total", reason="invalid") == 0
        route = "/v1/streams/{stream_id}"
        assert value("deepfake_http_requests_total", method="GET", route=route, code="404") == 1
        assert value("deepfake_http_requests_total", method="POST", route="/v1/streams",
                     code="429") == 1  # fmt: skip
        assert value("deepfake_threshold") == 0.7
        assert value("deepfake_engine_max_batch", stage="backbone") == svc.settings.max_batch
        assert value("deepfake_streams_desired") == 1
        assert value("deepfake_whip_sessions") == 0
        assert value("process_resident_memory_bytes") > 10e6
        ((build, one),) = [(k, v) for k, v in samples.items() if k[0] == "deepfake_build_info"]
        labels = dict(build[1])
        assert one == 1 and labels["device"] == "cpu"
        assert labels["threshold_source"] == "setting"  # DFM_THRESHOLD=0.7
        assert len(labels["sha256"]) == 64 and labels["sha256"] == svc.engine.sha256
        # A scan of random paths adds no series.
        assert (await c.get("/no/such/path")).status_code == 404
        text = (await c.get("/metrics")).text
        assert "/no/such/path" not in text and 'route="unmatched"' in text


async def test_the_checkpoints_threshold_is_served_when_none_is_set(tmp_path, synth_clips):
    """evaluate records an operating point in the checkpoint; without DFM_THRESHOLD the
    service serves it and says so (/v1/info, deepfake_threshold, build_info), and so does
    scan without --threshold; a setting still wins."""
    from prometheus_client.parser import text_string_to_metric_families

    from analyzer.model import (
        BUNDLED_CHECKPOINT,
        OperatingPoint,
        OperatingPoints,
        load_checkpoint,
        save_checkpoint,
    )

    demo = load_checkpoint(BUNDLED_CHECKPOINT)
    point = OperatingPoint(threshold=0.8125, fpr=0.0, tpr=0.9)
    points = OperatingPoints(eer=point, target_fpr=point, target=0.01, window_frames=150,
                             videos=40, data="test clips")  # fmt: skip
    checkpoint = tmp_path / "recorded.pt"
    save_checkpoint(
        checkpoint, demo.model, demo.meta.model_copy(update={"operating_points": points})
    )

    def build_source(text: str) -> str:
        (sample,) = [
            s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "deepfake_build_info"
        ]  # fmt: skip
        return sample.labels["threshold_source"]

    env = {"DFM_RANDOM_WEIGHTS": "false", "DFM_CHECKPOINT": str(checkpoint)}
    async with in_process(env) as (_, c):
        info = (await c.get("/v1/info")).json()
        assert (info["threshold"], info["threshold_source"]) == (0.8125, "checkpoint")
        text = (await c.get("/metrics")).text
        assert metric_in(text, "deepfake_threshold") == 0.8125
        assert build_source(text) == "checkpoint"
    async with in_process({**env, "DFM_THRESHOLD": "0.6"}) as (_, c):
        info = (await c.get("/v1/info")).json()
        assert (info["threshold"], info["threshold_source"]) == (0.6, "setting")
        assert build_source((await c.get("/metrics")).text) == "setting"

    clip = sorted(synth_clips.glob("*.mp4"))[0]
    scanned = run_cli("scan", str(clip), "--checkpoint", str(checkpoint), "--window", "150")
    assert scanned.returncode == 0, scanned.stderr
    verdicts = [json.loads(line) for line in scanned.stdout.splitlines()]
    assert verdicts and {v["threshold"] for v in verdicts} == {0.8125}
