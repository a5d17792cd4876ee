"""Pipeline benchmark: synthetic live streams through the real service path.

N looped file sources paced at 30 fps (decode, face tracking, batcher, engine, a sink
that keeps verdicts in memory) run for a fixed time after a warm-up. Reported: frames/s,
verdicts/s, verdict latency percentiles, drops, CPU seconds per stage, RSS and GPU memory
per stream; and, per configuration, the largest N with no drops and p99 latency under a
bound, found by trying N = 1, 2, ... (doubling on a GPU) until a run fails.

The overload part runs 0.5x to 3x that capacity, each load twice in one go: with the
overload shedder (``streamer/shedding.py``) and without it (``DFM_SHED_MAX_STRIDE=1``),
and reports verdicts/s, streams that got no verdict, and what was shed or dropped.

The frontend part runs N streams with the per-frame work (RGB, faces, crops) in a pool
of one thread per stream, one per CPU and one for all (``DFM_FRAME_WORKERS``), side by
side, and reports frames/s taken, drops, latency, CPU per frame and threads.

The decode part runs N Kafka keys' video (MPEG-TS chunks, JPEG messages) decoded in their
reader threads and in the decode pool, side by side, and reports frames/s and CPU per frame.

The stages part costs one stream's path stage by stage on one clip: decode, face
detection on every frame, tracking with crops, backbone per crop, head per window.

The sink part sends the same verdicts through the Kafka sink to a broker the caller
names (``--kafka``), once one acknowledged write at a time and once pipelined, and
reports verdicts/s for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

from analyzer.faces import Detection, FaceTracker
from analyzer.synthetic import synthesize
from streamer.config import StreamSpec, load_settings
from streamer.cpus import cpu_budget
from streamer.service import Service
from streamer.sinks.base import Ack, InMemorySink
from streamer.sources.base import SourceState, SourceWorker
from streamer.sources.decode import decode
from streamer.sources.kafka import JPEG, TS, KafkaOpener, Message
from streamer.sources.pool import FramePool
from streamer.sources.replay import Recording, ReplayOpener
from streamer.tasks import Backoff
from streamer.verdict import Verdict

log = logging.getLogger(__name__)

# Photos with 1, 2, 3 and 4 faces that BlazeFace finds.
PHOTO_FOR_FACES = {1: "astronaut", 2: "sample3", 3: "sample1", 4: "sample6"}
SIZES = {"480p": (854, 480), "720p": (1280, 720)}


class _Collect(InMemorySink):
    """Keeps every verdict with the time it came out."""

    name = "collect"

    def __init__(self) -> None:
        self.verdicts: list[tuple[float, Verdict]] = []

    async def publish(self, verdict: Verdict, on_ack: Ack | None = None) -> None:
        self.verdicts.append((time.monotonic(), verdict))
        if on_ack is not None:
            on_ack()


@dataclass
class PipelineConfig:
    size: str
    faces: int
    streams: int


def make_clip(folder: Path, size: str, faces: int) -> Path:
    """A 10-second REAL clip with ``faces`` faces at ``size``, made once and reused."""
    w, h = SIZES[size]
    path = folder / f"bench_{size}_{faces}f.mp4"
    if not path.exists():
        spec = synthesize(folder / "tmp", videos=1, frames=300, seed=faces, size=(w, h),
                          identities=[PHOTO_FOR_FACES[faces]])[0]  # fmt: skip
        (folder / "tmp" / spec.file).replace(path)
    return path


def _proc_status(field: str) -> int:
    """A number from /proc/self/status (``VmRSS`` in kB, ``Threads``); 0 elsewhere."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def _rss_bytes() -> int:
    return _proc_status("VmRSS") * 1024


async def run_pipeline(
    clip: Path,
    config: PipelineConfig,
    *,
    seconds: float,
    warmup: float,
    device: str,
    window: int = 150,
    hop: int = 30,
    random_weights: bool = True,
    max_stride: int = 1,
    overrides: dict[str, Any] | None = None,
    request_evidence: bool = False,
    replay: bool = False,
) -> dict[str, Any]:
    """``request_evidence``: every stream asks for evidence of every window (the
    heaviest evidence load there can be; normally only a window turning FAKE has one).
    ``replay``: the streams replay the clip's packets, demuxed once
    (``streamer/sources/replay.py``), instead of each looping the file."""
    settings = load_settings(
        **(overrides or {}),
        random_weights=random_weights,
        shed_max_stride=max_stride,
        window_frames=window,
        hop_frames=hop,
        device=device,
        sink="none",
        http_port=0,
        allow_file_sources=True,
        max_streams=max(16, config.streams),
    )
    collect = _Collect()
    service = Service(settings, extra_sinks=[collect])
    async with service:
        rss0 = _rss_bytes()
        gpu = torch.cuda.is_available() and service.settings.device != "cpu"
        gpu0 = torch.cuda.memory_allocated() if gpu else 0
        limits = service.manager.decode_limits()
        recording = Recording(clip, limits=limits) if replay else None
        for i in range(config.streams):
            spec = StreamSpec(id=f"s{i}", url=f"file://{clip}", options={"loop": True})
            if recording is None:
                await service.manager.add(spec)
            else:
                opener = ReplayOpener(recording, service.settings.fps, limits=limits)
                await service.manager.add_with_opener(spec, opener)
        asker = None
        if request_evidence:

            async def ask() -> None:
                while True:
                    for runner in service.manager.streams.values():
                        runner.request_evidence()
                    await asyncio.sleep(hop / settings.fps / 2)

            asker = asyncio.create_task(ask())
        await asyncio.sleep(warmup)
        snap0 = _snapshot(service)
        start = time.monotonic()
        await asyncio.sleep(seconds)
        snap1 = _snapshot(service)
        if asker is not None:
            asker.cancel()
        elapsed = time.monotonic() - start
        rss = _rss_bytes()
        threads = _proc_status("Threads")
        stride = service.manager.shedder.stride
    latencies = [v.latency_ms for t, v in collect.verdicts if t >= start]
    heard = {v.stream_id for t, v in collect.verdicts if t >= start}
    d = {k: snap1[k] - snap0[k] for k in snap0}
    cpu = {k.removeprefix("cpu_"): v for k, v in d.items() if k.startswith("cpu_")}
    measured = sum(cpu.values())
    process = d["process_cpu"]
    # decode/faces/crop: CPU time of the source threads; rest: all other CPU time of the
    # process (engine threads, event loop). Engine stages also as wall time of its thread.
    stages = {**cpu, "rest": max(0.0, process - measured)}
    stages["backbone_wall"], stages["head_wall"] = d["backbone_wall"], d["head_wall"]
    gpu_mem = (torch.cuda.max_memory_allocated() - gpu0) if gpu else 0
    n = config.streams
    return {
        "size": config.size,
        "faces": config.faces,
        "streams": n,
        "seconds": elapsed,
        "frames_per_s": d["frames"] / elapsed,
        "verdicts_per_s": len(latencies) / elapsed,
        "dropped": d["dropped"],
        "shed": d["shed"],
        "stride": stride,
        "streams_without_verdicts": n - len(heard),
        "latency_ms": _percentiles(latencies),
        "cpu_s_per_s": {k: v / elapsed for k, v in stages.items()},
        "process_cpu_s_per_s": process / elapsed,
        "rss_mb_per_stream": (rss - rss0) / n / 1e6,
        "threads": threads,  # of the whole process (PyTorch's and FFmpeg's too)
        "evidence_records_per_s": d["evidence_records"] / elapsed,
        "evidence_skipped_per_s": d["evidence_skipped"] / elapsed,
        "gpu_mb_per_stream": gpu_mem / n / 1e6,
    }


def _snapshot(service: Service) -> dict[str, float]:
    streams = service.manager.streams.values()
    snap = {
        "frames": float(sum(r.counters.frames for r in streams)),
        "dropped": float(sum(r.counters.dropped for r in streams)),
        "shed": float(sum(r.counters.shed for r in streams)),
        "process_cpu": time.process_time(),
        "backbone_wall": _hist_sum(service, "backbone"),
        "head_wall": _hist_sum(service, "head"),
        "evidence_records": _counter(service.metrics.evidence_records),
        "evidence_skipped": _counter(service.metrics.evidence_skipped),
    }
    for stage in ("decode", "faces", "crop"):
        snap[f"cpu_{stage}"] = sum(r.worker.stage_cpu_s()[stage] for r in streams)
    return snap


def _hist_sum(service: Service, stage: str) -> float:
    for family in service.metrics.inference_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum") and sample.labels.get("stage") == stage:
                return float(sample.value)
    return 0.0


def _counter(counter: Any) -> float:
    """The sum of a counter's ``_total`` samples (over all its labels)."""
    return float(
        sum(
            sample.value
            for family in counter.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    arr = np.asarray(values)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)}


def evidence_bench(folder: Path, *, device: str, quick: bool) -> dict[str, Any]:
    """Verdict latency with evidence off and with a record asked for every window of every
    stream (the heaviest load), in one run; and how many heat maps (Grad-CAM of 8 crops)
    the engine makes a minute when it does nothing else."""
    import tempfile

    from analyzer.bench import timed
    from analyzer.engine import Engine
    from analyzer.explain import grad_cam
    from analyzer.model import random_model

    folder.mkdir(parents=True, exist_ok=True)
    clip = make_clip(folder, "480p", 1)
    streams = 8 if device != "cpu" and torch.cuda.is_available() else 1  # what keeps up
    # Quick: long enough for a record to be written within the measured seconds on a busy
    # 2-core machine (a window of 1 s, then a heat map of 0.5-1 s, more when contended).
    seconds, warmup = (3.0, 3.0) if quick else (30.0, 10.0)
    window, hop = (30, 15) if quick else (150, 30)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dfm-bench-evidence-") as spool:
        # Off; on as served (a record when a stream turns FAKE); a record asked of every
        # window at the default heat-map rate (6 a minute); and at 600 a minute, where
        # heat maps take the engine whenever it is idle.
        runs = (("off", 6, False), ("full", 6, False), ("full", 6, True), ("full", 600, True))
        for n, (mode, per_min, ask) in enumerate((runs[0], runs[-1]) if quick else runs):
            overrides = {"evidence": mode, "evidence_dir": Path(spool) / str(n),
                         "evidence_per_min": per_min}  # fmt: skip
            r = asyncio.run(
                run_pipeline(
                    clip, PipelineConfig("480p", 1, streams), seconds=seconds, warmup=warmup,
                    device=device, window=window, hop=hop, overrides=overrides,
                    request_evidence=ask,
                )
            )  # fmt: skip
            rows.append({"evidence": mode, "heatmaps_per_min": per_min, "every_window": ask,
                         **r})  # fmt: skip
    engine = Engine(random_model(), device)
    crops = np.random.default_rng(0).integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)
    cam_s = timed(lambda: grad_cam(engine, crops), engine.device, repeats=1 if quick else 3)
    return {
        "device": str(engine.device),
        "streams": streams,
        "window": window,
        "hop": hop,
        "rows": rows,
        "heatmap_s": cam_s,
        "heatmaps_per_min": 60.0 / cam_s,
    }


def pipeline_bench(
    folder: Path,
    *,
    device: str,
    configs: list[tuple[str, int]],
    seconds: float,
    warmup: float,
    p99_bound_ms: float,
    max_streams: int,
    window: int = 150,
    hop: int = 30,
    replay: bool = False,
    min_streams: int = 1,
) -> dict[str, Any]:
    """For each (size, faces): runs with N = ``min_streams``, then more (doubling on a GPU,
    one more on the CPU) until drops or p99 over the bound; ``replay``: the streams replay
    one clip's packets demuxed once (:func:`run_pipeline`)."""
    folder.mkdir(parents=True, exist_ok=True)
    gpu = device != "cpu" and torch.cuda.is_available()
    out = []
    for size, faces in configs:
        clip = make_clip(folder, size, faces)
        runs = []
        best = 0
        n = min_streams
        while n <= max_streams:
            r = asyncio.run(
                run_pipeline(
                    clip,
                    PipelineConfig(size, faces, n),
                    seconds=seconds,
                    warmup=warmup,
                    device=device,
                    window=window,
                    hop=hop,
                    replay=replay,
                )
            )
            r["ok"] = r["dropped"] == 0 and r["latency_ms"]["p99"] <= p99_bound_ms
            runs.append(r)
            log.info("pipeline %s %d faces x %d streams: %s", size, faces, n, r)
            if not r["ok"]:
                break
            best = n
            n = n * 2 if gpu else n + 1
        out.append({"size": size, "faces": faces, "max_streams_ok": best, "runs": runs})
    return {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)",
        "p99_bound_ms": p99_bound_ms,
        "window": window,
        "hop": hop,
        "sources": "replayed packets" if replay else "looped files",
        "configs": out,
    }


def overload_bench(
    folder: Path,
    *,
    device: str,
    capacity: int | None,
    factors: list[float],
    seconds: float,
    warmup: float,
    p99_bound_ms: float,
    max_stride: int = 8,
) -> dict[str, Any]:
    """Verdicts/s from 0.5x to 3x capacity, with and without shedding, side by side.

    Uses the bundled demo model (trained on synthetic data only) and 480p one-face clips.
    ``capacity`` is the most streams that run with no drops and p99 under the bound; when
    not given it is found first (N = 2, 4, ... on the CPU; doubling on a GPU).
    """
    folder.mkdir(parents=True, exist_ok=True)
    clip = make_clip(folder, "480p", 1)
    gpu = device != "cpu" and torch.cuda.is_available()

    def run(n: int, stride: int, run_s: float, warm_s: float) -> dict[str, Any]:
        config = PipelineConfig("480p", 1, n)
        r = asyncio.run(run_pipeline(clip, config, seconds=run_s, warmup=warm_s, device=device,
                                     random_weights=False, max_stride=stride))  # fmt: skip
        log.info("overload: %d streams, max stride %d: %s", n, stride, r)
        return r

    search = []
    if capacity is None:
        capacity, n = 0, 2 if not gpu else 8
        while n <= 1024:
            r = run(n, 1, 10.0, 8.0)
            search.append(r)
            if r["dropped"] or r["latency_ms"]["p99"] > p99_bound_ms:
                break
            capacity, n = n, n * 2 if gpu else n + 2
        capacity = max(capacity, 1)
    rows: list[dict[str, Any]] = []
    for factor in factors:
        n = max(1, round(capacity * factor))
        rows.append(
            {
                "factor": factor,
                "streams": n,
                "shed": run(n, max_stride, seconds, warmup),
                "no_shed": run(n, 1, seconds, warmup),
            }
        )
    peak = max(r["shed"]["verdicts_per_s"] for r in rows)
    top = rows[-1]["shed"]
    return {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)",
        "model": "bundled demo checkpoint (trained on synthetic data only)",
        "capacity_streams": capacity,
        "capacity_search": search,
        "max_stride": max_stride,
        "rows": rows,
        "peak_verdicts_per_s": peak,
        "top_load_share_of_peak": top["verdicts_per_s"] / peak if peak else 0.0,
        "top_load_streams_without_verdicts": top["streams_without_verdicts"],
    }


def frontend_bench(
    folder: Path, *, device: str, streams: int, seconds: float, warmup: float, decoders: bool
) -> dict[str, Any]:
    """The frame pool against a thread per stream, side by side in one run: ``streams``
    looped 480p one-face clips through the service with the bundled demo model (trained
    on synthetic data only), shedding off, at several ``DFM_FRAME_WORKERS``, decoding in
    each stream's reader thread; with ``decoders``, also decoders of one thread per CPU
    each (FFmpeg's default) against the default of the CPUs shared among the streams; and
    last the decode pool (``DFM_DECODE_WORKERS``, one per CPU) decoding every stream's
    packets."""
    folder.mkdir(parents=True, exist_ok=True)
    clip = make_clip(folder, "480p", 1)
    cpus = cpu_budget()
    threads = load_settings(max_streams=max(16, streams)).decoder_threads()
    # Decoding in each stream's reader thread (DFM_DECODE_WORKERS=0) unless the row says.
    ways: list[tuple[str, dict[str, int]]] = [
        (f"one per stream ({streams})", {"frame_workers": streams, "decode_workers": 0})
    ]
    if cpus < streams:
        ways.append((f"one per CPU ({cpus})", {"frame_workers": cpus, "decode_workers": 0}))
    if streams > 1:
        ways.append(("one for all", {"frame_workers": 1, "decode_workers": 0}))
    if decoders and cpus > threads:
        way = f"one per CPU, decoders {cpus} threads"
        ways.append(
            (
                way,
                {"frame_workers": min(cpus, streams), "decode_threads": cpus, "decode_workers": 0},
            )
        )
    # The decode pool: packets demuxed by the readers, decoded by DFM_DECODE_WORKERS threads.
    workers = min(cpus, streams)
    ways.append(
        (
            f"one per CPU, decode pool of {workers}",
            {"frame_workers": workers, "decode_workers": workers},
        )
    )
    rows = []
    for way, overrides in ways:
        r = asyncio.run(
            run_pipeline(
                clip, PipelineConfig("480p", 1, streams), seconds=seconds, warmup=warmup,
                device=device, random_weights=False, overrides=overrides,
            )
        )  # fmt: skip
        cpu = r["cpu_s_per_s"]
        front = cpu["decode"] + cpu["faces"] + cpu["crop"]
        frames = max(r["frames_per_s"], 1e-9)
        rows.append(
            {
                "way": way,
                "frame_workers": overrides["frame_workers"],
                "decode_threads": overrides.get("decode_threads", threads),
                "decode_workers": overrides["decode_workers"],
                **r,
                "frontend_ms_per_frame": 1000 * front / frames,
                "process_ms_per_frame": 1000 * r["process_cpu_s_per_s"] / frames,
            }
        )
        log.info("frontend: %s: %s", way, r)
    return {
        "device": torch.cuda.get_device_name()
        if device != "cpu" and torch.cuda.is_available()
        else f"cpu ({cpus} usable cores)",
        "model": "bundled demo checkpoint (trained on synthetic data only)",
        "streams": streams,
        "decode_threads": threads,
        "rows": rows,
    }


def bench_verdict(stream: int, seq: int) -> Verdict:
    return Verdict(
        stream_id=f"bench-{stream}",
        session="00000000-0000-4000-8000-000000000000",
        seq=seq,
        window={"start_pts_s": seq, "end_pts_s": seq + 5.0, "frames": 150, "fps": 30.0},
        score=0.12,
        smoothed_score=0.1,
        label="REAL",
        threshold=0.5,
        faces=[{"track_id": 1, "score": 0.12, "box": [0.4, 0.3, 0.2, 0.3], "frames": 150}],
        model={"name": "bench", "version": "bench", "sha256": None},
        latency_ms=300.0,
        emitted_at="2026-01-01T00:00:00.000Z",
    )


class _FixedFace:
    """A "detector" that finds one face at a fixed box: costs nothing, so what differs
    between two ways of decoding is the decoding."""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection((0.3, 0.2, 0.7, 0.8), 0.9)]


def _kafka_messages(clip: Path, kind: str, frames: int, chunk: int = 188 * 40) -> list[Message]:
    """The first ``frames`` frames of ``clip`` as a Kafka key's messages: one JPEG per
    frame, or its first ``frames`` packets remuxed into MPEG-TS and cut every ``chunk``
    bytes (with B-frames, a picture or two more or fewer)."""
    if kind == JPEG:
        out: list[Message] = []
        for t, rgb in itertools.islice(decode(str(clip)), frames):
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert ok
            out.append(Message(0, len(out), jpeg.tobytes(), pts_s=t))
        return out
    buf = io.BytesIO()
    with av.open(str(clip)) as src, av.open(buf, "w", format="mpegts") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        packets = (p for p in src.demux(src.streams.video[0]) if p.dts is not None)
        for packet in itertools.islice(packets, frames):  # a packet a frame, in decode order
            packet.stream = stream
            dst.mux(packet)
    data = buf.getvalue()
    return [Message(0, k, data[i : i + chunk]) for k, i in enumerate(range(0, len(data), chunk))]


def _decode_run(
    kind: str, messages: list[Message], keys: int, decode_workers: int
) -> dict[str, Any]:
    """``keys`` Kafka keys of the same messages, every one already read (the ingest's
    buffer holds them all), through their source workers until each has ended."""
    cpus = cpu_budget()
    pool = FramePool(cpus)
    decoders = FramePool(decode_workers, name="packet_lane") if decode_workers else None
    taken = [0] * keys
    workers = []
    for k in range(keys):
        opener = KafkaOpener(
            kind, 30.0, 1.0, lambda _m, _why: None, size=len(messages) + 1, threads=1
        )
        for msg in messages:
            opener.push(msg)
        opener.close()

        def on_item(_item: Any, k: int = k) -> None:
            taken[k] += 1

        workers.append(
            SourceWorker(
                f"k{k}", opener, lambda: FaceTracker(_FixedFace(), detect_every=1), on_item,
                lambda _s, _r: None, lambda: None, Backoff(0.1, 0.1), pool=pool,
                decoders=decoders,
            )
        )  # fmt: skip
    cpu0, start = time.process_time(), time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    pool.stop()
    if decoders is not None:
        decoders.stop()
    frames = max(sum(taken), 1)
    return {
        "frames": sum(taken),
        "frames_per_s": frames / wall,
        "process_ms_per_frame": 1000 * cpu / frames,
        "failed": sum(w.state == SourceState.FAILED for w in workers),
    }


def decode_bench(folder: Path, *, keys: int, repeats: int, frames: int = 300) -> dict[str, Any]:
    """Kafka keys' video decoded in their reader threads against the decode pool
    (``DFM_DECODE_WORKERS`` one per CPU), side by side in one run, alternating: the 480p
    one-face clip as each key's MPEG-TS chunks or JPEG messages, pushed into its opener
    as the ingest does (no broker), as fast as the node takes them; faces at a fixed box
    (no detector), frame workers one per CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    clip = make_clip(folder, "480p", 1)
    cpus = cpu_budget()
    rows = []
    for kind in (TS, JPEG):
        messages = _kafka_messages(clip, kind, frames)
        for repeat in range(repeats):
            for workers in (0, cpus):
                r = _decode_run(kind, messages, keys, workers)
                rows.append({"kind": kind, "decode_workers": workers, "repeat": repeat, **r})
                log.info("decode: %s, decode workers %d: %s", kind, workers, r)
    ratios = {}
    for kind in (TS, JPEG):
        pool = [r["frames_per_s"] for r in rows if r["kind"] == kind and r["decode_workers"]]
        own = [r["frames_per_s"] for r in rows if r["kind"] == kind and not r["decode_workers"]]
        ratios[kind] = float(np.mean(pool) / np.mean(own))
    return {
        "device": f"cpu ({cpus} usable cores)",
        "keys": keys,
        "clip": f"480p one-face clip ({frames} frames at 30 fps)",
        "rows": rows,
        "ratio_pool_over_readers": ratios,
    }


def nvdec_skipped(device: str) -> str | None:
    """Why NVDEC cannot be timed on ``device``, as a line naming the fix; None if it can."""
    if device == "cpu":
        return "skipped: the device is the CPU; run it on a GPU machine"
    if not torch.cuda.is_available():
        return "skipped: no CUDA device visible; run it on a GPU machine"
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return (
            "skipped: PyNvVideoCodec is not installed; pip install pynvvideocodec "
            "(or carry its wheel to the GPU check)"
        )
    return None


def _pyav_session(clip: Path, deadline: float) -> int:
    """Frames PyAV decodes (one FFmpeg thread, left as YUV) looping ``clip`` until then."""
    frames = 0
    while time.monotonic() < deadline:
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            for _frame in container.decode(stream):
                frames += 1
                if time.monotonic() >= deadline:
                    break
    return frames


def _nvdec_session(clip: Path, deadline: float) -> int:
    """Frames NVDEC decodes (left in GPU memory) looping ``clip`` until then, demuxed by
    PyNvVideoCodec's own demuxer: one decoder, a demuxer a loop."""
    import PyNvVideoCodec as nvc

    frames = 0
    decoder = None
    while time.monotonic() < deadline:
        demuxer = nvc.CreateDemuxer(filename=str(clip))
        if decoder is None:
            decoder = nvc.CreateDecoder(
                gpuid=torch.cuda.current_device(), codec=demuxer.GetNvCodecId(),
                usedevicememory=True,
            )  # fmt: skip
        for packet in demuxer:
            frames += sum(1 for _frame in decoder.Decode(packet))
            if time.monotonic() >= deadline:
                break
    return frames


def _service_pictures(clip: Path, gpu: str | None) -> Iterator[Any]:
    """``clip``'s pictures as the service decodes them: PyAV's demuxer, then NVDEC on
    ``gpu`` (``DFM_DECODE``) or FFmpeg (None), one decoder thread."""
    from streamer.sources.decode import DecodeLimits, Demuxed

    video = Demuxed.open(str(clip), limits=DecodeLimits(gpu=gpu, threads=1))
    try:
        for packet in video.packets():
            for _t, picture in video.pictures(packet):
                yield picture
        for _t, picture in video.pictures(None):
            yield picture
        video.check()
    finally:
        video.close()


def _service_nvdec_session(clip: Path, deadline: float) -> int:
    """Frames the service's NVDEC path decodes to RGB on the GPU, looping ``clip``."""
    frames = 0
    while time.monotonic() < deadline:
        for _picture in _service_pictures(clip, "cuda"):
            frames += 1
            if time.monotonic() >= deadline:
                break
    torch.cuda.synchronize()
    return frames


def nvdec_agreement(clip: Path, gpu: str) -> dict[str, Any]:
    """The service's NVDEC pictures of ``clip`` against FFmpeg's RGB of the same frames:
    how many each gives, and the largest and mean difference in levels of 255."""
    on_gpu = [p.pixels(None).cpu().numpy().astype(np.int16) for p in _service_pictures(clip, gpu)]
    on_cpu = [p.rgb.astype(np.int16) for p in _service_pictures(clip, None)]
    diffs = [np.abs(a - b) for a, b in zip(on_gpu, on_cpu, strict=False) if a.shape == b.shape]
    return {
        "frames_nvdec": len(on_gpu),
        "frames_ffmpeg": len(on_cpu),
        "same_size": len(diffs),
        "max_level_diff": int(max((d.max() for d in diffs), default=-1)),
        "mean_level_diff": float(np.mean([d.mean() for d in diffs])) if diffs else -1.0,
    }


def _sessions(session: Any, clip: Path, n: int, seconds: float) -> dict[str, Any]:
    """``n`` sessions of ``session`` at once, each in a thread of its own, for ``seconds``."""
    cpu0, start = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        counts = list(pool.map(lambda _k: session(clip, start + seconds), range(n)))
    wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    frames = sum(counts)
    return {
        "sessions": n,
        "frames": frames,
        "frames_per_s": frames / wall,
        "process_ms_per_frame": 1000 * cpu / max(frames, 1),
    }


def nvdec_bench(
    folder: Path, *, device: str, seconds: float, sessions: list[int]
) -> dict[str, Any]:
    """Decode alone, the 480p one-face clip looped: PyAV on the CPU (one session, then one
    a CPU) against NVDEC through PyNvVideoCodec at each of ``sessions`` (an H100 has seven
    NVDEC engines), side by side in one run: first with PyNvVideoCodec's own demuxer, the
    frames left as NV12, then the service's path (``DFM_DECODE=nvdec``: PyAV demuxing, the
    frames turned to RGB on the GPU), with its pictures compared to FFmpeg's
    (``agreement``). Where NVDEC cannot run, ``nvdec`` says why."""
    folder.mkdir(parents=True, exist_ok=True)
    clip = make_clip(folder, "480p", 1)
    cpus = cpu_budget()
    rows = []
    agreement: dict[str, Any] | None = None
    for n in sorted({1, cpus}):
        rows.append({"decoder": "pyav", **_sessions(_pyav_session, clip, n, seconds)})
        log.info("nvdec part: %s", rows[-1])
    why = nvdec_skipped(device)
    if why is None:
        try:
            for n in sessions:
                rows.append({"decoder": "nvdec", **_sessions(_nvdec_session, clip, n, seconds)})
                log.info("nvdec part: %s", rows[-1])
            agreement = nvdec_agreement(clip, "cuda")
            for n in sessions:
                rows.append(
                    {"decoder": "service", **_sessions(_service_nvdec_session, clip, n, seconds)}
                )
                log.info("nvdec part: %s", rows[-1])
        except Exception as exc:  # a GPU's own failure is a finding, not a crash of the run
            why = f"failed: {exc!r}"
    return {
        "agreement": agreement,
        "device": torch.cuda.get_device_name()
        if device != "cpu" and torch.cuda.is_available()
        else f"cpu ({cpus} usable cores)",
        "clip": "480p one-face clip (300 frames at 30 fps, H.264)",
        "seconds": seconds,
        "rows": rows,
        "nvdec": why or "ran",
    }


def sink_bench(bootstrap: str, *, verdicts: int, streams: int = 100) -> dict[str, Any]:
    """Verdicts/s through :class:`KafkaSink` to ``bootstrap``: one at a time vs pipelined."""
    import uuid

    from streamer.metrics import Metrics
    from streamer.sinks.kafka import IN_FLIGHT, KafkaSink

    async def run(in_flight: int, count: int) -> dict[str, Any]:
        topic = f"deepfake.bench.{uuid.uuid4().hex[:8]}"
        settings = load_settings(
            kafka_bootstrap=bootstrap, kafka_verdicts_topic=topic, kafka_buffer=count
        )
        sink = KafkaSink(settings, Metrics(), flush_timeout_s=600, in_flight=in_flight)
        await sink.start()
        await sink.publish(bench_verdict(0, 0))  # connect and create the topic first
        await sink.flush(60)
        batch = [bench_verdict(i % streams, 1 + i // streams) for i in range(count)]
        start = time.perf_counter()
        for v in batch:
            await sink.publish(v)
        ok = await sink.flush(600)
        elapsed = time.perf_counter() - start
        await sink.stop()
        return {"in_flight": in_flight, "verdicts": count, "delivered": ok,
                "seconds": elapsed, "verdicts_per_s": count / elapsed}  # fmt: skip

    async def both() -> list[dict[str, Any]]:
        # The one-at-a-time path gets a tenth of the verdicts: it is that much slower.
        return [await run(1, max(100, verdicts // 10)), await run(IN_FLIGHT, verdicts)]

    rows = asyncio.run(both())
    return {
        "bootstrap": bootstrap,
        "streams": streams,
        "rows": rows,
        "ratio_pipelined_over_one_at_a_time": rows[1]["verdicts_per_s"] / rows[0]["verdicts_per_s"],
    }


def ring_memory(feature_dim: int, window: int = 150) -> list[dict[str, Any]]:
    """Host memory of one stream's face rings after ``window`` frames, at 1 and 4 faces,
    traced by ``tracemalloc`` (numpy reports its buffers to it): the old layout (every
    crop kept, float32 features) against the service's (float16 features only)."""
    import tracemalloc

    from analyzer.faces import FaceCrop, FrameFaces
    from streamer.streams import StreamState

    layouts: list[tuple[str, bool, type[np.floating]]] = [
        ("crops + float32 features", True, np.float32),
        ("float16 features only", False, np.float16),
    ]
    crop = np.zeros((112, 112, 3), np.uint8)
    feats = np.zeros((4, feature_dim), np.float32)
    rows = []
    for layout, keep_crops, dtype in layouts:
        for faces in (1, 4):
            tracemalloc.start()
            state = StreamState(
                "memory",
                window=window,
                feature_dim=feature_dim,
                keep_crops=keep_crops,
                feature_dtype=dtype,
            )
            for i in range(window):
                boxes = [
                    FaceCrop(t, (0.1 * t, 0.1, 0.1 * t + 0.1, 0.3), crop) for t in range(faces)
                ]
                pending = state.add_frame(i / 30, FrameFaces(boxes), 0.0)
                state.set_features(pending, feats[: len(pending)])
            held, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows.append({"layout": layout, "faces": faces, "mb_per_stream": held / 1e6})
            del state
    return rows


def stage_bench(work: Path, *, device: str, quick: bool) -> dict[str, Any]:
    """Milliseconds per frame (decode, detection, tracking + crops), per crop (backbone)
    and per window (head) on a 480p two-face clip; random weights (speed only)."""
    from analyzer.bench import timed
    from analyzer.engine import Engine
    from analyzer.faces import BlazeFaceDetector, FaceTracker
    from analyzer.model import random_model
    from streamer.sources.decode import decode

    clip = make_clip(work, "480p", 2)
    count = 60 if quick else 300
    start = time.perf_counter()
    frames = [rgb for _, (_, rgb) in zip(range(count), decode(str(clip)), strict=False)]
    decode_ms = (time.perf_counter() - start) * 1000 / len(frames)
    cpu = torch.device("cpu")  # detection and tracking run on the host
    with BlazeFaceDetector() as det:
        theirs = [det.detect(rgb) for rgb in frames]  # also the warm-up
        detect_s = timed(lambda: [det.detect(rgb) for rgb in frames], cpu, repeats=1)
        tracker = FaceTracker(det, detect_every=3)
        tracked: list[list[Any]] = []
        track_s = timed(  # one pass, whose crops feed the backbone below
            lambda: tracked.extend(tracker.update(f).crops for f in frames),
            cpu,
            repeats=1,
            warmup=0,
        )
        crops = [c.crop for faces in tracked for c in faces]
    engine = Engine(random_model(), device)
    detectors = torch_detect_bench(frames, theirs, engine)
    engine = Engine(random_model(), device)
    boxes = [(i, c.box) for i, faces in enumerate(tracked) for c in faces]
    cropping = crop_bench(frames, boxes, engine.device, tracker.margin, tracker.crop_size)
    cropping["tracker_frames_per_s"] = crop_setting_bench(
        clip, len(frames), engine.device, tracker.margin, tracker.crop_size
    )
    batch = np.stack((crops * 32)[:32])
    reps = 1 if quick else 3
    backbone_s = timed(lambda: engine.backbone(batch), engine.device, repeats=reps)
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((150, engine.feature_dim)).astype(np.float32)] * 8
    head_s = timed(lambda: engine.head(windows), engine.device, repeats=reps)
    h, w = frames[0].shape[:2]
    return {
        "device": str(engine.device),
        "torch_threads": torch.get_num_threads(),
        "clip": {
            "frames": len(frames),
            "size": [w, h],
            "faces_per_frame": len(crops) / len(frames),
        },
        "ms": {
            "decode_per_frame": decode_ms,
            "detect_per_frame": detect_s * 1000 / len(frames),
            "track_and_crop_per_frame": track_s * 1000 / len(frames),
            "backbone_per_crop": backbone_s * 1000 / len(batch),
            "head_per_window": head_s * 1000 / len(windows),
        },
        "detectors": detectors,
        "crops": cropping,
        "ring_memory": ring_memory(engine.feature_dim),
    }


def crop_bench(
    frames: list[np.ndarray], boxes: list[tuple[int, Any]], device: torch.device,
    margin: float, size: int,
) -> dict[str, Any]:  # fmt: skip
    """The tracker's crops of ``frames`` cut on the host (OpenCV, one at a time) and on
    the engine's device (``roi_align``, every crop of 32 frames in one call, the frames
    already there, as a GPU decoder leaves them); crops per second each, and the bytes a
    frame and its crops would take to the device."""
    from analyzer.bench import timed
    from analyzer.crops import crop_on_device
    from analyzer.faces import crop_face

    host_s = timed(
        lambda: [crop_face(frames[i], box, margin=margin, size=size) for i, box in boxes],
        torch.device("cpu"),
        repeats=1,
    )
    stacked = torch.from_numpy(np.stack(frames)).to(device)
    # (first frame, its boxes numbered within the call) for each call of 32 frames
    calls = [(i, [(k - i, b) for k, b in boxes if i <= k < i + 32])
             for i in range(0, len(frames), 32)]  # fmt: skip
    device_s = timed(
        lambda: [
            crop_on_device(stacked[i : i + 32], bs, margin=margin, size=size) for i, bs in calls
        ],  # fmt: skip
        device,
        repeats=1,
    )
    return {
        "crops": len(boxes),
        "host_crops_per_s": len(boxes) / host_s,
        "device_crops_per_s": len(boxes) / device_s,
        "frame_bytes": int(frames[0].nbytes),
        "crop_bytes": size * size * 3,
    }


def crop_setting_bench(
    clip: Path, count: int, device: torch.device, margin: float, size: int
) -> dict[str, float]:
    """The whole of DFM_CROP, frames per second each way, from the decoder's pictures of
    ``clip`` as the frame pool gets them (``Picture.pixels``): the tracker with the PyTorch
    BlazeFace (every third frame, one frame a network call) cutting crops from host RGB,
    against the same tracker sending each picture to ``device`` (a GPU: its YUV planes,
    made RGB there), letterboxing and cropping there."""
    from analyzer.bench import timed
    from analyzer.blazeface import TorchFaceDetector
    from analyzer.faces import FaceTracker

    with av.open(str(clip)) as container:
        pictures = [f for _, f in zip(range(count), container.decode(video=0), strict=False)]
    net = TorchFaceDetector(device=device)
    fps = {}
    for way, where in (("host", None), ("device", device)):
        tracker = FaceTracker(net, detect_every=3, margin=margin, crop_size=size, device=where)
        took = timed(partial(_track_all, tracker, pictures), device, repeats=1)
        fps[way] = len(pictures) / took
    return fps


def _track_all(tracker: Any, pictures: list[av.VideoFrame]) -> None:
    from streamer.sources.decode import Picture

    for frame in pictures:  # a new Picture each time: each pass converts as the service does
        tracker.update(Picture(frame).pixels(tracker.device))


def torch_detect_bench(
    frames: list[np.ndarray], theirs: list[list[Any]], engine: Any, streams: int = 8
) -> list[dict[str, Any]]:
    """The PyTorch BlazeFace on the engine's device against MediaPipe's detections of the
    same frames: its network at 1, 8 and 32 frames per call (letterbox and decode
    included), and through the batcher's detection stage with ``streams`` threads
    detecting at once, as streams do. Agreement: the share of frames with MediaPipe's face
    count, and the worst IoU of a MediaPipe face with its best match."""
    from analyzer.bench import timed
    from analyzer.blazeface import TorchFaceDetector
    from analyzer.faces import iou

    net = TorchFaceDetector(device=engine.device)

    def agreement(ours: list[list[Any]]) -> dict[str, float]:
        same = 0.0
        worst = 1.0
        for mine, ref in zip(ours, theirs, strict=True):
            same += len(mine) == len(ref)
            for face in ref:
                worst = min(worst, max((iou(m.box, face.box) for m in mine), default=0.0))
        return {"same_count_share": same / len(ours), "worst_iou": worst}

    rows = []
    for size in (1, 8, 32):
        chunks = [frames[i : i + size] for i in range(0, len(frames), size)]

        def run(c: list[list[np.ndarray]] = chunks) -> list[list[Any]]:
            return [faces for x in c for faces in net.detect_batch(x)]

        seconds = timed(run, net.device, repeats=1)
        found = run()
        rows.append({"way": f"network, {size} per call", "batch": float(size),
                     "frames_per_s": len(frames) / seconds, **agreement(found)})  # fmt: skip
    seconds, found, mean_batch = asyncio.run(_through_batcher(net, engine, frames, streams))
    rows.append({"way": f"detection stage, {streams} streams", "batch": mean_batch,
                 "frames_per_s": len(frames) / seconds, **agreement(found)})  # fmt: skip
    return rows


async def _through_batcher(
    net: Any, engine: Any, frames: list[np.ndarray], streams: int
) -> tuple[float, list[list[Any]], float]:
    """``streams`` threads detect their share of ``frames`` through one batcher."""
    from streamer.batcher import Batcher
    from streamer.detection import BatchedDetector
    from streamer.metrics import Metrics

    metrics = Metrics()
    loop = asyncio.get_running_loop()
    found: list[list[Any]] = [[] for _ in frames]

    def stream(k: int) -> None:
        for i in range(k, len(frames), streams):
            found[i] = det.detect(frames[i])

    pool = ThreadPoolExecutor(streams, thread_name_prefix="bench-stream")
    async with Batcher(engine, metrics, face_network=net, detect_batch=32) as batcher:
        det = BatchedDetector(net, batcher, loop, timeout_s=60)
        await loop.run_in_executor(pool, det.detect, frames[0])  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(pool, stream, k) for k in range(streams)))
        seconds = time.perf_counter() - start
    pool.shutdown()
    total = count = 0.0
    for family in metrics.inference_batch.collect():
        for sample in family.samples:
            if sample.labels.get("stage") == "detect" and sample.name.endswith("_sum"):
                total = sample.value
            if sample.labels.get("stage") == "detect" and sample.name.endswith("_count"):
                count = sample.value
    return seconds, found, (total - 1) / max(count - 1, 1)  # less the warm-up's call


def format_report(result: dict[str, Any]) -> str:
    """The benchmark as plain-text tables."""
    lines: list[str] = []
    eng = result.get("engine")
    if eng:
        f = eng["flops"]
        lines += [
            f"engine on {eng['device']}",
            f"  backbone {f['backbone_flops_per_frame'] / 1e9:.2f} GFLOP/frame (flop counter), "
            f"head {f['head_flops_per_window'] / 1e9:.2f} GFLOP/window (LSTM by hand)",
            "  matmul peak: "
            + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in eng["matmul_peak_flops"].items()),
            "  stage     batch  dtype     ch_last  mode                  items/s     ms/item"
            "   TFLOP/s  vs eager  compile s",
        ]
        for r in eng["rows"]:
            mode = r["mode"]
            versus = f"  {r['vs_eager']:>7.2f}x" if r.get("vs_eager") else ""
            first = f"  {r['compile_s']:>9.1f}" if mode != "eager" else ""
            lines.append(
                f"  {r['stage']:<9} {r['batch']:>5}  {r['dtype']:<9} {str(r['channels_last']):<7}"
                f"  {mode:<19}  {r['items_per_s']:>9.1f}  {r['ms_per_item']:>8.2f}"
                f"  {r['tflops']:>7.3f}{versus}{first}"
            )
        for mode, why in eng.get("compile_skipped", {}).items():
            lines.append(f"  DFM_COMPILE={mode}: not measured: {why}")
        lines.append(
            "  engine.backbone (uint8 crops in, numpy out) vs the bare backbone: "
            f"{eng['engine_vs_raw_backbone']:.2f}x; best backbone at "
            f"{eng['backbone_fraction_of_peak'] * 100:.0f}% of the measured matmul peak"
        )
    base = result.get("baseline")
    if base:
        lines += [
            f"baseline on {base['device']} (window {base['window']}, steady state)",
            "  hop  streams  ours win/s  naive win/s  ours/naive  frames/verdict ours-naive"
            "  latency ms ours-naive",
        ]
        for r in base["results"]:
            ours, naive = (
                r["ours_backbone_frames_per_verdict"],
                r["naive_backbone_frames_per_verdict"],
            )
            frames = f"{ours} - {naive}"
            latency = f"{r['ours_verdict_latency_ms']:.0f} - {r['naive_verdict_latency_ms']:.0f}"
            lines.append(
                f"  {r['hop']:>3}  {r['streams']:>7}  {r['ours_windows_per_s']:>10.2f}"
                f"  {r['naive_windows_per_s']:>11.2f}  {r['ratio_ours_over_naive']:>9.1f}x"
                f"  {frames:>25}  {latency:>22}"
            )
    pipe = result.get("pipeline")
    if pipe:
        lines += [
            f"pipeline on {pipe['device']}: 30-fps streams of {pipe['sources']}, window "
            f"{pipe['window']}, hop {pipe['hop']}; ok = no drops and p99 <= "
            f"{pipe['p99_bound_ms']:.0f} ms",
            "  size  faces  streams  frames/s  verdicts/s  dropped  latency p50/p95/p99 ms  ok",
        ]
        cpu_lines = [
            "  CPU s per s:  decode  faces  crop   rest | engine wall s/s: backbone  head"
            " | RSS MB/stream",
        ]
        for cfg in pipe["configs"]:
            for r in cfg["runs"]:
                c, lat = r["cpu_s_per_s"], r["latency_ms"]
                pct = f"{lat['p50']:.0f}/{lat['p95']:.0f}/{lat['p99']:.0f}"
                size, faces, streams = r["size"], r["faces"], r["streams"]
                lines.append(
                    f"  {size:<5} {faces:>5}  {streams:>7}  {r['frames_per_s']:>8.1f}"
                    f"  {r['verdicts_per_s']:>10.2f}  {r['dropped']:>7.0f}  {pct:>22}"
                    f"  {'yes' if r['ok'] else 'no'}"
                )
                cpu_lines.append(
                    f"  {r['size']:<5} {r['faces']}f x{r['streams']:<3} {c['decode']:>7.2f}"
                    f" {c['faces']:>6.2f} {c['crop']:>5.2f} {c['rest']:>6.2f} |"
                    f" {c['backbone_wall']:>24.2f} {c['head_wall']:>5.2f}"
                    f" | {r['rss_mb_per_stream']:>13.0f}"
                )
            lines.append(
                f"  -> {cfg['size']} with {cfg['faces']} face(s): {cfg['max_streams_ok']} stream(s)"
            )
        lines += cpu_lines
    over = result.get("overload")
    if over:
        lines += [
            f"overload on {over['device']}: 480p one-face streams, {over['model']}; "
            f"capacity {over['capacity_streams']} streams; shedding up to stride "
            f"{over['max_stride']} vs none (DFM_SHED_MAX_STRIDE=1)",
            "  load  streams | verdicts/s shed-none | silent streams shed-none"
            " | analysed fr/s shed-none | shed/s  dropped/s shed-none | stride | p99 ms shed-none",
        ]
        for row in over["rows"]:
            a, b = row["shed"], row["no_shed"]
            secs_a, secs_b = a["seconds"], b["seconds"]
            lines.append(
                f"  {row['factor']:>3.1f}x  {row['streams']:>7} | {a['verdicts_per_s']:>8.2f}"
                f" {b['verdicts_per_s']:>6.2f}    | {a['streams_without_verdicts']:>6}"
                f" {b['streams_without_verdicts']:>5}              | {a['frames_per_s']:>8.1f}"
                f" {b['frames_per_s']:>6.1f}         | {a['shed'] / secs_a:>6.1f}"
                f" {a['dropped'] / secs_a:>7.1f} {b['dropped'] / secs_b:>6.1f}        |"
                f" {a['stride']:>6} | {a['latency_ms']['p99']:>6.0f} {b['latency_ms']['p99']:>6.0f}"
            )
        lines.append(
            f"  -> at {over['rows'][-1]['factor']:g}x with shedding: "
            f"{over['top_load_share_of_peak'] * 100:.0f}% of the peak verdict rate, "
            f"{over['top_load_streams_without_verdicts']} stream(s) without a verdict"
        )
    stages = result.get("stages")
    if stages:
        clip, ms = stages["clip"], stages["ms"]
        lines += [
            f"stages on {stages['device']} ({stages['torch_threads']} torch threads): "
            f"{clip['frames']} frames {clip['size'][0]}x{clip['size'][1]}, "
            f"{clip['faces_per_frame']:.2f} faces/frame, random weights",
            f"  decode (PyAV, to RGB)            {ms['decode_per_frame']:8.2f} ms/frame",
            f"  BlazeFace (MediaPipe), 1 frame   {ms['detect_per_frame']:8.2f} ms/frame",
            f"  tracker (detect every 3) + crops {ms['track_and_crop_per_frame']:8.2f} ms/frame",
            f"  backbone, batch 32               {ms['backbone_per_crop']:8.2f} ms/crop",
            f"  head, 8 windows of 150           {ms['head_per_window']:8.2f} ms/window",
            "  the same BlazeFace in PyTorch, against MediaPipe on the same frames:",
        ]
        for d in stages["detectors"]:
            lines.append(
                f"    {d['way']:<28} {d['frames_per_s']:8.1f} frames/s "
                f"({d['frames_per_s'] * ms['detect_per_frame'] / 1000:.2f}x MediaPipe; "
                f"mean batch {d['batch']:.1f}), same face count on "
                f"{d['same_count_share'] * 100:.0f}% of frames, worst IoU {d['worst_iou']:.3f}"
            )
        c = stages["crops"]
        lines += [
            f"  crops, {c['crops']} of them: on the host (OpenCV, one at a time) "
            f"{c['host_crops_per_s']:.0f}/s; on the device (roi_align, 32 frames a call, "
            f"frames already there) {c['device_crops_per_s']:.0f}/s "
            f"({c['device_crops_per_s'] / c['host_crops_per_s']:.2f}x); a crop is "
            f"{c['crop_bytes'] / 1e3:.0f} kB, its frame {c['frame_bytes'] / 1e6:.2f} MB",
            f"  tracker, PyTorch BlazeFace every 3rd frame, from decoded pictures: crops on "
            f"the host (DFM_CROP=host) {c['tracker_frames_per_s']['host']:.0f} frames/s; each "
            f"picture sent to the device, letterboxed and cropped there (DFM_CROP=device) "
            f"{c['tracker_frames_per_s']['device']:.0f} frames/s "
            f"({c['tracker_frames_per_s']['device'] / c['tracker_frames_per_s']['host']:.2f}x)",
        ]
        lines.append("  face rings of one stream after 150 frames (tracemalloc):")
        for r in stages["ring_memory"]:
            lines.append(
                f"    {r['layout']:<26} {r['faces']} face(s) {r['mb_per_stream']:7.2f} MB/stream"
            )
    front = result.get("frontend")
    if front:
        lines += [
            f"frame pool on {front['device']}: {front['streams']} looped 480p one-face streams, "
            f"{front['model']}, no shedding; decoders of {front['decode_threads']} thread(s) "
            "unless the row says",
            "  DFM_FRAME_WORKERS, decoding      | frames/s taken | dropped/s | p99 ms"
            " | front-end ms/frame | process CPU ms/frame | threads",
        ]
        for r in front["rows"]:
            lines.append(
                f"  {r['way']:<32} | {r['frames_per_s']:>14.1f}"
                f" | {r['dropped'] / r['seconds']:>9.1f}"
                f" | {r['latency_ms']['p99']:>6.0f} | {r['frontend_ms_per_frame']:>18.2f}"
                f" | {r['process_ms_per_frame']:>20.2f} | {r['threads']:>7}"
            )
    ev = result.get("evidence")
    if ev:
        lines.append(
            f"evidence on {ev['device']}: {ev['streams']} streams of 480p, window {ev['window']} "
            f"hop {ev['hop']}; random weights (records as served are few)"
        )
        for r in ev["rows"]:
            lat = r["latency_ms"]
            way = (
                "off"
                if r["evidence"] == "off"
                else f"every window, {r['heatmaps_per_min']}/min"
                if r["every_window"]
                else "on, as served"
            )
            lines.append(
                f"  evidence {way:<24} latency p50 {lat['p50']:7.1f} ms  p99 "
                f"{lat['p99']:7.1f} ms  {r['verdicts_per_s']:5.2f} verdicts/s  "
                f"{r['evidence_records_per_s']:5.2f} records/s "
                f"({r['evidence_skipped_per_s']:.2f}/s skipped)"
            )
        lines.append(
            f"  one heat map (Grad-CAM of 8 crops): {ev['heatmap_s'] * 1000:.0f} ms, "
            f"{ev['heatmaps_per_min']:.0f} a minute on an otherwise idle engine"
        )
    dec = result.get("decode")
    if dec:
        lines += [
            f"decode on {dec['device']}: {dec['keys']} Kafka keys of the {dec['clip']}, "
            "messages pushed as the ingest does (no broker), faces at a fixed box",
            "  content     decoding          | frames/s | process CPU ms/frame",
        ]
        for r in dec["rows"]:
            way = f"pool of {r['decode_workers']}" if r["decode_workers"] else "in each reader"
            lines.append(
                f"  {r['kind']:<11} {way:<17} | {r['frames_per_s']:>8.1f}"
                f" | {r['process_ms_per_frame']:>20.2f}"
            )
        lines.append(
            "  -> pool / readers: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in dec["ratio_pool_over_readers"].items())
        )
    nv = result.get("nvdec")
    if nv:
        lines += [
            f"NVDEC on {nv['device']}: decode alone, the {nv['clip']} looped "
            f"{nv['seconds']:.1f} s; NVDEC {nv['nvdec']}",
            "  decoder  sessions |  frames/s | process CPU ms/frame",
        ]
        for r in nv["rows"]:
            lines.append(
                f"  {r['decoder']:<8} {r['sessions']:>8} | {r['frames_per_s']:>9.1f}"
                f" | {r['process_ms_per_frame']:>19.3f}"
            )
        lines.append(
            "  (pyav: FFmpeg, frames left as YUV; nvdec: PyNvVideoCodec's own demuxer, frames "
            "left as NV12; service: DFM_DECODE=nvdec's path, PyAV demuxing, RGB on the GPU)"
        )
        agree = nv.get("agreement")
        if agree:
            lines.append(
                f"  the service's NVDEC pictures against FFmpeg's RGB: {agree['frames_nvdec']} "
                f"and {agree['frames_ffmpeg']} frames, {agree['same_size']} of the same size, "
                f"at most {agree['max_level_diff']} levels apart (mean "
                f"{agree['mean_level_diff']:.2f})"
            )
    sink = result.get("sink")
    if sink:
        lines.append(f"sink to Kafka at {sink['bootstrap']}: verdicts of {sink['streams']} streams")
        for r in sink["rows"]:
            lines.append(
                f"  in flight {r['in_flight']:>4}: {r['verdicts']:>7} verdicts in "
                f"{r['seconds']:6.2f} s = {r['verdicts_per_s']:>9.0f} verdicts/s"
            )
        lines.append(
            f"  -> pipelined / one at a time: {sink['ratio_pipelined_over_one_at_a_time']:.1f}x"
        )
    return "\n".join(lines)
