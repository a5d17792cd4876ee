"""The README and docs/ say what the code does: settings, commands, links."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings, and its explicit ``<a id>`` ones."""
    out, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
        out.update(re.findall(r'<a id="([^"]+)"', line))
    return out


def test_the_settings_and_metrics_tables_are_generated_from_the_code():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "doc_tables.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    from streamer.config import Settings
    from streamer.metrics import Metrics

    missing = [n for n, f in Settings.model_fields.items() if not f.description]
    assert not missing, f"settings without a description: {missing}"
    families = [f for f in Metrics().registry.collect() if f.name.startswith("deepfake_")]
    assert len(families) > 30 and all(f.documentation for f in families)
    page = (REPO / "docs" / "metrics.md").read_text()
    assert all(f"`{f.name}" in page for f in families)


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_lists_every_command_and_option():
    from streamer.cli import _build_parser

    block = REPO.joinpath("README.md").read_text().split("## Commands", 1)[1]
    block = block.split("```", 2)[1]
    entries = {
        m.group(1): m.group(0)
        for m in re.finditer(r"deepfake-monitor (\w+)[^\n]*(\n +[^\n]*)*", block)
    }
    sub = next(a for a in _build_parser()._actions if a.dest == "command")
    missing = []
    for name, parser in sub.choices.items():  # type: ignore[attr-defined]
        if name not in entries:
            missing.append(name)
            continue
        for action in parser._actions:
            longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
            if longs and not any(o in entries[name] for o in longs):
                missing.append(f"{name} {longs[0]}")
    assert not missing, f"README's command list lacks: {missing}"
    assert len(REPO.joinpath("README.md").read_text().splitlines()) <= 250
