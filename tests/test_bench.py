"""`deepfake-monitor bench --quick` keeps working (a smoke test, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamer.bench import make_clip
from tests.conftest import REPO, cache_folder, run_cli


@pytest.mark.slow
def test_bench_quick_measures_every_part(tmp_path, photos_dir):
    out = tmp_path / "bench.json"
    parts = "engine,baseline,pipeline,overload,frontend,decode,stages,evidence"
    # The bench's clips are made once and kept across runs, as the other tests' are.
    work = cache_folder({"bench-clips": True})
    # The pipeline's streams replay one clip's packets, as the GPU check's do.
    args = ("--parts", parts, "--capacity", "1", "--out", str(out), "--work", str(work),
            "--replay")  # fmt: skip
    result = run_cli("bench", "--quick", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    for heading in ("engine on", "baseline on", "pipeline on", "overload on", "frame pool on",
                    "decode on", "stages on", "evidence on"):  # fmt: skip
        assert heading in result.stdout
    data = json.loads(out.read_text())
    engine = data["engine"]
    assert engine["flops"]["backbone_flops_per_frame"] > 1e9  # about 2.2 GFLOP at 112x112
    assert {r["stage"] for r in engine["rows"]} == {"backbone", "head"}
    assert all(r["items_per_s"] > 0 for r in engine["rows"])
    base = data["baseline"]["results"][0]
    assert base["naive_backbone_frames_per_verdict"] == 150
    assert base["ours_backbone_frames_per_verdict"] == base["hop"]
    assert base["ratio_ours_over_naive"] > 1
    assert data["pipeline"]["sources"] == "replayed packets"
    run = data["pipeline"]["configs"][0]["runs"][0]
    assert run["frames_per_s"] > 0 and run["verdicts_per_s"] > 0
    assert set(run["cpu_s_per_s"]) >= {"decode", "faces", "crop", "backbone_wall", "head_wall"}
    over = data["overload"]
    assert [(r["factor"], r["streams"]) for r in over["rows"]] == [(3.0, 3)]
    for row in over["rows"]:
        assert row["shed"]["stride"] >= 1 and row["no_shed"]["stride"] == 1
    assert 0 <= over["top_load_share_of_peak"] <= 1.5
    # The frame pool: a thread per stream against one for both, each decoding in its
    # reader thread, and the decode pool of two decoding both streams' packets; each
    # taking frames.
    front = data["frontend"]["rows"]
    assert [(r["frame_workers"], r["decode_workers"]) for r in front] == [(2, 0), (1, 0), (2, 2)]
    assert all(r["frames_per_s"] > 0 and r["threads"] > 0 for r in front)
    # Kafka keys' video decoded in their readers and in the decode pool: every frame of
    # both keys, each way, for each kind of message.
    dec = data["decode"]
    assert [(r["kind"], r["decode_workers"] > 0) for r in dec["rows"]] == [
        ("video/mp2t", False), ("video/mp2t", True), ("image/jpeg", False), ("image/jpeg", True)
    ]  # fmt: skip
    assert all(abs(r["frames"] - 2 * 60) <= 4 and r["failed"] == 0 for r in dec["rows"])
    assert dec["rows"][0]["frames"] == dec["rows"][1]["frames"]  # the pool: every frame
    assert set(dec["ratio_pool_over_readers"]) == {"video/mp2t", "image/jpeg"}
    stages = data["stages"]
    assert stages["clip"]["faces_per_frame"] > 1.5  # the two-face clip: both found
    assert all(ms > 0 for ms in stages["ms"].values())
    assert stages["crops"]["crops"] == 120  # two faces in each of 60 frames
    assert stages["crops"]["host_crops_per_s"] > 0 and stages["crops"]["device_crops_per_s"] > 0
    assert set(stages["crops"]["tracker_frames_per_s"]) == {"host", "device"}  # DFM_CROP
    assert all(fps > 0 for fps in stages["crops"]["tracker_frames_per_s"].values())
    assert "DFM_CROP=device" in result.stdout
    ring = {(r["layout"], r["faces"]): r["mb_per_stream"] for r in stages["ring_memory"]}
    # The service's rings (float16 features, no crops): under 1 MB a face, and far below
    # the layout that kept every crop.
    assert ring[("float16 features only", 4)] <= 4 * 1.0
    assert ring[("crops + float32 features", 4)] > 5 * ring[("float16 features only", 4)]
    assert "face rings of one stream" in result.stdout
    # The PyTorch BlazeFace: its network at 1, 8 and 32 frames per call and through the
    # batcher's detection stage, each finding MediaPipe's faces on the same frames.
    ways = {d["way"]: d for d in stages["detectors"]}
    assert set(ways) == {"network, 1 per call", "network, 8 per call", "network, 32 per call",
                         "detection stage, 8 streams"}  # fmt: skip
    for d in ways.values():
        assert d["frames_per_s"] > 0
        assert d["same_count_share"] >= 0.9 and d["worst_iou"] >= 0.8, d
    assert ways["detection stage, 8 streams"]["batch"] > 1  # frames of several streams a call
    # Evidence: off, and a record asked of every window (which makes records); the full
    # bench adds the two rows between.
    evidence = data["evidence"]
    rows = {(r["evidence"], r["every_window"], r["heatmaps_per_min"]): r for r in evidence["rows"]}
    assert set(rows) == {("off", False, 6), ("full", True, 600)}
    assert rows[("off", False, 6)]["evidence_records_per_s"] == 0
    assert rows[("full", True, 600)]["evidence_records_per_s"] > 0
    assert all(r["verdicts_per_s"] > 0 for r in rows.values())
    assert evidence["heatmaps_per_min"] > 0


@pytest.mark.slow
def test_sustained_runs_each_revision_in_turn_and_tables_the_drops(photos_dir):
    """scripts/sustained.py (docs/performance.md's streams-sustained table): each revision's
    code copied and run from its own folder (this checkout twice: CI's need not be a
    git repository), one JSON line a run, a Markdown row per N."""
    clip = make_clip(cache_folder({"bench-clips": True}), "480p", 1)
    args = ("--revs", f"{REPO},{REPO}", "--streams", "1", "--passes", "1", "--seconds", "2",
            "--warmup", "2", "--fps", "10", "--clip", str(clip))  # fmt: skip
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "sustained.py"), *args],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["pass"], r["streams"]) for r in runs] == [(1, 1), (1, 1)]
    # Frames were taken. How many says how busy the cores were, not what the script does:
    # a 10-fps camera's pictures are three of the model's 30 frames each (test_pool's live
    # 10-fps file), yet with another test's load on the cores runs here took 15 to 30 a second.
    assert all(r["frames_per_s"] > 0 for r in runs), runs
    assert "10-fps clip" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 1 |"))
    drops = " | ".join(f"{r['dropped']:.0f}" for r in runs)
    fps = " / ".join(f"{r['frames_per_s']:.1f}" for r in runs)
    # The process's CPU per frame taken, the model's included: frames per core is 1000 / it.
    assert all(0 < r["cpu_ms_per_frame"] < 1000 for r in runs), runs
    assert all(
        abs(r["cpu_ms_per_frame"] - 1000 * r["cpu_s_per_s"] / r["frames_per_s"]) < 1e-6
        for r in runs
    ), runs
    cpu = " / ".join(f"{r['cpu_ms_per_frame']:.2f}" for r in runs)
    # One face: a call holds one crop, or the few of a 10-fps picture's burst.
    assert all(1 <= r["backbone_batch"] <= 3 for r in runs), runs
    batch = " / ".join(f"{r['backbone_batch']:.2f}" for r in runs)
    assert row == f"| 1 | {drops} | {fps} | {cpu} | {batch} |"


def test_the_nvdec_part_times_pyav_and_says_why_nvdec_did_not_run(tmp_path, photos_dir):
    """``bench --parts nvdec``: PyAV's software decode of the 480p clip, one session and
    one a CPU, and NVDEC (PyNvVideoCodec) beside it where there is one; here, none, and
    the part says why in a line naming the fix instead of failing."""
    out = tmp_path / "bench.json"
    work = cache_folder({"bench-clips": True})
    result = run_cli("bench", "--quick", "--device", "cpu", "--parts", "nvdec", "--out",
                     str(out), "--work", str(work))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    part = json.loads(out.read_text())["nvdec"]
    pyav = [r for r in part["rows"] if r["decoder"] == "pyav"]
    assert [r["sessions"] for r in pyav] == [1, 2]  # one, then one a CPU (2 here)
    assert all(r["frames"] > 0 and r["frames_per_s"] > 0 for r in pyav), pyav
    assert part["nvdec"] == "skipped: the device is the CPU; run it on a GPU machine"
    assert "NVDEC on" in result.stdout and part["nvdec"] in result.stdout


def test_without_pynvvideocodec_the_nvdec_part_names_the_wheel(tmp_path, monkeypatch):
    import torch

    from streamer import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # import fails
    assert bench.nvdec_skipped("cuda") == (
        "skipped: PyNvVideoCodec is not installed; pip install pynvvideocodec "
        "(or carry its wheel to the GPU check)"
    )
    assert bench.nvdec_skipped("cpu").startswith("skipped: the device is the CPU")
