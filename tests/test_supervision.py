"""Engine faults against a real ``serve`` (DFM_FAULTS, test-only): seen, contained, recovered.

Before: a failed backbone batch dropped its crops, so windows with a face came out as
``NO_FACE`` while verdicts kept flowing; a failed head call stopped the stream for good;
an engine hung for minutes left ``/healthz`` at 200.
"""

from __future__ import annotations

import json
import time

from tests.servers import Service, wait_until

FAST = {
    "DFM_FPS": "10",
    "DFM_WINDOW_FRAMES": "20",
    "DFM_HOP_FRAMES": "10",
    "DFM_ALLOW_FILE_SOURCES": "true",
}


def looped(clip) -> str:
    return json.dumps([{"id": "cam", "url": f"file://{clip}", "options": {"loop": True}}])


def test_engine_errors_are_counted_and_never_read_as_no_face(live_clip, tmp_path):
    faults = {"engine_error_rate": 1.0, "calls": 25}  # the first 25 engine calls fail
    env = {**FAST, "DFM_FAULTS": json.dumps(faults), "DFM_SOURCES": looped(live_clip)}
    with Service(env, tmp_path) as svc:

        def skipped() -> float:
            name = "deepfake_windows_skipped_total"
            return svc.metric(name, stream="cam", reason="engine_error") or 0

        wait_until(lambda: skipped() >= 1, 60, "a window skipped for an engine error")
        assert svc.metric("deepfake_engine_errors_total", stage="backbone") >= 1
        assert svc.metric("deepfake_queue_capacity", queue="engine_crops") == 256
        assert svc.client.get("/healthz").status_code == 200  # errors are not a stall
        # The fault is lifted after 25 calls: verdicts with the face come back.
        wait_until(lambda: len(svc.verdicts("cam")) >= 4, 90, "verdicts after the faults")
        verdicts = svc.verdicts("cam")
        assert [v["label"] for v in verdicts].count("NO_FACE") == 0, verdicts
        assert all(v["faces"] for v in verdicts)
        seqs = [v["seq"] for v in verdicts]
        assert seqs == list(range(len(seqs)))  # skipped windows leave no gap in seq
        status = svc.client.get("/v1/streams/cam").json()
        assert status["state"] == "running" and status["skipped_windows"] >= 1
        assert svc.terminate() == 0


def test_a_stalled_engine_fails_the_liveness_probe_and_recovers(live_clip, tmp_path):
    faults = {"engine_delay_ms": 9000, "calls": 1}  # the first engine call hangs 9 s
    env = {**FAST, "DFM_FAULTS": json.dumps(faults), "DFM_ENGINE_STALL_S": "2"}
    with Service(env, tmp_path) as svc:
        # The model's warm-up is not the batcher's: the stall is the stream's first batch.
        spec = json.loads(looped(live_clip))[0]
        assert svc.client.post("/v1/streams", json=spec).status_code == 201
        started = time.monotonic()
        wait_until(lambda: svc.client.get("/healthz").status_code == 503, 2 + 5 + 5, "healthz 503")
        failing = svc.client.get("/healthz").json()
        assert "engine stalled" in failing["problems"][0], failing
        assert svc.client.get("/readyz").status_code == 503
        wait_until(lambda: svc.client.get("/healthz").status_code == 200, 20, "healthz back")
        assert time.monotonic() - started < 30
        wait_until(lambda: len(svc.verdicts("cam")) >= 2, 60, "verdicts after the stall")
        assert svc.metric("deepfake_engine_last_batch_timestamp_seconds") > time.time() - 60
        assert svc.terminate() == 0


def test_overload_is_shed_by_a_stride_and_every_stream_keeps_getting_verdicts(live_clip, tmp_path):
    """Before: inboxes dropped frames at random for as long as the overload lasted."""
    # The engine made slow on purpose: 4-crop batches at 100 ms a call take about 40 crops/s
    # at most, and 6 one-face streams at 10 fps offer 60/s plus their head calls: about twice
    # what this 2-core machine manages. A stride of up to 16 covers a machine 4x slower.
    streams = [
        {"id": f"cam{i}", "url": f"file://{live_clip}", "options": {"loop": True}} for i in range(6)
    ]
    env = {
        **FAST,
        "DFM_FAULTS": json.dumps({"engine_delay_ms": 100}),
        "DFM_MAX_BATCH": "4",
        "DFM_SHED_INTERVAL_S": "1",
        "DFM_SHED_MAX_STRIDE": "16",
        "DFM_SOURCES": json.dumps(streams),
    }
    with Service(env, tmp_path) as svc:

        def counts() -> dict[str, dict]:
            return {s["id"]: s for s in svc.client.get("/v1/streams").json()["streams"]}

        stride = lambda: svc.metric("deepfake_analysis_stride") or 0  # noqa: E731
        wait_until(lambda: stride() > 1, 40, "the node to shed load")
        time.sleep(6)  # the stride settles
        before = counts()

        def new_verdicts(now: dict[str, dict]) -> int:
            return min(now[i]["verdicts"] - before[i]["verdicts"] for i in before)

        # A stretch long enough to judge the losses: three more verdicts from every stream
        # (about 12 s at the stride this machine settles on).
        wait_until(lambda: new_verdicts(counts()) >= 3, 90, "3 verdicts from every stream")
        after = counts()
        frames = sum(after[i]["frames"] - before[i]["frames"] for i in after)
        dropped = sum(after[i]["dropped"] - before[i]["dropped"] for i in after)
        shed = sum(after[i]["shed"] - before[i]["shed"] for i in after)
        # The loss is now a stated policy, not random: frames are skipped whole and counted.
        # Random drops (a lane full while the stride catches up with the load) stay a small
        # share of what the cameras gave, where before they were about half of it. Against
        # the frames analysed, 10 % failed once with another test's load on the cores (18
        # dropped beside 176 analysed).
        offered = frames + shed + dropped
        assert dropped <= 0.05 * offered, (dropped, shed, frames)
        verdicts = {sid: after[sid]["verdicts"] - before[sid]["verdicts"] for sid in after}
        # Every stream still gets verdicts, one per 10 frames analysed (hop 10).
        assert min(verdicts.values()) >= 1, verdicts
        assert sum(verdicts.values()) >= frames // 10 - len(after), (verdicts, frames)
        for sid in after:
            assert after[sid]["shed"] > before[sid]["shed"], sid
        assert svc.metric("deepfake_frames_dropped_total", stream="cam0", reason="shed") > 0
        # Each verdict says the frame rate it analysed: 10 fps over the stride of the time
        # (strides move in quarters).
        rates = {v["window"]["fps"] for v in svc.verdicts()}
        grid = [10 / (q / 4) for q in range(4, 65)]
        assert all(min(abs(r - g) for g in grid) < 1e-6 for r in rates), rates
        assert min(rates) < 10, rates
        assert svc.terminate() == 0
