"""Write the settings table of ``docs/settings.md`` from the fields of ``streamer/config.py``.

    .venv/bin/python scripts/settings_table.py          # rewrite the table
    .venv/bin/python scripts/settings_table.py --check  # exit 1 if it is out of date

``tests/test_docs.py`` runs the check, so a setting added without a description, or a
changed default, shows up as a failing test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.config import settings_table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
BEGIN, END = "<!-- settings table: begin (scripts/settings_table.py) -->", "<!-- end -->"


def render(page: str) -> str:
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{settings_table()}{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args()
    page = PAGE.read_text()
    fresh = render(page)
    if args.check:
        if fresh != page:
            print(f"{PAGE} is out of date: run scripts/settings_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
