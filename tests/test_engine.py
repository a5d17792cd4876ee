"""Cached per-frame features give the same window score as the whole clip at once."""

from __future__ import annotations

import numpy as np
import pytest

from analyzer.engine import Engine
from analyzer.faces import FaceCrop, FrameFaces
from analyzer.model import random_model
from streamer.streams import StreamState

WINDOW, HOP = 60, 15  # any window will do; a short one keeps the study's backbone quick


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(random_model(seed=7), "cpu")


def _feed(state: StreamState, engine: Engine, crops: np.ndarray) -> list:
    """Push crops (one face, track 1) through the stream state; collect due windows."""
    jobs = []
    for i, crop in enumerate(crops):
        faces = FrameFaces([FaceCrop(1, (0.1, 0.1, 0.3, 0.3), crop)])
        pending = state.add_frame(i / 30, faces, arrival=0.0)
        state.set_features(pending, engine.backbone(np.stack([p.crop for p in pending])))
        if state.window_due():
            jobs.append(state.build_window())
    return jobs


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float32, 1e-5), (np.float16, 1e-4)])
def test_window_scores_from_cached_features_equal_whole_clip(engine, dtype, tolerance):
    """The same scores as the whole clip through the model: exactly with a float32 ring;
    within float16's rounding with the service's float16 ring."""
    rng = np.random.default_rng(0)
    stream_a = rng.integers(0, 256, (WINDOW + 2 * HOP, 112, 112, 3), dtype=np.uint8)
    stream_b = rng.integers(0, 256, (WINDOW, 112, 112, 3), dtype=np.uint8)
    ring = {"window": WINDOW, "hop": HOP, "feature_dtype": dtype}
    jobs_a = _feed(StreamState("a", **ring), engine, stream_a)
    jobs_b = _feed(StreamState("b", **ring), engine, stream_b)
    assert [j.first_frame for j in jobs_a] == [0, HOP, 2 * HOP]
    assert [j.first_frame for j in jobs_b] == [0]

    # One head batch mixing windows of both streams, as the batcher sends it.
    jobs = [jobs_a[0], jobs_b[0], jobs_a[1], jobs_a[2]]
    cached = engine.head([seq for j in jobs for seq in j.sequences])

    clips = [
        stream_a[0:WINDOW],
        stream_b[0:WINDOW],
        stream_a[HOP : HOP + WINDOW],
        stream_a[2 * HOP : 2 * HOP + WINDOW],
    ]
    whole = np.concatenate([engine.score_clips(c[None]) for c in clips])
    diff = np.abs(cached - whole).max()
    assert diff <= tolerance, f"max abs diff {diff}"
    # And the scores are not all the same number (the comparison would be vacuous).
    assert np.ptp(whole) > 0


def test_head_batches_windows_of_different_lengths(engine):
    rng = np.random.default_rng(1)
    windows = [rng.standard_normal((n, 2048)).astype(np.float32) for n in (30, 150, 30, 75)]
    together = engine.head(windows)
    alone = np.concatenate([engine.head([w]) for w in windows])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert ((together >= 0) & (together <= 1)).all()


def test_backbone_rejects_crops_of_the_wrong_size(engine):
    with pytest.raises(ValueError, match="112x112"):
        engine.backbone(np.zeros((2, 64, 64, 3), np.uint8))
    assert engine.backbone(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 2048)
