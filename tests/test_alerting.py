"""End to end: a real Prometheus scrapes a running service and the deepfake alert fires.

What is under test is the path from verdicts to metrics to rules to a firing alert, not
the model: the service runs untrained weights (P(FAKE) near 0.5) with its threshold
lowered to 0.3, so every window is labelled FAKE whatever the model would say. The demo
model's quality is in its own report (analyzer/assets/demo-report/).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import yaml

from tests.conftest import REPO
from tests.servers import Service, free_port, wait_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


# The alerts this test sees fire, with their `for` shortened (the shipped rules wait
# 30 s to 5 min): a stream's FAKE windows, an engine that hangs on its first batch (with
# crops queued, its heartbeat is old), and a scrape target that does not answer.
SHORTENED = {"DeepfakeDetected", "DeepfakeEngineStalled", "DeepfakeMetricsMissing"}


def test_prometheus_fires_the_content_engine_and_scrape_alerts(fake_clip, tmp_path):
    env = {
        "DFM_FPS": "10", "DFM_WINDOW_FRAMES": "20", "DFM_HOP_FRAMES": "10",
        "DFM_THRESHOLD": "0.3", "DFM_ALLOW_FILE_SOURCES": "true",
        # The first engine call hangs 15 s: DeepfakeEngineStalled, then the engine goes on.
        "DFM_FAULTS": json.dumps({"engine_delay_ms": 15000, "calls": 1}),
        "DFM_ENGINE_STALL_S": "60",
    }  # fmt: skip
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in SHORTENED:
                rule["for"] = "2s"  # test only
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    with Service(env, tmp_path) as svc:
        spec = {"id": "fake-cam", "url": f"file://{fake_clip}", "options": {"loop": True}}
        assert svc.client.post("/v1/streams", json=spec).status_code == 201
        prom_port, nobody = free_port(), free_port()  # nothing listens on `nobody`
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [
                {"job_name": "deepfake-monitor",
                 "static_configs": [{"targets": [f"127.0.0.1:{svc.port}",
                                                 f"127.0.0.1:{nobody}"]}]},
            ],
        }  # fmt: skip
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        seen: dict[str, dict[str, dict]] = {}  # alert name -> its firing instances by labels
        try:

            def all_fired() -> bool:
                try:
                    r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/alerts", timeout=5)
                except httpx.HTTPError:
                    return False
                if r.status_code != 200:  # 503 "Service Unavailable" while it starts up
                    return False
                for alert in r.json()["data"]["alerts"]:
                    if alert["state"] == "firing":
                        labels = alert["labels"]
                        seen.setdefault(labels["alertname"], {})[str(sorted(labels.items()))] = (
                            alert
                        )
                return SHORTENED <= seen.keys() and dead_target_missing()

            def dead_target_missing() -> bool:
                return any(
                    a["labels"].get("instance") == f"127.0.0.1:{nobody}"
                    for a in seen.get("DeepfakeMetricsMissing", {}).values()
                )

            try:
                wait_until(all_fired, 150, f"{sorted(SHORTENED)} to fire")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; fired: {sorted(seen)}") from None
        finally:
            prom.terminate()
            prom.wait(30)
            log.close()
        (detected,) = seen["DeepfakeDetected"].values()
        assert detected["labels"]["stream"] == "fake-cam"
        assert detected["labels"]["severity"] == "info"  # content: its own route
        assert detected["labels"]["category"] == "content"
        assert "fake-cam" in detected["annotations"]["summary"]
        (stalled,) = seen["DeepfakeEngineStalled"].values()
        assert stalled["labels"]["instance"] == f"127.0.0.1:{svc.port}"
        # The dead target fires, the live one never does (before the first scrape, the
        # absent() guard may fire without an instance).
        missing = seen["DeepfakeMetricsMissing"].values()
        instances = {a["labels"].get("instance") for a in missing}
        assert f"127.0.0.1:{svc.port}" not in instances
        assert svc.terminate() == 0


def test_compose_prometheus_config_is_valid(tmp_path):
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    config["rule_files"] = [str(REPO / "deploy/prometheus/rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [shutil.which("promtool") or "/usr/bin/promtool", "check", "config",
         str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
