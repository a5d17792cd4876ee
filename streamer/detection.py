"""Face detection batched across streams: the PyTorch BlazeFace's network in the engine.

With ``DFM_DETECTOR=torch`` each stream's :class:`~analyzer.faces.FaceTracker` gets a
:class:`BatchedDetector`. In the stream's own thread it letterboxes a frame due for
detection (``analyzer/blazeface.py``), hands the 128x128 square to the batcher's detection
stage (:meth:`streamer.batcher.Batcher.detect`; with ``DFM_CROP=device`` the frame is
already on the engine's device, and is letterboxed there), which runs one network call for the
frames of every stream due at that moment on the engine's device, then decodes its
anchors and suppresses overlaps, again in its own thread. Tracking between detections
stays where it was. A detection the engine fails or does not answer within
``timeout_s`` finds no face (the tracker counts it a miss; the batcher counts the failure
in ``deepfake_engine_errors_total{stage="detect"}``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import numpy as np
import torch

from analyzer.blazeface import TorchFaceDetector
from analyzer.faces import Detection
from streamer.batcher import Batcher

log = logging.getLogger(__name__)


class BatchedDetector:
    """One stream's detector (called in its thread); the network runs batched in the engine."""

    #: A frame that is a tensor is letterboxed where it is (DFM_CROP=device).
    device_frames = True

    def __init__(
        self,
        net: TorchFaceDetector,
        batcher: Batcher,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        self.net = net
        self.batcher = batcher
        self.loop = loop
        self.timeout_s = timeout_s
        self.failed = 0  # detections that found nothing because the engine did not answer

    def detect(self, rgb: np.ndarray | torch.Tensor) -> list[Detection]:
        boxed = self.net.boxed(rgb)
        try:
            fut = asyncio.run_coroutine_threadsafe(self.batcher.detect(boxed.square), self.loop)
        except RuntimeError:  # the loop is closed: the service is ending
            return []
        try:
            out = fut.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            self.failed += 1
            log.warning("face detection took over %.0f s; this frame finds no face", self.timeout_s)
            return []
        except concurrent.futures.CancelledError:  # the batcher stopped
            return []
        except Exception:  # logged and counted by the batcher
            self.failed += 1
            return []
        return self.net.decode(boxed, out[:, :16], out[:, 16])

    def close(self) -> None:
        return None

    def __enter__(self) -> BatchedDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
