"""Per-stage costs of the scan path on one machine: decode, face detection, crop, backbone, head.

    .venv/bin/python scripts/stage_costs.py [VIDEO]

Without VIDEO it synthesises a 240-frame 480x360 clip first. Random weights (speed only).
Prints ms per frame (decode, detection, tracking+crop, backbone) and per window (head).
The full benchmark suite is `deepfake-monitor bench` once it exists.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from analyzer.engine import Engine
from analyzer.faces import BlazeFaceDetector, FaceTracker
from analyzer.model import random_model
from analyzer.synthetic import synthesize
from streamer.sources.decode import decode


def main() -> None:
    if len(sys.argv) > 1:
        video = Path(sys.argv[1])
    else:
        out = Path(tempfile.mkdtemp())
        spec = synthesize(out, videos=2, frames=240, seed=5, identities=["sample3", "sample1"])[1]
        video = out / spec.file
    t = time.perf_counter()
    frames = [rgb for _, rgb in decode(str(video))]
    decode_ms = (time.perf_counter() - t) * 1000 / len(frames)

    with BlazeFaceDetector() as det:
        for rgb in frames[:5]:
            det.detect(rgb)
        t = time.perf_counter()
        for rgb in frames:
            det.detect(rgb)
        detect_ms = (time.perf_counter() - t) * 1000 / len(frames)
        tracker = FaceTracker(det, detect_every=3)
        t = time.perf_counter()
        crops = [c.crop for rgb in frames for c in tracker.update(rgb).crops]
        track_ms = (time.perf_counter() - t) * 1000 / len(frames)

    engine = Engine(random_model(), "auto")
    batch = np.stack(crops[:32])
    engine.backbone(batch)
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        engine.backbone(batch)
    backbone_ms = (time.perf_counter() - t) * 1000 / (reps * len(batch))
    windows = [np.random.default_rng(0).standard_normal((150, 2048)).astype(np.float32)] * 8
    engine.head(windows)
    t = time.perf_counter()
    for _ in range(reps):
        engine.head(windows)
    head_ms = (time.perf_counter() - t) * 1000 / (reps * len(windows))

    faces = len(crops) / len(frames)
    h, w = frames[0].shape[:2]
    print(f"video {video.name}: {len(frames)} frames {w}x{h}, {faces:.2f} faces/frame")
    print(f"device {engine.device}, torch threads {torch.get_num_threads()}")
    print(f"decode (PyAV, to RGB)            {decode_ms:8.2f} ms/frame")
    print(f"BlazeFace on every frame         {detect_ms:8.2f} ms/frame")
    print(f"tracker (detect every 3) + crops {track_ms:8.2f} ms/frame")
    print(f"backbone, batch 32               {backbone_ms:8.2f} ms/crop")
    print(f"head, 8 windows of 150           {head_ms:8.2f} ms/window")


if __name__ == "__main__":
    main()
