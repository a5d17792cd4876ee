"""`deepfake-monitor scan | synth | schema` as a user runs them, good input and bad."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import av
import jsonschema
import numpy as np
import pytest
import torch

from tests.conftest import SCHEMA_FILE, json_lines, run_cli
from tests.servers import SilentServer


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("deepfake-monitor: error: ")
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_schema_command_matches_the_committed_schema():
    result = run_cli("schema")
    assert result.returncode == 0
    assert result.stdout == SCHEMA_FILE.read_text(), "run 'make schema' and commit the result"


@pytest.mark.parametrize("hop", [30, 15])
def test_scan_synthetic_clips_one_valid_verdict_per_window(synth_clips, validator, hop):
    frames = 180
    # A REAL clip at one hop, a FAKE one at the other: the study's model on the CPU is slow.
    for clip in sorted(synth_clips.glob("*.mp4"))[:2][hop == 15 :][:1]:
        result = run_cli("scan", str(clip), "--random-weights", "--hop", str(hop))
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", "a good run keeps stderr quiet"
        verdicts = json_lines(result.stdout)
        assert len(verdicts) == (frames - 150) // hop + 1
        for v in verdicts:
            validator.validate(v)
            assert v["stream_id"] == clip.name
            assert v["faces"], "the synthetic clips have faces in every frame"
            assert v["label"] in ("REAL", "FAKE") and v["window"]["frames"] == 150
            assert v["model"] == {
                "name": "resnext50-lstm",
                "version": "random-init",
                "sha256": None,
            }
        assert [v["seq"] for v in verdicts] == list(range(len(verdicts)))
        assert len({v["session"] for v in verdicts}) == 1
        starts = [v["window"]["start_pts_s"] for v in verdicts]
        assert starts == pytest.approx([i * hop / 30 for i in range(len(verdicts))], abs=1e-3)


def test_scan_without_a_checkpoint_uses_the_labelled_demo(synth_clips):
    # With the PyTorch face detector (the other scan tests use MediaPipe's runtime).
    clip = sorted(synth_clips.glob("*.mp4"))[0]
    result = run_cli("scan", str(clip), "--hop", "30", "--detector", "torch")
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(verdicts) == 2
    from analyzer.model import BUNDLED_CHECKPOINT, load_checkpoint

    # No --threshold: the demo's recorded operating point (scripts/finish_demo.py).
    points = load_checkpoint(BUNDLED_CHECKPOINT).meta.operating_points
    assert points is not None and points.target_fpr.fpr <= points.target
    for v in verdicts:
        assert v["threshold"] == pytest.approx(points.target_fpr.threshold)
        assert v["model"]["name"] == "synthetic-demo-mobilenetv3s-lstm256"
        assert v["model"]["version"] == "synthetic-demo-5" and len(v["model"]["sha256"]) == 64
        assert v["faces"], "the PyTorch detector found no face"


def test_not_a_video(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is text, not a video\n" * 100)
    assert_one_line_error(run_cli("scan", str(tmp_path / "notes.mp4"), "--random-weights"),
                          "is not a video")  # fmt: skip


def test_zero_length_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert_one_line_error(run_cli("scan", str(tmp_path / "empty.mp4"), "--random-weights"), "empty")


def test_missing_file(tmp_path):
    assert_one_line_error(run_cli("scan", str(tmp_path / "gone.mp4"), "--random-weights"),
                          "does not exist")  # fmt: skip


def test_truncated_mp4(synth_clips, tmp_path):
    data = sorted(synth_clips.glob("*.mp4"))[0].read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("scan", str(tmp_path / "cut.mp4"), "--random-weights"),
                          "cut.mp4")  # fmt: skip


def test_url_that_refuses(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("scan", f"rtsp://127.0.0.1:{port}/cam", "--random-weights", "--timeout", "3")
    assert_one_line_error(result, f"127.0.0.1:{port}")


def test_url_that_does_not_answer():
    with SilentServer() as silent:
        result = run_cli("scan", f"rtsp://127.0.0.1:{silent.port}/cam", "--random-weights",
                         "--timeout", "2", timeout=60)  # fmt: skip
    assert_one_line_error(result, "did not answer within 2 s")


def test_video_without_faces_gives_no_face_verdicts(tmp_path, validator):
    path = tmp_path / "clouds.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        for i in range(160):
            frame = np.roll(base, i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    result = run_cli("scan", str(path), "--random-weights")
    assert result.returncode == 0, result.stderr
    verdicts = json_lines(result.stdout)
    assert len(verdicts) == 1
    validator.validate(verdicts[0])
    assert verdicts[0]["label"] == "NO_FACE" and verdicts[0]["score"] is None


def test_checkpoint_of_the_wrong_shape(synth_clips, tmp_path):
    torch.save(
        {"model.0.weight": torch.zeros(64, 3, 3, 3), "linear1.weight": torch.zeros(2, 2048)},
        tmp_path / "model_90_acc_20_frames_x.pt",
    )
    clip = sorted(synth_clips.glob("*.mp4"))[0]
    result = run_cli(
        "scan", str(clip), "--checkpoint", str(tmp_path / "model_90_acc_20_frames_x.pt")
    )
    # The legacy notice is a log line; the error is the last line and the only error.
    errors = [ln for ln in result.stderr.splitlines() if "error" in ln]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr
    assert "does not fit the resnext50_32x4d-LSTM2048" in errors[0]
    assert "backbone.0.weight" in errors[0]


def test_bad_options_are_rejected(synth_clips):
    clip = str(sorted(synth_clips.glob("*.mp4"))[0])
    assert_one_line_error(run_cli("scan", clip, "--random-weights", "--hop", "200"), "--hop 200")
    assert_one_line_error(run_cli("scan", clip, "--random-weights", "--stream-id", "a b"),
                          "--stream-id")  # fmt: skip


def test_synth_writes_clips_and_reports(tmp_path: Path, photos_dir):
    result = run_cli("synth", str(tmp_path / "s"), "--videos", "2", "--frames", "12",
                     "--identities", "sample1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 2 clips (1 REAL, 1 FAKE)" in result.stdout
    assert len(list((tmp_path / "s").glob("*.mp4"))) == 2


def test_synth_fake_without_a_donor_face_is_one_clear_error(tmp_path: Path, photos_dir):
    result = run_cli("synth", str(tmp_path / "s"), "--videos", "2", "--identities", "sample2")
    assert_one_line_error(result, "needs a donor face")
