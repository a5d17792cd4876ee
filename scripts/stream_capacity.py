"""How many live 30-fps face streams the service sustains here without dropping frames.

    .venv/bin/python scripts/stream_capacity.py [--size 640x480] [--seconds 40] [--max 6]

Runs the real service (`deepfake-monitor serve`, random weights) with N looped file
sources paced as live, N = 1, 2, ... For each N it reports decoded frames/s, backpressure
drops and verdict latency after a warm-up; it stops at the first N that drops frames.
The full pipeline benchmark is `deepfake-monitor bench` once it exists.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from analyzer.synthetic import synthesize

CLI = str(Path(sys.executable).parent / "deepfake-monitor")


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(n: int, clip: Path, seconds: float, warmup: float) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DFM_HTTP_PORT": str(port),
        "DFM_RANDOM_WEIGHTS": "true",
        "DFM_ALLOW_FILE_SOURCES": "true",
        "DFM_SINK": "none",
        "DFM_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([CLI, "serve"], env=env, stdout=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        for _ in range(300):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        for i in range(n):
            spec = {"id": f"s{i}", "url": f"file://{clip}", "options": {"loop": True}}
            client.post("/v1/streams", json=spec).raise_for_status()
        time.sleep(warmup)
        m0 = client.get("/metrics").text
        time.sleep(seconds)
        m1 = client.get("/metrics").text
        verdicts = client.get("/v1/streams").json()["streams"]
        lat = [s["last_verdict"]["latency_ms"] for s in verdicts if s["last_verdict"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        client.close()

    def delta(name: str, **labels: str) -> float:
        return metric_sum(m1, name, **labels) - metric_sum(m0, name, **labels)

    return {
        "streams": n,
        "frames_per_s": delta("deepfake_frames_decoded_total") / seconds,
        "faces_per_s": delta("deepfake_faces_detected_total") / seconds,
        "dropped": delta("deepfake_frames_dropped_total"),
        "max_latency_ms": max(lat) if lat else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--max", type=int, default=6)
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    out = Path(tempfile.mkdtemp())
    spec = synthesize(out, videos=1, frames=300, seed=3, size=(w, h), identities=["astronaut"])[0]
    clip = out / spec.file
    print(f"clip: {w}x{h}, 30 fps, one face; {os.cpu_count()} CPUs; window 150, hop 30")
    print("streams  frames/s  faces/s  dropped  max latency ms")
    for n in range(1, args.max + 1):
        r = run(n, clip, args.seconds, args.warmup)
        print(
            f"{n:7d}  {r['frames_per_s']:8.1f}  {r['faces_per_s']:7.1f}  {r['dropped']:7.0f}"
            f"  {r['max_latency_ms']:14.0f}",
            flush=True,
        )
        if r["dropped"] > 0:
            break


if __name__ == "__main__":
    main()
