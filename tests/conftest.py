"""Shared fixtures: the command under test, the face photos, synthetic clips."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "deploy" / "schemas" / "verdict.v1.json"
CLI = str(Path(sys.executable).parent / "deepfake-monitor")


def run_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``deepfake-monitor`` command as a user would (``env``: its whole
    environment, else this process's)."""
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


CACHE = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
CLIP_CACHE = CACHE / "test-clips"
# torch.compile's kernels (tests/test_compiled.py), kept across runs: warm, a compile of
# the backbone takes seconds instead of a minute. The CLI's subprocesses inherit it.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE / "inductor"))
# Under `make test` the suite runs on several workers (pytest-xdist), each of whose PyTorch
# pools, and its services' and commands', would otherwise size themselves by the whole
# machine: more threads than cores, and OpenMP's spinning barriers then run a test several
# times slower. One thread per process there (a test or a user may still set their own).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The longest files, first to go out to the workers, so that they end together instead of
# one waiting on the last long file (see --durations): the Kafka faults, the bench, the
# soak and the chaos test (each minutes of real brokers or busy services), then the
# image's build (minutes on a cold machine) and training.
LONGEST_FIRST = ("test_kafka.py", "test_bench.py", "test_soak.py", "test_chaos.py",
                 "test_image.py", "test_train.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On several workers (``make test``: ``--dist loadfile --no-loadscope-reorder``, so
    files go out in this order), :data:`LONGEST_FIRST` leads; the other files and every
    file's tests keep their order. One run alone keeps pytest's order."""
    if not WORKER:
        return
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


def cache_folder(kwargs: dict[str, Any]) -> Path:
    """Where clips made with ``kwargs`` are kept: keyed by them, the analyzer's code, the
    photos and PyAV, so a change to any of these makes them afresh."""
    import av

    from analyzer.photos import default_photos_dir

    key = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode() + av.__version__.encode())
    for source in sorted((REPO / "analyzer").glob("*.py")):
        key.update(source.read_bytes())
    for photo in sorted(default_photos_dir().iterdir()):
        key.update(f"{photo.name}:{photo.stat().st_size}".encode())
    return CLIP_CACHE / key.hexdigest()[:20]


def made_once(folder: Path, done: str, make: Callable[[Path], None]) -> Path:
    """``folder``, made by ``make(part)`` unless its file ``done`` is there: into a folder of
    this process's own, then renamed into place, so a maker killed half-way leaves no half
    folder. Under a file lock: ``make test`` runs the suite on several workers
    (pytest-xdist), and two of them may want the same folder at once."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f"{folder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / done).exists():
            part = folder.with_name(f"{folder.name}.part{os.getpid()}")
            shutil.rmtree(part, ignore_errors=True)
            make(part)
            shutil.rmtree(folder, ignore_errors=True)
            part.rename(folder)
    return folder


def synthetic_clip(index: int, label: str | None = None, **kwargs: Any) -> Path:
    """Clip ``index`` of ``synthesize(**kwargs)``, made once and kept across runs.

    Synthesis is seeded, so the same arguments, analyzer code, photos and PyAV make the
    same clips; they key the cache (``$DFM_CACHE/test-clips``). Warm, this saves the
    suite about a minute of synthesis. Tests read these files and never write them.
    """

    def make(part: Path) -> None:
        from analyzer.synthetic import synthesize

        specs = synthesize(part, **kwargs)
        (part / "clips.json").write_text(json.dumps([[s.file, s.label] for s in specs]))

    folder = made_once(cache_folder(kwargs), "clips.json", make)
    file, got = json.loads((folder / "clips.json").read_text())[index]
    assert label is None or got == label, (file, got, label)
    return folder / file


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    from analyzer.photos import default_photos_dir, missing

    folder = default_photos_dir()
    absent = [s.name for s in missing(folder)]
    assert not absent, f"face photos {absent} missing in {folder}: run 'make setup' first"
    return folder


@pytest.fixture(scope="session")
def synth_clips(photos_dir: Path) -> Path:
    """Four 180-frame clips (REAL, FAKE, REAL, FAKE) from two photos, made by the CLI
    once and kept across runs like :func:`synthetic_clip`'s. Tests never write here."""
    args = ["--videos", "4", "--frames", "180", "--seed", "11", "--identities", "sample3,astronaut"]

    def make(part: Path) -> None:
        result = run_cli("synth", str(part), *args)
        assert result.returncode == 0, result.stderr

    return made_once(cache_folder({"synth-cli": args}), "labels.csv", make)


@pytest.fixture(scope="session")
def fake_clip(photos_dir: Path) -> Path:
    """A 150-frame 320x240 FAKE clip of astronaut (a swap from sample3)."""
    return synthetic_clip(1, "FAKE", videos=2, frames=150, seed=9, size=(320, 240),
                          identities=["astronaut", "sample3"])  # fmt: skip


@pytest.fixture(scope="session")
def live_clip(photos_dir: Path) -> Path:
    """A 30-second single-face clip for the RTSP server to stream."""
    return synthetic_clip(0, videos=1, frames=900, seed=2, identities=["astronaut"])
