"""Hostile input against a real ``serve``: each case is one a user or attacker can send.

Every test here failed on the service before the URL policy, the HTTP guard and the
decode limits: the CRLF URL reached the TCP listener, the bad port gave 500s, the
password leaked into ``reason``, a non-ASCII token gave 500, a 300 MB body was read
before auth, a token with a newline locked everyone out, the gap file never ended.
"""

from __future__ import annotations

import contextlib
import fractions
import json
import socket
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.servers import Service, SilentServer, in_process, wait_until

FAST = {"DFM_FPS": "10", "DFM_WINDOW_FRAMES": "20", "DFM_HOP_FRAMES": "10"}
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Recorder(SilentServer):
    """A TCP listener that records every byte anyone sends it (an internal Redis, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = b""

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.5)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(4096):
                    self.received += chunk
            conn.close()

    def __enter__(self) -> Recorder:
        super().__enter__()
        return self


def write_video(path: Path, times: list[float], size: tuple[int, int] = (64, 64)) -> Path:
    """An H.264 MKV whose frames carry exactly ``times`` (seconds)."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        stream.options = {"g": "1", "preset": "ultrafast"}
        for i, t in enumerate(times):
            rgb = np.full((size[1], size[0], 3), (i * 40) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def raw_request(port: int, head: str, body_chunks: list[bytes], pause: float = 0.0) -> bytes:
    """Send a request by hand (sizes a client library would refuse); the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(head.encode())
        try:
            for chunk in body_chunks:
                conn.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the server answered and closed: what these tests want
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def status_line(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def gap_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.4 KB: frames at 0 s, 0.033 s and 3,000,000 s."""
    return write_video(tmp_path_factory.mktemp("gap") / "gap.mkv", [0.0, 0.033, 3_000_000.0])


def test_hostile_requests_get_a_4xx_and_leak_nothing(tmp_path, gap_video):
    env = {
        **FAST,
        "DFM_API_TOKEN": TOKEN + "\n",  # as a Kubernetes Secret made from a file has it
        "DFM_ALLOW_FILE_SOURCES": "true",
        "DFM_EVENTS_MAX_CLIENTS": "1",
        "DFM_SCAN_MAX_BYTES": str(4 << 20),
        "DFM_SCAN_SPOOL_MAX_BYTES": str(6 << 20),
        "DFM_HTTP_READ_TIMEOUT_S": "3",
        "DFM_STALL_TIMEOUT_S": "1",
        "DFM_RECONNECT_INITIAL_S": "0.2",
        "DFM_RECONNECT_MAX_S": "0.5",
    }
    with Recorder() as redis, Service(env, tmp_path) as svc:
        c = svc.client

        def post(url: str) -> httpx.Response:
            return c.post("/v1/streams", json={"id": "x", "url": url}, headers=AUTH)

        # The token from a file with its newline works.
        assert c.get("/v1/streams", headers=AUTH).status_code == 200

        # CR/LF in a URL: refused, and nothing reaches the port it names.
        r = post(f"rtsp://127.0.0.1:{redis.port}/a\r\nSET pwned 1\r\n")
        assert r.status_code == 400 and "(characters)" in r.json()["error"], r.text
        time.sleep(1.5)
        assert redis.received == b""

        # A bad port: 400, and the list keeps answering.
        r = post("rtsp://u:p@cam:99999/x")
        assert r.status_code == 400 and "(port)" in r.json()["error"]
        assert c.get("/v1/streams", headers=AUTH).status_code == 200
        # Other rules, one line each naming the rule.
        for url, rule in [
            ("http://127.0.0.1/x.mp4", "scheme"),
            ("concat:/etc/passwd|/etc/hosts", "scheme"),
            ("rtsp://169.254.169.254/latest/meta-data", "destination"),
            ("rtsp://@cam/x", "userinfo"),
        ]:
            r = post(url)
            assert r.status_code == 400 and f"({rule})" in r.json()["error"], (url, r.text)

        # A password never shows: not in url, reason, the page's events or the log.
        r = c.post(
            "/v1/streams",
            json={"id": "cam", "url": "rtsp://admin:hunter2@127.0.0.1:1/x"},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        wait_until(lambda: c.get("/v1/streams/cam", headers=AUTH).json()["reason"], 30, "a reason")
        shown = (
            c.get("/v1/streams", headers=AUTH).text + c.get("/v1/streams/cam", headers=AUTH).text
        )
        assert "admin:***@" in shown and "hunter2" not in shown, shown
        with c.stream("GET", "/v1/events", headers=AUTH) as events:
            lines = events.iter_lines()  # held: a dropped iterator closes the stream
            text = ""
            while not text.startswith("data:"):
                text = next(lines)
            # Only one event stream at a time here (DFM_EVENTS_MAX_CLIENTS=1).
            second = c.get("/v1/events", headers=AUTH)
            assert second.status_code == 503 and "DFM_EVENTS_MAX_CLIENTS" in second.json()["error"]
        assert "cam" in text and "hunter2" not in text

        # A closed event stream gives its place back.
        def events_status() -> int:
            with c.stream("GET", "/v1/events", headers=AUTH) as again:
                return again.status_code

        wait_until(lambda: events_status() == 200, 10, "the event stream's place freed")
        assert "hunter2" not in svc.log()
        assert c.delete("/v1/streams/cam", headers=AUTH).status_code == 204

        # A token header that is not ASCII: 401, not 500.
        r = c.get("/v1/streams", headers={"Authorization": b"Bearer \xff\xfe\xfd"})
        assert r.status_code == 401
        # The API's own documents need the token too.
        assert c.get("/openapi.json").status_code == 401 and c.get("/docs").status_code == 401
        assert c.get("/openapi.json", headers=AUTH).status_code == 200

        # 300 MB without a token: 401 before the body is read, and no memory spent on it.
        before = rss_mb(svc.proc.pid)
        head = (
            "POST /v1/streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 300000000\r\n\r\n"
        )
        started = time.monotonic()
        answer = raw_request(svc.port, head, [b"x" * (1 << 20)] * 4)
        assert status_line(answer) == 401 and time.monotonic() - started < 10
        # A chunked body with the token: cut at the JSON calls' 64 KiB.
        head = (
            "POST /v1/streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (32 << 10, b"{" * (32 << 10))
        assert status_line(raw_request(svc.port, head, [chunk] * 200)) == 413
        assert rss_mb(svc.proc.pid) - before < 100
        assert svc.metric("deepfake_http_rejected_total", reason="auth") >= 1
        assert svc.metric("deepfake_http_rejected_total", reason="too_large") >= 1

        # Uploads share a spool quota: while one 4 MiB upload is arriving, a second waits.
        upload = (
            "POST /v1/scan?name=a.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {4 << 20}\r\n\r\n"
        )
        holder = socket.create_connection(("127.0.0.1", svc.port))
        holder.sendall(upload.encode() + bytes(1 << 20))
        time.sleep(0.5)
        r = c.post("/v1/scan", content=bytes(4 << 20), headers=AUTH)
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert "DFM_SCAN_SPOOL_MAX_BYTES" in r.json()["error"]
        # The stalled upload ends at the read timeout, and its share of the quota is free.
        holder.settimeout(10)
        assert status_line(holder.recv(4096)) == 408
        holder.close()
        r = c.post("/v1/scan", content=b"not a video at all" * 1000, headers=AUTH)
        assert r.status_code == 415, r.text

        # Media that would never end or would take gigabytes: bounded.
        started = time.monotonic()
        r = c.post("/v1/scan?name=gap.mkv", content=gap_video.read_bytes(), headers=AUTH)
        events = [json.loads(line) for line in r.text.splitlines()]
        assert r.status_code == 200 and events[-1]["event"] == "done", events[-1]
        assert time.monotonic() - started < 30
        big = write_video(tmp_path / "big.mkv", [0.0, 0.033], size=(4096, 2304))
        r = c.post("/v1/scan?name=big.mkv", content=big.read_bytes(), headers=AUTH)
        assert r.status_code == 413 and "DFM_MAX_FRAME_PIXELS" in r.json()["error"], r.text
        assert "/tmp" not in r.text
        png = tmp_path / "frame.png"
        import cv2

        cv2.imwrite(str(png), np.zeros((64, 64, 3), np.uint8))
        r = c.post("/v1/scan?name=frame.png", content=png.read_bytes(), headers=AUTH)
        assert r.status_code == 415

        # A live file source with the same jump: counted, no frames filled in, stream goes on.
        r = c.post(
            "/v1/streams",
            json={"id": "gap", "url": f"file://{gap_video}", "options": {"loop": True}},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        wait_until(
            lambda: (svc.metric("deepfake_stream_discontinuities_total", stream="gap") or 0) >= 2,
            30,
            "discontinuities counted",
        )
        assert c.get("/healthz").status_code == 200
        assert svc.terminate() == 0


async def test_a_token_less_service_answers_only_to_its_own_host_name():
    async with in_process(FAST) as (svc, c):
        assert (await c.get("/v1/streams")).status_code == 200
        r = await c.get("/v1/streams", headers={"Host": "rebind.example:8080"})
        assert r.status_code == 421 and "Host" in r.json()["error"]
        r = await c.get("/v1/streams", headers={"Host": f"localhost:{svc.http_port}"})
        assert r.status_code == 200


def test_serving_all_interfaces_without_a_token_must_be_said_explicitly(tmp_path):
    result = run_cli_env({"DFM_HTTP_HOST": "0.0.0.0"})
    assert result.returncode == 2 and "DFM_API_TOKEN" in one_line(result)
    with Service({**FAST, "DFM_HTTP_HOST": "0.0.0.0", "DFM_AUTH": "none"}, tmp_path) as svc:
        assert "DFM_AUTH=none" in svc.log()
        info = svc.client.get("/v1/info").json()
        assert any("DFM_AUTH=none" in w for w in info["warnings"])
        assert svc.terminate() == 0


def run_cli_env(env: dict[str, str], *args: str):
    import os
    import subprocess

    from tests.conftest import CLI

    full = {**os.environ, "DFM_RANDOM_WEIGHTS": "true", "DFM_HTTP_PORT": "0", **env}
    return subprocess.run(
        [CLI, *(args or ("serve",))],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"DFM_TRESHOLD": "0.7"}, ["DFM_TRESHOLD", "did you mean DFM_THRESHOLD"]),
        ({"DFM_API_TOKEN": "  \n"}, ["DFM_API_TOKEN", "empty"]),
        (
            {"DFM_SOURCES": '[{"id": "a", "url": "file:///tmp/a.mp4"}]'},
            ["DFM_SOURCES", "DFM_ALLOW_FILE_SOURCES"],
        ),
        ({"DFM_SOURCES": '[{"id": "a", "url": "rtsp://h:99999/x"}]'}, ["DFM_SOURCES", "port"]),
        ({"DFM_DEVICE": "cuda", "DFM_RANDOM_WEIGHTS": "true"}, ["DFM_DEVICE", "cpu"]),
        (
            {"DFM_CHECKPOINT": "TRUNCATED", "DFM_RANDOM_WEIGHTS": "false"},
            ["not a checkpoint", "deepfake-monitor train"],
        ),
    ],
)
def test_operator_mistakes_stop_start_up_with_one_line(env, needles, tmp_path):
    if env.get("DFM_DEVICE") == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: DFM_DEVICE=cuda is right here")
    if env.get("DFM_CHECKPOINT") == "TRUNCATED":
        # The first 64 KiB of the bundled checkpoint: a download that broke off.
        from analyzer.model import BUNDLED_CHECKPOINT

        cut = tmp_path / "cut.pt"
        cut.write_bytes(BUNDLED_CHECKPOINT.read_bytes()[: 64 << 10])
        env = {**env, "DFM_CHECKPOINT": str(cut)}
    result = run_cli_env(env)
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_line(result)
    for needle in needles:
        assert needle in line, line
    assert "Errno" not in line and "Pytorch" not in line  # no library internals pasted in


def test_a_yaml_mistake_names_the_yaml_key(tmp_path):
    config = tmp_path / "dfm.yaml"
    config.write_text("http_port: 8081\nwindow_frames: lots\n")
    result = run_cli_env({}, "serve", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result)
    assert "dfm.yaml: key window_frames" in line and "DFM_WINDOW_FRAMES" not in line


def test_scan_refuses_what_is_not_a_video_and_ends_on_a_timestamp_jump(tmp_path, gap_video):
    text = tmp_path / "readme.txt"
    text.write_text("This is a text file, not a video.\n" * 20)
    result = run_cli("scan", str(text), "--random-weights", timeout=120)
    assert result.returncode == 2 and "not a video" in result.stderr and not result.stdout
    result = run_cli("scan", "concat:/etc/passwd|/etc/hosts", "--random-weights", timeout=120)
    assert result.returncode == 2 and "scheme" in result.stderr
    started = time.monotonic()
    result = run_cli(
        "scan", str(gap_video), "--random-weights", "--window", "20", "--hop", "10", timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 60
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(verdicts) == 1 and verdicts[0]["window"]["frames"] <= 3
    assert "timestamps jump" in result.stderr


def test_train_on_too_few_people_says_how_many_groups_it_found(tmp_path):
    manifest = tmp_path / "clips.csv"
    rows = ["clip,label,identity"] + [
        f"c{i}.mp4,{'REAL' if i % 2 else 'FAKE'},person{i % 2}" for i in range(4)
    ]
    manifest.write_text("\n".join(rows) + "\n")
    result = run_cli("train", str(manifest), str(tmp_path / "run"), "--epochs", "1", timeout=120)
    assert result.returncode == 2
    line = one_line(result)
    assert "2 identity groups" in line and "needs at least" in line


def test_a_taken_port_stops_start_up_with_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli_env({"DFM_HTTP_PORT": str(port)})
    assert result.returncode == 2
    line = one_line(result)
    assert "DFM_HTTP_PORT" in line and str(port) in line
