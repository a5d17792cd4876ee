"""Dataset readers and the balanced, identity-safe 70/20/10 split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from analyzer.datasets import Item, read_any, read_csv, read_dfdc, read_faceforensics, split
from analyzer.errors import DataError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def groups_of(items: list[Item]) -> set[str]:
    return {i.group for i in items}


def population(n_groups: int = 60) -> list[Item]:
    """Groups of one REAL source and one to three FAKEs made from it."""
    items = []
    for g in range(n_groups):
        items.append(Item(Path(f"{g}.mp4"), "REAL", f"g{g}"))
        items += [Item(Path(f"{g}_{k}.mp4"), "FAKE", f"g{g}", "swap") for k in range(1 + g % 3)]
    return items


def test_split_is_70_20_10_balanced_and_keeps_groups_apart():
    parts = split(population(), seed=1)
    sizes = {n: len(v) for n, v in parts.items()}
    total = sum(sizes.values())
    assert abs(sizes["train"] / total - 0.7) < 0.05
    assert abs(sizes["val"] / total - 0.2) < 0.05
    assert abs(sizes["test"] / total - 0.1) < 0.05
    for items in parts.values():
        labels = Counter(i.label for i in items)
        assert labels["REAL"] == labels["FAKE"] > 0
    train, val, test = (groups_of(parts[n]) for n in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test


def test_split_is_deterministic_by_seed():
    a, b, c = split(population(), seed=3), split(population(), seed=3), split(population(), seed=4)
    assert a == b and a != c


def test_unbalanced_split_keeps_every_item_once():
    items = population(30)
    parts = split(items, balance=False)
    assert sorted(str(i.path) for v in parts.values() for i in v) == sorted(
        str(i.path) for i in items
    )


def test_dfdc_fakes_share_the_group_of_their_original(tmp_path):
    part = tmp_path / "dfdc_train_part_0"
    meta = {"a.mp4": {"label": "REAL"}, "b.mp4": {"label": "FAKE", "original": "a.mp4"},
            "c.mp4": {"label": "REAL"}}  # fmt: skip
    touch(part / "a.mp4")
    (part / "metadata.json").write_text(json.dumps(meta))
    items = {i.path.name: i for i in read_dfdc(tmp_path)}
    assert items["b.mp4"].group == items["a.mp4"].group != items["c.mp4"].group
    assert items["b.mp4"].label == "FAKE" and items["b.mp4"].method == "dfdc"
    assert items["b.mp4"].pair == items["a.mp4"].pair == "a" != items["c.mp4"].pair
    assert {i.path.name for i in read_any(tmp_path)} == {"a.mp4", "b.mp4", "c.mp4"}


def test_faceforensics_pairs_tie_target_and_source(tmp_path):
    for vid in ("000", "003", "010"):
        touch(tmp_path / f"original_sequences/youtube/c23/videos/{vid}.mp4")
    touch(tmp_path / "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4")
    touch(tmp_path / "manipulated_sequences/FaceSwap/c23/videos/003_000.mp4")
    touch(tmp_path / "manipulated_sequences/FaceSwap/c23/videos/010_011.mp4")
    items = {i.path.name: i for i in read_faceforensics(tmp_path)}
    assert items["000.mp4"].group == items["003.mp4"].group == items["000_003.mp4"].group
    assert items["003_000.mp4"].group == items["000.mp4"].group
    assert items["010.mp4"].group == items["010_011.mp4"].group != items["000.mp4"].group
    assert items["003_000.mp4"].method == "FaceSwap" and items["000.mp4"].label == "REAL"
    # A fake is made from its target's footage: 000_003 pairs with 000, 003_000 with 003.
    assert items["000_003.mp4"].pair == "000" and items["003_000.mp4"].pair == "003"


def test_folder_and_csv_layouts(tmp_path):
    touch(tmp_path / "plain/real/r1.mp4")
    touch(tmp_path / "plain/fake/f1.mp4")
    assert {(i.path.name, i.label) for i in read_any(tmp_path / "plain")} == {
        ("r1.mp4", "REAL"), ("f1.mp4", "FAKE"),
    }  # fmt: skip
    (tmp_path / "study.csv").write_text("id,label\nvid1,REAL\nvid2,FAKE\n")
    items = read_csv(tmp_path / "study.csv")
    assert [(i.path.name, i.label, i.group) for i in items] == [
        ("vid1.mp4", "REAL", "vid1"), ("vid2.mp4", "FAKE", "vid2"),
    ]  # fmt: skip


def test_synth_labels_csv_reads_with_identities(synth_clips):
    items = read_any(synth_clips)
    assert {i.group for i in items} == {"sample3", "astronaut"}
    assert {i.method for i in items if i.label == "FAKE"} == {"faceswap"}
    assert [i.pair for i in items] == ["sample3-11-00000"] * 2 + ["astronaut-11-00001"] * 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [("id,label\nx,MAYBE\n", "neither REAL nor FAKE"), ("name,kind\nx,REAL\n", "columns")],
)
def test_bad_csv_is_one_clear_error(tmp_path, content, needle):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DataError, match=needle):
        read_csv(tmp_path / "bad.csv")
