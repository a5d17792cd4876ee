"""Shared fixtures: the command under test, the face photos, synthetic clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "deploy" / "schemas" / "verdict.v1.json"
CLI = str(Path(sys.executable).parent / "deepfake-monitor")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed ``deepfake-monitor`` command as a user would."""
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


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
def synth_clips(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    """Four 180-frame clips (REAL, FAKE, REAL, FAKE) from two photos, via the CLI."""
    out = tmp_path_factory.mktemp("synth")
    result = run_cli(
        "synth", str(out), "--videos", "4", "--frames", "180", "--seed", "11",
        "--identities", "sample3,astronaut",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def live_clip(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    """A 30-second single-face clip for the RTSP server to stream."""
    out = tmp_path_factory.mktemp("live")
    from analyzer.synthetic import synthesize

    spec = synthesize(out, videos=1, frames=900, seed=2, identities=["astronaut"])[0]
    return out / spec.file
