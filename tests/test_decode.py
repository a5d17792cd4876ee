"""Resampling to the model frame rate and decoding real files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from streamer.config import load_settings
from streamer.cpus import cpu_budget
from streamer.errors import SourceError
from streamer.sources.decode import (
    DecodeLimits,
    Picture,
    decode,
    decode_pictures,
    media_seconds,
    resample,
)
from streamer.urls import parse_source_url
from tests.servers import thread_count

DOT = np.zeros((2, 2, 3), np.uint8)


def frames_at(fps: float, seconds: float) -> list[tuple[float, np.ndarray]]:
    return [(i / fps, np.full((2, 2, 3), i % 256, np.uint8)) for i in range(round(fps * seconds))]


@pytest.mark.parametrize(("src_fps", "expected"), [(30, 60), (60, 60), (25, 59), (15, 59)])
def test_resample_puts_frames_on_a_30_fps_clock(src_fps, expected):
    out = list(resample(frames_at(src_fps, 2.0), 30.0))
    assert len(out) == expected
    assert [f.index for f in out] == list(range(len(out)))
    assert np.allclose([f.pts_s for f in out], np.arange(len(out)) / 30.0)


def test_resample_shows_the_latest_frame_at_each_tick():
    out = list(resample(frames_at(15, 1.0), 30.0))
    # 15 fps source: every source frame is shown twice, except the last.
    assert [int(f.rgb[0, 0, 0]) for f in out[:6]] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("src_fps", [60, 45, 30, 15])
def test_a_frame_the_clock_skips_hands_its_delivery_marks_to_the_next_one_shown(src_fps):
    """A Kafka message's offset is committed once the frame carrying it is analysed; a
    frame a faster source's clock never shows must not take its marks with it (the
    commit would wait for the stream's end), nor may a gap's last frame."""
    frames = []
    for i, (t, rgb) in enumerate(frames_at(src_fps, 2.0)):
        picture = Picture(rgb)
        picture.marks = (i,)
        # A gap after frame 20: the segment before it ends without a tick for frame 20.
        frames.append((t + (5.0 if i > 20 else 0.0) + (0.5 / 30 if i == 20 else 0.0), picture))
    seen: list[object] = []
    for frame in resample(frames, 30.0, max_gap_s=1.0):
        seen += frame.picture.marks
        frame.picture.marks = ()  # taken with the picture's first tick (SourceWorker._offer)
    # The last frame's, when no tick shows it, are done when its stream ends.
    assert seen[: len(frames) - 1] == list(range(len(frames) - 1))


def test_decode_reads_every_frame_of_a_synthetic_clip(synth_clips):
    clip = sorted(synth_clips.glob("*.mp4"))[0]
    frames = list(decode(str(clip)))
    assert len(frames) == 180
    assert frames[0][0] == 0.0 and frames[-1][0] == pytest.approx(179 / 30, abs=1e-3)
    assert frames[0][1].shape == (360, 480, 3)


def test_a_streams_decoder_runs_the_threads_it_is_given(synth_clips):
    """A node of many streams gives each decoder one thread (DFM_DECODE_THREADS unset,
    the CPUs over DFM_MAX_STREAMS); FFmpeg's own default is one per core for each."""
    clip = str(sorted(synth_clips.glob("*.mp4"))[0])
    started = {}
    for threads in (1, 3):
        before = thread_count(os.getpid())
        frames = decode_pictures(clip, limits=DecodeLimits(threads=threads))
        for _ in range(5):
            next(frames)
        started[threads] = thread_count(os.getpid()) - before
        frames.close()
    assert started == {1: 0, 3: 3}
    assert load_settings(max_streams=16).decoder_threads() == max(1, cpu_budget() // 16)
    assert load_settings(max_streams=1).decoder_threads() == cpu_budget()
    assert load_settings(decode_threads=2).decoder_threads() == 2


def test_a_files_length_gives_scans_progress_bar_its_total(synth_clips, tmp_path):
    """``scan`` of a file shows frames done of a known total (and so an ETA)."""
    clip = sorted(synth_clips.glob("*.mp4"))[0]
    seconds = media_seconds(parse_source_url(str(clip), kind="scan"))
    frames = len(list(resample(decode(str(clip)), 30.0)))
    assert seconds is not None and round(seconds * 30) == frames
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    for unknown in (str(tmp_path / "junk.mp4"), str(tmp_path / "none.mp4"), "rtsp://cam:554/x"):
        assert media_seconds(parse_source_url(unknown, kind="scan")) is None


def test_decode_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list(decode(str(tmp_path / "none.mp4")))
