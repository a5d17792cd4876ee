"""Face detection batched across streams (issue 21, item 2): the PyTorch BlazeFace's
network runs in the batcher's detection stage, one call for the frames of many streams."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from skimage import data

from analyzer.blazeface import TorchFaceDetector
from analyzer.faces import iou
from streamer.batcher import Batcher
from streamer.detection import BatchedDetector
from streamer.metrics import Metrics
from tests.servers import metric_in, metrics_after_two_verdicts_with_faces, registry_text


class _Counting(TorchFaceDetector):
    """The real network, recording how many frames each call took (or failing)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.fail = fail

    def network(self, squares: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(squares))
        if self.fail:
            raise RuntimeError("the device fell over")
        return super().network(squares)


def _pictures(photos_dir) -> list[np.ndarray]:
    import cv2

    paths = sorted(photos_dir.glob("*.jpg"))[:7]
    rgb = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    return [data.astronaut(), *rgb]


async def _detect_in_threads(net: _Counting, frames: list[np.ndarray], metrics: Metrics):
    """Each frame detected from a thread of its own (as each stream's thread does)."""
    batcher = Batcher(object(), metrics, face_network=net, detect_wait_ms=200)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    async with batcher:
        det = BatchedDetector(net, batcher, loop, timeout_s=30)
        found = await asyncio.gather(*(loop.run_in_executor(None, det.detect, f) for f in frames))
    return found, det


async def test_frames_from_many_streams_go_through_one_network_call(photos_dir):
    """Eight streams' threads, each with a frame due: fewer network calls than frames,
    every frame in one of them, and each frame's faces what the detector finds alone."""
    frames = _pictures(photos_dir)
    net, metrics = _Counting(), Metrics()
    found, det = await _detect_in_threads(net, frames, metrics)
    assert sum(net.calls) == len(frames) == 8
    assert len(net.calls) < len(frames), net.calls
    alone = TorchFaceDetector()
    for frame, faces in zip(frames, found, strict=True):
        expected = alone.detect(frame)
        assert len(faces) == len(expected) >= 1
        assert all(iou(a.box, b.box) > 0.999 for a, b in zip(faces, expected, strict=True))
    assert det.failed == 0
    text = registry_text(metrics)
    assert metric_in(text, "deepfake_engine_max_batch", stage="detect") == 32
    calls = metric_in(text, "deepfake_inference_batch_size_count", stage="detect")
    assert calls == len(net.calls)
    assert metric_in(text, "deepfake_inference_batch_size_sum", stage="detect") == 8


async def test_a_failing_detection_finds_no_face_and_is_counted(photos_dir):
    net, metrics = _Counting(fail=True), Metrics()
    found, det = await _detect_in_threads(net, [data.astronaut()], metrics)
    assert found == [[]] and det.failed == 1
    text = registry_text(metrics)
    assert metric_in(text, "deepfake_engine_errors_total", stage="detect") == 1


async def test_a_batcher_without_a_face_network_refuses_detection():
    async with Batcher(object(), Metrics()) as batcher:  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="DFM_DETECTOR=torch"):
            await batcher.detect(np.zeros((128, 128, 3), np.uint8))


async def test_the_service_detects_faces_in_its_detection_stage(fake_clip):
    """DFM_DETECTOR=torch: a stream's verdicts name its face, found by network calls in
    the engine's detection stage (its metrics say so), with no engine error."""
    text = await metrics_after_two_verdicts_with_faces({"DFM_DETECTOR": "torch"}, fake_clip)
    assert metric_in(text, "deepfake_engine_max_batch", stage="detect") == 32
    assert (metric_in(text, "deepfake_inference_batch_size_count", stage="detect") or 0) > 0
    assert not metric_in(text, "deepfake_engine_errors_total", stage="detect")


async def test_the_service_cuts_crops_on_the_engines_device(fake_clip, monkeypatch):
    """DFM_CROP=device (the engine's device is the CPU here): the stream's crops are cut by
    roi_align from the frame as a tensor, and its verdicts name its face as on the host."""
    import analyzer.crops

    cut: list[int] = []
    real = analyzer.crops.crop_on_device

    def counting(frames, boxes, **kw):  # type: ignore[no-untyped-def]
        cut.append(len(boxes))
        return real(frames, boxes, **kw)

    monkeypatch.setattr(analyzer.crops, "crop_on_device", counting)
    settings = {"DFM_DETECTOR": "torch", "DFM_CROP": "device"}
    text = await metrics_after_two_verdicts_with_faces(settings, fake_clip)
    taken = metric_in(text, "deepfake_faces_detected_total", stream="cam")
    assert taken and taken >= 20, taken  # a window's faces at least
    assert sum(cut) >= taken, (cut, taken)  # every crop the stream took was cut there
    for stage in ("detect", "backbone"):
        assert not metric_in(text, "deepfake_engine_errors_total", stage=stage)
