"""`deepfake-monitor preprocess`: face clips, manifest, skipped videos, resume, split."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import av

from analyzer.datasets import read_csv, split
from tests.conftest import run_cli


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_preprocess_makes_face_clips_and_lists_what_it_skips(synth_clips, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_clips, src)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with open(src / "labels.csv", "a") as fh:
        fh.write("broken.mp4,FAKE,nobody,faceswap,,,0,30,0\n")
        fh.write("missing.mp4,REAL,nobody,none,,,0,30,0\n")
    out = tmp_path / "clips"
    result = run_cli("preprocess", str(src), str(out), "--frames", "60", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "4 clips" in result.stdout and "2 videos skipped" in result.stdout
    manifest = rows(out / "manifest.csv")
    assert [r["label"] for r in manifest].count("FAKE") == 2 and len(manifest) == 4
    for r in manifest:
        with av.open(str(out / r["clip"])) as c:
            stream = c.streams.video[0]
            assert (stream.width, stream.height) == (112, 112) and not c.streams.audio
            assert sum(1 for _ in c.decode(video=0)) == 60
        assert r["group"] in {"sample3", "astronaut"}
    reasons = {Path(r["source"]).name: r["reason"] for r in rows(out / "skipped.csv")}
    assert reasons["broken.mp4"].startswith("unreadable")
    assert reasons["missing.mp4"].startswith("unreadable")

    # The manifest reads back as a dataset, groups intact, ready for the split.
    clips = read_csv(out / "manifest.csv")
    assert {(i.label, i.group) for i in clips} == {(r["label"], r["group"]) for r in manifest}
    assert all(i.path.is_file() for i in clips)

    # Resumable: a second run keeps the clips it finds.
    before = {r["clip"]: (out / r["clip"]).stat().st_mtime_ns for r in manifest}
    again = run_cli("preprocess", str(src), str(out), "--frames", "60", "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert {c: (out / c).stat().st_mtime_ns for c in before} == before


def test_too_few_face_frames_are_skipped_with_the_count(synth_clips, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_clips, src)
    result = run_cli("preprocess", str(src), str(tmp_path / "out"), "--frames", "500",
                     "--workers", "1")  # fmt: skip
    assert result.returncode == 0
    reasons = [r["reason"] for r in rows(tmp_path / "out" / "skipped.csv")]
    assert len(reasons) == 4 and all("frames with a face; 500 needed" in r for r in reasons)


def test_manifest_splits_by_identity(synth_clips):
    items = read_csv(synth_clips / "labels.csv")
    parts = split(items, fractions=(0.5, 0.5, 0.0), seed=0)
    assert {i.group for i in parts["train"]}.isdisjoint({i.group for i in parts["val"]})
