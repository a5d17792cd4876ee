"""Face manipulations for synthetic FAKE clips: a face swap and a self-blend.

Either way a square around the face is replaced by a pasted patch inside a feathered
ellipse, rendered the way early face-swap decoders render theirs (``RENDER_SIDE``,
``MIN_COLOUR_STEP``), and wobbling frame by frame as real footage does not. The training
augmentation (``analyzer/blend.py``) derives its constants from these.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from analyzer.camera import Wave
from analyzer.scene import Face, Photo, grade


@dataclass
class Paste:
    box: tuple[int, int, int, int]  # square in the photo that the donor covers
    patch: np.ndarray  # float32 donor pixels, colour partly matched
    mask: np.ndarray  # float32 feathered ellipse, (S, S, 1)
    jitter_x: Wave
    jitter_y: Wave
    jitter_s: Wave


def square(
    box: tuple[int, int, int, int], grow: float, shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * grow
    side = min(side, shape[0], shape[1])
    s = min(int(round(side)), shape[0], shape[1])
    # Rounded on its own, a square cut to the photo could reach a pixel past its edge.
    x0 = min(int(round(min(max(cx - side / 2, 0), shape[1] - side))), shape[1] - s)
    y0 = min(int(round(min(max(cy - side / 2, 0), shape[0] - side))), shape[0] - s)
    return x0, y0, x0 + s, y0 + s


def face_swap(
    target: Photo, face: Face, donor: Photo, donor_face: Face, rng: np.random.Generator
) -> Paste:
    tx0, ty0, tx1, ty1 = square(face.box, 1.3, target.rgb.shape)
    dx0, dy0, dx1, dy1 = square(donor_face.box, 1.3, donor.rgb.shape)
    side = tx1 - tx0
    patch = cv2.resize(donor.rgb[dy0:dy1, dx0:dx1], (side, side), interpolation=cv2.INTER_AREA)
    patch = patch.astype(np.float32)
    under = target.rgb[ty0:ty1, tx0:tx1].astype(np.float32)
    # Colour transfer towards the target skin, only part of the way, plus a tint: the
    # colour mismatch that face-swap pipelines leave behind.
    strength = rng.uniform(0.4, 0.7)
    mu_p, sd_p = patch.mean((0, 1)), patch.std((0, 1)) + 1e-3
    mu_t, sd_t = under.mean((0, 1)), under.std((0, 1)) + 1e-3
    matched = (patch - mu_p) / sd_p * sd_t + mu_t
    patch = (1 - strength) * patch + strength * matched
    patch *= rng.uniform(0.93, 1.07, 3).astype(np.float32)
    return _pasted((tx0, ty0, tx1, ty1), patch, under, rng)


# The side, in pixels, at which a face-swap decoder renders the pasted square (about 1.3
# face widths): the FaceSwap / DeepFakes autoencoders of FaceForensics++ work at 64 px and
# less, so their faces are softer than the frame they are pasted into.
RENDER_SIDE = (32, 56)
# Mean colour step between the pasted face and what it covers, per channel mean, in 0-255
# levels: the seam a colour match leaves when it does not quite match.
MIN_COLOUR_STEP = 10.0


def as_rendered(patch: np.ndarray, under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The pasted face as a face-swap pipeline leaves it: rendered at a low resolution
    and upscaled, with a colour step of at least ``MIN_COLOUR_STEP`` against ``under``."""
    side = patch.shape[0]
    small = int(rng.integers(RENDER_SIDE[0], RENDER_SIDE[1] + 1))
    if small < side:
        low = cv2.resize(patch, (small, small), interpolation=cv2.INTER_AREA)
        patch = cv2.resize(low, (side, side), interpolation=cv2.INTER_LINEAR)
    shift = patch.mean((0, 1)) - under.mean((0, 1))
    step = float(np.abs(shift).mean())
    if step < MIN_COLOUR_STEP:
        # Grow the step along its own direction, or a random one when there is none.
        direction = shift if step >= 1.0 else rng.choice([-1.0, 1.0], 3) * rng.uniform(0.5, 1.5, 3)
        wanted = direction * (MIN_COLOUR_STEP / float(np.abs(direction).mean()))
        patch = patch + (wanted - shift).astype(np.float32)
    return patch


def blend_mask(side: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 1) feathered ellipse over the inner face of a pasted square."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    c = (side - 1) / 2
    rx, ry = rng.uniform(0.28, 0.38) * side, rng.uniform(0.36, 0.46) * side
    mask = ((((xx - c) / rx) ** 2 + ((yy - c) / ry) ** 2) <= 1.0).astype(np.float32)
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(1.0, side * rng.uniform(0.015, 0.04)))
    return mask[..., None]


# A self-blend's colour change at least this large (mean absolute step, 0-255 levels):
# below it the FAKE has no evidence a viewer or a model could find.
MIN_BLEND_STEP = 16.0


def self_blend_paste(target: Photo, face: Face, rng: np.random.Generator) -> Paste:
    """A face blended onto itself after a colour and small geometric change.

    No identity changes, so the only evidence is the blending itself: the seam of the
    mask, the colour step across it and the pasted face's own motion. A model trained on
    these cannot lean on who the face is (the idea of self-blended training images).
    """
    x0, y0, x1, y1 = square(face.box, 1.3, target.rgb.shape)
    side = x1 - x0
    under = target.rgb[y0:y1, x0:x1].astype(np.float32)
    patch = grade(under, rng)
    step = float(np.abs(patch - under).mean())
    if step < MIN_BLEND_STEP:
        patch = under + (patch - under) * (MIN_BLEND_STEP / max(step, 1e-3))
    c = (side - 1) / 2
    s = rng.uniform(0.96, 1.04)
    dx, dy = rng.uniform(-0.03, 0.03, 2) * side
    m = np.array([[s, 0, c - s * c + dx], [0, s, c - s * c + dy]], np.float32)
    patch = cv2.warpAffine(patch, m, (side, side), borderMode=cv2.BORDER_REFLECT)
    return _pasted((x0, y0, x1, y1), patch, under, rng)


def _pasted(
    box: tuple[int, int, int, int], patch: np.ndarray, under: np.ndarray, rng: np.random.Generator
) -> Paste:
    """``patch`` rendered as a decoder leaves it, with its mask and its wobble."""
    patch = as_rendered(patch, under, rng)
    return Paste(
        box,
        np.clip(patch, 0, 255),
        blend_mask(box[2] - box[0], rng),
        Wave(rng, 0.3, 2.5),
        Wave(rng, 0.3, 2.5),
        Wave(rng, 0.2, 1.5),
    )


def apply_pastes(
    rgb: np.ndarray, swaps: list[Paste], t: float, rng: np.random.Generator
) -> np.ndarray:
    out = rgb.copy()
    for sw in swaps:
        x0, y0, x1, y1 = sw.box
        side = x1 - x0
        amp = 0.025 * side
        dx = amp * sw.jitter_x(t) + rng.normal(0, 0.3)
        dy = amp * sw.jitter_y(t) + rng.normal(0, 0.3)
        s = 1.0 + 0.02 * sw.jitter_s(t)
        c = (side - 1) / 2
        m = np.array([[s, 0, c - s * c + dx], [0, s, c - s * c + dy]], np.float32)
        patch = cv2.warpAffine(sw.patch, m, (side, side), borderMode=cv2.BORDER_REFLECT)
        mask = cv2.warpAffine(sw.mask, m, (side, side))[..., None]
        region = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(region * (1 - mask) + patch * mask, 0, 255).astype(np.uint8)
    return out
