"""Crops cut on the engine's device (``analyzer.crops``), here on CPU tensors: the same
pixels as the host's OpenCV crops, and the same features and scores through the model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from analyzer.crops import crop_on_device
from analyzer.engine import Engine
from analyzer.faces import crop_face
from analyzer.model import BUNDLED_CHECKPOINT, load_checkpoint
from analyzer.photos import default_photos_dir

# Inside the frame, shrinking and growing crops, and squares reaching over each edge.
BOXES = [(0.3, 0.25, 0.6, 0.65), (0.45, 0.45, 0.5, 0.52), (0.0, 0.0, 0.2, 0.2),
         (0.8, 0.7, 1.05, 1.1), (-0.1, 0.4, 0.3, 0.9), (0.1, 0.1, 0.9, 0.95)]  # fmt: skip


def photos() -> list[np.ndarray]:
    paths = sorted(default_photos_dir().glob("*.jpg"))
    assert len(paths) >= 10
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def on_host(crops: torch.Tensor) -> np.ndarray:
    return crops.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.mark.parametrize("size", [112, 64])
def test_device_crops_match_the_host_crops_pixel_for_pixel(size):
    diffs = []
    for rgb in photos():
        frames = torch.from_numpy(np.stack([rgb, rgb[::-1].copy()]))  # two frames, one call
        pairs = [(i, box) for i in range(2) for box in BOXES]
        device = on_host(crop_on_device(frames, pairs, margin=0.2, size=size))
        assert device.shape == (len(pairs), size, size, 3)
        for (i, box), got in zip(pairs, device, strict=True):
            want = crop_face(frames[i].numpy(), box, margin=0.2, size=size)
            diff = np.abs(want.astype(np.int16) - got.astype(np.int16))
            assert diff.mean() <= 2.0, (box, diff.mean())  # of 255 levels
            diffs.append(diff.ravel())
    every = np.concatenate(diffs)
    # The few pixels further apart lie on the frame's edge, where OpenCV's area resampling
    # and roi_align's samples blend the black outside differently.
    assert np.percentile(every, 99) <= 6 and every.mean() <= 0.5


def test_device_crops_give_the_host_crops_features_and_scores():
    """Through the bundled demo checkpoint (trained on synthetic data only)."""
    engine = Engine(load_checkpoint(BUNDLED_CHECKPOINT), "cpu")
    size = engine.input_size
    rgb = photos()[3]
    frames = torch.from_numpy(np.stack([rgb] * 8))
    boxes = [(i, (0.25 + 0.01 * i, 0.2, 0.75 + 0.01 * i, 0.8)) for i in range(8)]
    host = np.stack([crop_face(rgb, box, margin=0.2, size=size) for _, box in boxes])
    on_device = crop_on_device(frames, boxes, margin=0.2, size=size)
    a, b = engine.backbone(host), engine.backbone_on_device(on_device)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.995, cosine
    assert abs(float(engine.head([a])[0]) - float(engine.head([b])[0])) <= 0.02


def test_bad_input_is_refused_with_a_reason():
    frames = torch.zeros((1, 48, 64, 3), dtype=torch.uint8)
    assert crop_on_device(frames, [], margin=0.2, size=112).shape == (0, 3, 112, 112)
    with pytest.raises(ValueError, match="uint8"):
        crop_on_device(frames.float(), [(0, (0, 0, 1, 1))], margin=0.2, size=112)
    with pytest.raises(ValueError, match="frame 1"):
        crop_on_device(frames, [(1, (0, 0, 1, 1))], margin=0.2, size=112)
