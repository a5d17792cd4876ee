"""Write k8s/base/prometheusrule.yaml from deploy/prometheus/rules.yml (one source of rules).

.venv/bin/python scripts/prometheusrule.py [--runbook-base URL]     (make k8s-rules)

Every alert's ``runbook_url`` is a base plus ``#<alert name in lower case>``, an anchor of
``docs/runbook.md``. The rules carry a placeholder base; ``--runbook-base`` (or ``make
k8s-rules RUNBOOK_BASE=URL``) writes both files with the address where you publish the
runbook, e.g. your repository's rendered ``docs/runbook.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
TESTS = REPO / "deploy" / "prometheus" / "rules_test.yml"
PLACEHOLDER = "https://deepfake-monitor.example/runbooks"


def current_base(text: str) -> str:
    for line in text.splitlines():
        if "runbook_url:" in line:
            return line.split('"')[1].split("#")[0]
    return PLACEHOLDER


def render() -> str:
    rules = yaml.safe_load(RULES.read_text())
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "deepfake-monitor"},
        "spec": {"groups": rules["groups"]},
    }
    head = "# Generated from deploy/prometheus/rules.yml by scripts/prometheusrule.py; edit that.\n"
    return head + yaml.safe_dump(obj, sort_keys=False, width=1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runbook-base", help="where docs/runbook.md is published")
    args = parser.parse_args()
    if args.runbook_base:
        old = current_base(RULES.read_text())
        new = args.runbook_base.rstrip("#")
        for path in (RULES, TESTS):  # the promtool cases expect the same URLs
            path.write_text(path.read_text().replace(f'"{old}#', f'"{new}#'))
    (REPO / "k8s" / "base" / "prometheusrule.yaml").write_text(render())


if __name__ == "__main__":
    main()
