"""`deepfake-monitor explain`: Grad-CAM overlays and contact sheets of a video's face windows."""

from __future__ import annotations

import cv2
import numpy as np

from analyzer.engine import Engine
from analyzer.explain import contact_sheet, face_windows, grad_cam, overlay
from analyzer.faces import BlazeFaceDetector
from analyzer.model import BUNDLED_CHECKPOINT, load_checkpoint
from streamer.sources.decode import decode
from tests.conftest import run_cli


def test_explain_writes_overlays_and_a_contact_sheet_per_window(synth_clips, tmp_path):
    video = synth_clips / "00003_fake_astronaut.mp4"
    out = tmp_path / "explain"
    result = run_cli("explain", str(video), "--window", "40", "--windows", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("P(FAKE)") == 2
    for w in range(2):
        frames = sorted((out / f"window-{w:03d}").glob("frame-*.png"))
        assert len(frames) == 40
        sheet = cv2.imread(str(out / f"window-{w:03d}.png"))
        assert sheet is not None and sheet.shape[1] == 8 * 112
    overlay_png = cv2.imread(str(out / "window-000" / "frame-000.png"))
    assert overlay_png is not None and overlay_png.shape == (112, 112, 3)


def test_grad_cam_of_the_demo_model_varies_over_the_face(synth_clips):
    engine = Engine(load_checkpoint(BUNDLED_CHECKPOINT), "cpu")
    frames = (rgb for _, rgb in decode(str(synth_clips / "00003_fake_astronaut.mp4")))
    with BlazeFaceDetector() as detector:
        crops = next(iter(face_windows(frames, detector, window=12, limit=1)))
    exp = grad_cam(engine, crops)
    assert exp.cams.shape == (12, 112, 112)
    assert 0.0 <= exp.cams.min() and exp.cams.max() <= 1.0 + 1e-6
    assert exp.cams.std() > 0.05, "the heat map is flat"
    assert 0.0 <= exp.score <= 1.0
    blended = overlay(crops[0], exp.cams[0])
    assert blended.shape == crops[0].shape and blended.dtype == np.uint8
    sheet = contact_sheet(exp, tiles=6, columns=3, title="t")
    assert sheet.shape == (28 + 2 * (112 + 16), 3 * 112, 3)


def test_explain_of_a_video_without_faces_is_one_clear_error(tmp_path):
    blank = tmp_path / "blank.mp4"
    from analyzer.h264 import write_h264

    frames = (np.full((120, 160, 3), 90, np.uint8) for _ in range(30))
    write_h264(blank, frames, (160, 120), 30.0)
    result = run_cli("explain", str(blank), "--window", "10")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fewer than 10 frames with a face" in result.stderr.splitlines()[-1]
