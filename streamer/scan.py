"""``scan``: one video or URL through faces -> engine -> sliding windows -> verdicts.

The same per-stream machinery as the live service (:class:`StreamState`), driven
synchronously: the backbone runs in batches of crops, and a due window waits for the
features of its last frame.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from analyzer.faces import Detector, FaceTracker
from analyzer.model import ModelMeta
from streamer.sources.decode import VideoFrame, decode, resample
from streamer.streams import PendingCrop, StreamState
from streamer.verdict import ModelRef, Verdict

log = logging.getLogger(__name__)


@dataclass
class ScanOptions:
    window: int = 150
    hop: int = 30
    fps: float = 30.0
    threshold: float = 0.5
    max_faces: int = 4
    detect_every: int = 3
    batch_size: int = 32
    timeout_s: float = 10.0

    keep_top: bool = False  # keep the crops of the highest-scoring window (ScanSummary.top)


@dataclass
class TopWindow:
    seq: int
    score: float
    track_id: int
    crops: np.ndarray  # (T, H, W, 3) uint8 RGB


@dataclass
class ScanSummary:
    frames: int = 0
    verdicts: int = 0
    crops: int = 0
    top: TopWindow | None = None


class FeatureEngine(Protocol):
    """What ``scan`` needs of an engine: :class:`Engine`, or one reached through a queue."""

    meta: ModelMeta
    sha256: str | None
    feature_dim: int

    def backbone(self, crops: np.ndarray) -> np.ndarray: ...

    def head(self, windows: Sequence[np.ndarray]) -> np.ndarray: ...


def stream_id_for(source: str) -> str:
    """A stream id (1-64 of [A-Za-z0-9._-]) named after a file or URL."""
    name = Path(source.split("?")[0].rstrip("/")).name or "scan"
    return (re.sub(r"[^A-Za-z0-9._-]", "-", name) or "scan")[:64]


def open_frames(source: str, options: ScanOptions) -> Iterator[VideoFrame]:
    """Resampled frames of ``source``, with the first one already decoded.

    Opening and decoding the first frame up front makes a bad file or a dead URL fail
    before the model is loaded.
    """
    frames = resample(decode(source, timeout_s=options.timeout_s), options.fps)
    first = next(frames)
    return itertools.chain([first], frames)


def model_ref(engine: FeatureEngine) -> ModelRef:
    meta = engine.meta
    return ModelRef(name=meta.name, version=meta.version, sha256=engine.sha256)


def scan(
    frames: Iterable[VideoFrame],
    engine: FeatureEngine,
    detector: Detector,
    emit: Callable[[Verdict], None],
    options: ScanOptions,
    *,
    stream_id: str,
    on_frame: Callable[[], object] | None = None,
) -> ScanSummary:
    """Score resampled ``frames`` (see :func:`open_frames`) window by window."""
    sid = stream_id
    state = StreamState(
        sid,
        window=options.window,
        hop=options.hop,
        fps=options.fps,
        threshold=options.threshold,
        feature_dim=engine.feature_dim,
    )
    tracker = FaceTracker(detector, max_tracks=options.max_faces, detect_every=options.detect_every)
    ref = model_ref(engine)
    summary = ScanSummary()
    pending: list[PendingCrop] = []

    def run_backbone() -> None:
        if pending:
            feats = engine.backbone(np.stack([p.crop for p in pending]))
            state.set_features(pending, feats)
            summary.crops += len(pending)
            pending.clear()

    def run_window(partial: bool = False) -> None:
        job = state.build_window(partial=partial)
        scores = [float(s) for s in engine.head(job.sequences)] if job.sequences else []
        verdict = state.make_verdict(job, scores, ref, time.monotonic())
        if options.keep_top and scores:
            best = int(np.argmax(scores))
            if summary.top is None or scores[best] > summary.top.score:
                track = job.track_ids[best]
                crops = state.window_crops(job, track)
                summary.top = TopWindow(verdict.seq, scores[best], track, crops)
        emit(verdict)
        summary.verdicts += 1

    for frame in frames:
        faces = tracker.update(frame.rgb)
        pending.extend(state.add_frame(frame.pts_s, faces, time.monotonic()))
        summary.frames += 1
        due = state.window_due()
        if due or len(pending) >= options.batch_size:
            run_backbone()
        if due:
            run_window()
        if on_frame is not None:
            on_frame()
    if summary.verdicts == 0 and summary.frames > 0:
        # Shorter than one window: one verdict over everything there is.
        log.warning(
            "%s: %d frames is shorter than a %d-frame window; scoring the whole clip",
            sid,
            summary.frames,
            options.window,
        )
        run_backbone()
        run_window(partial=True)
    return summary
