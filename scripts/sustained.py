"""Streams sustained by two or more builds of this repository, side by side in one run.

Each revision's ``analyzer`` and ``streamer`` are exported (``git archive``; a folder given
instead, such as ``.``, is copied as it is) to a folder of their own, and a child process
of this virtualenv runs ``streamer.bench.run_pipeline`` from that folder: N looped 480p
one-face clips (or ``--clip``) paced as live, scored by the bundled demo model (trained on
synthetic data only), shedding off. The builds take turns at every N, so the drift of a
shared machine falls on all of them alike, and ``--passes`` repeats the whole round. It
prints one JSON line a run and, at the end, a Markdown table of frames dropped (one figure
a pass), frames taken per second, the process's CPU milliseconds per frame taken (the
model's included; 1000 / it is frames per core) and the crops per backbone call, the last
three from the first pass. On a CPU the backbone's batch decides much of the CPU per frame
at a light load, and it depends on how the streams' frame clocks happen to line up.

    .venv/bin/python scripts/sustained.py --revs e8e17df,HEAD --streams 10,12,14,16
    .venv/bin/python scripts/sustained.py --revs e8e17df,HEAD --streams 4 --fps 10
    .venv/bin/python scripts/sustained.py --revs .,.+DFM_CROP=device --streams 4,10

A build may carry settings for its runs after a ``+`` (``REV+DFM_X=1+DFM_Y=2``): the same
code with two settings side by side.

``--fps 10`` re-encodes the clip at 10 frames a second first (a camera slower than the
model's 30): each picture then stands for three of the model's frames. A revision must have
``run_pipeline(clip, PipelineConfig, seconds=, warmup=, device=, random_weights=,
max_stride=)``, as every build since the overload work has.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import av

from analyzer.h264 import write_h264
from streamer.bench import make_clip

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import asyncio, json, sys
from pathlib import Path
from analyzer.engine import Engine
from streamer.bench import PipelineConfig, run_pipeline
calls = []  # crops per backbone call, warm-up included
def counted(f):
    def backbone(self, crops):
        calls.append(len(crops))
        return f(self, crops)
    return backbone
Engine.backbone = counted(Engine.backbone)
Engine.backbone_on_device = counted(Engine.backbone_on_device)  # DFM_CROP=device
clip, n = Path(sys.argv[1]), int(sys.argv[2])
seconds, warmup = float(sys.argv[3]), float(sys.argv[4])
r = asyncio.run(run_pipeline(clip, PipelineConfig("480p", 1, n), seconds=seconds, warmup=warmup,
                             device="cpu", random_weights=False, max_stride=1))
print(json.dumps({"frames_per_s": r["frames_per_s"], "dropped": r["dropped"],
                  "p99_ms": r["latency_ms"]["p99"], "cpu_s_per_s": r["process_cpu_s_per_s"],
                  "cpu_ms_per_frame": 1000 * r["process_cpu_s_per_s"] / r["frames_per_s"],
                  "backbone_batch": sum(calls) / max(len(calls), 1)}))
"""


def export(rev: str, into: Path) -> str:
    """``rev``'s code in ``into``; returns its short hash. A folder (``.``: this working
    tree, uncommitted changes and all) is copied as it is and named by its path."""
    if Path(rev).is_dir():
        for room in ("analyzer", "streamer"):
            shutil.copytree(Path(rev) / room, into / room,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        return rev
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "analyzer", "streamer"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return sha


def slower(src: Path, dst: Path, fps: int) -> Path:
    """``src`` (30 fps) re-encoded keeping every (30 / fps)-th picture."""
    step = 30 // fps
    with av.open(str(src)) as inp:
        video = inp.streams.video[0]
        kept = (
            frame.to_ndarray(format="rgb24")
            for n, frame in enumerate(inp.decode(video))
            if n % step == 0
        )
        write_h264(dst, kept, (video.width, video.height), fps)
    return dst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--revs",
        default="e8e17df,HEAD",
        help="comma-separated revisions or folders (.: this working tree), each with "
        "settings for its runs after + (HEAD+DFM_CROP=device)",
    )
    parser.add_argument("--streams", default="10,12,14,16", help="comma-separated stream counts")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--fps", type=int, choices=[5, 10, 15, 30], default=30)
    parser.add_argument("--clip", type=Path, help="default: the bench's 480p one-face clip")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    with tempfile.TemporaryDirectory(prefix="sustained-") as tmp:
        work = Path(tmp)
        clip = args.clip or make_clip(work / "clips", "480p", 1)
        if args.fps != 30:
            clip = slower(clip, work / f"clip-{args.fps}fps.mp4", args.fps)
        revs = args.revs.split(",")
        envs = [dict(kv.split("=", 1) for kv in rev.split("+")[1:]) for rev in revs]
        shas = [export(rev.split("+")[0], work / f"rev{i}") for i, rev in enumerate(revs)]
        # results[i][n]: build i's runs with n streams, one a pass
        results: list[dict[int, list[dict[str, Any]]]] = [{} for _ in revs]
        for p in range(args.passes):
            for n in counts:
                for i, sha in enumerate(shas):
                    code = work / f"rev{i}"
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, str(clip), str(n), str(args.seconds),
                         str(args.warmup)],
                        cwd=code, env={**os.environ, **envs[i], "PYTHONPATH": str(code)},
                        check=True, capture_output=True, text=True,
                    ).stdout  # fmt: skip
                    row = json.loads(out.strip().splitlines()[-1])
                    results[i].setdefault(n, []).append(row)
                    print(json.dumps({"rev": sha, **envs[i], "pass": p + 1, "streams": n, **row}),
                          flush=True)  # fmt: skip
    names = [
        rev if rev.split("+")[0].startswith(sha) else f"{rev} ({sha})"
        for rev, sha in zip(revs, shas, strict=True)
    ]
    print(f"\n{args.fps}-fps clip, {args.seconds:.0f} s after {args.warmup:.0f} s; "
          "frames dropped (each pass), then frames/s taken and the process's CPU ms per "
          "frame, crops per backbone call (first pass)\n")  # fmt: skip
    print("| streams | " + " | ".join(f"dropped, {n}" for n in names)
          + " | frames/s | CPU ms/frame | backbone batch |")  # fmt: skip
    print("| --- " * (len(names) + 4) + "|")
    for n in counts:
        drops = [" / ".join(f"{r['dropped']:.0f}" for r in runs[n]) for runs in results]
        fps = " / ".join(f"{runs[n][0]['frames_per_s']:.1f}" for runs in results)
        cpu = " / ".join(f"{runs[n][0]['cpu_ms_per_frame']:.2f}" for runs in results)
        batch = " / ".join(f"{runs[n][0]['backbone_batch']:.2f}" for runs in results)
        print(f"| {n} | " + " | ".join(drops) + f" | {fps} | {cpu} | {batch} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
