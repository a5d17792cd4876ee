"""The shared end of the scripts that write generated files (``doc_tables.py``,
``dashboards.py``): rewrite the files that changed, or with ``--check`` only say which are
out of date and exit 1 (what the tests run)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(description: str, script: str, render: Callable[[], dict[Path, str]]) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="only say whether they are current")
    args = parser.parse_args()
    stale = 0
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            print(f"{path} is out of date: run scripts/{script}", file=sys.stderr)
            stale += 1
        else:
            path.write_text(text)
    return 1 if stale else 0
