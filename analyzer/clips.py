"""The study's preprocessing: labelled videos -> 112x112 face clips of 150 frames.

For each video: decode, find the face in every frame (BlazeFace, one face: the most
confident, tracked), keep the first ``frames`` frames that show it, and write their
crops as a 30-fps H.264 clip without audio. ``manifest.csv`` lists the clips
(``clip,label,source,frames,group,method,pair``) and ``skipped.csv`` the videos left out with
the reason (unreadable, too few face frames). Work runs in parallel processes and is
resumable: a clip already written is kept and listed again.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from analyzer.datasets import Item
from analyzer.errors import first_line
from analyzer.faces import BlazeFaceDetector, main_face_crops
from analyzer.h264 import write_h264

MANIFEST = "manifest.csv"
SKIPPED = "skipped.csv"
MANIFEST_FIELDS = ["clip", "label", "source", "frames", "group", "method", "pair"]


@dataclass(frozen=True)
class Done:
    clip: str
    label: str
    source: str
    frames: int
    group: str
    method: str
    pair: str = ""


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


def clip_name(item: Item) -> str:
    """A stable, unique file name for the clip of ``item``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", item.path.stem)[:60]
    digest = hashlib.sha1(str(item.path).encode()).hexdigest()[:8]
    return f"{item.label.lower()}/{stem}-{digest}.mp4"


def _frames(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def preprocess_one(item: Item, out: Path, frames: int = 150, fps: float = 30.0) -> Done | Skipped:
    name = clip_name(item)
    target = out / name
    row = Done(name, item.label, str(item.path), frames, item.group, item.method, item.pair)
    if target.is_file():
        try:
            if _count_frames(target) == frames:
                return row  # done in an earlier run
        except av.error.FFmpegError:
            pass  # a broken leftover: make it again
    try:
        with BlazeFaceDetector() as detector:
            crops = list(itertools.islice(main_face_crops(_frames(item.path), detector), frames))
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        return Skipped(str(item.path), f"unreadable: {first_line(exc, 160)}")
    if len(crops) < frames:
        return Skipped(str(item.path), f"only {len(crops)} frames with a face; {frames} needed")
    target.parent.mkdir(parents=True, exist_ok=True)
    size = crops[0].shape[1], crops[0].shape[0]
    write_h264(target, iter(crops), size, fps)
    return row


def preprocess(
    items: list[Item],
    out: Path,
    *,
    frames: int = 150,
    workers: int = 1,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[Done], list[Skipped]]:
    """Preprocess every item; writes ``manifest.csv`` and ``skipped.csv`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results: list[Done | Skipped] = []
    if workers <= 1:
        for item in items:
            results.append(preprocess_one(item, out, frames))
            if progress:
                progress(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(preprocess_one, item, out, frames) for item in items]
            for fut in as_completed(futures):
                results.append(fut.result())
                if progress:
                    progress(1)
    done = sorted((r for r in results if isinstance(r, Done)), key=lambda r: r.clip)
    skipped = sorted((r for r in results if isinstance(r, Skipped)), key=lambda r: r.source)
    with open(out / MANIFEST, "w", newline="") as fh:
        writer = csv.DictWriter(fh, MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(r.__dict__ for r in done)
    with open(out / SKIPPED, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["source", "reason"])
        writer.writeheader()
        writer.writerows(r.__dict__ for r in skipped)
    return done, skipped
