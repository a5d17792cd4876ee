"""Per-stream state: face tracks with their ring buffers, the window schedule, verdicts.

A :class:`StreamState` is fed one resampled frame at a time with that frame's face
crops. Each crop waits for its backbone features, which go into its track's ring; every
``hop`` frames, once ``window`` frames have been seen, a window is due and the head runs
over the cached features of each track that has enough frames in it. A crop lives only
until its features exist (in its :class:`PendingCrop`); the ring keeps ``window`` feature
rows in float16 (2048 each for the study's model: 0.62 MB per face, see
:meth:`TrackBuffer.nbytes`), and ``window`` crops only where they are asked for (the
uploads' Grad-CAM of their top window).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analyzer.faces import FrameFaces, host_crop
from streamer.verdict import FaceScore, Label, ModelRef, Verdict, WindowSpan, utc_now_iso

if TYPE_CHECKING:
    from analyzer.faces import Pixels


@dataclass(frozen=True)
class PendingCrop:
    """A crop waiting for its backbone features."""

    stream_id: str
    track_id: int
    slot: int
    frame: int
    crop: Pixels  # on the host or the engine's device (analyzer.faces.FaceCrop)


class TrackBuffer:
    """Ring of the backbone features of one face's last ``capacity`` frames (``keep_crops``:
    and their crops). Features are stored as ``feature_dtype`` (float16 by default: half
    the memory; scores move by under 1e-4, tests/test_engine.py) and read back as
    float32."""

    def __init__(
        self,
        track_id: int,
        capacity: int,
        crop_size: int,
        feature_dim: int,
        *,
        keep_crops: bool = False,
        feature_dtype: type[np.floating] = np.float16,
    ) -> None:
        self.track_id = track_id
        self.capacity = capacity
        shape = (capacity, crop_size, crop_size, 3) if keep_crops else (0, 0, 0, 3)
        self.crops = np.zeros(shape, np.uint8)
        self.feats = np.zeros((capacity, feature_dim), feature_dtype)
        self.frames = np.full(capacity, -1, np.int64)
        self.boxes = np.zeros((capacity, 4), np.float32)
        self.has_feat = np.zeros(capacity, bool)
        self.pushed = 0
        self.ended = False

    @property
    def last_frame(self) -> int:
        return int(self.frames.max())

    @property
    def nbytes(self) -> int:
        """Host memory this face holds in its ring."""
        arrays = (self.crops, self.feats, self.frames, self.boxes, self.has_feat)
        return sum(a.nbytes for a in arrays)

    def push(self, frame: int, box: tuple[float, float, float, float], crop: Pixels) -> int:
        slot = self.pushed % self.capacity
        self.pushed += 1
        if len(self.crops):
            self.crops[slot] = host_crop(crop)
        self.frames[slot] = frame
        x0, y0, x1, y1 = box
        self.boxes[slot] = (x0, y0, x1 - x0, y1 - y0)
        self.has_feat[slot] = False
        return slot

    def set_features(self, slot: int, frame: int, feats: np.ndarray) -> bool:
        """Store features for ``slot``; False when the slot has moved on to a newer frame."""
        if self.frames[slot] != frame:
            return False
        self.feats[slot] = feats
        self.has_feat[slot] = True
        return True

    def slots_in(self, first: int, last: int) -> np.ndarray:
        """Slots holding frames first..last, oldest first."""
        idx = np.flatnonzero((self.frames >= first) & (self.frames <= last))
        return idx[np.argsort(self.frames[idx])]


@dataclass(frozen=True)
class WindowJob:
    """One due window: the feature sequence of each face that takes part."""

    stream_id: str
    first_frame: int
    last_frame: int
    start_pts_s: float
    end_pts_s: float
    last_arrival: float
    track_ids: list[int]
    sequences: list[np.ndarray]  # (T_i, F) per track
    boxes: list[list[float]]


class StreamState:
    """The per-stream half of the pipeline; pure logic, no threads, no I/O."""

    def __init__(
        self,
        stream_id: str,
        *,
        window: int = 150,
        hop: int = 30,
        fps: float = 30.0,
        threshold: float = 0.5,
        min_face_frames: int | None = None,
        smoothing: float = 0.5,
        hysteresis: float = 0.05,
        crop_size: int = 112,
        feature_dim: int = 2048,
        keep_crops: bool = False,
        feature_dtype: type[np.floating] = np.float16,
    ) -> None:
        if window < 1 or hop < 1:
            raise ValueError("window and hop must be at least 1 frame")
        self.stream_id = stream_id
        self.session = str(uuid.uuid4())
        self.window = window
        self.hop = hop
        self.fps = fps
        self.threshold = threshold
        # A face takes part in a window once it has been seen for a fifth of it.
        self.min_face_frames = min_face_frames or max(1, window // 5)
        self.smoothing = smoothing
        self.hysteresis = hysteresis
        self.crop_size = crop_size
        self.feature_dim = feature_dim
        self.keep_crops = keep_crops
        self.feature_dtype = feature_dtype
        self.tracks: dict[int, TrackBuffer] = {}
        self.frames_seen = 0
        self.segment_start = 0  # frame that began the current run of continuous time
        self.seq = 0
        self.smoothed: float | None = None
        self.label: Label | None = None
        self._failed: deque[int] = deque()  # frames whose features the engine failed to make
        self._pts = np.zeros(window, np.float64)
        self._arrival = np.zeros(window, np.float64)

    def restart(self) -> None:
        """A discontinuity: forget the faces and the smoothing; the next window starts here.

        Frame numbers keep counting, so features still in flight for earlier frames
        can never land in the new tracks' slots; ``session`` and ``seq`` go on.
        """
        self.tracks.clear()
        self.segment_start = self.frames_seen
        self.smoothed, self.label = None, None

    def add_frame(self, pts_s: float, faces: FrameFaces, arrival: float) -> list[PendingCrop]:
        """Take one frame's crops; returns the crops whose features are needed."""
        frame = self.frames_seen
        self.frames_seen += 1
        self._pts[frame % self.window] = pts_s
        self._arrival[frame % self.window] = arrival
        for track_id in faces.ended:
            if track_id in self.tracks:
                self.tracks[track_id].ended = True
        pending = []
        for face in faces.crops:
            track = self.tracks.get(face.track_id)
            if track is None:
                track = TrackBuffer(
                    face.track_id,
                    self.window,
                    self.crop_size,
                    self.feature_dim,
                    keep_crops=self.keep_crops,
                    feature_dtype=self.feature_dtype,
                )
                self.tracks[face.track_id] = track
            slot = track.push(frame, face.box, face.crop)
            pending.append(PendingCrop(self.stream_id, face.track_id, slot, frame, face.crop))
        # An ended face is forgotten once its last frame has left the window.
        oldest = frame - self.window + 1
        for track_id in [t.track_id for t in self.tracks.values() if t.ended]:
            if self.tracks[track_id].last_frame < oldest:
                del self.tracks[track_id]
        return pending

    def features_failed(self, pending: Sequence[PendingCrop]) -> None:
        """The engine could not make these crops' features: windows over them are unsound."""
        self._failed.extend(sorted({p.frame for p in pending}))
        oldest = self.frames_seen - self.window
        while self._failed and self._failed[0] < oldest:
            self._failed.popleft()

    def lacks_features(self, job: WindowJob) -> bool:
        """Whether a frame of ``job`` lost its features to an engine error.

        Such a window gets no verdict: a face without features would read as NO_FACE.
        """
        return any(job.first_frame <= f <= job.last_frame for f in self._failed)

    def set_features(self, pending: Sequence[PendingCrop], feats: np.ndarray) -> int:
        """Write backbone features back; returns how many arrived too late to be kept."""
        late = 0
        for item, row in zip(pending, feats, strict=True):
            track = self.tracks.get(item.track_id)
            if track is None or not track.set_features(item.slot, item.frame, row):
                late += 1
        return late

    def window_due(self) -> bool:
        n = self.frames_seen - self.segment_start
        return n >= self.window and (n - self.window) % self.hop == 0

    def build_window(self, *, partial: bool = False) -> WindowJob:
        """The window ending at the latest frame (``partial``: all frames seen so far)."""
        last = self.frames_seen - 1
        seen = self.frames_seen - self.segment_start
        length = min(seen, self.window) if partial else self.window
        first = last - length + 1
        need = min(self.min_face_frames, length)
        track_ids, sequences, boxes = [], [], []
        for track in self.tracks.values():
            slots = track.slots_in(first, last)
            slots = slots[track.has_feat[slots]]
            if len(slots) >= need:
                track_ids.append(track.track_id)
                sequences.append(track.feats[slots].astype(np.float32))
                boxes.append([round(float(v), 4) for v in track.boxes[slots[-1]]])
        return WindowJob(
            stream_id=self.stream_id,
            first_frame=first,
            last_frame=last,
            start_pts_s=float(self._pts[first % self.window]),
            end_pts_s=float(self._pts[last % self.window]),
            last_arrival=float(self._arrival[last % self.window]),
            track_ids=track_ids,
            sequences=sequences,
            boxes=boxes,
        )

    def window_crops(self, job: WindowJob, track_id: int) -> np.ndarray:
        """(T, H, W, 3) crops of one track over ``job``'s frames (needs ``keep_crops``)."""
        if not self.keep_crops:
            raise ValueError("this stream keeps no crops (StreamState(keep_crops=True))")
        track = self.tracks[track_id]
        slots = track.slots_in(job.first_frame, job.last_frame)
        return track.crops[slots[track.has_feat[slots]]].copy()

    def make_verdict(
        self, job: WindowJob, scores: Sequence[float], model: ModelRef, now: float
    ) -> Verdict:
        """Turn head scores for ``job`` into the next verdict of this session."""
        faces = [
            FaceScore(track_id=t, score=float(s), box=b, frames=len(seq))
            for t, s, b, seq in zip(job.track_ids, scores, job.boxes, job.sequences, strict=True)
        ]
        score: float | None = max((f.score for f in faces), default=None)
        if score is None:
            self.smoothed, self.label = None, "NO_FACE"
        else:
            a = self.smoothing
            self.smoothed = score if self.smoothed is None else a * score + (1 - a) * self.smoothed
            self.label = self._next_label(self.smoothed)
        verdict = Verdict(
            stream_id=self.stream_id,
            session=self.session,
            seq=self.seq,
            window=WindowSpan(
                start_pts_s=round(job.start_pts_s, 3),
                end_pts_s=round(job.end_pts_s, 3),
                frames=job.last_frame - job.first_frame + 1,
                fps=self.fps,
            ),
            score=None if score is None else round(score, 6),
            smoothed_score=None if self.smoothed is None else round(self.smoothed, 6),
            label=self.label,
            threshold=self.threshold,
            faces=faces,
            model=model,
            latency_ms=round(max(0.0, now - job.last_arrival) * 1000.0, 2),
            emitted_at=utc_now_iso(),
        )
        self.seq += 1
        return verdict

    def _next_label(self, smoothed: float) -> Label:
        # Hysteresis: leaving a label takes a margin past the threshold, so a score
        # hovering at the threshold does not flap between REAL and FAKE.
        if self.label == "FAKE":
            return "REAL" if smoothed < self.threshold - self.hysteresis else "FAKE"
        if self.label == "REAL":
            return "FAKE" if smoothed >= self.threshold + self.hysteresis else "REAL"
        return "FAKE" if smoothed >= self.threshold else "REAL"
