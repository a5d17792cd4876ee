"""Engine, baseline, pipeline, frame-pool and stage benchmarks on a CUDA GPU in one go,
within about 8 minutes (not timed yet with the last two parts).

    python scripts/gpu_bench.py OUT_DIR

Made for a GPU machine that reaches no package registry: torch and torchvision come with
the machine; the other dependencies install from wheels carried beside the checkout, and
the face photos from a folder named by DFM_PHOTOS_DIR (docs/performance.md). Writes
OUT_DIR/bench.json (all figures) and OUT_DIR/bench.txt (the tables), and prints the tables.
Not part of `make test`: it needs a GPU.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import torch

from streamer.cli import main as cli


def run() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device visible; run it on a GPU machine", file=sys.stderr)
        return 2
    started = time.monotonic()
    buffer = io.StringIO()
    args = [
        "bench",
        "--device", "cuda",
        "--parts", "engine,baseline,pipeline,frontend,stages",
        "--streams", "64",
        "--out", str(out / "bench.json"),
        "--batches", "1,8,32,64,128,256,512",
        "--seconds", "10",
        "--warmup", "4",
        "--max-streams", "32",
        "--configs", "480p:1,720p:1",
        "--work", str(out / "clips"),
    ]  # fmt: skip
    with contextlib.redirect_stdout(buffer):
        code = cli(args)
    text = (
        buffer.getvalue()
        + f"\nwall time {time.monotonic() - started:.0f} s on {torch.cuda.get_device_name()}\n"
    )
    (out / "bench.txt").write_text(text)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(run())
