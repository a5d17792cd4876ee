"""Prometheus rules (promtool) and Grafana dashboards, checked against what the service
really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streamer.metrics import Metrics
from tests.conftest import REPO

PROM = REPO / "deploy" / "prometheus"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rules_are_valid_and_their_unit_tests_pass():
    check = promtool("check", "rules", "rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    test = promtool("test", "rules", "rules_test.yml")
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_every_alert_has_a_unit_test_and_a_runbook():
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    tested = (PROM / "rules_test.yml").read_text()
    runbook = (REPO / "docs" / "runbook.md").read_text()
    for alert in alerts:
        assert f"alertname: {alert['alert']}" in tested, alert["alert"]
        assert alert["annotations"]["runbook_url"].endswith(alert["alert"].lower())
        assert f"\n## {alert['alert']}\n" in runbook, f"docs/runbook.md has no {alert['alert']}"
        assert alert["annotations"].get("description"), f"{alert['alert']} has no description"


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced as Grafana would."""
    for var, value in {"$__rate_interval": "1m", "$__range": "1h"}.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?(namespace|pod|stream)(:regex)?\}?", ".*", expr)


def test_dashboards_have_the_panels_users_look_for():
    titles = {p["title"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]}
    for needle in (
        "Frames dropped",
        "Verdict latency",
        "batch size",
        "Kafka",
        "Score",
        "Source up",
        "Uploads",
    ):
        assert any(needle.lower() in t.lower() for t in titles), needle
    kinds = {p["type"] for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]}
    assert "alertlist" in kinds
    stream = json.loads((REPO / "deploy/grafana/dashboards/stream.json").read_text())
    names = [v["name"] for v in stream["templating"]["list"]]
    assert names == ["datasource", "namespace", "pod", "stream", "service"]
    evidence = [p for p in stream["panels"] if p["title"].startswith("Evidence")]
    (link,) = evidence[0]["fieldConfig"]["defaults"]["links"]
    assert link["url"].startswith("${service}/v1/streams/${__data.fields.stream}/evidence")
    fleet = json.loads((REPO / "deploy/grafana/dashboards/fleet.json").read_text())
    for needle in ("Engine busy", "batch fill", "Queue depth over capacity", "GPU"):
        assert any(needle.lower() in p["title"].lower() for p in fleet["panels"]), needle


def test_dashboards_are_generated_and_filter_as_an_operator_needs():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "dashboards.py"), "--check"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for source in [panel.get("datasource")] + [t.get("datasource") for t in
                                                       panel.get("targets", [])]:  # fmt: skip
                assert source is None or source["uid"] == "${datasource}", panel["title"]
            if panel["type"] not in ("row", "alertlist"):
                assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        for _, expr in dashboard_exprs():
            # Grafana's $__rate_interval, never a fixed window that breaks on a scrape
            # interval longer than a quarter of it.
            assert not re.search(r"\[\d+[smh]\]", expr), expr
            if "deepfake_" in expr and "threshold" not in expr:
                assert 'pod=~"$pod"' in expr, expr
        text = path.read_text()
        assert '"value": 0.5' not in text  # the threshold comes from deepfake_threshold


def test_dashboards_type_check_against_the_grafana_schema(tmp_path):
    """The @grafana/schema Dashboard type, checked by tsc; enums read as their values."""
    models = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
    modules = models / "k8s-models" / "node_modules"
    assert (modules / "@grafana" / "schema").is_dir(), f"{modules} missing: run 'make setup'"
    (tmp_path / "node_modules").symlink_to(modules)
    head = (
        'import type { Dashboard } from "@grafana/schema";\n'
        "type Json<T> = T extends string ? `${T}` : T extends (infer U)[] ? Json<U>[]\n"
        "  : T extends object ? { [K in keyof T]: Json<T[K]> } : T;\n"
        "export const dashboard: Json<Dashboard> = "
    )

    def tsc(*texts: str) -> subprocess.CompletedProcess[str]:
        names = []
        for i, text in enumerate(texts):
            (tmp_path / f"d{i}.ts").write_text(head + text + ";\n")
            names.append(f"d{i}.ts")
        return subprocess.run(
            ["node", "node_modules/typescript/bin/tsc", "--noEmit", "--strict",
             "--module", "esnext", "--moduleResolution", "bundler", "--target", "es2022",
             "--skipLibCheck", *names],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    good = tsc(*(path.read_text() for path in DASHBOARDS))
    assert good.returncode == 0, good.stdout + good.stderr
    # A wrong field is caught: the types are really at work.
    broken = DASHBOARDS[0].read_text().replace('"gridPos": {', '"gridPos": {"wide": 1, ', 1)
    bad = tsc(broken)
    assert bad.returncode != 0 and "wide" in bad.stdout


def test_every_dashboard_query_parses(tmp_path):
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": as_promql(e)}
                    for i, (_, e) in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "exprs.yml").write_text(yaml.safe_dump(rules))
    check = promtool("check", "rules", "exprs.yml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Metric names the service exports: its registry's families, as /metrics names them."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_dashboards_and_rules_name_only_exported_metrics(exported):
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    exprs = [e for _, e in dashboard_exprs()]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for expr in exprs:
        names = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
        for name in re.findall(r"\bdeepfake[a-z0-9_:]*", names):
            if ":" in name:
                assert name in recorded, f"{name} is no recording rule"
            else:
                assert name in exported, f"{name} in {expr!r} is not exported by the service"


def test_dockerfile_passes_hadolint_and_runs_as_non_root():
    hadolint = Path(shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint")
    result = subprocess.run([str(hadolint), str(REPO / "deploy/Dockerfile")], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "deploy/Dockerfile").read_text()
    assert "USER 10001:10001" in text and "HEALTHCHECK" in text
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"


def test_compose_stack_mounts_files_that_exist():
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    assert set(compose["services"]) == {"kafka", "deepfake-monitor", "prometheus", "grafana"}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / "deploy" / source).exists(), f"{name}: {source} missing"
    app = compose["services"]["deepfake-monitor"]
    assert app["read_only"] is True and app["environment"]["DFM_KAFKA_BOOTSTRAP"] == "kafka:9092"
    # It listens on 0.0.0.0 in the container: without a token it would refuse to start.
    assert app["environment"]["DFM_API_TOKEN"].startswith("${DFM_API_TOKEN:?")
    # It serves the bundled demo checkpoint (in the image), not untrained weights.
    assert "DFM_RANDOM_WEIGHTS" not in app["environment"]


def test_the_runbook_base_can_be_set_for_every_alert(tmp_path, monkeypatch):
    """make k8s-rules RUNBOOK_BASE=URL: every runbook_url (and the promtool cases) move."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "prometheusrule", REPO / "scripts/prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in ("rules.yml", "rules_test.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    (tmp_path / "k8s" / "base").mkdir(parents=True)
    monkeypatch.setattr(script, "RULES", tmp_path / "rules.yml")
    monkeypatch.setattr(script, "TESTS", tmp_path / "rules_test.yml")
    monkeypatch.setattr(script, "REPO", tmp_path)
    monkeypatch.setattr(sys, "argv", ["prometheusrule.py", "--runbook-base",
                                      "https://git.example.org/ops/runbook.md"])  # fmt: skip
    script.main()
    rules = yaml.safe_load((tmp_path / "rules.yml").read_text())
    urls = [r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"]
            if "alert" in r]  # fmt: skip
    assert urls and all(u.startswith("https://git.example.org/ops/runbook.md#") for u in urls)
    assert "git.example.org" in (tmp_path / "k8s/base/prometheusrule.yaml").read_text()
    # The promtool cases expect the same URLs (the rules' test reads them as they are).
    expected = re.findall(r'runbook_url: "([^"]+)"', (tmp_path / "rules_test.yml").read_text())
    assert expected and set(expected) <= set(urls)
