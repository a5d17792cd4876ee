"""Soak: a real ``serve`` with N looped face streams for a while, sampled from outside.

Every ``--interval`` seconds it records the service's RSS, CPU time, threads and open
files (from ``/proc``), its event-loop tasks and verdicts (from ``/metrics``). After
``--warmup`` it expects a flat process: RSS growth at most ``--max-rss-growth`` (the trend
of the floor of RSS, its lowest value between two malloc trims, over the run after the
warm-up, fitted robustly so one late step does not read as a leak); threads, tasks and
open files whose median in the last quarter is within ``--slack`` of the median in the
first (they come and go: a looped file's decoder threads end with each loop, so a
quarter's highest value is luck; a leak moves the median); verdicts still coming. It
writes the samples (JSON) and a plot, prints a summary, and exits 1 when a check fails.
``--judge FILE`` judges a run's JSON again.

The engine runs batches of at most ``--max-batch`` crops (8): a node that falls behind for
a while (a busy machine) runs larger batches, whose working memory stays with the process
as a high-water mark; bounded, but at the service's default of 64 crops it was a step of
about 100 MB here, and read over two minutes a step looks like a leak. The samples also
record the crops queued for the engine (``queued``), so a run shows when the node fell
behind.

    .venv/bin/python scripts/soak.py --streams 4 --seconds 120          # what make test runs
    .venv/bin/python scripts/soak.py --streams 8 --seconds 3600 --out soak-1h.json

The streams are 480x360 synthetic one-face clips (REAL), looped and paced as live, scored
by the bundled demo model (trained on synthetic data only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from streamer.memory import TRIM_EVERY_S

ROOT = Path(__file__).resolve().parent.parent


def make_clip(folder: Path) -> Path:
    from analyzer.synthetic import synthesize

    clip = folder / "soak_clip.mp4"
    if not clip.exists():
        spec = synthesize(folder / "tmp", videos=1, frames=300, seed=5, identities=["astronaut"])[0]
        (folder / "tmp" / spec.file).replace(clip)
    return clip


def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,  # utime + stime
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "files": len(os.listdir(f"/proc/{pid}/fd")),
    }


def metrics_sample(client: httpx.Client) -> dict[str, float]:
    verdicts = tasks = queued = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == "deepfake_verdicts_total":
                verdicts += s.value
            elif s.name == "deepfake_event_loop_tasks":
                tasks = s.value
            elif s.name == "deepfake_queue_depth" and s.labels.get("queue") == "engine_crops":
                queued = s.value
    return {"verdicts": verdicts, "tasks": tasks, "queued": queued}


def trend(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """The Theil-Sen line through (xs, ys), evaluated at the first and the last x."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs))]  # fmt: skip
    slope = statistics.median(slopes) if slopes else 0.0
    level = statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))
    return level + slope * xs[0], level + slope * xs[-1]


def judge(samples: list[dict[str, float]], warmup: float, max_growth: float, slack: int) -> dict:
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 8:
        return {"ok": False, "failures": ["too few samples after the warm-up"]}
    # RSS rises between two malloc trims (every TRIM_EVERY_S, streamer/memory.py) and
    # falls at each: a leak shows in the floor, the lowest RSS of each trim period, as a
    # trend. The trend is the Theil-Sen line through the floors (the median of the slopes
    # between every two of them): a leak moves every slope, one step of the allocator
    # (seen once in three 2-minute runs: +85 MB in the last period, then flat) moves few.
    start = after[0]["t"]
    periods: dict[int, float] = {}
    for s in after:
        k = int((s["t"] - start) // TRIM_EVERY_S)
        periods[k] = min(periods.get(k, s["rss_mb"]), s["rss_mb"])
    ks = sorted(periods)[:-1] or sorted(periods)  # the last period may hold no trim yet
    floors = [periods[k] for k in ks]
    head, tail = trend(ks, floors)
    growth = tail / head - 1.0
    base = after[0]
    failures = []
    if growth > max_growth:
        failures.append(
            f"RSS floor grew {growth * 100:.1f}% after the warm-up (> {max_growth:.0%})"
        )
    quarter = max(1, len(after) // 4)
    for key in ("threads", "tasks", "files"):
        first = statistics.median(s[key] for s in after[:quarter])
        last = statistics.median(s[key] for s in after[-quarter:])
        if last > first + slack:
            failures.append(
                f"{key} grew after the warm-up: median {first:.0f} in the first quarter, "
                f"{last:.0f} in the last"
            )
    span = max(1e-9, after[-1]["t"] - base["t"])
    rate = (after[-1]["verdicts"] - base["verdicts"]) / span
    if rate <= 0:
        failures.append("no verdicts after the warm-up")
    return {
        "ok": not failures,
        "failures": failures,
        "rss_growth": growth,
        "rss_floor_mb": floors,
        "rss_peak_mb": max(s["rss_mb"] for s in after),
        "verdicts_per_s": rate,
        "cpu_s_per_s": (after[-1]["cpu_s"] - base["cpu_s"]) / span,
        "rss_mb": [head, tail],
        "threads": [min(s["threads"] for s in after), max(s["threads"] for s in after)],
        "tasks": [min(s["tasks"] for s in after), max(s["tasks"] for s in after)],
        "files": [min(s["files"] for s in after), max(s["files"] for s in after)],
        "queued_max": max(s.get("queued", 0.0) for s in after),
    }


def plot(samples: list[dict[str, float]], warmup: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, key, label in (
        (axes[0][0], "rss_mb", "RSS (MB)"),
        (axes[0][1], "verdicts", "verdicts (total)"),
        (axes[1][0], "threads", "threads"),
        (axes[1][1], "tasks", "event-loop tasks / open files"),
    ):
        ax.plot(t, [s[key] for s in samples], label=key)
        if key == "tasks":
            ax.plot(t, [s["files"] for s in samples], label="files")
            ax.legend()
        ax.axvline(warmup / 60, color="grey", linestyle=":")
        ax.set_ylabel(label)
    for ax in axes[1]:
        ax.set_xlabel("minutes (dotted: end of warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120.0, help="whole run, warm-up included")
    ap.add_argument("--warmup", type=float, default=40.0)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--max-rss-growth", type=float, default=0.05)
    ap.add_argument("--slack", type=int, default=3, help="threads/tasks/files may move this much")
    ap.add_argument("--max-batch", type=int, default=8, help="crops per engine call at most")
    ap.add_argument("--out", type=Path, default=Path("soak.json"))
    ap.add_argument("--work", type=Path, default=None, help="folder for the clip")
    ap.add_argument("--judge", type=Path, default=None, help="judge this run's JSON again")
    args = ap.parse_args()
    if args.judge is not None:
        run = json.loads(args.judge.read_text())
        verdict = judge(run["samples"], run["warmup"], args.max_rss_growth, args.slack)
        print(json.dumps({k: v for k, v in verdict.items() if k != "rss_floor_mb"}, indent=1))
        return 0 if verdict["ok"] else 1

    cache = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
    work = args.work or cache / "soak"
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(work)
    sources = [
        {"id": f"soak{i}", "url": f"file://{clip}", "options": {"loop": True}}
        for i in range(args.streams)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFM_") or k == "DFM_CACHE"}
    env.update(
        DFM_HTTP_PORT="0",
        DFM_SINK="none",
        DFM_ALLOW_FILE_SOURCES="true",
        DFM_SOURCES=json.dumps(sources),
        DFM_MAX_STREAMS=str(max(16, args.streams)),
        DFM_MAX_BATCH=str(args.max_batch),
    )
    exe = Path(sys.executable).with_name("deepfake-monitor")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(exe), "serve"], env=env, stderr=log, stdout=log)
    try:
        port = wait_for_port(log_path, proc)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        samples: list[dict[str, float]] = []
        start = time.monotonic()
        while (t := time.monotonic() - start) <= args.seconds:
            samples.append({"t": t, **proc_sample(proc.pid), **metrics_sample(client)})
            if len(samples) % 10 == 1:
                print(json.dumps({k: round(v, 1) for k, v in samples[-1].items()}), flush=True)
            time.sleep(max(0.0, start + len(samples) * args.interval - time.monotonic()))
    finally:
        proc.terminate()
        proc.wait(60)
    verdict = judge(samples, args.warmup, args.max_rss_growth, args.slack)
    result: dict[str, Any] = {"streams": args.streams, "seconds": args.seconds,
                              "warmup": args.warmup, **verdict, "samples": samples}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(samples, args.warmup, args.out.with_suffix(".png"))
    print(
        f"soak: {args.streams} streams, {args.seconds:.0f} s: RSS floor {verdict.get('rss_mb')} MB "
        f"({verdict.get('rss_growth', 0) * 100:+.1f}% after warm-up, peak "
        f"{verdict.get('rss_peak_mb', 0):.0f} MB), threads "
        f"{verdict.get('threads')}, tasks {verdict.get('tasks')}, files {verdict.get('files')}, "
        f"at most {verdict.get('queued_max', 0):.0f} crops queued for the engine, "
        f"{verdict.get('verdicts_per_s', 0):.2f} verdicts/s, "
        f"{verdict.get('cpu_s_per_s', 0):.2f} CPU s/s; plot {args.out.with_suffix('.png')}"
    )
    for failure in verdict["failures"]:
        print(f"soak: FAILED: {failure}")
    return 0 if verdict["ok"] else 1


def wait_for_port(log_path: Path, proc: subprocess.Popen[bytes]) -> int:
    """The port ``serve`` says it listens on (it logs 'HTTP on http://host:port')."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"soak: serve exited ({proc.returncode}); see {log_path}")
        for line in log_path.read_text().splitlines():
            if "HTTP on http://" in line:
                return int(line.rsplit(":", 1)[1].strip().split()[0].rstrip("/"))
        time.sleep(0.5)
    raise SystemExit(f"soak: serve did not start in 120 s; see {log_path}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
