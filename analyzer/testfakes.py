"""An independent test generator: FAKE and REAL clips made by other means than ``synth``.

Scores measured only on ``synth``'s clips say how well a model learned ``synth``. This
generator shares none of its manipulation or camera code and is never used for training
(``scripts/train_demo.sh`` only evaluates on it), so its figures say how far a model
carries to manipulations it has not seen. It films only *held-out* photos
(:data:`HELD_OUT`), whose people appear in no training clip of the demo: the demo's test
photos (``sample3``, scikit-image's ``astronaut``) and matplotlib's sample portrait
(``mpl1``, shipped inside matplotlib itself).

FAKE clips replace every face of the photo, one of four ways (``METHODS``), each from a
donor face of another held-out photo aligned on its eyes, nose and mouth (BlazeFace's
keypoints, a similarity transform), after a colour transfer (Reinhard, in Lab) of varying
strength:

* ``poisson``: the whole face, Poisson-blended (OpenCV's ``seamlessClone``) under a mask
  of a random shape (keypoint hull, ellipse or rounded box, grown by a random margin);
* ``feather``: the whole face, alpha-blended under a feathered mask of random width;
* ``mouth`` / ``eyes``: only the mouth region, or the band of both eyes, Poisson-blended.

The pasted region either stays put on the photo (half of the clips: a perfectly tracked
swap) or drifts by a pixel or two along a smooth path. No low-resolution rendering, no
per-frame jitter, no forced colour step: ``synth``'s marks are absent on purpose.

The camera is another one too: a tripod with a slow linear zoom and pan (Ken Burns), a
lens that loses resolution (down- then up-sampled), vignetting, a gamma, mains flicker,
shot noise that grows with brightness, per-frame JPEG at a random quality, and H.264 at a
random CRF (18-32). REAL and FAKE come in pairs (indices 2k and 2k+1) that share the photo
and the camera; ``labels.csv`` is ``synth``'s layout, so ``preprocess`` reads the folder.

    deepfake-monitor testfakes OUT_DIR [--videos 24] [--seed 0] [--frames 180] [--workers N]
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from analyzer.errors import AssetsMissingError
from analyzer.faces import BlazeFaceDetector, fit_within
from analyzer.h264 import write_h264

HELD_OUT = ("sample3", "astronaut", "mpl1")
METHODS = ("poisson", "feather", "mouth", "eyes")
FIELDS = ["file", "label", "identity", "pair", "method", "faces", "frames", "fps", "seed", "crf"]


@dataclass(frozen=True)
class Face:
    """A face of a photo: its box and BlazeFace's keypoints, in photo pixels."""

    identity: str
    box: tuple[int, int, int, int]
    # right eye, left eye, nose tip, mouth centre, right ear, left ear: (6, 2) x, y
    keypoints: np.ndarray


@dataclass(frozen=True)
class Portrait:
    name: str
    rgb: np.ndarray
    faces: list[Face]


def _read(name: str, photos_dir: Path | None) -> np.ndarray:
    if name == "astronaut":
        from skimage import data

        return np.ascontiguousarray(data.astronaut())
    if name == "mpl1":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    else:
        from analyzer.photos import default_photos_dir

        path = (photos_dir or default_photos_dir()) / f"{name}.jpg"
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise AssetsMissingError(
            f"photo {path} is missing; run 'make setup' (python -m analyzer.photos)"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_portraits(
    photos_dir: Path | None = None, names: Sequence[str] = HELD_OUT
) -> list[Portrait]:
    """The held-out photos at most 1024 pixels a side, with their faces and keypoints."""
    portraits = []
    with BlazeFaceDetector(max_side=1024) as detector:
        for name in names:
            rgb = fit_within(_read(name, photos_dir), 1024)
            h, w = rgb.shape[:2]
            faces: list[Face] = []
            for det in sorted(detector.detect(rgb), key=lambda d: d.box[0]):
                x0, y0, x1, y1 = det.box
                box = (round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))
                if min(box[2] - box[0], box[3] - box[1]) < 48:
                    continue
                points = np.array([[x * w, y * h] for x, y in det.keypoints], np.float32)
                faces.append(Face(f"{name}/{len(faces)}", box, points))
            if faces:
                portraits.append(Portrait(name, rgb, faces))
    return portraits


# --- manipulations -------------------------------------------------------------------


def colour_transfer(src: np.ndarray, ref: np.ndarray, strength: float) -> np.ndarray:
    """``src`` moved towards ``ref``'s Lab mean and spread by ``strength`` (0-1)."""
    a = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    b = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB).astype(np.float32)
    am, asd = a.reshape(-1, 3).mean(0), a.reshape(-1, 3).std(0) + 1e-3
    bm, bsd = b.reshape(-1, 3).mean(0), b.reshape(-1, 3).std(0) + 1e-3
    moved = (a - am) * (bsd / asd) + bm
    out = a + strength * (moved - a)
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _mask(shape: tuple[int, int], face: Face, method: str, rng: np.random.Generator) -> np.ndarray:
    """A uint8 mask (255 inside) over the region ``method`` replaces on ``face``."""
    mask: np.ndarray = np.zeros(shape, np.uint8)
    k = face.keypoints
    eye_gap = float(np.linalg.norm(k[1] - k[0]))
    if method == "mouth":
        centre = tuple(int(v) for v in k[3])
        axes = (int(eye_gap * rng.uniform(0.55, 0.8)), int(eye_gap * rng.uniform(0.3, 0.45)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
        return mask
    if method == "eyes":
        mid = (k[0] + k[1]) / 2
        half_w, half_h = eye_gap * rng.uniform(0.85, 1.05), eye_gap * rng.uniform(0.25, 0.38)
        x0, y0 = int(mid[0] - half_w), int(mid[1] - half_h)
        x1, y1 = int(mid[0] + half_w), int(mid[1] + half_h)
        cv2.rectangle(mask, (x0, y0), (x1, y1), 255, -1)
        soft = cv2.GaussianBlur(mask, (0, 0), eye_gap * 0.08)
        return np.where(soft > 127, 255, 0).astype(np.uint8)
    shape_kind = rng.choice(["hull", "ellipse", "box"])
    grow = rng.uniform(1.0, 1.25)
    centre = k[:4].mean(0)
    if shape_kind == "hull":
        chin = k[3] + (k[3] - k[2]) * 1.4
        brow = (k[0] + k[1]) / 2 - (k[2] - (k[0] + k[1]) / 2) * 1.1
        points = np.vstack([k[[0, 1, 3]], k[4:6] * 0.85 + centre * 0.15, chin, brow])
        points = centre + (points - centre) * grow
        cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 255)
    elif shape_kind == "ellipse":
        axes = (int(eye_gap * 1.05 * grow), int(eye_gap * 1.35 * grow))
        cv2.ellipse(mask, tuple(int(v) for v in centre), axes, 0, 0, 360, 255, -1)
    else:
        half = eye_gap * 1.0 * grow
        x0, y0 = int(centre[0] - half), int(centre[1] - half * 1.1)
        x1, y1 = int(centre[0] + half), int(centre[1] + half * 1.2)
        cv2.rectangle(mask, (x0, y0), (x1, y1), 255, -1)
        radius = int(half * 0.4) | 1
        mask = cv2.GaussianBlur(mask, (radius * 2 + 1, radius * 2 + 1), 0)
        mask = np.where(mask > 127, 255, 0).astype(np.uint8)
    return mask


def _aligned_donor(
    target: Face, donor: Portrait, donor_face: Face, size: tuple[int, int]
) -> np.ndarray:
    """The donor photo warped so its face's eyes, nose and mouth land on the target's."""
    m, _ = cv2.estimateAffinePartial2D(donor_face.keypoints[:4], target.keypoints[:4])
    h, w = size
    return cv2.warpAffine(
        donor.rgb, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )


@dataclass
class Swap:
    """One replaced face: the edited photo region and its mask, in photo pixels."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the region
    edited: np.ndarray  # (h, w, 3) uint8
    alpha: np.ndarray  # (h, w) float32 in [0, 1]


def make_swap(
    photo: Portrait,
    face: Face,
    donor: Portrait,
    donor_face: Face,
    method: str,
    rng: np.random.Generator,
) -> Swap:
    h, w = photo.rgb.shape[:2]
    warped = _aligned_donor(face, donor, donor_face, (h, w))
    mask = _mask((h, w), face, method, rng)
    ys, xs = np.nonzero(mask)
    pad = 12
    x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
    x1, y1 = min(w, xs.max() + pad + 1), min(h, ys.max() + pad + 1)
    under = photo.rgb[y0:y1, x0:x1]
    patch = colour_transfer(warped[y0:y1, x0:x1], under, rng.uniform(0.6, 1.0))
    local = mask[y0:y1, x0:x1]
    if method == "feather":
        feather = rng.uniform(0.04, 0.15) * (x1 - x0)
        alpha = cv2.GaussianBlur(local.astype(np.float32) / 255, (0, 0), feather)
        edited = patch
    else:
        # The region is padded so the mask stays inside the image, as seamlessClone needs;
        # it gets a copy of the mask (it was seen to change the one it was given).
        centre = ((x0 + x1) // 2, (y0 + y1) // 2)
        cloned = cv2.seamlessClone(
            np.ascontiguousarray(patch),
            np.ascontiguousarray(photo.rgb),
            local.copy(),
            centre,
            cv2.NORMAL_CLONE,
        )
        edited = cloned[y0:y1, x0:x1]
        alpha = cv2.GaussianBlur(local.astype(np.float32) / 255, (0, 0), 1.5)
    return Swap((int(x0), int(y0), int(x1), int(y1)), edited, alpha)


def composer(
    photo: Portrait, swaps: list[Swap], drift: bool, rng: np.random.Generator
) -> Callable[[float], np.ndarray]:
    """The photo at time ``t`` with the swaps pasted: still, or drifting smoothly."""

    def pasted(shift: np.ndarray | None) -> np.ndarray:
        out = photo.rgb.astype(np.float32)
        for s in swaps:
            x0, y0, x1, y1 = s.box
            edited, alpha = s.edited, s.alpha
            if shift is not None:
                size = (x1 - x0, y1 - y0)
                edited = cv2.warpAffine(edited, shift, size, borderMode=cv2.BORDER_REPLICATE)
                alpha = cv2.warpAffine(alpha, shift, size)
            a = alpha[..., None]
            out[y0:y1, x0:x1] = a * edited + (1 - a) * out[y0:y1, x0:x1]
        return np.clip(out, 0, 255).astype(np.uint8)

    if not drift:
        fixed = pasted(None)
        return lambda _t: fixed
    amp = rng.uniform(0.7, 2.0, 2)
    freq = rng.uniform(0.15, 0.6, 2)
    phase = rng.uniform(0, 2 * math.pi, 2)

    def at(t: float) -> np.ndarray:
        dx, dy = amp * np.sin(2 * math.pi * freq * t + phase)
        return pasted(np.array([[1, 0, dx], [0, 1, dy]], np.float32))

    return at


# --- the camera ----------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """One clip's camera, drawn once and shared by a REAL/FAKE pair."""

    zoom: tuple[float, float]  # face width as a share of the frame width, start -> end
    pan: np.ndarray  # (2,) drift of the view centre over the clip, in face widths
    soften: float  # resolution lost: frames are down-sampled by this factor and back
    gamma: float
    vignette: float
    flicker: tuple[float, float]  # amplitude, Hz
    noise: float  # shot-noise scale
    jpeg: int  # per-frame JPEG quality
    crf: int  # H.264

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Camera:
        start = rng.uniform(0.16, 0.3)
        return cls(
            zoom=(start, start * rng.uniform(1.0, 1.3)),
            pan=rng.uniform(-0.4, 0.4, 2),
            soften=rng.uniform(1.0, 2.2),
            gamma=rng.uniform(0.8, 1.25),
            vignette=rng.uniform(0.0, 0.35),
            flicker=(rng.uniform(0.0, 0.05), rng.uniform(0.5, 3.0)),
            noise=rng.uniform(0.3, 1.2),
            jpeg=int(rng.integers(40, 92)),
            crf=int(rng.integers(18, 33)),
        )


def film(
    photo: Portrait,
    compose: Callable[[float], np.ndarray],
    cam: Camera,
    rng: np.random.Generator,
    frames: int,
    fps: float,
    size: tuple[int, int],
) -> Iterator[np.ndarray]:
    out_w, out_h = size
    xs = [v for f in photo.faces for v in (f.box[0], f.box[2])]
    ys = [v for f in photo.faces for v in (f.box[1], f.box[3])]
    centre = np.array([(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2], np.float64)
    face_w = float(np.mean([f.box[2] - f.box[0] for f in photo.faces]))
    h, w = photo.rgb.shape[:2]
    yy, xx = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
    r2 = ((xx - out_w / 2) / (out_w / 2)) ** 2 + ((yy - out_h / 2) / (out_h / 2)) ** 2
    vignette = (1 - cam.vignette * r2 / 2)[..., None]
    low = (max(2, round(out_w / cam.soften)), max(2, round(out_h / cam.soften)))
    for i in range(frames):
        u = i / max(1, frames - 1)
        share = cam.zoom[0] + (cam.zoom[1] - cam.zoom[0]) * u
        view_w = face_w / share
        view_w = min(view_w, w * 0.98, h * 0.98 * out_w / out_h)  # stay inside the photo
        view_h = view_w * out_h / out_w
        c = centre + cam.pan * face_w * (u - 0.5)
        c[0] = np.clip(c[0], view_w / 2, w - view_w / 2)
        c[1] = np.clip(c[1], view_h / 2, h - view_h / 2)
        x0, y0 = int(c[0] - view_w / 2), int(c[1] - view_h / 2)
        crop = compose(i / fps)[y0 : y0 + int(view_h), x0 : x0 + int(view_w)]
        frame = cv2.resize(crop, low, interpolation=cv2.INTER_AREA)
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
        frame = np.power(np.clip(frame, 0, 1), cam.gamma) * vignette
        amp, hz = cam.flicker
        frame = frame * (1 + amp * math.sin(2 * math.pi * hz * i / fps))
        shot = rng.normal(0, 1, frame.shape).astype(np.float32) * np.sqrt(frame + 1e-3)
        frame = np.clip(frame * 255 + cam.noise * 3 * shot, 0, 255).astype(np.uint8)
        ok, jpeg = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg])
        decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR) if ok else None
        yield frame if decoded is None else np.ascontiguousarray(decoded[..., ::-1])


# --- clips ---------------------------------------------------------------------------


def make_clip(
    out: Path,
    portraits: list[Portrait],
    index: int,
    *,
    seed: int,
    frames: int,
    fps: float,
    size: tuple[int, int],
) -> dict[str, object]:
    """Clip ``index``: REAL when even, FAKE when odd; pairs share photo and camera."""
    fake = index % 2 == 1
    scene = np.random.default_rng([seed, 7919, index // 2])
    rng = np.random.default_rng([seed, 104729, index])
    photo = portraits[(index // 2) % len(portraits)]
    cam = Camera.draw(scene)
    method = METHODS[(index // 2) % len(METHODS)] if fake else "none"
    compose: Callable[[float], np.ndarray] = lambda _t: photo.rgb  # noqa: E731
    if fake:
        swaps = []
        for face in photo.faces:
            donors = [(p, f) for p in portraits if p.name != photo.name for f in p.faces]
            donor, donor_face = donors[int(rng.integers(len(donors)))]
            swaps.append(make_swap(photo, face, donor, donor_face, method, rng))
        compose = composer(photo, swaps, drift=bool(rng.random() < 0.5), rng=rng)
    label = "FAKE" if fake else "REAL"
    name = f"{index:05d}_{label.lower()}_{photo.name}.mp4"
    noise = np.random.default_rng([seed, 15485863, index // 2])  # the same for the pair
    written = write_h264(
        out / name, film(photo, compose, cam, noise, frames, fps, size), size, fps, crf=cam.crf
    )
    return {
        "file": name,
        "label": label,
        "identity": photo.name,
        "pair": f"{photo.name}-t{seed}-{index // 2:05d}",
        "method": f"testfakes-{method}" if fake else "none",
        "faces": ";".join(f.identity for f in photo.faces),
        "frames": written,
        "fps": fps,
        "seed": seed,
        "crf": cam.crf,
    }


def generate(
    out: Path,
    *,
    videos: int = 24,
    seed: int = 0,
    frames: int = 180,
    fps: float = 30.0,
    size: tuple[int, int] = (480, 360),
    workers: int = 1,
    photos_dir: Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[dict[str, object]]:
    """Write ``videos`` clips (REAL, FAKE alternating) and ``labels.csv`` to ``out``."""
    portraits = load_portraits(photos_dir)
    if len(portraits) < 2:
        raise AssetsMissingError("the held-out photos show too few faces; run 'make setup'")
    out.mkdir(parents=True, exist_ok=True)
    clip = functools.partial(
        make_clip, out, portraits, seed=seed, frames=frames, fps=fps, size=size
    )
    rows: list[dict[str, object]] = []
    if workers <= 1:
        for i in range(videos):
            rows.append(clip(i))
            if progress is not None:
                progress(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(clip, range(videos)):
                rows.append(row)
                if progress is not None:
                    progress(1)
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows
