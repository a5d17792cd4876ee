"""scripts/gpu_check.sh, as far as it goes without a GPU: it names what a machine lacks,
refuses to start without it, and reaches the benchmark, which refuses without CUDA.
(``scripts/gpu_check.sh OUT --quick`` runs every part on the CPU; too long for here.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "gpu_check.sh")


def check(*args: str, python: str = sys.executable, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args],
        env={**os.environ, "PYTHON": python, "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_probe_names_what_a_machine_lacks(tmp_path):
    here = check("--probe")
    assert here.returncode == 0 and "missing: \n" in here.stdout, here.stdout + here.stderr
    assert "torch 2." in here.stdout
    assert "optional, missing: PyNvVideoCodec\n" in here.stdout  # not in this venv
    # A Python without site-packages: the machine has nothing but the standard library.
    bare = tmp_path / "python"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    lacking = check("--probe", python=str(bare))
    assert lacking.returncode == 0 and "torch: missing" in lacking.stdout
    assert "missing: torch torchvision numpy mediapipe" in lacking.stdout
    # The check itself stops at once, naming them and the fix.
    stopped = check(str(tmp_path / "out"), python=str(bare), DFM_WHEELS=str(tmp_path / "none"))
    assert stopped.returncode == 2
    assert "missing imports (torch torchvision" in stopped.stderr
    assert "run --probe" in stopped.stderr


def test_without_a_gpu_the_check_gets_as_far_as_the_benchmark(tmp_path):
    result = check(str(tmp_path / "out"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CPUs: " in result.stdout  # set-up passed: imports and photos found
    assert "no CUDA device visible; run it on a GPU machine" in result.stderr
    usage = check(str(tmp_path / "out"), "--fast")
    assert usage.returncode == 2 and "--probe" in usage.stderr


def test_the_benchmark_writes_each_part_as_it_ends(tmp_path):
    """scripts/gpu_bench.py with its slow parts left out (--parts): the part's JSON and its
    table in bench.txt, the device named, and the wall time at the end."""
    bench = [sys.executable, str(ROOT / "scripts" / "gpu_bench.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DFM_CACHE": str(tmp_path / "cache")}
    env.pop("DFM_MAX_BATCH", None)
    out = tmp_path / "out"
    result = subprocess.run(
        [*bench, str(out), "--quick", "--parts", "nvdec"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = (out / "bench.txt").read_text()
    assert report.startswith("gpu_bench on the CPU (--quick), torch ")
    assert report.splitlines()[0].endswith(", DFM_MAX_BATCH=64")  # --quick: the default
    assert "NVDEC skipped: the device is the CPU" in report and "(nvdec: " in report
    assert report.rstrip().endswith("on the CPU (--quick)")
    assert sorted(p.name for p in out.glob("*.json")) == ["nvdec.json"]
    wrong = subprocess.run(
        [*bench, str(out), "--quick", "--parts", "nvdec,decode"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("gpu_bench: unknown part decode; the parts are engine,")


def test_the_second_sweeps_start_at_half_what_the_first_sustained(tmp_path):
    """crop_device and pipeline_nvdec do not sweep from one stream again: the check has 8
    minutes. Without the first sweep's figures they start at 1."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "scripts" / "gpu_bench.py")
    assert spec is not None and spec.loader is not None
    gpu_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_bench)
    first = tmp_path / "pipeline.json"
    assert gpu_bench.second_sweep_start(first) == 1
    first.write_text(json.dumps({"pipeline": {"configs": [{"max_streams_ok": 256}]}}))
    assert gpu_bench.second_sweep_start(first) == 128
    first.write_text(json.dumps({"pipeline": {"configs": [{"max_streams_ok": 0}]}}))
    assert gpu_bench.second_sweep_start(first) == 1
