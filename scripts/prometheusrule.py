"""Write k8s/base/prometheusrule.yaml from deploy/prometheus/rules.yml (one source of rules).

.venv/bin/python scripts/prometheusrule.py      (make k8s-rules)
"""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def render() -> str:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yml").read_text())
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "deepfake-monitor"},
        "spec": {"groups": rules["groups"]},
    }
    head = "# Generated from deploy/prometheus/rules.yml by scripts/prometheusrule.py; edit that.\n"
    return head + yaml.safe_dump(obj, sort_keys=False, width=1000)


if __name__ == "__main__":
    (REPO / "k8s" / "base" / "prometheusrule.yaml").write_text(render())
