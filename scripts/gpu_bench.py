"""The benchmark parts that matter on a GPU node, on CUDA, within about 8 minutes; what
scripts/gpu_check.sh runs once the machine has what it needs.

    python scripts/gpu_bench.py OUT_DIR           on CUDA (refuses without a GPU)
    python scripts/gpu_bench.py OUT_DIR --quick   the same parts, seconds each, on the
                                                  CPU: checks the plumbing, not the speed
    python scripts/gpu_bench.py OUT_DIR --parts nvdec,compiled
                                                  those parts alone (say, once the
                                                  pynvvideocodec wheel is installed)

Parts, in this order, each written as soon as it ends (so a run cut short keeps what it
measured): the engine table (backbone and head; fp32, bf16, channels_last; batches up to
512), the stages (MediaPipe on the host against the PyTorch BlazeFace batched on the GPU;
host against device crops), the frame pool with 64 streams, the pipeline with N one-face
480p streams (replaying one clip's packets, demuxed once; DFM_MAX_BATCH=256 unless set,
as the GPU overlay's pods run) doubling from 1 up to 1,024, stopping at the first N that
drops a frame or misses p99 <= 1 s, decode alone (PyAV on the CPU against NVDEC through
PyNvVideoCodec, if installed), the pipeline again with DFM_CROP=device (each frame sent
to the GPU once, letterboxed and cropped there) against the host crops of the first
pipeline run, the pipeline with DFM_DECODE=nvdec (skipped, saying why, without
PyNvVideoCodec), and last the backbone at batches 32 and 256 under every DFM_COMPILE mode
that can run there (inductor, CUDA graphs, inductor with CUDA graphs, and TensorRT where
torch-tensorrt is installed) side by side with eager (compiling takes long, so it goes
last: a run cut off there keeps the rest). The two second pipeline runs start at half
the streams the first sweep sustained; the other pipeline runs decode on the CPU
(DFM_DECODE=cpu). OUT_DIR/NAME.json holds
each part's figures, OUT_DIR/bench.txt the tables, which are printed too. Not part of
`make test`: it needs a GPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from streamer.cli import main as cli
from streamer.config import load_settings
from streamer.sources.nvdec import unavailable

PIPELINE = "--configs 480p:1 --max-streams 1024 --p99-ms 1000 --seconds 6 --warmup 4 --replay"
# name: (bench part, its options on CUDA, its options with --quick)
PARTS = {
    "engine": ("engine", "--batches 1,8,32,64,128,256,512", "--quick"),
    "stages": ("stages", "", "--quick"),
    "frontend": ("frontend", "--streams 64 --seconds 8 --warmup 3", "--quick"),
    "pipeline": ("pipeline", PIPELINE, "--quick --replay"),
    "nvdec": ("nvdec", "--seconds 5", "--quick"),
    "crop_device": ("pipeline", PIPELINE, "--quick --replay"),
    "pipeline_nvdec": ("pipeline", PIPELINE, "--quick --replay"),
    "compiled": ("engine", "--batches 32,256 --compile 32,256", "--quick --compile 1"),
}
# These sweep again from half what the first pipeline sweep sustained.
SECOND_SWEEPS = ("crop_device", "pipeline_nvdec")
# Settings a part runs under (and names in its table), on top of the environment's: the
# pipeline decodes on the CPU unless the part is NVDEC's (DFM_DECODE=auto would pick NVDEC
# wherever the pynvvideocodec wheel was carried).
ENV = {
    "pipeline": {"DFM_DECODE": "cpu"},
    "crop_device": {"DFM_CROP": "device", "DFM_DECODE": "cpu"},
    "pipeline_nvdec": {"DFM_DECODE": "nvdec"},
}


def chosen(args: list[str]) -> tuple[list[str], list[str]] | str:
    """The parts named by ``--parts a,b`` (all of them without it), in PARTS' order, and the
    remaining arguments; or the one-line reason the option is wrong."""
    if "--parts" not in args:
        return list(PARTS), args
    at = args.index("--parts")
    if at + 1 == len(args):
        return "--parts needs a comma-separated list: " + ",".join(PARTS)
    names = set(args[at + 1].split(","))
    unknown = sorted(names - set(PARTS))
    if unknown:
        return f"unknown part {', '.join(unknown)}; the parts are " + ",".join(PARTS)
    return [name for name in PARTS if name in names], args[:at] + args[at + 2 :]


def second_sweep_start(first: Path) -> int:
    """Where a second pipeline sweep starts: at half the streams the first one sustained
    (so it costs two or three runs, not eleven), or at 1 if there was none."""
    try:
        configs = json.loads(first.read_text())["pipeline"]["configs"]
        return max(1, int(configs[0]["max_streams_ok"]) // 2)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 1


def run() -> int:
    quick = "--quick" in sys.argv[1:]
    picked = chosen([a for a in sys.argv[1:] if a != "--quick"])
    if isinstance(picked, str):
        print(f"gpu_bench: {picked}", file=sys.stderr)
        return 2
    labels, args = picked
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    if not quick and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device visible; run it on a GPU machine", file=sys.stderr)
        return 2
    device = "cpu" if quick else "cuda"
    if not quick:  # the pipeline runs as the GPU overlay's pods do (k8s/overlays/gpu)
        os.environ.setdefault("DFM_MAX_BATCH", "256")
    name = torch.cuda.get_device_name() if device == "cuda" else "the CPU (--quick)"
    report = out / "bench.txt"
    batch = load_settings().max_batch  # what the pipeline part's service will use
    report.write_text(f"gpu_bench on {name}, torch {torch.__version__}, DFM_MAX_BATCH={batch}\n")
    started = time.monotonic()
    code = 0
    for label in labels:
        part, full, short = PARTS[label]
        began = time.monotonic()
        buffer = io.StringIO()
        argv = ["bench", "--device", device, "--parts", part, "--out", str(out / f"{label}.json"),
                "--work", str(out / "clips"), *(short if quick else full).split()]  # fmt: skip
        extra = ENV.get(label, {})
        if label in SECOND_SWEEPS and not quick:
            argv += ["--min-streams", str(second_sweep_start(out / "pipeline.json"))]
        if label == "pipeline_nvdec" and (why := unavailable(torch.device(device))):
            text = f"pipeline_nvdec: skipped: {why}\n"
            with report.open("a") as f:
                f.write(text)
            print(text, flush=True)
            continue
        if extra:
            buffer.write(f"{label}: " + ", ".join(f"{k}={v}" for k, v in extra.items()) + "\n")
        with contextlib.redirect_stdout(buffer), mock.patch.dict(os.environ, extra):
            code = cli(argv) or code
        text = buffer.getvalue() + f"({label}: {time.monotonic() - began:.0f} s)\n"
        with report.open("a") as f:
            f.write(text)
        print(text, flush=True)
    tail = f"wall time {time.monotonic() - started:.0f} s on {name}\n"
    with report.open("a") as f:
        f.write(tail)
    print(tail)
    return code


if __name__ == "__main__":
    sys.exit(run())
