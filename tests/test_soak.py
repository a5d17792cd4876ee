"""Soak (bounded for make test): 4 looped streams through a real ``serve`` for 2 minutes.

``scripts/soak.py`` samples the process from outside; after its warm-up RSS may grow at
most 5 % and threads, event-loop tasks and open files stay flat. docs/performance.md reports a
1-hour run with 8 streams made with the same script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_four_streams_for_two_minutes_leave_the_process_flat(tmp_path, photos_dir):
    out = tmp_path / "soak.json"
    script = str(ROOT / "scripts" / "soak.py")
    args = ["--streams", "4", "--seconds", "120", "--warmup", "40"]
    cmd = [sys.executable, script, *args, "--out", str(out), "--work", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["rss_growth"] <= 0.05, report["failures"]
    assert report["verdicts_per_s"] > 1.0  # 4 streams at one verdict per second each, or near
    assert (tmp_path / "soak.png").stat().st_size > 10_000
