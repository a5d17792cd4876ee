"""Temperature scaling: scores that mean what they say, at the window the service scores.

A classifier trained with cross-entropy is seldom calibrated, and this one less so at a
window length other than its training one (the LSTM's outputs averaged over 150 frames are
surer than over 8). Temperature scaling divides the logits by one number ``T``, fitted to
minimise the log loss on labelled clips scored the way the service scores them (the first
``window`` frames of each clip, the whole model). Ranking, AUC and the decision at 0.5 stay
as they were; what changes is how far a score can be taken at its word (ECE, Brier score,
log loss). ``T`` is stored in the checkpoint's :class:`~analyzer.model.Calibration` and
the engine applies it.

``train`` calibrates ``best.pt`` and ``last.pt`` on its validation clips when it ends;
``deepfake-monitor calibrate`` does it for an existing checkpoint (a reference-project
state_dict becomes a native checkpoint beside it, since a bare state_dict has nowhere to
keep ``T``). Operating points already recorded by ``evaluate`` are carried over to the new
scale: a threshold is a score, and the score of every clip moves the same monotone way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from analyzer.errors import DataError
from analyzer.model import (
    Calibration,
    LoadedModel,
    ModelMeta,
    OperatingPoint,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

SERVED_WINDOW = 150  # DFM_WINDOW_FRAMES' default: the window calibration is fitted at
# Temperatures tried: a grid even in log T, fine enough (0.5 % steps) that the log loss
# at the best point is within noise of the true minimum, and deterministic.
T_MIN, T_MAX, T_STEPS = 0.05, 20.0, 1201


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The ``T`` in ``[T_MIN, T_MAX]`` with the least mean cross-entropy of
    ``softmax(logits / T)`` against ``targets`` (class indices)."""
    grid = torch.exp(torch.linspace(math.log(T_MIN), math.log(T_MAX), T_STEPS))
    scaled = logits.float()[None] / grid[:, None, None]  # (T_STEPS, N, C)
    nll = F.cross_entropy(scaled.flatten(0, 1), targets.repeat(T_STEPS), reduction="none").view(
        T_STEPS, -1
    )
    best = int(nll.mean(dim=1).argmin())
    if best in (0, T_STEPS - 1):
        log.warning(
            "calibration: the best temperature is at the edge of the range tried (%g); the "
            "clips are too few or too easy to calibrate on",
            float(grid[best]),
        )
    return float(grid[best])


def window_logits(
    loaded: LoadedModel,
    clips: Sequence[np.ndarray],
    window: int,
    device: str = "auto",
    progress: Callable[..., object] | None = None,
) -> torch.Tensor:
    """(N, classes) logits of each clip's first ``window`` frames, before any temperature."""
    from analyzer.engine import Engine

    engine = Engine(loaded, device)
    rows = []
    for clip in clips:
        rows.append(engine.clip_logits(clip[:window][None]).cpu())
        if progress is not None:
            progress(1)
    loaded.model.cpu()  # the engine moved the shared module; checkpoints are saved from the CPU
    return torch.cat(rows)


def calibrated_meta(
    meta: ModelMeta, logits: torch.Tensor, labels: Sequence[str], window: int, data: str
) -> ModelMeta:
    """``meta`` with a temperature fitted to ``logits`` of clips labelled ``labels``, its
    effect on those clips recorded, and recorded operating points moved to the new scale."""
    from analyzer.evaluate import calibration_error

    if len(set(labels)) < 2:
        raise DataError(
            f"calibration needs REAL and FAKE clips; these {len(labels)} are all {labels[0]}"
        )
    fake = meta.fake_index
    y = np.array([1 if lb == "FAKE" else 0 for lb in labels])
    targets = torch.tensor([fake if lb == "FAKE" else 1 - fake for lb in labels])
    temperature = fit_temperature(logits, targets)

    def at(t: float) -> tuple[float, float]:
        loss = float(F.cross_entropy(logits / t, targets))
        p = torch.softmax(logits / t, dim=1)[:, fake].numpy().astype(np.float64)
        return loss, calibration_error(y, p)

    (loss_before, ece_before), (loss_after, ece_after) = at(1.0), at(temperature)
    calibration = Calibration(
        temperature=temperature,
        window_frames=window,
        videos=len(labels),
        data=data,
        log_loss_before=loss_before,
        log_loss_after=loss_after,
        ece_before=ece_before,
        ece_after=ece_after,
    )
    points = meta.operating_points
    if points is not None:
        ratio = meta.temperature / temperature

        def moved(p: OperatingPoint) -> OperatingPoint:
            return p.model_copy(update={"threshold": rescale(p.threshold, ratio)})

        points = points.model_copy(
            update={"eer": moved(points.eer), "target_fpr": moved(points.target_fpr)}
        )
    return meta.model_copy(update={"calibration": calibration, "operating_points": points})


def rescale(p: float, ratio: float) -> float:
    """A two-class score under temperature ``T_old`` as the score of the same logits under
    ``T_new``, with ``ratio = T_old / T_new``: ``sigmoid(logit(p) * ratio)``."""
    if p <= 0.0 or p >= 1.0:
        return p
    z = math.log(p / (1 - p)) * ratio
    return 1 / (1 + math.exp(-z)) if z > -700 else 0.0


def calibrate_checkpoint(
    checkpoint: Path,
    clips: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    window: int = SERVED_WINDOW,
    data: str = "",
    out: Path | None = None,
    device: str = "auto",
    progress: Callable[..., object] | None = None,
) -> tuple[Path, Calibration]:
    """Fit ``T`` on ``clips`` (each at least ``window`` frames) and store it.

    Written to ``out``, else over ``checkpoint`` when it is a native checkpoint, else (a
    reference-project state_dict) to ``<name>.calibrated.pt`` beside it.
    """
    short = [len(c) for c in clips if len(c) < window]
    if short:
        raise DataError(
            f"{len(short)} of {len(clips)} clips are shorter than the {window}-frame window "
            f"(one has {min(short)} frames); pass --window {min(short)} or longer clips"
        )
    loaded = load_checkpoint(checkpoint)
    logits = window_logits(loaded, clips, window, device, progress)
    meta = calibrated_meta(loaded.meta, logits, labels, window, data)
    if out is None:
        beside = checkpoint.with_name(checkpoint.stem + ".calibrated.pt")
        out = checkpoint if loaded.native else beside
    save_checkpoint(out, loaded.model.cpu(), meta)
    assert meta.calibration is not None
    return out, meta.calibration
