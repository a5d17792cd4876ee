"""Per-stream state: window schedule, rings, smoothing, hysteresis, NO_FACE, sequence."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from analyzer.faces import FaceCrop, FrameFaces
from streamer.streams import StreamState, TrackBuffer
from streamer.verdict import ModelRef
from tests.conftest import REPO

MODEL = ModelRef(name="resnext50-lstm", version="test", sha256=None)
CROP = np.zeros((112, 112, 3), np.uint8)


def faces(*track_ids: int, ended: tuple[int, ...] = ()) -> FrameFaces:
    return FrameFaces([FaceCrop(t, (0.1, 0.2, 0.3, 0.5), CROP) for t in track_ids], list(ended))


def feed(state: StreamState, frames: int, *track_ids: int) -> list[int]:
    """Feed frames with features; returns the frame counts at which a window was due."""
    due = []
    for _ in range(frames):
        pending = state.add_frame(state.frames_seen / state.fps, faces(*track_ids), 0.0)
        state.set_features(pending, np.ones((len(pending), 2048), np.float32))
        if state.window_due():
            due.append(state.frames_seen)
    return due


@pytest.mark.parametrize(("frames", "hop"), [(150, 30), (180, 30), (299, 30), (240, 15), (400, 75)])
def test_window_count_follows_the_formula(frames, hop):
    due = feed(StreamState("s", window=150, hop=hop), frames, 1)
    assert len(due) == (frames - 150) // hop + 1
    assert due[0] == 150 and all(b - a == hop for a, b in zip(due, due[1:], strict=False))


def test_window_job_has_the_track_features_in_frame_order():
    state = StreamState("s", window=10, hop=5)
    for i in range(12):
        pending = state.add_frame(i / 30, faces(1), 0.0)
        state.set_features(pending, np.full((1, 2048), i, np.float32))
    job = state.build_window()
    assert (job.first_frame, job.last_frame) == (2, 11)
    assert job.sequences[0][:, 0].tolist() == list(range(2, 12))
    assert job.start_pts_s == pytest.approx(2 / 30) and job.end_pts_s == pytest.approx(11 / 30)
    assert job.boxes == [[0.1, 0.2, 0.2, 0.3]]  # x, y, width, height


def test_ring_memory_is_bounded_per_track():
    state = StreamState("s", window=20, hop=5)
    feed(state, 500, 1)
    track = state.tracks[1]
    assert len(track.crops) == 0 and track.feats.shape == (20, 2048)
    # The live service's ring at the served window, the study's model: at most 1 MB a face
    # (features in float16, no crops); docs/service.md gives this figure.
    live = TrackBuffer(1, 150, 112, 2048)
    assert live.feats.dtype == np.float16 and live.nbytes <= 1_000_000
    assert f"{live.nbytes / 1e6:.2f} MB" in (REPO / "docs" / "service.md").read_text()
    # Uploads keep the crops of their top window for Grad-CAM, and only they.
    kept = StreamState("s", window=20, hop=5, keep_crops=True)
    feed(kept, 500, 1)
    assert kept.tracks[1].crops.shape == (20, 112, 112, 3)
    with pytest.raises(ValueError, match="keeps no crops"):
        state.window_crops(state.build_window(), 1)


def test_features_for_an_overwritten_slot_are_dropped_as_late():
    state = StreamState("s", window=4, hop=2)
    old = state.add_frame(0.0, faces(1), 0.0)
    for i in range(4):
        state.add_frame((i + 1) / 30, faces(1), 0.0)
    assert state.set_features(old, np.ones((1, 2048), np.float32)) == 1


def test_short_tracks_sit_out_and_no_track_means_no_face():
    state = StreamState("s", window=150, hop=30)  # a face needs 30 of the 150 frames
    feed(state, 130, 1)
    feed(state, 20, 1, 2)  # track 2 has 20 frames in the window: too few
    job = state.build_window()
    assert job.track_ids == [1]
    empty = StreamState("e", window=10, hop=5)
    feed(empty, 10)
    verdict = empty.make_verdict(empty.build_window(), [], MODEL, 0.0)
    assert verdict.label == "NO_FACE" and verdict.score is None and verdict.faces == []


def test_ended_track_is_forgotten_once_out_of_the_window():
    state = StreamState("s", window=10, hop=5)
    feed(state, 5, 1)
    state.add_frame(5 / 30, faces(ended=(1,)), 0.0)
    assert 1 in state.tracks
    feed(state, 10)
    assert state.tracks == {}


def verdicts_for(scores: list[float], **kw: float) -> list:
    state = StreamState("s", window=1, hop=1, **kw)
    out = []
    for s in scores:
        feed(state, 1, 1)
        out.append(state.make_verdict(state.build_window(), [s], MODEL, 0.0))
    return out


def test_hysteresis_keeps_a_hovering_score_from_flapping():
    hovering = [0.6, 0.49, 0.52, 0.48, 0.51, 0.47, 0.53]
    labels = [v.label for v in verdicts_for(hovering, smoothing=1.0, hysteresis=0.05)]
    assert labels == ["FAKE"] * 7
    labels = [v.label for v in verdicts_for([0.6, 0.4, 0.52, 0.56], smoothing=1.0)]
    assert labels == ["FAKE", "REAL", "REAL", "FAKE"]


def test_smoothed_score_is_an_ema_and_score_is_the_worst_face():
    vs = verdicts_for([0.2, 1.0], smoothing=0.5)
    assert vs[1].smoothed_score == pytest.approx(0.6)
    state = StreamState("s", window=3, hop=3)
    feed(state, 3, 1, 2)
    v = state.make_verdict(state.build_window(), [0.1, 0.9], MODEL, 0.0)
    assert v.score == pytest.approx(0.9) and [f.track_id for f in v.faces] == [1, 2]


def test_seq_is_gapless_within_one_session():
    vs = verdicts_for([0.1] * 5)
    assert [v.seq for v in vs] == [0, 1, 2, 3, 4]
    assert len({v.session for v in vs}) == 1
    uuid.UUID(vs[0].session)
