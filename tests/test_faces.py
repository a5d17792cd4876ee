"""Face detection on real photographs, and the tracker's rules on scripted detections."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from skimage import data

from analyzer.faces import BlazeFaceDetector, Detection, FaceTracker, crop_face, iou


@pytest.fixture(scope="module")
def detector():
    with BlazeFaceDetector() as det:
        yield det


def test_blazeface_finds_the_astronaut(detector):
    found = detector.detect(data.astronaut())
    assert len(found) == 1
    x0, y0, x1, y1 = found[0].box
    # Her face sits left of centre in the top half of the 512x512 picture.
    assert 0.30 < x0 < 0.40 and 0.12 < y0 < 0.22 and 0.48 < x1 < 0.60 and 0.30 < y1 < 0.42
    assert found[0].score > 0.8


def test_blazeface_finds_every_face_of_a_group_photo(detector, photos_dir):
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(photos_dir / "sample6.jpg")), cv2.COLOR_BGR2RGB)
    assert len(detector.detect(rgb)) == 4


def _face_pictures(photos_dir) -> dict[str, np.ndarray]:
    """The astronaut and every bundled face photo, RGB, by name."""
    import cv2

    pictures = {"astronaut": data.astronaut()}
    for path in sorted(photos_dir.glob("*.jpg")):
        pictures[path.name] = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return pictures


def test_the_pytorch_blazeface_gives_mediapipes_boxes(detector, photos_dir):
    """The same model run by our converter (analyzer/blazeface.py) instead of MediaPipe:
    on every bundled face photo and the astronaut, the same number of faces, each box
    with IoU >= 0.9 against MediaPipe's and a score within 0.05; a batch of frames gives
    what one frame at a time gives; a flat picture has no face."""
    from analyzer.faces import open_detector

    pictures = _face_pictures(photos_dir)
    assert len(pictures) >= 15
    with open_detector("torch") as ours:
        batched = ours.detect_batch(list(pictures.values()))  # type: ignore[attr-defined]
        worst = 1.0
        for (name, rgb), in_batch in zip(pictures.items(), batched, strict=True):
            theirs, mine = detector.detect(rgb), ours.detect(rgb)
            assert len(mine) == len(theirs), name
            assert len(in_batch) == len(mine), name  # batched: the same up to rounding
            assert all(iou(a.box, b.box) > 0.999 for a, b in zip(mine, in_batch, strict=True))
            for face in theirs:
                best = max(mine, key=lambda m, f=face: iou(m.box, f.box))
                worst = min(worst, iou(best.box, face.box))
                assert iou(best.box, face.box) >= 0.9, (name, face, best)
                assert abs(best.score - face.score) < 0.05, (name, face, best)
        assert ours.detect(np.full((360, 480, 3), 127, np.uint8)) == []
    print(f"worst IoU against MediaPipe: {worst:.3f} over {len(pictures)} pictures")


def test_frames_on_the_device_give_mediapipes_faces_too(detector, photos_dir):
    """A frame that is a tensor (DFM_CROP=device; here a CPU tensor) is letterboxed where it
    is: the host's square within one level, and on every bundled face photo and the
    astronaut the same number of faces as MediaPipe finds on the host, each box with
    IoU >= 0.9."""
    import torch

    from analyzer.blazeface import TorchFaceDetector

    pictures = _face_pictures(photos_dir)
    ours, worst = TorchFaceDetector(), 1.0
    frames = [torch.from_numpy(rgb) for rgb in pictures.values()]
    batched = ours.detect_batch(frames)
    for (name, rgb), frame, in_batch in zip(pictures.items(), frames, batched, strict=True):
        boxed = ours.letterbox_on_device(frame)
        assert isinstance(boxed.square, torch.Tensor) and boxed.square.shape == (128, 128, 3)
        host = ours.letterbox(rgb).square.astype(np.int16)
        assert np.abs(boxed.square.numpy().astype(np.int16) - host).max() <= 1, name
        theirs, mine = detector.detect(rgb), ours.detect(frame)
        assert len(mine) == len(theirs) == len(in_batch), name
        for face in theirs:
            best = max(mine, key=lambda m, f=face: iou(m.box, f.box))
            worst = min(worst, iou(best.box, face.box))
            assert iou(best.box, face.box) >= 0.9, (name, face, best)
    assert ours.detect(torch.full((360, 480, 3), 127, dtype=torch.uint8)) == []
    print(f"worst IoU against MediaPipe: {worst:.3f} over {len(pictures)} pictures")


@pytest.mark.parametrize("kind", ["mediapipe", "torch"])
def test_a_tracker_with_a_device_cuts_the_host_trackers_crops_there(detector, kind):
    """FaceTracker(device=...) (DFM_CROP=device; here the CPU): the same tracks and boxes
    as the host's tracker, each crop a (3, 112, 112) uint8 tensor with the host crop's
    pixels within a few levels. MediaPipe still detects on the host frame; the PyTorch
    network's letterbox is made from the tensor."""
    import torch

    from analyzer.blazeface import TorchFaceDetector
    from analyzer.faces import host_crop

    det = detector if kind == "mediapipe" else TorchFaceDetector()
    host, on_device = FaceTracker(det), FaceTracker(det, device="cpu")
    astronaut = data.astronaut()
    for step in range(6):  # a face moving 6 pixels a frame
        rgb = np.roll(astronaut, 6 * step, axis=1)
        want, got = host.update(rgb), on_device.update(rgb)
        assert [c.track_id for c in got.crops] == [c.track_id for c in want.crops] == [1]
        for a, b in zip(want.crops, got.crops, strict=True):
            assert iou(a.box, b.box) > 0.99
            assert isinstance(b.crop, torch.Tensor) and b.crop.dtype == torch.uint8
            assert tuple(b.crop.shape) == (3, 112, 112)
            diff = np.abs(host_crop(b.crop).astype(np.int16) - a.crop.astype(np.int16))
            assert diff.mean() <= 1.0, diff.mean()


def test_blazeface_sees_no_face_in_texture(detector):
    assert detector.detect(np.full((360, 480, 3), 127, np.uint8)) == []


def test_tracker_crops_a_real_face_every_frame(detector):
    frame = data.astronaut()
    tracker = FaceTracker(detector, detect_every=3)
    ids = set()
    for _ in range(7):
        faces = tracker.update(frame)
        assert len(faces.crops) == 1
        crop = faces.crops[0].crop
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        ids.add(faces.crops[0].track_id)
    assert ids == {1}


class Scripted:
    """A detector that answers from a script, one list per call; counts its calls."""

    def __init__(self, script: list[list[Detection]]) -> None:
        self.script = script
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        out = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return out


FRAME = np.zeros((100, 100, 3), np.uint8)
A = Detection((0.1, 0.1, 0.3, 0.3), 0.9)
B = Detection((0.6, 0.6, 0.8, 0.8), 0.7)


def test_detector_runs_every_k_frames():
    det = Scripted([[A]])
    tracker = FaceTracker(det, detect_every=3)
    for _ in range(10):
        tracker.update(FRAME)
    assert det.calls == 4  # frames 0, 3, 6, 9


def test_two_faces_two_tracks_and_max_tracks_keeps_the_surest():
    assert {c.track_id for c in FaceTracker(Scripted([[A, B]])).update(FRAME).crops} == {1, 2}
    only = FaceTracker(Scripted([[B, A]]), max_tracks=1).update(FRAME).crops
    assert len(only) == 1 and only[0].box == A.box


def test_no_face_no_crop():
    assert FaceTracker(Scripted([[]])).update(FRAME).crops == []


def test_a_face_that_leaves_ends_its_track():
    det = Scripted([[A, B], [A], [A], [A]])
    tracker = FaceTracker(det, detect_every=1, max_misses=1)
    assert len(tracker.update(FRAME).crops) == 2
    assert len(tracker.update(FRAME).crops) == 2  # B missed once: kept for now
    third = tracker.update(FRAME)
    assert third.ended == [2] and [c.track_id for c in third.crops] == [1]
    assert tracker.track_ids == [1]


def test_boxes_are_smoothed_between_detections():
    moved = Detection((0.2, 0.1, 0.4, 0.3), 0.9)
    tracker = FaceTracker(Scripted([[A], [moved]]), detect_every=1, smoothing=0.5)
    tracker.update(FRAME)
    box = tracker.update(FRAME).crops[0].box
    assert box == pytest.approx((0.15, 0.1, 0.35, 0.3))
    assert iou(box, A.box) > 0.3


def test_crop_at_the_frame_edge_is_padded_not_shifted():
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_face(frame, (0.0, 0.0, 0.2, 0.2), margin=1.0, size=112)
    assert crop.shape == (112, 112, 3)
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[-1, -1].tolist() == [200, 200, 200]


async def test_the_service_makes_each_stream_the_detector_its_settings_name():
    """torch: each stream's detector hands its frames to the batcher's detection stage;
    mediapipe: MediaPipe's runtime in the stream's thread; unset: by the engine's device."""
    import torch

    from analyzer.blazeface import TorchFaceDetector
    from analyzer.faces import detector_kind
    from streamer.batcher import Batcher
    from streamer.config import Settings
    from streamer.detection import BatchedDetector
    from streamer.metrics import Metrics
    from streamer.service import detector_factory

    cpu = torch.device("cpu")
    async with Batcher(object(), Metrics(), face_network=TorchFaceDetector()) as batcher:  # type: ignore[arg-type]
        make = detector_factory(Settings(api_token="x", detector="torch"), cpu, batcher)
        with make() as det:  # type: ignore[attr-defined]
            assert isinstance(det, BatchedDetector)
            found = await asyncio.to_thread(det.detect, data.astronaut())
            assert len(found) == 1
    async with Batcher(object(), Metrics()) as plain:  # type: ignore[arg-type]
        mediapipe = detector_factory(Settings(api_token="x"), cpu, plain)()
        assert isinstance(mediapipe, BlazeFaceDetector)
        mediapipe.close()  # type: ignore[attr-defined]
    assert detector_kind(None, "cpu") == "mediapipe"
    assert detector_kind(None, "cuda:0") == "torch"
    assert detector_kind("mediapipe", "cuda") == "mediapipe"
