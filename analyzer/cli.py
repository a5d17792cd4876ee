"""The offline commands of the model side: ``synth``, ``testfakes``, ``preprocess``,
``train``, ``calibrate``, ``evaluate``.

``streamer/cli.py`` (the ``deepfake-monitor`` command) adds them beside its own
(``scan``, ``serve``, ``explain``, ``bench``, ``schema``). Nothing here imports ``streamer``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from analyzer.errors import AnalyzerError


class UsageError(AnalyzerError):
    """Bad command-line input."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1, such as 0.5")
    return value


def imagenet_choice(text: str) -> Path | str:
    if text in ("auto", "none"):
        return text
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither auto, none nor an existing file of torchvision weights"
        )
    return path


def fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not three fractions adding up to 1, such as 0.7,0.2,0.1"
        )
    return parts[0], parts[1], parts[2]


def add_commands(sub: Any) -> None:
    """Add the offline commands to the ``deepfake-monitor`` subparsers ``sub``."""
    synth = sub.add_parser("synth", help="write labelled synthetic REAL/FAKE face videos")
    synth.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    synth.add_argument("--videos", type=positive_int, default=10, help="clips to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=positive_int, default=240, help="frames per clip")
    synth.add_argument("--fps", type=float, default=30.0)
    synth.add_argument("--size", default="480x360", help="WIDTHxHEIGHT, both even")
    synth.add_argument(
        "--identities",
        default=None,
        help="comma-separated photos (names in analyzer/photos.py, or astronaut); default all",
    )
    synth.add_argument("--workers", type=positive_int, default=1, help="parallel processes")
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

    tf = sub.add_parser(
        "testfakes",
        help="write REAL/FAKE clips of held-out photos by other means than synth (testing only)",
    )
    tf.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    tf.add_argument("--videos", type=positive_int, default=24, help="clips to write")
    tf.add_argument("--seed", type=int, default=0)
    tf.add_argument("--frames", type=positive_int, default=180, help="frames per clip")
    tf.add_argument("--workers", type=positive_int, default=1, help="parallel processes")
    tf.add_argument("--photos", type=Path, default=None, help="folder of the face photos")

    pre = sub.add_parser("preprocess", help="labelled videos -> 112x112 face clips + manifest")
    pre.add_argument(
        "source", type=Path, metavar="SRC", help="DFDC / FF++ / real+fake folder / CSV"
    )
    pre.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    pre.add_argument("--frames", type=positive_int, default=150, help="face frames per clip")
    pre.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) - 1))

    tr = sub.add_parser("train", help="train the ResNeXt50-LSTM on a preprocess manifest")
    tr.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest.csv of preprocess")
    tr.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="checkpoints and history")
    tr.add_argument("--epochs", type=positive_int, default=20)
    tr.add_argument("--batch", type=positive_int, default=4)
    tr.add_argument("--lr", type=float, default=1e-5)
    tr.add_argument("--weight-decay", type=float, default=1e-5)
    tr.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="constant (the study's), or cosine decay to 0 over --epochs",
    )
    tr.add_argument("--frames", type=positive_int, default=150, help="frames per window")
    tr.add_argument("--patience", type=positive_int, default=5, help="early stopping")
    tr.add_argument("--seed", type=int, default=0, help="split and training seed")
    tr.add_argument(
        "--split", type=fractions, default=(0.7, 0.2, 0.1), help="train,val,test fractions"
    )
    tr.add_argument(
        "--val-manifest",
        type=Path,
        default=None,
        help="validate on this manifest's clips and train on all of MANIFEST (no split)",
    )
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument(
        "--imagenet", type=imagenet_choice, default="auto", metavar="auto|none|FILE",
        help="the backbone's first weights: auto (torchvision's ImageNet weights, from the "
        "torch cache or downloaded into it), none (random, on purpose) or torchvision's .pth",
    )  # fmt: skip
    tr.add_argument(
        "--backbone",
        choices=["resnext50_32x4d", "mobilenet_v3_small"],
        default="resnext50_32x4d",
        help="per-frame CNN (the study's ResNeXt50 or the compact demo's MobileNetV3-Small)",
    )
    tr.add_argument("--lstm-hidden", type=positive_int, default=None, help="LSTM units")
    tr.add_argument(
        "--pairs",
        action="store_true",
        help="batch each REAL clip with the FAKEs of the same footage (manifest column pair)",
    )
    tr.add_argument(
        "--self-blend",
        type=share,
        default=0.0,
        help="share of REAL training clips turned FAKE on the fly by self-blending (0-1)",
    )
    tr.add_argument(
        "--soften",
        type=share,
        default=0.0,
        help="share of training clips, REAL and FAKE alike, blurred as a whole (0-1)",
    )
    tr.add_argument(
        "--blend",
        choices=["fixed", "varied"],
        default="fixed",
        help="how --self-blend makes its twins: of one kind (a soft copy stepped in colour) "
        "or varied (colour, detail, noise, mask shape and blend ratio drawn at random)",
    )
    tr.add_argument(
        "--recompress",
        type=share,
        default=0.0,
        help="share of training clips, REAL and FAKE alike, JPEG-compressed again (0-1)",
    )
    tr.add_argument(
        "--calibration-window", type=positive_int, default=150,
        help="frames per window the temperature is fitted at on the validation clips when "
        "training ends (the service's window; shorter clips: their length)",
    )  # fmt: skip
    tr.add_argument("--model-version", default="trained", help="version written in verdicts")
    tr.add_argument("--training-data", default=None, help="what the data was, for the metadata")
    tr.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))
    start = tr.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    start.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from CHECKPOINT's weights with a fresh optimizer, its history "
        "carried on (epochs count on from its last)",
    )

    ca = sub.add_parser("calibrate", help="fit a checkpoint's temperature on labelled clips")
    ca.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest.csv of preprocess")
    ca.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    _add_split_options(ca, default="val")
    ca.add_argument(
        "--window", type=positive_int, default=150,
        help="frames per window, from the start of each clip (default 150, the service's)",
    )  # fmt: skip
    ca.add_argument(
        "--out", type=Path, default=None,
        help="write here (default: over CHECKPOINT; a reference state_dict: NAME.calibrated.pt)",
    )  # fmt: skip
    ca.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))

    ev = sub.add_parser("evaluate", help="test-split report of a checkpoint: metrics and plots")
    ev.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest.csv of preprocess")
    ev.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    ev.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="report folder")
    _add_split_options(ev, default="test")
    ev.add_argument("--threshold", type=float, default=0.5)
    ev.add_argument(
        "--target-fpr", type=float, default=0.01,
        help="false-positive rate of the second operating point reported (default 1%%)",
    )  # fmt: skip
    ev.add_argument(
        "--window", type=positive_int, default=None,
        help="frames scored from the start of each clip (default: the window the checkpoint "
        "was calibrated at, else its training window)",
    )  # fmt: skip
    ev.add_argument(
        "--no-record", action="store_true",
        help="leave the checkpoint as it is (default: its operating points are recorded in "
        "it, and the service serves the target-FPR threshold)",
    )  # fmt: skip
    ev.add_argument("--device", default=os.environ.get("DFM_DEVICE", "auto"))


def _add_split_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help="the split seed used for training")
    parser.add_argument("--split", choices=["train", "val", "test", "all"], default=default)
    parser.add_argument(
        "--fractions", type=fractions, default=(0.7, 0.2, 0.1), help="as train's --split"
    )


def _split_items(args: argparse.Namespace) -> list[Any]:
    """The clips of ``args.manifest`` in ``args.split``, as training split them."""
    from analyzer.datasets import read_csv, split

    items = read_csv(args.manifest)
    if args.split != "all":
        items = split(items, seed=args.seed, balance=False, fractions=args.fractions)[args.split]
    if not items:
        raise UsageError(f"the {args.split} split of {args.manifest} is empty; try --split all")
    return items


def _cmd_synth(args: argparse.Namespace) -> int:
    from analyzer.scene import PHOTO_NAMES
    from analyzer.synthetic import synthesize

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {args.size!r} must look like 480x360") from None
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise UsageError(f"--size {args.size} must be even numbers of at least 64")
    names = args.identities.split(",") if args.identities else PHOTO_NAMES
    with progress(total=args.videos, desc="synth", unit="video") as tick:
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


def _cmd_testfakes(args: argparse.Namespace) -> int:
    from analyzer.testfakes import HELD_OUT, generate

    with progress(total=args.videos, desc="testfakes", unit="video") as tick:
        rows = generate(
            args.out_dir,
            videos=args.videos,
            seed=args.seed,
            frames=args.frames,
            workers=args.workers,
            photos_dir=args.photos,
            progress=tick,
        )
    fakes = sum(r["label"] == "FAKE" for r in rows)
    print(
        f"wrote {len(rows)} clips ({len(rows) - fakes} REAL, {fakes} FAKE) of the held-out "
        f"photos {', '.join(HELD_OUT)} and labels.csv to {args.out_dir}; for testing only"
    )
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from analyzer.clips import preprocess
    from analyzer.datasets import read_any

    items = read_any(args.source)
    with progress(total=len(items), desc="preprocess", unit="video") as tick:
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
        blend=args.blend,
        recompress=args.recompress,
        calibration_window=args.calibration_window,
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
    with progress(total=steps, desc="train", unit="clip") as tick:

        def on_batch(n: int, loss: float, acc: float) -> None:
            if tick is not None:
                tick(n, loss=f"{loss:.4f}", acc=f"{acc:.3f}")

        history = train(
            parts["train"],
            parts["val"],
            args.out_dir,
            config,
            resume=args.resume,
            init=args.init,
            progress=report,
            on_batch=on_batch,
        )
    print(f"{len(history)} epochs; checkpoints in {args.out_dir} (best.pt, last.pt)")
    from analyzer.model import load_checkpoint

    calibration = load_checkpoint(args.out_dir / "last.pt").meta.calibration
    if calibration is not None:
        print(_calibration_line(calibration))
    return 0


def _calibration_line(c: Any) -> str:
    return (
        f"calibrated on {c.videos} {c.data or 'clips'} at {c.window_frames}-frame windows: "
        f"temperature {c.temperature:.3f}, ECE {c.ece_before:.4f} -> {c.ece_after:.4f}, "
        f"log loss {c.log_loss_before:.4f} -> {c.log_loss_after:.4f}"
    )


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from analyzer.calibrate import calibrate_checkpoint
    from analyzer.train import read_clip

    items = _split_items(args)
    with progress(total=len(items), desc="read", unit="clip") as tick:
        clips = []
        for item in items:
            clips.append(read_clip(item.path))
            if tick is not None:
                tick(1)
    with progress(total=len(items), desc="calibrate", unit="clip") as tick:
        out, calibration = calibrate_checkpoint(
            args.checkpoint,
            clips,
            [i.label for i in items],
            window=args.window,
            data=f"{args.split} clips of {Path(args.manifest).name}",
            out=args.out,
            device=args.device,
            progress=tick,
        )
    print(_calibration_line(calibration) + f"; written to {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from analyzer.evaluate import evaluate_checkpoint

    items = _split_items(args)
    record = None
    if not args.no_record and args.split != "train":  # thresholds fitted on training clips lie
        record = f"{args.split} clips of {Path(args.manifest).name}"
    result = evaluate_checkpoint(
        args.checkpoint,
        items,
        args.out_dir,
        device=args.device,
        threshold=args.threshold,
        window=args.window,
        target_fpr=args.target_fpr,
        record=record,
    )
    print(
        f"{result['videos']} videos: accuracy {result['accuracy']:.4f}, "
        f"AUC {result['roc_auc']:.4f}, EER {result['eer']:.4f}, "
        f"log loss {result['log_loss']:.4f}, Brier {result['brier']:.4f}, "
        f"ECE {result['ece']:.4f} ({result['window_frames']}-frame windows); "
        f"report in {args.out_dir}"
    )
    points = result.get("operating_points")
    if points is not None:
        target, eer = points["target_fpr"], points["eer"]
        if result["recorded"]:
            where = f"recorded in {args.checkpoint}, served when DFM_THRESHOLD is unset"
        else:
            why = (
                "--no-record" if args.no_record
                else "measured on training clips" if args.split == "train"
                else "a reference state_dict: run calibrate first"
            )  # fmt: skip
            where = f"not recorded in the checkpoint ({why})"
        print(
            f"threshold {target['threshold']:.4f} keeps the false-positive rate at "
            f"{target['fpr']:.4f} (target {args.target_fpr:g}, TPR {target['tpr']:.4f}); "
            f"EER threshold {eer['threshold']:.4f}; {where}"
        )
    return 0


@contextlib.contextmanager
def progress(**kwargs: Any) -> Iterator[Callable[..., object] | None]:
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "synth": _cmd_synth,
    "testfakes": _cmd_testfakes,
    "preprocess": _cmd_preprocess,
    "train": _cmd_train,
    "calibrate": _cmd_calibrate,
    "evaluate": _cmd_evaluate,
}
