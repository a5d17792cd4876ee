"""Labelled video collections and the study's balanced 70/20/10 split.

Readers for the layouts users have:

* DFDC: folders with ``metadata.json`` (``{"x.mp4": {"label": "FAKE", "original": "y.mp4"}}``);
* FaceForensics++: ``original_sequences/<source>/<quality>/videos/000.mp4`` and
  ``manipulated_sequences/<Method>/<quality>/videos/000_003.mp4`` (target 000, source 003);
* a plain folder: ``real/`` and ``fake/``;
* a CSV of ``id,label`` (the study's own format; ``file``/``path``, ``identity`` and
  ``method`` columns are used when present, so ``deepfake-monitor synth``'s ``labels.csv``
  reads too).

Every item carries a *group*: the videos that share people. A manipulated video and its
source share a group (DFDC's ``original`` field, FF++'s pair names, which also tie
``000_003`` to ``003_000``), and :func:`split` never puts one group in two splits.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analyzer.errors import DataError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
LABELS = ("REAL", "FAKE")


@dataclass(frozen=True)
class Item:
    path: Path
    label: str  # REAL or FAKE
    group: str
    method: str = "none"  # the manipulation, for per-method scores
    # The source footage: a REAL video and the FAKEs made from it share it ("" = unknown).
    pair: str = ""


def _label(value: str, where: str) -> str:
    label = value.strip().upper()
    if label in ("0", "FAKE") or label == "F":
        return "FAKE"
    if label in ("1", "REAL") or label == "R":
        return "REAL"
    raise DataError(f"{where}: label {value!r} is neither REAL nor FAKE")


class _Groups:
    """Union-find over ids: ids that share a person end up in one group."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


def read_dfdc(root: Path) -> list[Item]:
    metas = sorted(root.rglob("metadata.json"))
    if not metas:
        raise DataError(f"{root} holds no DFDC metadata.json")
    groups = _Groups()
    raw = []
    for meta in metas:
        for name, info in json.loads(meta.read_text()).items():
            label = _label(str(info.get("label", "")), f"{meta}: {name}")
            original = info.get("original") or name
            groups.union(name, original)
            raw.append((meta.parent / name, label, name, original))
    return [
        Item(p, lb, groups.find(n), "dfdc" if lb == "FAKE" else "none", Path(o).stem)
        for p, lb, n, o in raw
    ]


def read_faceforensics(root: Path) -> list[Item]:
    originals = root / "original_sequences"
    manipulated = root / "manipulated_sequences"
    if not originals.is_dir() and not manipulated.is_dir():
        raise DataError(f"{root} has neither original_sequences/ nor manipulated_sequences/")
    groups = _Groups()
    raw: list[tuple[Path, str, str, str]] = []
    for path in _videos(originals) if originals.is_dir() else []:
        raw.append((path, "REAL", path.stem, "none"))
        groups.find(path.stem)
    if manipulated.is_dir():
        for method_dir in sorted(p for p in manipulated.iterdir() if p.is_dir()):
            for path in _videos(method_dir):
                target, _, source = path.stem.partition("_")
                groups.union(target, source or target)
                raw.append((path, "FAKE", target, method_dir.name))
    return [Item(p, lb, groups.find(key), m, key) for p, lb, key, m in raw]


def read_folder(root: Path) -> list[Item]:
    items = []
    for label in LABELS:
        folder = next((d for d in (root / label.lower(), root / label) if d.is_dir()), None)
        if folder is None:
            raise DataError(f"{root} needs real/ and fake/ subfolders")
        items += [Item(p, label, p.stem) for p in _videos(folder)]
    return items


def read_csv(path: Path) -> list[Item]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{path} has no rows")
    key = next((k for k in ("clip", "file", "path", "id") if k in rows[0]), None)
    if key is None or "label" not in rows[0]:
        raise DataError(f"{path} needs the columns id (or clip/file/path) and label")
    items = []
    for n, row in enumerate(rows, start=2):
        name = row[key]
        video = Path(name) if Path(name).is_absolute() else path.parent / name
        if not video.suffix:
            video = video.with_suffix(".mp4")
        label = _label(row["label"], f"{path}:{n}")
        group = row.get("identity") or row.get("group") or Path(name).stem
        items.append(Item(video, label, group, row.get("method") or "none", row.get("pair") or ""))
    return items


def read_any(source: Path) -> list[Item]:
    """Pick the reader by what ``source`` looks like."""
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_csv(source)
    if not source.is_dir():
        raise DataError(f"{source} is neither a folder nor a CSV file")
    if (source / "labels.csv").is_file():
        return read_csv(source / "labels.csv")
    if (source / "original_sequences").is_dir() or (source / "manipulated_sequences").is_dir():
        return read_faceforensics(source)
    if any(source.rglob("metadata.json")):
        return read_dfdc(source)
    return read_folder(source)


def split(
    items: Sequence[Item],
    *,
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    balance: bool = True,
) -> dict[str, list[Item]]:
    """Train/val/test by group, REAL and FAKE in each close to ``fractions``.

    Groups go, largest first and in a seeded order among equals, to the split that lacks
    most of its share of their label mix. With ``balance``, each split then keeps as many
    of its majority label as it has of the other (the study's 50/50 data), dropping
    items at random.

    Not scikit-learn's ``StratifiedGroupKFold``: its folds are equal, so 70/20/10 takes
    ten folds and at least ten groups, where this split works from three groups up (a
    small synthetic set, a first try on a handful of people).
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions {fractions} must add up to 1")
    names = ("train", "val", "test")
    rng = random.Random(seed)
    by_group: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_group[item.group].append(item)
    groups = list(by_group)
    rng.shuffle(groups)
    groups.sort(key=lambda g: -len(by_group[g]))
    totals = {lb: sum(i.label == lb for i in items) for lb in LABELS}
    have = {n: {lb: 0 for lb in LABELS} for n in names}
    out: dict[str, list[Item]] = {n: [] for n in names}
    for g in groups:
        members = by_group[g]
        counts = {lb: sum(i.label == lb for i in members) for lb in LABELS}

        misses = [
            _missing(n, f, counts, have, totals) for n, f in zip(names, fractions, strict=True)
        ]
        target = names[misses.index(max(misses))]
        out[target] += members
        for lb in LABELS:
            have[target][lb] += counts[lb]
    if balance:
        for n in names:
            real = [i for i in out[n] if i.label == "REAL"]
            fake = [i for i in out[n] if i.label == "FAKE"]
            keep = min(len(real), len(fake))
            out[n] = sorted(rng.sample(real, keep) + rng.sample(fake, keep), key=_key)
    return out


def require_parts(
    parts: dict[str, list[Item]], needed: Sequence[str], fractions: Sequence[float]
) -> None:
    """Raise DataError naming the groups found and needed when a needed part is empty."""
    empty = [n for n in needed if not parts.get(n)]
    if not empty:
        return
    items = [i for part in parts.values() for i in part]
    found = len({i.group for i in items})
    by_label = {lb: len({i.group for i in items if i.label == lb}) for lb in LABELS}
    # Each non-empty part needs one group of each label; the smallest part needs enough
    # groups for its fraction to round to at least one of them.
    smallest = min(f for f in fractions if f > 0)
    need = max(len(fractions), math.ceil(1.0 / smallest))
    raise DataError(
        f"the {'/'.join(empty)} split is empty: the manifest has {found} identity groups "
        f"({by_label['REAL']} with REAL clips, {by_label['FAKE']} with FAKE clips); a "
        f"{'/'.join(f'{f:g}' for f in fractions)} split needs at least {need} groups of each "
        "label. Add clips of more people, or pass --val-manifest"
    )


def _missing(
    name: str,
    fraction: float,
    counts: dict[str, int],
    have: dict[str, dict[str, int]],
    totals: dict[str, int],
) -> float:
    """How much of its quota split ``name`` still misses, for a group's label mix."""
    out = 0.0
    for lb in LABELS:
        quota = fraction * totals[lb]
        if counts[lb] and quota > 0:
            out += counts[lb] * (quota - have[name][lb]) / quota
    return out


def _key(item: Item) -> str:
    return str(item.path)
