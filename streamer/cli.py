"""The ``deepfake-monitor`` command.

Errors the user can fix print one line, ``deepfake-monitor: error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from analyzer.errors import AnalyzerError, DataError
from streamer.errors import StreamerError
from streamer.nativelog import route_native_stderr

log = logging.getLogger("deepfake-monitor")

PROG = "deepfake-monitor"
SCAN_FETCH_MAX_BYTES = 2 << 30  # an http(s) video scan downloads first, up to this


class UsageError(StreamerError):
    """Bad command-line input."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1, such as 0.5")
    return value


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not three fractions adding up to 1, such as 0.7,0.2,0.1"
        )
    return parts[0], parts[1], parts[2]


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
    scan.add_argument("--window", type=_positive_int, default=150, help="frames per window")
    scan.add_argument("--hop", type=_positive_int, default=30, help="frames between windows")
    scan.add_argument("--fps", type=float, default=30.0, help="model frame rate")
    scan.add_argument("--threshold", type=float, default=0.5, help="P(FAKE) for a FAKE label")
    scan.add_argument("--max-faces", type=_positive_int, default=4, help="faces tracked at once")
    scan.add_argument("--detect-every", type=_positive_int, default=3, help="frames per detection")
    scan.add_argument("--batch", type=_positive_int, default=32, help="backbone batch size")
    scan.add_argument(
        "--device", default=os.environ.get("DFM_DEVICE", "auto"), help="auto|cpu|cuda"
    )
    scan.add_argument("--timeout", type=float, default=10.0, help="network timeout, seconds")
    scan.add_argument("--stream-id", default=None, help="stream id in the verdicts")

    synth = sub.add_parser("synth", help="write labelled synthetic REAL/FAKE face videos")
    synth.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    synth.add_argument("--videos", type=_positive_int, default=10, help="clips to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=_positive_int, default=240, help="frames per clip")
    synth.add_argument("--fps", type=float, default=30.0)
    synth.add_argument("--size", default="480x360", help="WIDTHxHEIGHT, both even")
    synth.add_argument(
        "--identities",
        default=None,
        help="comma-separated photos (names in analyzer/photos.py, or astronaut); default all",
    )
    synth.add_argument("--workers", type=_positive_int, default=1, help="parallel processes")
    synth.add_argument(
        "--method",
        choices=["faceswap", "selfblend"],
        default="faceswap",
        help="how FAKE clips are made: another photo's face, or the face blended onto itself",
    )
    synth.add_argument(
        "--swap-all", action="store_true", help="FAKE clips swap every face, not one or two"
    )
    synth.add_argument("--photos", type=Path, default=None, help="folder of the face photos")

    pre = sub.add_parser("preprocess", help="labelled videos -> 112x112 face clips + manifest")
    pre.add_argument(
        "source", type=Path, metavar="SRC", help="DFDC / FF++ / real+fake folder / CSV"
    )
    pre.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    pre.add_argument("--frames", type=_positive_int, default=150, help="face frames per clip")
    pre.add_argument("--workers", type=_positive_int, default=max(1, (os.cpu_count() or 2) - 1))

    tr = sub.add_parser("train", help="train the ResNeXt50-LSTM on a preprocess manifest")
    tr.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest.csv of preprocess")
    tr.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="checkpoints and history")
    tr.add_argument("--epochs", type=_positive_int, default=20)
    tr.add_argument("--batch", type=_positive_int, default=4)
    tr.add_argument("--lr", type=float, default=1e-5)
    tr.add_argument("--weight-decay", type=float, default=1e-5)
    tr.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="constant (the study's), or cosine decay to 0 over --epochs",
    )
    tr.add_argument("--frames", type=_positive_int, default=150, help="frames per window")
    tr.add_argument("--patience", type=_positive_int, default=5, help="early stopping")
    tr.add_argument("--seed", type=int, default=0, help="split and training seed")
    tr.add_argument(
        "--split", type=_fractions, default=(0.7, 0.2, 0.1), help="train,val,test fractions"
    )
    tr.add_argument(
        "--val-manifest",
        type=Path,
        default=None,
        help="validate on this manifest's clips and train on all of MANIFEST (no split)",
    )
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument(
        "--imagenet", type=Path, default=None, help="torchvision ImageNet weights of the backbone"
    )
    tr.add_argument(
        "--backbone",
        choices=["resnext50_32x4d", "mobilenet_v3_small"],
        default="resnext50_32x4d",
        help="per-frame CNN (the study's ResNeXt50 or the compact demo's MobileNetV3-Small)",
    )
    tr.add_argument("--lstm-hidden", type=_positive_int, default=None, help="LSTM units")
    tr.add_argument(
        "--pairs",
        action="store_true",
        help="batch each REAL clip with the FAKEs of the same footage (manifest column pair)",
    )
    tr.add_argument(
        "--self-blend",
        type=_share,
        default=0.0,
        help="share of REAL training clips turned FAKE on the fly by self-blending (0-1)",
    )
    tr.add_argument(
        "--soften",
        type=_share,
        default=0.0,
        help="share of training clips, REAL and FAKE alike, blurred as a whole (0-1)",
    )
    tr.add_argument("--model-version", default="trained", help="version written in verdicts")
    tr.add_argument("--training-data", default=None, help="what the data was, for the metadata")
    tr.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))
    tr.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")

    ev = sub.add_parser("evaluate", help="test-split report of a checkpoint: metrics and plots")
    ev.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest.csv of preprocess")
    ev.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    ev.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="report folder")
    ev.add_argument("--seed", type=int, default=0, help="the split seed used for training")
    ev.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    ev.add_argument(
        "--fractions", type=_fractions, default=(0.7, 0.2, 0.1), help="as train's --split"
    )
    ev.add_argument("--threshold", type=float, default=0.5)
    ev.add_argument(
        "--window", type=_positive_int, default=None,
        help="frames scored from the start of each clip (default: the checkpoint's window)",
    )  # fmt: skip
    ev.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))

    ex = sub.add_parser("explain", help="Grad-CAM heat maps of a video's face windows (PNG)")
    ex.add_argument("source", metavar="VIDEO")
    ex.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (.pt)")
    ex.add_argument("--random-weights", action="store_true", help="untrained weights (smoke test)")
    ex.add_argument("--out", type=Path, default=None, help="folder (default: explain-<video>)")
    ex.add_argument("--windows", type=_positive_int, default=1, help="windows to explain")
    ex.add_argument(
        "--window", type=_positive_int, default=None, help="frames per window (checkpoint's)"
    )
    ex.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))

    serve = sub.add_parser("serve", help="run the live service (settings: DFM_* env vars)")
    serve.add_argument("--config", type=Path, default=None, help="YAML file of settings")

    bench = sub.add_parser("bench", help="measure engine, naive baseline and pipeline")
    bench.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results")
    bench.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))
    bench.add_argument("--parts", default="engine,baseline,pipeline")
    bench.add_argument("--quick", action="store_true", help="a few seconds: a smoke test")
    bench.add_argument("--batches", default=None, help="backbone batch sizes, e.g. 1,8,32,64")
    bench.add_argument("--hops", default="15,30,75", help="hops for the baseline")
    bench.add_argument("--seconds", type=float, default=15.0, help="pipeline run length")
    bench.add_argument("--warmup", type=float, default=5.0, help="pipeline warm-up")
    bench.add_argument("--p99-ms", type=float, default=2000.0, help="pipeline latency bound")
    bench.add_argument("--max-streams", type=_positive_int, default=64)
    bench.add_argument(
        "--capacity",
        type=_positive_int,
        default=None,
        help="overload part: streams the node sustains (default: measured first)",
    )
    bench.add_argument("--kafka", default=None, help="sink part: the broker to send to (host:port)")
    bench.add_argument(
        "--verdicts", type=_positive_int, default=50_000, help="sink part: verdicts to send"
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

    if args.hop > args.window:
        raise UsageError(
            f"--hop {args.hop} is larger than --window {args.window}; windows would skip frames"
        )
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold} is outside 0..1")
    if args.fps <= 0:
        raise UsageError(f"--fps {args.fps} must be above 0")
    stream_id = args.stream_id or stream_id_for(args.source)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", stream_id):
        raise UsageError(f"--stream-id {stream_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    options = ScanOptions(
        window=args.window,
        hop=args.hop,
        fps=args.fps,
        threshold=args.threshold,
        max_faces=args.max_faces,
        detect_every=args.detect_every,
        batch_size=args.batch,
        timeout_s=args.timeout,
    )
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
    from analyzer.faces import BlazeFaceDetector
    from streamer.scan import scan

    bar = _progress(total=total, desc="scan", unit="frame")
    with BlazeFaceDetector() as detector, bar as tick:
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


def _cmd_synth(args: argparse.Namespace) -> int:
    from analyzer.synthetic import PHOTO_NAMES, synthesize

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {args.size!r} must look like 480x360") from None
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise UsageError(f"--size {args.size} must be even numbers of at least 64")
    names = args.identities.split(",") if args.identities else PHOTO_NAMES
    with _progress(total=args.videos, desc="synth", unit="video") as tick:
        specs = synthesize(
            args.out_dir,
            videos=args.videos,
            seed=args.seed,
            frames=args.frames,
            fps=args.fps,
            size=(width, height),
            identities=[n.strip() for n in names if n.strip()],
            photos_dir=args.photos,
            swap_all=args.swap_all,
            workers=args.workers,
            method=args.method,
            progress=tick,
        )
    fakes = sum(s.label == "FAKE" for s in specs)
    real = len(specs) - fakes
    print(f"wrote {len(specs)} clips ({real} REAL, {fakes} FAKE) and labels.csv to {args.out_dir}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from analyzer.bench import baseline_bench, engine_bench
    from streamer.bench import SIZES, format_report, overload_bench, pipeline_bench, sink_bench

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"engine", "baseline", "pipeline", "overload", "sink"}
    if unknown:
        raise UsageError(
            f"--parts {','.join(sorted(unknown))}: "
            "choose engine, baseline, pipeline, overload, sink"
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
        configs = [
            (c.split(":")[0], int(c.split(":")[1]))
            for c in (args.configs or ("480p:1" if args.quick else "480p:1,720p:1,480p:4")).split(
                ","
            )
        ]
    except (ValueError, IndexError):
        raise UsageError("--batches, --hops and --configs take comma-separated values") from None
    bad = [s for s, f in configs if s not in SIZES or not 1 <= f <= 4]
    if bad:
        raise UsageError(f"--configs: sizes are {', '.join(SIZES)} and faces 1-4")
    result: dict[str, object] = {"torch": torch.__version__, "quick": args.quick}
    if "engine" in parts:
        result["engine"] = engine_bench(args.device, batches=batches, quick=args.quick)
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
    if "sink" in parts:
        verdicts = min(args.verdicts, 5_000) if args.quick else args.verdicts
        result["sink"] = sink_bench(args.kafka, verdicts=verdicts)
    print(format_report(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from analyzer.clips import preprocess
    from analyzer.datasets import read_any

    items = read_any(args.source)
    with _progress(total=len(items), desc="preprocess", unit="video") as tick:
        done, skipped = preprocess(
            items, args.out_dir, frames=args.frames, workers=args.workers, progress=tick
        )
    print(
        f"{len(done)} clips in {args.out_dir / 'manifest.csv'}; "
        f"{len(skipped)} videos skipped (reasons in {args.out_dir / 'skipped.csv'})"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from analyzer.datasets import read_csv, require_parts, split
    from analyzer.train import TrainConfig, train

    items = read_csv(args.manifest)
    if args.val_manifest is not None:
        parts = {"train": items, "val": read_csv(args.val_manifest)}
    else:
        parts = split(items, seed=args.seed, balance=False, fractions=args.split)
        require_parts(parts, ("train", "val"), args.split)
    config = TrainConfig(
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        frames=args.frames,
        patience=args.patience,
        seed=args.seed,
        augment=not args.no_augment,
        device=args.device,
        imagenet=args.imagenet,
        backbone=args.backbone,
        lstm_hidden=args.lstm_hidden,
        pairs=args.pairs,
        self_blend=args.self_blend,
        soften=args.soften,
        version=args.model_version,
        training_data=(args.training_data + "; " if args.training_data else "")
        + f"{Path(args.manifest).name} (train {len(parts['train'])}, val {len(parts['val'])})",
    )

    def report(row: dict[str, float]) -> None:
        print(
            f"epoch {row['epoch']:.0f}/{args.epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.3f}  |  val loss {row['val_loss']:.4f} "
            f"acc {row['val_accuracy']:.3f}",
            file=sys.stderr,
            flush=True,
        )

    steps = len(parts["train"]) * args.epochs
    with _progress(total=steps, desc="train", unit="clip") as tick:

        def on_batch(n: int, loss: float, acc: float) -> None:
            if tick is not None:
                tick(n, loss=f"{loss:.4f}", acc=f"{acc:.3f}")

        history = train(
            parts["train"],
            parts["val"],
            args.out_dir,
            config,
            resume=args.resume,
            progress=report,
            on_batch=on_batch,
        )
    print(f"{len(history)} epochs; checkpoints in {args.out_dir} (best.pt, last.pt)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from analyzer.datasets import read_csv, split
    from analyzer.evaluate import evaluate_checkpoint

    items = read_csv(args.manifest)
    if args.split != "all":
        items = split(items, seed=args.seed, balance=False, fractions=args.fractions)[args.split]
    if not items:
        raise UsageError(f"the {args.split} split of {args.manifest} is empty; try --split all")
    result = evaluate_checkpoint(
        args.checkpoint,
        items,
        args.out_dir,
        device=args.device,
        threshold=args.threshold,
        window=args.window,
    )
    print(
        f"{result['videos']} videos: accuracy {result['accuracy']:.4f}, "
        f"AUC {result['roc_auc']:.4f}, EER {result['eer']:.4f}, "
        f"log loss {result['log_loss']:.4f} ({result['window_frames']}-frame windows); "
        f"report in {args.out_dir}"
    )
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


@contextlib.contextmanager
def _progress(**kwargs: Any) -> Iterator[Callable[..., object] | None]:
    """Yields ``tick(n, **postfix)`` for a bar on a terminal's stderr, else None."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs) as bar:

        def tick(n: int = 1, **postfix: str) -> None:
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            bar.update(n)

        yield tick


COMMANDS = {
    "scan": _cmd_scan,
    "synth": _cmd_synth,
    "preprocess": _cmd_preprocess,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
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
