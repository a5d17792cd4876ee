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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from analyzer.faces import Detector, FaceTracker
from streamer.config import WindowSchedule
from streamer.errors import SourceError, SourceUnreachable
from streamer.sources.decode import DecodeLimits, VideoFrame, decode, resample
from streamer.streams import PendingCrop, StreamState
from streamer.urls import NetPolicy, SourceUrl, parse_source_url, redact
from streamer.verdict import ModelRef, Verdict

if TYPE_CHECKING:  # torch: imported only once a scan has its first frame
    from analyzer.model import ModelMeta

log = logging.getLogger(__name__)


_SCHEDULE = WindowSchedule()  # the defaults


@dataclass
class ScanOptions:
    window: int = _SCHEDULE.window_frames
    hop: int = _SCHEDULE.hop_frames
    fps: float = _SCHEDULE.fps
    threshold: float | None = _SCHEDULE.threshold  # None: the checkpoint's, else the default
    max_faces: int = _SCHEDULE.max_faces
    detect_every: int = _SCHEDULE.detect_every
    batch_size: int = 32
    timeout_s: float = 10.0
    max_gap_s: float | None = 5.0  # a longer gap or a jump back restarts tracks and windows
    max_seconds: float | None = None  # media time scanned at most (uploads)
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    keep_top: bool = False  # keep the crops of the highest-scoring window (ScanSummary.top)

    @classmethod
    def from_schedule(cls, schedule: WindowSchedule, **rest: Any) -> ScanOptions:
        """Options with ``schedule``'s window, hop, fps, threshold and face tracking."""
        return cls(
            window=schedule.window_frames,
            hop=schedule.hop_frames,
            fps=schedule.fps,
            threshold=schedule.threshold,
            max_faces=schedule.max_faces,
            detect_every=schedule.detect_every,
            **rest,
        )


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
    discontinuities: int = 0
    truncated: bool = False  # stopped at max_seconds
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


def open_frames(source: str | SourceUrl, options: ScanOptions) -> Iterator[VideoFrame]:
    """Resampled frames of ``source``, with the first one already decoded.

    Opening and decoding the first frame up front makes a bad file or a dead URL fail
    before the model is loaded. ``source`` passes the URL policy (kind ``scan``) first.
    """
    if isinstance(source, str):
        source = parse_source_url(source, kind="scan", policy=options.limits.policy)
    decoded = decode(source, timeout_s=options.timeout_s, limits=options.limits)
    frames = resample(decoded, options.fps, max_gap_s=options.max_gap_s)
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
        threshold=engine.meta.served_threshold(options.threshold)[0],
        feature_dim=engine.feature_dim,
        keep_crops=options.keep_top,
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

    max_frames = None if options.max_seconds is None else int(options.max_seconds * options.fps)
    for frame in frames:
        if max_frames is not None and summary.frames >= max_frames:
            summary.truncated = True
            log.warning("%s: stopped at %g s of media time", sid, options.max_seconds)
            break
        if frame.restart:
            log.warning(
                "%s: timestamps jump at %.3f s; tracks and windows restart", sid, frame.pts_s
            )
            summary.discontinuities += 1
            run_backbone()
            state.restart()
            tracker = FaceTracker(
                detector, max_tracks=options.max_faces, detect_every=options.detect_every
            )
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


def fetch_http(
    source: SourceUrl, folder: Path, *, timeout_s: float, max_bytes: int, policy: NetPolicy
) -> SourceUrl:
    """Download an ``http(s)`` video into ``folder``; returns the local file to scan.

    FFmpeg's HTTP client follows any redirect; this one follows only those that stay on
    the same host (at most 5), checks the destination policy, and stops at ``max_bytes``.
    """
    import httpx

    url = source
    for _ in range(6):
        url.check_destination(policy)
        try:
            with httpx.stream("GET", url.text, timeout=timeout_s, follow_redirects=False) as r:
                if r.is_redirect:
                    location = str(r.url.join(r.headers.get("location", "")))
                    nxt = parse_source_url(location, kind="scan", policy=policy)
                    if nxt.host != source.host or nxt.scheme not in ("http", "https"):
                        raise SourceError(
                            f"{url.redacted} redirects to {redact(location)[:200]}; redirects "
                            "to another host are not followed: scan that URL itself"
                        )
                    url = nxt
                    continue
                if r.status_code != 200:
                    raise SourceError(f"{url.redacted} answered HTTP {r.status_code}")
                path = folder / "download.bin"
                size = 0
                with path.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise SourceError(
                                f"{url.redacted} is larger than {max_bytes} bytes; "
                                "download and cut it first"
                            )
                        fh.write(chunk)
                return parse_source_url(str(path), kind="scan")
        except httpx.HTTPError as exc:
            raise SourceUnreachable(f"cannot fetch {url.redacted}: {url.scrub(str(exc))}") from None
    raise SourceError(f"{source.redacted} redirects more than 5 times")
