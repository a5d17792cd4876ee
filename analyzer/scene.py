"""What a synthetic clip films: a photograph and the faces in it, under a colour grade.

The photographs are fetched at set-up time (``analyzer/photos.py``); scikit-image's
``astronaut`` comes with scikit-image. Faces are found with the detector the service
uses. Each photo is one identity group (``analyzer/synthetic.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from analyzer.errors import AssetsMissingError
from analyzer.faces import BlazeFaceDetector
from analyzer.photos import FILMED_NAMES, VIEWS, default_photos_dir

PHOTO_NAMES = [*FILMED_NAMES, "astronaut"]
_VIEWS = {v.name: v for v in VIEWS}


@dataclass(frozen=True)
class Face:
    identity: str  # "<photo>/<n>"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels


@dataclass(frozen=True)
class Photo:
    name: str
    rgb: np.ndarray
    faces: list[Face]
    # Gaussian blur the camera adds, sigma in camera (output) pixels; 0: none. In camera
    # pixels, so a scene's softness does not depend on the photo's resolution.
    blur: float = 0.0


def load_photos(folder: Path | None = None, names: Sequence[str] = PHOTO_NAMES) -> list[Photo]:
    """Read the photos and find their faces with the same detector the service uses."""
    folder = folder or default_photos_dir()
    unknown = [n for n in names if n not in PHOTO_NAMES]
    if unknown:
        raise AssetsMissingError(
            f"unknown photo {unknown[0]!r}; choose from {', '.join(PHOTO_NAMES)}"
        )
    photos = []
    with BlazeFaceDetector(max_side=1024) as detector:
        for name in names:
            if name == "astronaut":
                from skimage import data

                rgb = np.ascontiguousarray(data.astronaut())
            else:
                view = _VIEWS.get(name)
                path = folder / f"{view.photo if view else name}.jpg"
                bgr = cv2.imread(str(path))
                if bgr is None:
                    raise AssetsMissingError(
                        f"face photo {path} is missing; run 'make setup' (it fetches the "
                        "photos: python -m analyzer.photos) or set DFM_PHOTOS_DIR"
                    )
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if view is not None:
                    left, top, right, bottom = view.box
                    rgb = np.ascontiguousarray(rgb[top:bottom, left:right])
            scale = min(1.0, 1280 / max(rgb.shape[:2]))
            if scale < 1:
                rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            h, w = rgb.shape[:2]
            faces: list[Face] = []
            for det in sorted(detector.detect(rgb), key=lambda d: d.box[0]):
                x0, y0, x1, y1 = det.box
                box = (round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))
                if min(box[2] - box[0], box[3] - box[1]) >= 40:
                    faces.append(Face(f"{name}/{len(faces)}", box))
            photos.append(Photo(name, rgb, faces))
    return [p for p in photos if p.faces]


def colour_grade(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A random colour grade (contrast, per-channel gain, offset), and half the time a
    blur sigma drawn from 0.6-1.6 (else 0), which the caller applies in its own pixels."""
    mean = rgb.mean((0, 1))
    contrast = rng.uniform(0.8, 1.2)
    out = (rgb - mean) * contrast + mean * rng.uniform(0.85, 1.15, 3) + rng.uniform(-18, 18)
    sigma = float(rng.uniform(0.6, 1.6)) if rng.random() < 0.5 else 0.0
    return out, sigma


def grade(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`colour_grade` with its blur applied to ``rgb`` itself (a patch's own change)."""
    out, sigma = colour_grade(rgb, rng)
    return cv2.GaussianBlur(out, (0, 0), sigmaX=sigma) if sigma else out


def graded_photo(photo: Photo, rng: np.random.Generator) -> Photo:
    """The photo under a random grade of its own: REAL clips vary as much as FAKE faces.
    The grade's blur is left to the camera (``Photo.blur``, camera pixels)."""
    out, sigma = colour_grade(photo.rgb.astype(np.float32), rng)
    return Photo(photo.name, np.clip(out, 0, 255).astype(np.uint8), photo.faces, sigma)
