"""Heat maps: where in the face crops the model looked when it called a window FAKE.

Grad-CAM over the backbone's last stage: the gradient of the window's FAKE logit with
respect to that stage's activations, averaged over space, weights the activation maps of
each frame; their positive sum, upsampled to the crop, is the frame's heat map. Maps are
scaled by the largest value in the window, so frames of one window compare with each
other (a frame that did not matter stays dark). With a legacy checkpoint only the last
frame counts (see :mod:`analyzer.model`), and the maps show that.

``deepfake-monitor explain VIDEO`` writes, per window, one overlay PNG per frame and one
contact sheet of evenly spaced frames with the window's score.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from analyzer.engine import Engine
from analyzer.faces import Detector, main_face_crops


@dataclass
class Explanation:
    crops: np.ndarray  # (T, H, W, 3) uint8 RGB
    cams: np.ndarray  # (T, H, W) float32 in [0, 1]
    score: float  # P(FAKE) of the window


def grad_cam(engine: Engine, crops: np.ndarray) -> Explanation:
    """Grad-CAM maps of one window of ``(T, H, W, 3)`` uint8 RGB face crops."""
    model = engine.model
    x = engine.prepare(crops).float()
    # Grad-CAM needs the gradient at the last stage's activations only: the backbone runs
    # without a graph, and the backward pass stops there (a third of the time it took
    # through the whole backbone, which also made gradients of every weight).
    with torch.no_grad():
        acts = model.backbone(x)  # (T, C, h, w)
    with torch.enable_grad():
        acts.requires_grad_(True)
        feats = model.pool(acts).flatten(1)
        logits = model.head(feats[None].float())
        fake = logits[0, engine.fake_index]
        model.zero_grad(set_to_none=True)
        fake.backward()
    assert acts.grad is not None
    model.zero_grad(set_to_none=True)  # a serving model keeps no gradient memory
    weights = acts.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=crops.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    peak = float(cam.max())
    cams = (cam / peak if peak > 0 else cam).cpu().numpy().astype(np.float32)
    score = float(torch.softmax(logits.detach().float(), dim=1)[0, engine.fake_index])
    return Explanation(np.asarray(crops), cams, score)


def overlay(crop: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB crop with its heat map (jet colours) blended over it."""
    level = (np.clip(cam, 0, 1) * 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.clip((1 - alpha) * crop + alpha * heat, 0, 255).astype(np.uint8)


def contact_sheet(
    exp: Explanation, *, tiles: int = 16, columns: int = 8, title: str = ""
) -> np.ndarray:
    """Evenly spaced overlays of a window in a grid, with a caption line on top."""
    t = len(exp.crops)
    picks = np.unique(np.linspace(0, t - 1, min(tiles, t)).round().astype(int))
    size = exp.crops.shape[1]
    rows = math.ceil(len(picks) / columns)
    cols = min(columns, len(picks))
    band = 28
    sheet = np.full((band + rows * (size + 16), cols * size, 3), 255, np.uint8)
    caption = f"{title}  P(FAKE) = {exp.score:.3f}".strip()
    cv2.putText(sheet, caption, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for n, i in enumerate(picks):
        r, c = divmod(n, columns)
        y, x = band + r * (size + 16), c * size
        sheet[y : y + size, x : x + size] = overlay(exp.crops[i], exp.cams[i])
        cv2.putText(
            sheet, f"frame {i}", (x + 4, y + size + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
            (40, 40, 40), 1, cv2.LINE_AA,
        )  # fmt: skip
    return sheet


def face_windows(
    frames: Iterable[np.ndarray], detector: Detector, window: int, limit: int
) -> Iterable[np.ndarray]:
    """Consecutive windows of ``window`` crops of the video's main face, at most ``limit``."""
    crops = main_face_crops(frames, detector)
    for _ in range(limit):
        chunk = list(itertools.islice(crops, window))
        if len(chunk) < window:
            return
        yield np.stack(chunk)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_explanation(out: Path, index: int, exp: Explanation, title: str) -> Path:
    """``window-NNN/frame-NNN.png`` overlays and the ``window-NNN.png`` contact sheet."""
    folder = out / f"window-{index:03d}"
    for i, (crop, cam) in enumerate(zip(exp.crops, exp.cams, strict=True)):
        write_png(folder / f"frame-{i:03d}.png", overlay(crop, cam))
    sheet = out / f"window-{index:03d}.png"
    write_png(sheet, contact_sheet(exp, title=f"{title} window {index}"))
    return sheet
