"""docs/architecture.md stays true: every module placed, imports pointing one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

DOC = (REPO / "docs" / "architecture.md").read_text()
PURE = ["streams", "delivery", "shedding", "verdict", "urls", "errors"]


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO / package).with_suffix("").as_posix()
        found[rel] = path
    return found


def imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def rooms() -> dict[str, int]:
    """streamer module (as ``sources/base``) -> its room's number, read from the doc."""
    block = DOC.split("streamer/\n", 1)[1].split("```", 1)[0]
    room, placed = 0, {}
    for line in block.splitlines():
        head = re.match(r"\s*(\d+) ", line)
        if head:
            room = int(head.group(1))
        elif line.strip():
            for name in re.split(r",\s*", line.strip().rstrip(",")):
                placed[name] = room
    return placed


def test_every_module_has_a_room_and_analyzer_never_imports_streamer():
    placed = rooms()
    assert set(placed) == set(modules("streamer")), set(modules("streamer")) ^ set(placed)
    analyzer_block = DOC.split("analyzer/", 1)[1].split("streamer/\n", 1)[0]
    for name, path in modules("analyzer").items():
        if name != "__init__":
            assert re.search(rf"\b{name}\b", analyzer_block), f"analyzer/{name} not in the doc"
        bad = {m for m in imports(path) if m.split(".")[0] == "streamer"}
        assert not bad, f"analyzer/{name} imports {bad}"


def test_imports_point_only_down_the_rooms():
    placed = rooms()
    upward = []
    for name, path in modules("streamer").items():
        for target in imports(path):
            if target.split(".")[0] != "streamer":
                continue
            rel = target.removeprefix("streamer").lstrip(".").replace(".", "/") or "__init__"
            if rel not in placed:
                rel = f"{rel}/__init__"
            if placed[rel] > placed[name]:
                upward.append(f"{name} (room {placed[name]}) imports {rel} (room {placed[rel]})")
    assert not upward, upward


def test_pure_modules_import_neither_asyncio_nor_torch():
    for name in PURE:
        assert f"`streamer.{name}`" in DOC
        found = imports(REPO / "streamer" / f"{name}.py")
        assert not {m for m in found if m.split(".")[0] in ("asyncio", "torch")}, name
