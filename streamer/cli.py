"""The ``deepfake-monitor`` command.

Errors the user can fix print one line, ``deepfake-monitor: error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analyzer.cli import COMMANDS as OFFLINE_COMMANDS
from analyzer.cli import UsageError, positive_int
from analyzer.cli import add_commands as add_offline_commands
from analyzer.cli import progress as _progress
from analyzer.errors import AnalyzerError, DataError
from streamer.config import WindowSchedule, first_error
from streamer.errors import StreamerError
from streamer.nativelog import route_native_stderr

log = logging.getLogger("deepfake-monitor")

PROG = "deepfake-monitor"
SCAN_FETCH_MAX_BYTES = 2 << 30  # an http(s) video scan downloads first, up to this
# scan's options for the window schedule, named as the settings (DFM_WINDOW_FRAMES, ...)
SCHEDULE_OPTIONS = {
    "window_frames": "--window",
    "hop_frames": "--hop",
    "fps": "--fps",
    "threshold": "--threshold",
    "max_faces": "--max-faces",
    "detect_every": "--detect-every",
}


# Every benchmark is a part of `deepfake-monitor bench`: the model side's measurements are
# in analyzer/bench.py, the service's in streamer/bench.py.
BENCH_PARTS = (
    "engine", "baseline", "pipeline", "overload", "frontend", "decode", "nvdec", "stages",
    "evidence", "sink",
)  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Live deepfake detection for video.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = sub.add_parser("scan", help="score a video file or URL, one JSON verdict per window")
    scan.add_argument("source", metavar="VIDEO|URL")
    scan.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (.pt)")
    scan.add_argument(
        "--random-weights",
        action="store_true",
        help="untrained weights, for smoke tests and benchmarks (verdicts say random-init)",
    )
    for field, flag in SCHEDULE_OPTIONS.items():  # bounds and defaults: WindowSchedule
        info = WindowSchedule.model_fields[field]
        kind = int if info.annotation is int else float
        help_text = info.description or ""
        if info.default is not None:  # else the description says what unset means
            help_text += f" (default {info.default})"
        metavar = flag[2:].upper().replace("-", "_")
        scan.add_argument(
            flag, dest=field, metavar=metavar, type=kind, default=info.default, help=help_text
        )
    scan.add_argument("--batch", type=positive_int, default=32, help="backbone batch size")
    scan.add_argument(
        "--device", default=os.environ.get("DFM_DEVICE", "auto"), help="auto|cpu|cuda"
    )
    scan.add_argument(
        "--detector",
        choices=("mediapipe", "torch"),
        default=os.environ.get("DFM_DETECTOR") or None,
        help="face detector: MediaPipe's runtime or the same BlazeFace in PyTorch "
        "(default: torch on CUDA, mediapipe on the CPU)",
    )
    scan.add_argument("--timeout", type=float, default=10.0, help="network timeout, seconds")
    scan.add_argument("--stream-id", default=None, help="stream id in the verdicts")

    add_offline_commands(sub)

    ex = sub.add_parser("explain", help="Grad-CAM heat maps of a video's face windows (PNG)")
    ex.add_argument("source", metavar="VIDEO")
    ex.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (.pt)")
    ex.add_argument("--random-weights", action="store_true", help="untrained weights (smoke test)")
    ex.add_argument("--out", type=Path, default=None, help="folder (default: explain-<video>)")
    ex.add_argument("--windows", type=positive_int, default=1, help="windows to explain")
    ex.add_argument(
        "--window", type=positive_int, default=None, help="frames per window (checkpoint's)"
    )
    ex.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))

    serve = sub.add_parser("serve", help="run the live service (settings: DFM_* env vars)")
    serve.add_argument("--config", type=Path, default=None, help="YAML file of settings")

    bench = sub.add_parser("bench", help="measure engine, naive baseline and pipeline")
    bench.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results")
    bench.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))
    bench.add_argument(
        "--parts",
        default="engine,baseline,pipeline",
        help=f"comma-separated, from {','.join(BENCH_PARTS)}",
    )
    bench.add_argument("--quick", action="store_true", help="a few seconds: a smoke test")
    bench.add_argument("--batches", default=None, help="backbone batch sizes, e.g. 1,8,32,64")
    bench.add_argument(
        "--compile",
        default="",
        metavar="BATCHES",
        help="engine part: the backbone at these batch sizes also under every DFM_COMPILE "
        "mode that can run here (inductor; on CUDA CUDA graphs, and TensorRT where "
        "torch-tensorrt is installed), side by side with eager, e.g. 32,256",
    )
    bench.add_argument("--hops", default="15,30,75", help="hops for the baseline")
    bench.add_argument("--seconds", type=float, default=15.0, help="pipeline run length")
    bench.add_argument("--warmup", type=float, default=5.0, help="pipeline warm-up")
    bench.add_argument("--p99-ms", type=float, default=2000.0, help="pipeline latency bound")
    bench.add_argument("--max-streams", type=positive_int, default=64)
    bench.add_argument(
        "--min-streams", type=positive_int, default=1, help="pipeline part: the first N tried"
    )
    bench.add_argument(
        "--replay",
        action="store_true",
        help="pipeline part: streams replay the clip's packets, demuxed once, instead of each "
        "looping the file (the load generator then costs the node nothing to speak of)",
    )
    bench.add_argument(
        "--streams",
        type=positive_int,
        default=8,
        help="frontend and decode parts: streams (Kafka keys) run at once",
    )
    bench.add_argument(
        "--capacity",
        type=positive_int,
        default=None,
        help="overload part: streams the node sustains (default: measured first)",
    )
    bench.add_argument("--kafka", default=None, help="sink part: the broker to send to (host:port)")
    bench.add_argument(
        "--verdicts", type=positive_int, default=50_000, help="sink part: verdicts to send"
    )
    bench.add_argument(
        "--configs", default=None, help="pipeline SIZE:FACES list, e.g. 480p:1,720p:1,480p:4"
    )
    bench.add_argument("--work", type=Path, default=None, help="folder for the synthetic clips")

    sub.add_parser("schema", help="print the verdict v1 JSON Schema")
    return parser


def _configure_logging(verbose: int) -> None:
    level_name = os.environ.get("DFM_LOG_LEVEL", "").upper()
    level = getattr(logging, level_name, None) if level_name else None
    if not isinstance(level, int):
        level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _cmd_scan(args: argparse.Namespace) -> int:
    # The model's modules (torch) load only once the input has given its first frame:
    # a bad file, URL or option is reported within a second.
    from streamer.config import checkpoint_path
    from streamer.scan import ScanOptions, fetch_http, open_frames, stream_id_for
    from streamer.sources.decode import media_seconds
    from streamer.urls import NetPolicy, parse_source_url

    values = {field: getattr(args, field) for field in SCHEDULE_OPTIONS}
    try:
        schedule = WindowSchedule(**values)
    except ValidationError as exc:
        raise UsageError(
            first_error(exc, lambda loc: f"{SCHEDULE_OPTIONS[str(loc[0])]} {values[str(loc[0])]}")
        ) from None
    stream_id = args.stream_id or stream_id_for(args.source)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", stream_id):
        raise UsageError(f"--stream-id {stream_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    options = ScanOptions.from_schedule(schedule, batch_size=args.batch, timeout_s=args.timeout)
    policy = NetPolicy()
    source = parse_source_url(args.source, kind="scan", policy=policy)
    with tempfile.TemporaryDirectory(prefix="dfm-scan-") as tmp:
        if source.scheme in ("http", "https"):
            source = fetch_http(
                source, Path(tmp), timeout_s=args.timeout, max_bytes=SCAN_FETCH_MAX_BYTES,
                policy=policy,
            )  # fmt: skip
        frames = open_frames(source, options)
        from analyzer.engine import Engine, pick_device
        from analyzer.model import load_checkpoint, random_model

        device = pick_device(args.device, "--device")
        checkpoint = checkpoint_path(args.checkpoint, random_weights=args.random_weights)
        loaded = random_model() if checkpoint is None else load_checkpoint(checkpoint)
        engine = Engine(loaded, device)
        seconds = media_seconds(source)
        total = None if seconds is None else max(1, round(seconds * options.fps))
        return _scan_frames(args, frames, engine, options, stream_id, total)


def _scan_frames(
    args: argparse.Namespace,
    frames: Any,
    engine: Any,
    options: Any,
    stream_id: str,
    total: int | None = None,
) -> int:
    from analyzer.faces import open_detector
    from streamer.scan import scan

    bar = _progress(total=total, desc="scan", unit="frame")
    with open_detector(args.detector, str(engine.device)) as detector, bar as tick:
        summary = scan(
            frames,
            engine,
            detector,
            lambda v: print(v.to_json(), flush=True),
            options,
            stream_id=stream_id,
            on_frame=(lambda: tick(1)) if tick else None,
        )
    log.info(
        "%s: %d frames, %d face crops, %d verdicts",
        stream_id,
        summary.frames,
        summary.crops,
        summary.verdicts,
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from streamer.config import load_settings

    settings = load_settings(args.config)  # before torch loads: a bad setting is said at once
    from streamer.service import serve

    if args.verbose == 0 and not os.environ.get("DFM_LOG_LEVEL"):
        logging.getLogger().setLevel(settings.log_level)
    else:
        logging.getLogger().setLevel(os.environ.get("DFM_LOG_LEVEL", "DEBUG").upper())
    return asyncio.run(serve(settings))


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from analyzer.bench import baseline_bench, engine_bench
    from streamer.bench import (
        SIZES,
        decode_bench,
        evidence_bench,
        format_report,
        frontend_bench,
        nvdec_bench,
        overload_bench,
        pipeline_bench,
        sink_bench,
        stage_bench,
    )

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - set(BENCH_PARTS)
    if unknown:
        raise UsageError(
            f"--parts {','.join(sorted(unknown))}: choose from {', '.join(BENCH_PARTS)}"
        )
    if "sink" in parts and not args.kafka:
        raise UsageError("--parts sink sends to a real broker: name it with --kafka HOST:PORT")
    gpu = args.device != "cpu" and torch.cuda.is_available()
    try:
        if args.batches:
            batches = [int(b) for b in args.batches.split(",")]
        elif args.quick:
            batches = [1, 2]
        else:
            batches = [1, 8, 32, 64, 128, 256, 512] if gpu else [1, 8, 32, 64]
        hops = [int(h) for h in args.hops.split(",")] if not args.quick else [75]
        compiled = [int(b) for b in args.compile.split(",")] if args.compile else []
        configs = [
            (c.split(":")[0], int(c.split(":")[1]))
            for c in (args.configs or ("480p:1" if args.quick else "480p:1,720p:1,480p:4")).split(
                ","
            )
        ]
    except (ValueError, IndexError):
        raise UsageError(
            "--batches, --compile, --hops and --configs take comma-separated values"
        ) from None
    bad = [s for s, f in configs if s not in SIZES or not 1 <= f <= 4]
    if bad:
        raise UsageError(f"--configs: sizes are {', '.join(SIZES)} and faces 1-4")
    result: dict[str, object] = {"torch": torch.__version__, "quick": args.quick}
    if "engine" in parts:
        result["engine"] = engine_bench(
            args.device, batches=batches, quick=args.quick, compiled=compiled
        )
    if "baseline" in parts:
        streams = 1 if args.quick else 2
        result["baseline"] = baseline_bench(
            args.device, hops=hops, streams=streams, quick=args.quick
        )
    work = args.work or (
        Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor")) / "bench"
    )
    if "pipeline" in parts:
        result["pipeline"] = pipeline_bench(
            work,
            device=args.device,
            configs=configs,
            seconds=2.0 if args.quick else args.seconds,
            warmup=3.0 if args.quick else args.warmup,
            p99_bound_ms=args.p99_ms,
            max_streams=1 if args.quick else args.max_streams,
            window=30 if args.quick else 150,
            hop=15 if args.quick else 30,
            replay=args.replay,
            min_streams=1 if args.quick else args.min_streams,
        )
    if "overload" in parts:
        result["overload"] = overload_bench(
            work,
            device=args.device,
            capacity=args.capacity,
            factors=[3.0] if args.quick else [0.5, 1.0, 1.5, 2.0, 3.0],
            seconds=3.0 if args.quick else args.seconds,
            warmup=3.0 if args.quick else args.warmup,
            p99_bound_ms=args.p99_ms,
        )
    if "frontend" in parts:
        result["frontend"] = frontend_bench(
            work,
            device=args.device,
            streams=2 if args.quick else args.streams,
            seconds=1.5 if args.quick else args.seconds,
            warmup=1.0 if args.quick else args.warmup,
            decoders=not args.quick,
        )
    if "decode" in parts:
        result["decode"] = decode_bench(
            work,
            keys=2 if args.quick else args.streams,
            repeats=1 if args.quick else 2,
            frames=60 if args.quick else 300,
        )
    if "nvdec" in parts:
        result["nvdec"] = nvdec_bench(
            work,
            device=args.device,
            seconds=0.5 if args.quick else min(args.seconds, 10.0),
            sessions=[1] if args.quick else [1, 8, 32],
        )
    if "stages" in parts:
        result["stages"] = stage_bench(work, device=args.device, quick=args.quick)
    if "evidence" in parts:
        result["evidence"] = evidence_bench(work, device=args.device, quick=args.quick)
    if "sink" in parts:
        verdicts = min(args.verdicts, 5_000) if args.quick else args.verdicts
        result["sink"] = sink_bench(args.kafka, verdicts=verdicts)
    print(format_report(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from analyzer.engine import Engine
    from analyzer.explain import face_windows, grad_cam, write_explanation
    from analyzer.faces import BlazeFaceDetector
    from analyzer.model import load_checkpoint, random_model
    from streamer.config import checkpoint_path
    from streamer.scan import ScanOptions, open_frames, stream_id_for

    checkpoint = checkpoint_path(args.checkpoint, random_weights=args.random_weights)
    loaded = random_model() if checkpoint is None else load_checkpoint(checkpoint)
    window = args.window or loaded.meta.window_frames
    frames = open_frames(args.source, ScanOptions(fps=loaded.meta.fps))
    engine = Engine(loaded, args.device)
    out = args.out or Path(f"explain-{stream_id_for(args.source)}")
    title = Path(args.source).name
    written = 0
    with BlazeFaceDetector() as detector, _progress(total=args.windows, desc="explain") as tick:
        rgb = (f.rgb for f in frames)
        for i, crops in enumerate(face_windows(rgb, detector, window, args.windows)):
            exp = grad_cam(engine, crops)
            sheet = write_explanation(out, i, exp, title)
            print(f"window {i}: P(FAKE) {exp.score:.3f}  {sheet}")
            written += 1
            if tick:
                tick(1)
    if written == 0:
        raise DataError(
            f"{args.source} has fewer than {window} frames with a face; "
            "nothing to explain (try --window with a smaller number)"
        )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from streamer.verdict import json_schema_text

    sys.stdout.write(json_schema_text())
    return 0


COMMANDS = {
    "scan": _cmd_scan,
    **OFFLINE_COMMANDS,
    "explain": _cmd_explain,
    "serve": _cmd_serve,
    "bench": _cmd_bench,
    "schema": _cmd_schema,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    route_native_stderr()
    _configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except (AnalyzerError, StreamerError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Reader went away (e.g. `| head`): not an error of ours.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
