"""Video-level evaluation: accuracy, ROC AUC, EER, log loss, calibration, plots.

:func:`metrics` takes the true labels and P(FAKE) per video. Beside accuracy, ROC AUC,
EER and log loss it says how far the scores can be taken at their word: the Brier score
and the expected calibration error (ECE, over ``CALIBRATION_BINS`` equal-width bins of
P(FAKE)), and two operating points: the threshold at the EER, and the threshold that
keeps the false-positive rate at most ``target_fpr`` (with the true-positive rate it
gives). :func:`write_report` writes ``metrics.json``, ``confusion_matrix.png``,
``roc.png``, ``reliability.png`` and, from a checkpoint's training history, ``loss.png``
and ``accuracy.png`` (train against validation). Scores per manipulation method come
out when the data names the method.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

CALIBRATION_BINS = 10


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: over equal-width bins of P(FAKE), the gap between the
    share of FAKE videos and the mean score, weighted by the bin's share of videos."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(y[members].mean() - p[members].mean())
    return float(total)


def metrics(
    labels: Sequence[str],
    p_fake: Sequence[float],
    *,
    threshold: float = 0.5,
    methods: Sequence[str] | None = None,
    target_fpr: float = 0.01,
) -> dict[str, Any]:
    y = np.array([1 if lb == "FAKE" else 0 for lb in labels])
    p = np.clip(np.asarray(p_fake, dtype=np.float64), 1e-7, 1 - 1e-7)
    if len(y) == 0:
        raise ValueError("no predictions to evaluate")
    pred = (p >= threshold).astype(int)
    out: dict[str, Any] = {
        "videos": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, p, pos_label=1)),
        "ece": calibration_error(y, p),
        "threshold": threshold,
        # Rows: true label, columns: predicted label, in the order REAL, FAKE.
        "confusion_matrix": {
            "labels": ["REAL", "FAKE"],
            "matrix": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        },
    }
    if 0 < y.sum() < len(y):
        out["roc_auc"] = float(skm.roc_auc_score(y, p))
        fpr, tpr, cuts = skm.roc_curve(y, p, drop_intermediate=False)
        cuts = np.minimum(cuts, 1.0)  # the first cut is +inf: nothing is FAKE
        fnr = 1 - tpr
        i = int(np.argmin(np.abs(fnr - fpr)))
        out["eer"] = float((fpr[i] + fnr[i]) / 2)  # where misses and false alarms meet
        j = int(np.flatnonzero(fpr <= target_fpr)[-1])  # the most found within the budget
        out["operating_points"] = {
            "eer": {"threshold": float(cuts[i]), "fpr": float(fpr[i]), "tpr": float(tpr[i])},
            "target_fpr": {"target": target_fpr, "threshold": float(cuts[j]),
                           "fpr": float(fpr[j]), "tpr": float(tpr[j])},
        }  # fmt: skip
    else:
        out["roc_auc"] = out["eer"] = math.nan  # one class only: undefined
    if methods is not None:
        per: dict[str, Any] = {}
        for method in sorted(set(methods) - {"none"}):
            idx = [i for i, m in enumerate(methods) if m == method or y[i] == 0]
            sub = metrics([labels[i] for i in idx], [float(p[i]) for i in idx], threshold=threshold,
                          target_fpr=target_fpr)  # fmt: skip
            per[method] = {k: sub[k] for k in ("videos", "accuracy", "roc_auc", "eer")}
        out["per_method"] = per
    return out


def write_report(
    out: Path,
    labels: Sequence[str],
    p_fake: Sequence[float],
    *,
    history: Sequence[dict[str, float]] = (),
    methods: Sequence[str] | None = None,
    threshold: float = 0.5,
    target_fpr: float = 0.01,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics (plus ``extra``, e.g. the window scored) in ``metrics.json``, and the plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    scored = metrics(labels, p_fake, threshold=threshold, methods=methods, target_fpr=target_fpr)
    result = {**scored, **(extra or {})}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")

    cm = np.array(result["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (r, c), v in np.ndenumerate(cm):
        dark = v > cm.max() / 2
        ax.text(
            c, r, str(v), ha="center", va="center", fontsize=14, color="white" if dark else "black"
        )
    ax.set_xticks([0, 1], ["REAL", "FAKE"])
    ax.set_yticks([0, 1], ["REAL", "FAKE"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {result['accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    y = np.array([1 if lb == "FAKE" else 0 for lb in labels])
    fig, ax = plt.subplots(figsize=(4, 4))
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = skm.roc_curve(y, np.asarray(p_fake, dtype=np.float64))
        ax.plot(fpr, tpr, label=f"AUC {result['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, held-out clips")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)

    fig = reliability_figure(y, np.asarray(p_fake, dtype=np.float64), result)
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)

    for key in ("loss", "accuracy"):
        if not history or f"train_{key}" not in history[0]:
            continue
        fig = history_figure(history, key)
        fig.savefig(out / f"{key}.png", dpi=100)
        plt.close(fig)
    return result


def reliability_figure(y: np.ndarray, p: np.ndarray, result: dict[str, Any]) -> Any:
    """Reliability diagram: per bin of P(FAKE), the share of FAKE videos against the mean
    score (on the diagonal when calibrated), with each bin's count."""
    import matplotlib.pyplot as plt

    which = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    means, shares, counts = [], [], []
    for b in range(CALIBRATION_BINS):
        members = which == b
        if members.any():
            means.append(p[members].mean())
            shares.append(y[members].mean())
            counts.append(int(members.sum()))
    ax.plot(means, shares, "o-", label=f"ECE {result['ece']:.3f}, Brier {result['brier']:.3f}")
    for x, s, n in zip(means, shares, counts, strict=True):
        ax.annotate(str(n), (x, s), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=8)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("mean P(FAKE) in the bin")
    ax.set_ylabel("share of FAKE videos")
    ax.set_title("reliability, held-out clips")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def history_figure(history: Sequence[dict[str, float]], key: str) -> Any:
    """Training and validation ``key`` per epoch: a title, whole-number epoch ticks."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = range(1, len(history) + 1)
    for split in ("train", "val"):
        values = [h.get(f"{split}_{key}", math.nan) for h in history]
        ax.plot(epochs, values, marker="o", label=split)
    ax.set_title(f"{key} per epoch ({len(history)} epochs)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    return fig


def evaluate_checkpoint(
    checkpoint: Path,
    items: Sequence[Any],
    out: Path,
    *,
    device: str = "auto",
    threshold: float = 0.5,
    window: int | None = None,
    target_fpr: float = 0.01,
    record: str | None = None,
) -> dict[str, Any]:
    """Score each clip's first window with the whole model; write the report to ``out``.

    The window is ``window`` frames, else the one the checkpoint was calibrated at, else
    its ``window_frames``. With ``record`` (a description of the clips, e.g. "test split
    of manifest.csv"), the two operating points are written into the checkpoint, where
    the service takes its threshold from; ``result["recorded"]`` says whether they were.
    """
    from analyzer.engine import Engine
    from analyzer.model import OperatingPoints, load_checkpoint, save_checkpoint
    from analyzer.train import read_clip

    loaded = load_checkpoint(checkpoint)
    engine = Engine(loaded, device)
    calibration = loaded.meta.calibration
    frames = window or (calibration.window_frames if calibration else loaded.meta.window_frames)
    scores = []
    for item in items:
        clip = read_clip(item.path)[:frames]
        scores.append(float(engine.score_clips(clip[None])[0]))
    result = write_report(
        out,
        [i.label for i in items],
        scores,
        history=loaded.meta.history,
        methods=[i.method for i in items],
        threshold=threshold,
        target_fpr=target_fpr,
        extra={
            "window_frames": frames,
            "temperature": loaded.meta.temperature,
            "calibration": calibration.model_dump() if calibration else None,
        },
    )
    rows = ["clip,label,method,p_fake"]
    rows += [f"{i.path},{i.label},{i.method},{s:.6f}" for i, s in zip(items, scores, strict=True)]
    (out / "predictions.csv").write_text("\n".join(rows) + "\n")
    result["recorded"] = False
    if record is not None and loaded.native and "operating_points" in result:
        found = result["operating_points"]
        points = OperatingPoints.model_validate(
            {
                "eer": {k: found["eer"][k] for k in ("threshold", "fpr", "tpr")},
                "target_fpr": {k: found["target_fpr"][k] for k in ("threshold", "fpr", "tpr")},
                "target": target_fpr,
                "window_frames": frames,
                "videos": result["videos"],
                "data": record,
            }
        )
        meta = loaded.meta.model_copy(update={"operating_points": points})
        save_checkpoint(checkpoint, loaded.model.cpu(), meta)
        result["recorded"] = True
    return result
