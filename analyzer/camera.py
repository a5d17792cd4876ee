"""A handheld camera filming a still picture: pan, zoom, roll, shake, softness, light and
noise. Softness (``Photo.blur``) is in camera pixels, applied before the sensor noise."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from analyzer.scene import Photo


class Wave:
    """A smooth random signal in [-1, 1]: a sum of a few slow sines."""

    def __init__(self, rng: np.random.Generator, low_hz: float, high_hz: float, parts: int = 3):
        self.freq = rng.uniform(low_hz, high_hz, parts)
        self.phase = rng.uniform(0, 2 * math.pi, parts)
        self.weight = rng.dirichlet(np.ones(parts))

    def __call__(self, t: float) -> float:
        return float(np.sum(self.weight * np.sin(2 * math.pi * self.freq * t + self.phase)))


def camera_frames(
    photo: Photo,
    compose: Callable[[float], np.ndarray],
    rng: np.random.Generator,
    frames: int,
    fps: float,
    size: tuple[int, int],
) -> Iterator[np.ndarray]:
    """Frames of a handheld camera looking at ``compose(t)``, the (possibly edited) photo."""
    out_w, out_h = size
    h, w = photo.rgb.shape[:2]
    xs = [v for f in photo.faces for v in (f.box[0], f.box[2])]
    ys = [v for f in photo.faces for v in (f.box[1], f.box[3])]
    face_side = max(f.box[2] - f.box[0] for f in photo.faces)
    region_w = max(
        (max(xs) - min(xs)) * 1.5, face_side * 4.0, (max(ys) - min(ys)) * 1.5 * out_w / out_h
    )
    # The view, at its widest zoom, pan and roll, must stay inside the photo: a mirrored
    # or smeared border would add faces and edges that no camera films.
    region_w = min(region_w, w / 1.25, h * out_w / out_h / 1.25)
    region_h = region_w * out_h / out_w
    half_w, half_h = 0.6 * region_w + 0.1 * region_h, 0.6 * region_h + 0.1 * region_w
    cx = float(np.clip((min(xs) + max(xs)) / 2, half_w, max(half_w, w - half_w)))
    cy = float(np.clip((min(ys) + max(ys)) / 2, half_h, max(half_h, h - half_h)))
    pan_x, pan_y, zoom, roll = (Wave(rng, 0.05, 0.4) for _ in range(4))
    gain, tint = Wave(rng, 0.05, 0.3), [Wave(rng, 0.05, 0.3) for _ in range(3)]
    shake = np.zeros(2)
    for i in range(frames):
        t = i / fps
        shake = 0.85 * shake + rng.normal(0, 0.004 * region_w, 2)
        x = cx + 0.05 * region_w * pan_x(t) + shake[0]
        y = cy + 0.04 * region_w * pan_y(t) + shake[1]
        z = 1.0 + 0.07 * zoom(t)
        scale = out_w / region_w * z
        m = cv2.getRotationMatrix2D((x, y), 2.5 * roll(t), scale)
        m[:, 2] += (out_w / 2 - x, out_h / 2 - y)
        frame = cv2.warpAffine(
            compose(t), m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if photo.blur:
            frame = cv2.GaussianBlur(frame, (0, 0), sigmaX=photo.blur)
        light = (1.0 + 0.10 * gain(t)) * np.array([1.0 + 0.03 * tw(t) for tw in tint], np.float32)
        noise = rng.normal(0.0, 2.5, size=(out_h, out_w, 3)).astype(np.float32)
        noisy = np.asarray(frame, np.float32) * light + noise
        yield np.clip(noisy, 0, 255).astype(np.uint8)
