"""Evaluation metrics against hand-computed values; the report's images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analyzer.evaluate import metrics, write_report

# Six videos. At threshold 0.5: REAL 0.1 0.4 0.6 -> TN TN FP; FAKE 0.35 0.8 0.9 -> FN TP TP.
LABELS = ["REAL", "REAL", "REAL", "FAKE", "FAKE", "FAKE"]
P_FAKE = [0.1, 0.4, 0.6, 0.35, 0.8, 0.9]


def test_metrics_match_hand_computed_values():
    m = metrics(LABELS, P_FAKE)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"]["matrix"] == [[2, 1], [1, 2]]
    # Pairs (FAKE score > REAL score): 0.35 beats 0.1; 0.8 and 0.9 beat all three: 7 of 9.
    assert m["roc_auc"] == pytest.approx(7 / 9)
    expected = -np.mean(
        [math.log(0.9), math.log(0.6), math.log(0.4), math.log(0.35), math.log(0.8), math.log(0.9)]
    )
    assert m["log_loss"] == pytest.approx(expected)
    assert 0 < m["eer"] < 0.5


def test_calibration_and_operating_points_match_hand_computed_values():
    m = metrics(LABELS, P_FAKE, target_fpr=0.34)
    # Brier: mean squared gap to the label.
    gaps = [0.1, 0.4, 0.6, 0.65, 0.2, 0.1]
    assert m["brier"] == pytest.approx(np.mean(np.square(gaps)))
    # ECE over tenths: bins 1 (0.1), 3 (0.35), 4 (0.4), 6 (0.6), 8 (0.8), 9 (0.9), one
    # video each: the mean of |label - score|, the same gaps.
    assert m["ece"] == pytest.approx(np.mean(gaps))
    # Within a false-positive rate of 1/3 (one REAL of three over the cut), the cut at
    # 0.6 finds 0.8 and 0.9: TPR 2/3; lower cuts let two REALs through.
    target = m["operating_points"]["target_fpr"]
    assert target["threshold"] == pytest.approx(0.6)
    assert target["fpr"] == pytest.approx(1 / 3) and target["tpr"] == pytest.approx(2 / 3)
    eer = m["operating_points"]["eer"]
    assert eer["fpr"] == pytest.approx(1 - eer["tpr"])  # misses and false alarms equal
    # Calibrated scores have no calibration error; confident wrong ones the most.
    assert metrics(["REAL", "FAKE"] * 5, [0.0, 1.0] * 5)["ece"] == pytest.approx(0, abs=1e-6)
    assert metrics(["REAL", "FAKE"], [0.99, 0.01])["ece"] == pytest.approx(0.99)


def test_perfect_and_inverted_scores():
    assert metrics(["REAL", "FAKE"], [0.2, 0.7])["roc_auc"] == 1.0
    assert metrics(["REAL", "FAKE"], [0.7, 0.2])["roc_auc"] == 0.0
    assert metrics(["REAL", "FAKE"], [0.2, 0.7])["eer"] == 0.0


def test_scores_per_method_compare_each_method_with_the_real_videos():
    methods = ["none", "none", "none", "faceswap", "deepfakes", "deepfakes"]
    per = metrics(LABELS, P_FAKE, methods=methods)["per_method"]
    assert set(per) == {"faceswap", "deepfakes"}
    assert per["deepfakes"]["videos"] == 5 and per["deepfakes"]["roc_auc"] == 1.0
    assert per["faceswap"]["roc_auc"] == pytest.approx(1 / 3)


def test_report_writes_metrics_and_non_empty_images(tmp_path):
    from PIL import Image

    history = [
        {"train_loss": 0.7, "val_loss": 0.69, "train_accuracy": 0.5, "val_accuracy": 0.52},
        {"train_loss": 0.4, "val_loss": 0.45, "train_accuracy": 0.8, "val_accuracy": 0.75},
    ]
    write_report(tmp_path, LABELS, P_FAKE, history=history)
    assert json.loads((tmp_path / "metrics.json").read_text())["videos"] == 6
    for name in ("confusion_matrix.png", "roc.png", "reliability.png", "loss.png", "accuracy.png"):
        image = np.asarray(Image.open(tmp_path / name).convert("L"))
        assert image.shape[0] > 100 and image.std() > 5, name  # drawn, not blank


def test_training_plots_have_a_title_and_whole_epochs_on_their_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analyzer.evaluate import history_figure

    history = [{"train_loss": 0.7 - 0.1 * i, "val_loss": 0.72 - 0.1 * i} for i in range(3)]
    fig = history_figure(history, "loss")
    (ax,) = fig.axes
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    plt.close(fig)
    assert ax.get_title() == "loss per epoch (3 epochs)"
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # not 1.25, 1.5, ...
