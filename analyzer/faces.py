"""Faces: BlazeFace detection, IoU tracking between detections, 112x112 crops.

The detector runs every ``detect_every`` frames on a copy downscaled to ``max_side``
pixels; between detections each track keeps its smoothed box. A track is a face that
stays put from detection to detection (greedy IoU matching); a face that is missed by
more than ``max_misses`` detections in a row ends its track. Each live track yields one
crop per frame: a square around the face with ``margin`` added, resized to 112x112 RGB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from analyzer.errors import FaceModelError

if TYPE_CHECKING:
    import torch

    #: Pixels on the host, or a tensor on a device (``FaceTracker(device=...)``).
    Pixels = np.ndarray | torch.Tensor

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
BLAZEFACE_SHORT_RANGE = ASSETS / "face_detection_short_range.tflite"

Box = tuple[float, float, float, float]  # x0, y0, x1, y1, normalised to [0, 1]


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float
    # Normalised (x, y) of the eyes, nose tip, mouth centre and ears (right before left),
    # where the detector gives them (MediaPipe's does); empty otherwise.
    keypoints: tuple[tuple[float, float], ...] = ()


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


class ClosingDetector(Detector, Protocol):
    """A detector that holds resources: close it, or use it in a ``with`` block."""

    def close(self) -> None: ...

    def __enter__(self) -> ClosingDetector: ...

    def __exit__(self, *exc: object) -> None: ...


def _aligned(rgb: np.ndarray, alignment: int = 64) -> np.ndarray:
    """``rgb`` in C order at a 64-byte aligned address (copied only when it is not).

    LiteRT copies unaligned input itself, and says so on stderr.
    """
    if rgb.flags.c_contiguous and rgb.ctypes.data % alignment == 0:
        return rgb
    raw = np.empty(rgb.nbytes + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    out = raw[offset : offset + rgb.nbytes].view(rgb.dtype).reshape(rgb.shape)
    out[...] = rgb
    return out


def detector_kind(kind: str | None, device: str) -> str:
    """The detector a setting names; unset: ``torch`` on CUDA (a batched network on the
    GPU), ``mediapipe`` on the CPU (faster there one frame at a time)."""
    if kind is not None:
        return kind
    return "torch" if str(device).startswith("cuda") else "mediapipe"


def open_detector(kind: str | None = "mediapipe", device: str = "cpu") -> ClosingDetector:
    """A face detector by name: ``mediapipe`` (MediaPipe's runtime) or ``torch`` (the same
    BlazeFace model in PyTorch, :mod:`analyzer.blazeface`, on ``device``); ``None`` chooses
    by device (:func:`detector_kind`)."""
    kind = detector_kind(kind, device)
    if kind == "torch":
        from analyzer.blazeface import TorchFaceDetector

        return TorchFaceDetector(device=device)
    if kind == "mediapipe":
        return BlazeFaceDetector()
    raise FaceModelError(f"unknown face detector {kind!r}; use mediapipe or torch")


def fit_within(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """``rgb`` scaled down (area-averaged) so its longer side is at most ``max_side``: what
    both detectors hand their network, so their boxes agree."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class BlazeFaceDetector:
    """MediaPipe Tasks FaceDetector with the vendored BlazeFace short-range model."""

    def __init__(
        self,
        model_path: Path = BLAZEFACE_SHORT_RANGE,
        *,
        min_confidence: float = 0.5,
        max_side: int = 512,
    ) -> None:
        if not model_path.is_file():
            raise FaceModelError(f"face model {model_path} is missing; reinstall the package")
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        self.max_side = max_side
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            min_detection_confidence=min_confidence,
        )
        # MediaPipe's runtime prints INFO lines on stderr here; the CLI routes them to
        # the log (streamer/nativelog.py).
        self._detector = vision.FaceDetector.create_from_options(options)
        self._closed = False

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        small = fit_within(rgb, self.max_side)
        sh, sw = small.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=_aligned(small))
        found = []
        for det in self._detector.detect(image).detections:
            bb = det.bounding_box
            x0, y0 = max(0.0, bb.origin_x / sw), max(0.0, bb.origin_y / sh)
            x1 = min(1.0, (bb.origin_x + bb.width) / sw)
            y1 = min(1.0, (bb.origin_y + bb.height) / sh)
            if x1 > x0 and y1 > y0:
                points = tuple((k.x, k.y) for k in det.keypoints or ())
                found.append(Detection((x0, y0, x1, y1), float(det.categories[0].score), points))
        return found

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._detector.close()

    def __enter__(self) -> BlazeFaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class FaceCrop:
    track_id: int
    box: Box
    # (size, size, 3) uint8 RGB on the host; a tracker with a ``device``: a (3, size, size)
    # uint8 tensor there (analyzer/crops.py)
    crop: Pixels


@dataclass
class FrameFaces:
    crops: list[FaceCrop]
    ended: list[int] = field(default_factory=list)


@dataclass
class _Track:
    id: int
    box: Box
    misses: int = 0


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def square(box: Box, width: int, height: int, margin: float) -> tuple[int, int, int]:
    """The crop's square in pixels, ``(x0, y0, side)``: centred on ``box``, its longer
    side grown by ``margin``; it may reach outside the frame."""
    cx, cy = (box[0] + box[2]) / 2 * width, (box[1] + box[3]) / 2 * height
    side = max((box[2] - box[0]) * width, (box[3] - box[1]) * height) * (1.0 + margin)
    side = max(side, 2.0)
    return round(cx - side / 2), round(cy - side / 2), round(side)


def crop_face(rgb: np.ndarray, box: Box, *, margin: float, size: int) -> np.ndarray:
    """Square crop around ``box`` grown by ``margin``; outside the frame is black.
    (:func:`analyzer.crops.crop_on_device` cuts the same square from frames on a device.)"""
    h, w = rgb.shape[:2]
    x0, y0, s = square(box, w, h, margin)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    patch = np.zeros((s, s, 3), np.uint8)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


def host_crop(crop: Pixels) -> np.ndarray:
    """A crop as the host keeps it, (size, size, 3) uint8 RGB: a host crop as it is, a
    :class:`FaceTracker`'s device crop ((3, size, size) uint8) copied back."""
    if isinstance(crop, np.ndarray):
        return crop
    return crop.permute(1, 2, 0).cpu().numpy()


class FaceTracker:
    """Per-stream face tracks. Call :meth:`update` once per frame, in order."""

    def __init__(
        self,
        detector: Detector,
        *,
        detect_every: int = 3,
        max_tracks: int = 4,
        iou_match: float = 0.3,
        smoothing: float = 0.6,
        margin: float = 0.2,
        crop_size: int = 112,
        max_misses: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        if detect_every < 1 or max_tracks < 1:
            raise ValueError("detect_every and max_tracks must be at least 1")
        self.detector = detector
        self.detect_every = detect_every
        self.max_tracks = max_tracks
        self.iou_match = iou_match
        self.smoothing = smoothing
        self.margin = margin
        self.crop_size = crop_size
        self.max_misses = max_misses
        # Where crops are cut (DFM_CROP=device): a host frame crosses there once, and is
        # letterboxed there too for a detector that takes tensors (``device_frames``).
        self.device = device
        self._tracks: list[_Track] = []
        self.reset()
        # CPU seconds of this thread spent detecting and cropping (for benchmarks).
        self.detect_s = 0.0
        self.crop_s = 0.0

    @property
    def track_ids(self) -> list[int]:
        return [t.id for t in self._tracks]

    def reset(self) -> None:
        """Forget every track (a new connection, a discontinuity): as a new tracker would
        be, with the same detector (building one can take a third of a second)."""
        self._tracks = []
        self._next_id = 1
        self._frame = 0

    def update(self, rgb: Pixels) -> FrameFaces:
        """One frame's faces: ``rgb`` (H, W, 3) uint8, on the host or a tensor on a device."""
        frame = self._placed(rgb)
        ended: list[int] = []
        t0 = time.thread_time()
        if self._frame % self.detect_every == 0:
            ended = self._associate(self.detector.detect(self._seen(rgb, frame)))
        self._frame += 1
        t1 = time.thread_time()
        crops = self._cut(frame)
        self.detect_s += t1 - t0
        self.crop_s += time.thread_time() - t1
        return FrameFaces(crops, ended)

    def _placed(self, rgb: Pixels) -> Pixels:
        """``rgb`` where its crops are cut: a host frame as it is (no ``device``), else a
        tensor on the tracker's device (a frame that is a tensor already: where it is)."""
        if self.device is None and isinstance(rgb, np.ndarray):
            return rgb
        import torch

        frame = rgb if isinstance(rgb, torch.Tensor) else torch.from_numpy(rgb)
        return frame if self.device is None else frame.to(self.device)

    def _seen(self, rgb: Pixels, frame: Pixels) -> Any:
        """What the detector takes: the placed frame, but a host frame for a detector that
        takes no tensors (MediaPipe) where the frame is one."""
        if isinstance(frame, np.ndarray) or getattr(self.detector, "device_frames", False):
            return frame
        return rgb if isinstance(rgb, np.ndarray) else rgb.cpu().numpy()

    def _cut(self, frame: Pixels) -> list[FaceCrop]:
        """Each track's crop: OpenCV's from a host frame, one ``roi_align`` call's (uint8)
        from a tensor, where it is."""
        if isinstance(frame, np.ndarray):
            return [
                FaceCrop(
                    t.id, t.box, crop_face(frame, t.box, margin=self.margin, size=self.crop_size)
                )
                for t in self._tracks
            ]
        from analyzer.crops import as_uint8, crop_on_device

        boxes = [(0, t.box) for t in self._tracks]
        cut = as_uint8(crop_on_device(frame[None], boxes, margin=self.margin, size=self.crop_size))
        return [FaceCrop(t.id, t.box, crop) for t, crop in zip(self._tracks, cut, strict=True)]

    def _associate(self, detections: list[Detection]) -> list[int]:
        pairs = sorted(
            (
                (iou(t.box, d.box), ti, di)
                for ti, t in enumerate(self._tracks)
                for di, d in enumerate(detections)
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_d: set[int] = set()
        a = self.smoothing
        for overlap, ti, di in pairs:
            if overlap < self.iou_match:
                break
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            track, new = self._tracks[ti], detections[di].box
            track.box = tuple(a * n + (1 - a) * o for n, o in zip(new, track.box, strict=True))  # type: ignore[assignment]
            track.misses = 0
        ended: list[int] = []
        kept: list[_Track] = []
        for ti, track in enumerate(self._tracks):
            if ti not in used_t:
                track.misses += 1
            if track.misses > self.max_misses:
                ended.append(track.id)
            else:
                kept.append(track)
        self._tracks = kept
        fresh = sorted(
            (d for di, d in enumerate(detections) if di not in used_d),
            key=lambda d: d.score,
            reverse=True,
        )
        for det in fresh:
            if len(self._tracks) >= self.max_tracks:
                break
            self._tracks.append(_Track(self._next_id, det.box))
            self._next_id += 1
        return ended


def main_face_crops(frames: Iterable[np.ndarray], detector: Detector) -> Iterator[np.ndarray]:
    """Crops of the video's main face (the most confident, tracked), frames without it skipped.

    The study's way of turning a video into a clip: ``preprocess`` keeps the first N of
    these, ``explain`` cuts them into windows.
    """
    tracker = FaceTracker(detector, detect_every=1, max_tracks=1, max_misses=0)
    for rgb in frames:
        faces = tracker.update(rgb).crops
        if faces:
            yield host_crop(faces[0].crop)
