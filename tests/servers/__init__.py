"""Real servers for the tests, on loopback: the GStreamer RTSP server and our own service.

Every server a test starts, the test stops (context managers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent / "deepfake-monitor")
SYSTEM_PYTHON = "/usr/bin/python3"


def metric_in(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a /metrics text, or None when it is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def registry_text(metrics: Any) -> str:
    """What ``/metrics`` would show of a :class:`streamer.metrics.Metrics`."""
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# In-process services over a looped file: 10 fps, a 20-frame window every 10 frames, so a
# verdict a second.
LOOPED_FILE = {
    "DFM_FPS": "10", "DFM_WINDOW_FRAMES": "20", "DFM_HOP_FRAMES": "10",
    "DFM_ALLOW_FILE_SOURCES": "true",
}  # fmt: skip


async def add_looped(client: httpx.AsyncClient, stream_id: str, clip: Path) -> None:
    spec = {"id": stream_id, "url": f"file://{clip}", "options": {"loop": True}}
    added = await client.post("/v1/streams", json=spec)
    assert added.status_code == 201, added.text


async def verdicts_of(client: httpx.AsyncClient, stream_id: str) -> list[dict[str, Any]]:
    return (await client.get(f"/v1/streams/{stream_id}/verdicts")).json()["verdicts"]


async def eventually(
    probe: Callable[[], Awaitable[Any]], within_s: float, what: str, step: float = 0.1
) -> Any:
    """:func:`wait_until` for a coroutine probe (in-process services): its first truthy
    value, or an AssertionError naming ``what``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {within_s:g} s waiting for {what}")


async def metrics_after_two_verdicts_with_faces(settings: dict[str, str], clip: Path) -> str:
    """A looped stream of ``clip`` in an in-process service under ``settings`` until two
    of its verdicts name a face; the service's metrics then."""
    async with in_process({**LOOPED_FILE, **settings}) as (_svc, c):
        await add_looped(c, "cam", clip)

        async def with_faces() -> list[dict[str, Any]]:
            verdicts = await verdicts_of(c, "cam")
            return verdicts if sum(bool(v["faces"]) for v in verdicts) >= 2 else []

        await eventually(with_faces, 30, "two verdicts with faces")
        return (await c.get("/metrics")).text


class SilentServer:
    """Accepts TCP connections on loopback and never says a word: a URL that does not answer."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                self._conns.append(self.sock.accept()[0])
            except TimeoutError:
                continue

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._conns:
            conn.close()
        self.sock.close()


class RtspServer:
    """GStreamer's RTSP server serving MP4 files at rtsp://127.0.0.1:PORT/<mount>."""

    def __init__(self, mounts: dict[str, Path], port: int | None = None) -> None:
        self.mounts = mounts
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    def url(self, mount: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    def start(self) -> RtspServer:
        args = [f"/{m}={p}" for m, p in self.mounts.items()]
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"RTSP server did not start: {line!r} {err[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()  # as abrupt as a camera losing power
                self.proc.wait(10)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


TOXIPROXY_VERSION = "2.12.0"  # scripts/bootstrap.sh builds it into the cache


class Toxiproxy:
    """Shopify's Toxiproxy: TCP proxies whose traffic a test can delay, reset or stall."""

    def __init__(self) -> None:
        cache = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
        self.binary = cache / f"toxiproxy-{TOXIPROXY_VERSION}" / "toxiproxy-server"
        self.port = free_port()
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Toxiproxy:
        assert self.binary.exists(), f"{self.binary} missing: run 'make setup' first"
        self.proc = subprocess.Popen(
            [str(self.binary), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return self.api.get("/version").status_code == 200
            return False

        wait_until(up, 20, "toxiproxy's API")
        return self

    def proxy(self, name: str, upstream_port: int) -> int:
        """A proxy to 127.0.0.1:``upstream_port``; returns the port it listens on."""
        listen = free_port()
        spec = {"name": name, "listen": f"127.0.0.1:{listen}",
                "upstream": f"127.0.0.1:{upstream_port}", "enabled": True}  # fmt: skip
        self.api.post("/proxies", json=spec).raise_for_status()
        return listen

    def add_toxic(self, proxy: str, name: str, kind: str, **attributes: Any) -> None:
        toxic = {"name": name, "type": kind, "stream": "downstream", "toxicity": 1.0,
                 "attributes": attributes}  # fmt: skip
        self.api.post(f"/proxies/{proxy}/toxics", json=toxic).raise_for_status()

    def remove_toxic(self, proxy: str, name: str) -> None:
        self.api.delete(f"/proxies/{proxy}/toxics/{name}").raise_for_status()

    def stop(self) -> None:
        self.api.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Toxiproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Service:
    """``deepfake-monitor serve`` as a subprocess; collects its stdout verdicts."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "DFM_HTTP_PORT": str(self.port),
            "DFM_RANDOM_WEIGHTS": "true",
            "DFM_LOG_LEVEL": "INFO",
            "DFM_EVIDENCE_DIR": str(tmp / "evidence"),  # never the user's cache
            **env,
        }
        self.stderr_path = tmp / f"service-{self.port}.log"
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def start(self, ready_timeout: float = 90) -> Service:
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [CLI, "serve"], env=self.env, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(self._ready, ready_timeout, "the service to be ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"service exited {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def log(self) -> str:
        return self.stderr_path.read_text()

    def verdicts(self, stream_id: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(line) for line in list(self.lines) if line.strip()]
        return [v for v in out if stream_id is None or v["stream_id"] == stream_id]

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one series in /metrics, or None when it is absent."""
        return metric_in(self.client.get("/metrics").text, name, **labels)

    def terminate(self, timeout: float = 60, *, signalled: bool = False) -> int:
        """SIGTERM (unless the test sent it already), wait for the exit; its status."""
        assert self.proc is not None
        if not signalled:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(10)
        assert "Traceback" not in self.log(), self.log()[-3000:]
        return code

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            if self._reader is not None:
                self._reader.join(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        self.client.close()
        if hasattr(self, "_stderr"):
            self._stderr.close()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Publisher:
    """A WHIP publisher in its own process (so a test can kill it outright).

    A line on its stdin makes it DELETE its session and exit.
    """

    script = ""
    python = sys.executable

    def __init__(self, url: str, video: Path, token: str | None = None) -> None:
        self.url, self.video, self.token = url, video, token
        self.proc: subprocess.Popen[str] | None = None

    def _spawn(self) -> subprocess.Popen[str]:
        args = [self.python, str(HERE / self.script), self.url, str(self.video)]
        if self.token:
            args += ["--token", self.token]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        return self.proc

    def stop(self) -> int:
        """End politely: the publisher DELETEs its session."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        code = self.proc.wait(30)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class WhipPublisher(_Publisher):
    """aiortc publishing a clip (``whip_client.py``)."""

    script = "whip_client.py"

    def __init__(self, url: str, video: Path, token: str | None = None) -> None:
        super().__init__(url, video, token)
        self.location: str | None = None
        self.first_sent: float | None = None

    def start(self) -> WhipPublisher:
        proc = self._spawn()
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "PUBLISHING":
            self.kill()
            raise AssertionError(f"WHIP publisher did not start: {' '.join(line)}")
        self.location, self.first_sent = line[1], float(line[2])
        return self

    def __enter__(self) -> WhipPublisher:
        return self.start()


class GstWhipPublisher(_Publisher):
    """GStreamer's webrtcbin publishing a clip (``gst_whip.py``, system python3)."""

    script = "gst_whip.py"
    python = SYSTEM_PYTHON

    def __init__(self, url: str, video: Path, token: str | None = None) -> None:
        super().__init__(url, video, token)
        self.lines: list[str] = []

    def start(self) -> GstWhipPublisher:
        proc = self._spawn()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed by kill()
            for line in proc.stdout:
                self.lines.append(line.strip())

    def said(self, word: str) -> str | None:
        """The first line the publisher printed that starts with ``word``."""
        return next((ln for ln in list(self.lines) if ln.startswith(word)), None)

    def __enter__(self) -> GstWhipPublisher:
        return self.start()


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@contextlib.asynccontextmanager
async def in_process(env: dict[str, str]) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The service in this process, its HTTP app as served (behind the guard) reached
    through ``httpx.ASGITransport``: for contract tests that need no process of their own
    (lifecycle, signals and real servers stay with :class:`Service`)."""
    from streamer.api import guarded_app
    from streamer.config import load_settings
    from streamer.service import Service as InProcessService

    evidence = tempfile.mkdtemp(prefix="dfm-evidence-")  # never the user's cache
    env = {"DFM_RANDOM_WEIGHTS": "true", "DFM_HTTP_PORT": "0", "DFM_EVIDENCE_DIR": evidence, **env}
    settings = load_settings(**{k.removeprefix("DFM_").lower(): v for k, v in env.items()})
    try:
        async with InProcessService(settings) as svc:
            transport = httpx.ASGITransport(app=guarded_app(svc))
            base = f"http://127.0.0.1:{svc.http_port}"
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                yield svc, client
    finally:
        shutil.rmtree(evidence, ignore_errors=True)
