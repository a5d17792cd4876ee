"""Temperature scaling: fitted on one split, it lowers the calibration error on another;
thresholds follow a new temperature; the served threshold's rule; the engine applies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyzer.calibrate import calibrated_meta, fit_temperature, rescale
from analyzer.evaluate import calibration_error
from analyzer.model import DEFAULT_THRESHOLD, ModelMeta, OperatingPoint, OperatingPoints

FAKE = 0  # class index of FAKE, as in ModelMeta's default class_names


def overconfident(n: int, seed: int, scale: float = 6.0) -> tuple[torch.Tensor, list[str]]:
    """Two-class logits of ``n`` clips whose true log-odds are ``z`` but which the model
    states ``scale`` times too loudly (a network sure of itself at a long window)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    fake = rng.random(n) < 1 / (1 + np.exp(-z))
    logits = np.zeros((n, 2), np.float32)
    logits[:, FAKE] = scale * z / 2
    logits[:, 1 - FAKE] = -scale * z / 2
    return torch.from_numpy(logits), ["FAKE" if f else "REAL" for f in fake]


def p_fake(logits: torch.Tensor, temperature: float) -> np.ndarray:
    return torch.softmax(logits / temperature, dim=1)[:, FAKE].numpy().astype(np.float64)


def labels01(labels: list[str]) -> np.ndarray:
    return np.array([1 if lb == "FAKE" else 0 for lb in labels])


def test_a_temperature_fitted_on_one_split_lowers_the_error_on_another():
    fit_logits, fit_labels = overconfident(600, seed=1)
    held_logits, held_labels = overconfident(600, seed=2)
    targets = torch.tensor([FAKE if lb == "FAKE" else 1 - FAKE for lb in fit_labels])
    t = fit_temperature(fit_logits, targets)
    assert t == pytest.approx(6.0, rel=0.2)  # the overstatement, recovered
    y = labels01(held_labels)
    before = calibration_error(y, p_fake(held_logits, 1.0))
    after = calibration_error(y, p_fake(held_logits, t))
    assert before > 0.1 and after < before / 2, (before, after)
    # The ranking and the decision at 0.5 do not move.
    assert ((p_fake(held_logits, 1.0) >= 0.5) == (p_fake(held_logits, t) >= 0.5)).all()


def test_an_underconfident_model_gets_a_temperature_below_one():
    logits, labels = overconfident(600, seed=3, scale=0.3)
    targets = torch.tensor([FAKE if lb == "FAKE" else 1 - FAKE for lb in labels])
    assert fit_temperature(logits, targets) == pytest.approx(0.3, rel=0.2)


def test_recorded_thresholds_keep_their_decisions_under_a_new_temperature():
    logits, labels = overconfident(200, seed=4)
    old = 2.0
    cut = float(np.quantile(p_fake(logits, old), 0.7))
    point = OperatingPoint(threshold=cut, fpr=0.1, tpr=0.5)
    meta = ModelMeta(
        version="t",
        calibration=None,
        operating_points=OperatingPoints(
            eer=point, target_fpr=point, target=0.01, window_frames=8, videos=200
        ),
    )
    meta = calibrated_meta(meta, logits, labels, window=8, data="test")  # first: T from 1
    assert meta.calibration is not None and meta.operating_points is not None
    new = meta.calibration.temperature
    # The threshold recorded under T=1 moved with the scores: the same clips are FAKE.
    moved = meta.operating_points.target_fpr.threshold
    assert ((p_fake(logits, 1.0) >= cut) == (p_fake(logits, new) >= moved)).all()
    assert rescale(cut, old / new) == pytest.approx(
        float(torch.sigmoid(torch.logit(torch.tensor(cut, dtype=torch.float64)) * old / new))
    )
    assert meta.calibration.ece_after < meta.calibration.ece_before
    assert meta.calibration.log_loss_after < meta.calibration.log_loss_before


def test_calibration_needs_both_labels():
    from analyzer.errors import DataError

    logits, _ = overconfident(10, seed=5)
    with pytest.raises(DataError, match="REAL and FAKE"):
        calibrated_meta(ModelMeta(version="t"), logits, ["REAL"] * 10, window=8, data="")


def test_the_served_threshold_is_the_setting_else_the_checkpoints_else_the_default():
    bare = ModelMeta(version="t")
    assert bare.served_threshold(None) == (DEFAULT_THRESHOLD, "default")
    assert bare.served_threshold(0.7) == (0.7, "setting")
    points = OperatingPoints(
        eer=OperatingPoint(threshold=0.4, fpr=0.1, tpr=0.9),
        target_fpr=OperatingPoint(threshold=0.83, fpr=0.01, tpr=0.6),
        target=0.01,
        window_frames=150,
        videos=40,
    )
    recorded = bare.model_copy(update={"operating_points": points})
    assert recorded.served_threshold(None) == (0.83, "checkpoint")
    assert recorded.served_threshold(0.0) == (0.0, "setting")  # 0 is a setting, not unset


def test_the_engine_divides_the_logits_by_the_temperature():
    from analyzer.engine import Engine
    from analyzer.model import Calibration, LoadedModel, VideoClassifier

    torch.manual_seed(0)
    meta = ModelMeta(version="t", backbone="mobilenet_v3_small", lstm_hidden=16)
    model = VideoClassifier.for_meta(meta).eval()
    clip = np.random.default_rng(0).integers(0, 255, (1, 3, 112, 112, 3), np.uint8)
    plain = Engine(LoadedModel(model, meta), "cpu")
    logits = plain.clip_logits(clip)
    warm = meta.model_copy(
        update={
            "calibration": Calibration(
                temperature=4.0,
                window_frames=3,
                videos=2,
                log_loss_before=1.0,
                log_loss_after=0.5,
                ece_before=0.3,
                ece_after=0.1,
            )  # fmt: skip
        }
    )
    scaled = Engine(LoadedModel(model, warm), "cpu")
    expected = torch.softmax(logits / 4.0, dim=1)[0, FAKE]
    assert scaled.score_clips(clip)[0] == pytest.approx(float(expected), abs=1e-6)
    feats = scaled.backbone(clip[0])
    assert scaled.head([feats])[0] == pytest.approx(float(expected), abs=1e-5)
    assert plain.score_clips(clip)[0] != pytest.approx(float(expected), abs=1e-4)
