"""Write the generated tables of the docs: settings (``docs/settings.md``, from the fields
of ``streamer/config.py``) and metrics (``docs/metrics.md``, from ``streamer/metrics.py``).

    .venv/bin/python scripts/doc_tables.py          # rewrite the tables
    .venv/bin/python scripts/doc_tables.py --check  # exit 1 if one is out of date

``tests/test_docs.py`` runs the check, so a setting or a metric added without a
description, or a changed default, shows up as a failing test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from streamer.config import settings_table
from streamer.metrics import metrics_table

DOCS = Path(__file__).resolve().parents[1] / "docs"
END = "<!-- end -->"
TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "settings.md": ("<!-- settings table: begin (scripts/doc_tables.py) -->", settings_table),
    "metrics.md": ("<!-- metrics table: begin (scripts/doc_tables.py) -->", metrics_table),
}


def render(page: str, begin: str, table: str) -> str:
    head, _, rest = page.partition(begin)
    _, _, tail = rest.partition(END)
    return f"{head}{begin}\n{table}{END}{tail}"


def pages() -> dict[Path, str]:
    out = {}
    for name, (begin, table) in TABLES.items():
        path = DOCS / name
        out[path] = render(path.read_text(), begin, table())
    return out


def main() -> int:
    from generated import write_or_check  # scripts/, beside this one

    return write_or_check(__doc__.splitlines()[0], "doc_tables.py", pages)


if __name__ == "__main__":
    sys.exit(main())
