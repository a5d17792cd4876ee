"""The independent test generator: clips preprocess can read, of photos the demo never
trained on, made by code that shares nothing with synth's manipulations or camera."""

from __future__ import annotations

import ast
import re

import numpy as np

from analyzer.testfakes import HELD_OUT, METHODS, generate
from tests.conftest import REPO


def test_clips_are_labelled_pairs_that_differ_at_the_faces_only(tmp_path, photos_dir):
    import av

    from analyzer.datasets import read_any

    rows = generate(tmp_path, videos=4, frames=12, seed=3, photos_dir=photos_dir)
    items = read_any(tmp_path)
    assert [i.label for i in items] == ["REAL", "FAKE", "REAL", "FAKE"]
    assert {i.group for i in items} <= set(HELD_OUT)
    assert {i.method for i in items if i.label == "FAKE"} <= {f"testfakes-{m}" for m in METHODS}
    assert all(r["frames"] == 12 for r in rows)

    def first_frame(name: str) -> np.ndarray:
        with av.open(str(tmp_path / name)) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)

    for real, fake in ((rows[0], rows[1]), (rows[2], rows[3])):
        diff = np.abs(first_frame(str(real["file"])) - first_frame(str(fake["file"]))).max(-1)
        # Same photo, camera, noise: most of the frame matches; the swapped faces do not.
        assert np.median(diff) <= 3, np.median(diff)
        assert (diff > 25).mean() > 0.002, (diff > 25).mean()


def test_it_shares_no_code_with_synth_and_films_no_training_photo():
    tree = ast.parse((REPO / "analyzer" / "testfakes.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    synth_side = {"analyzer.synthetic", "analyzer.manipulations", "analyzer.camera",
                  "analyzer.scene", "analyzer.blend"}  # fmt: skip
    assert not imported & synth_side, imported & synth_side
    # The demo trains on the photos of the synth calls that write its training clips.
    script = (REPO / "scripts" / "train_demo.sh").read_text()
    trained = set()
    for call in re.findall(r"synth \"\$WORK/videos-(?:train|more)\"[^\n]*\n[^\n]*", script):
        trained |= set(re.search(r"--identities (\S+)", call).group(1).split(","))
    assert trained and not trained & set(HELD_OUT), trained & set(HELD_OUT)
