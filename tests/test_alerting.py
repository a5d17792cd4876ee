"""End to end: a real Prometheus scrapes a running service and the deepfake alert fires.

What is under test is the path from verdicts to metrics to rules to a firing alert, not
the model: the service runs untrained weights (P(FAKE) near 0.5) with its threshold
lowered to 0.3, so every window is labelled FAKE whatever the model would say. The demo
model's quality is in its own report (analyzer/assets/demo-report/).
"""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
import yaml

from tests.conftest import REPO, synthetic_clip
from tests.servers import Service, free_port, wait_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def fake_clip(photos_dir):
    return synthetic_clip(1, "FAKE", videos=2, frames=150, seed=9, size=(320, 240),
                          identities=["astronaut", "sample3"])  # fmt: skip


def test_prometheus_fires_deepfake_detected_for_a_fake_stream(fake_clip, tmp_path):
    env = {
        "DFM_FPS": "10", "DFM_WINDOW_FRAMES": "20", "DFM_HOP_FRAMES": "10",
        "DFM_THRESHOLD": "0.3", "DFM_ALLOW_FILE_SOURCES": "true",
    }  # fmt: skip
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "DeepfakeDetected":
                rule["for"] = "2s"  # test only: the shipped rule waits 30 s
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    with Service(env, tmp_path) as svc:
        spec = {"id": "fake-cam", "url": f"file://{fake_clip}", "options": {"loop": True}}
        assert svc.client.post("/v1/streams", json=spec).status_code == 201
        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [
                {"job_name": "deepfake-monitor",
                 "static_configs": [{"targets": [f"127.0.0.1:{svc.port}"]}]},
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
        try:

            def firing() -> list[dict]:
                try:
                    r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/alerts", timeout=5)
                except httpx.HTTPError:
                    return []
                if r.status_code != 200:  # 503 "Service Unavailable" while it starts up
                    return []
                return [
                    a
                    for a in r.json()["data"]["alerts"]
                    if a["labels"]["alertname"] == "DeepfakeDetected" and a["state"] == "firing"
                ]

            alerts = wait_until(firing, 120, "DeepfakeDetected to fire")
            assert alerts[0]["labels"]["stream"] == "fake-cam"
            assert alerts[0]["labels"]["severity"] == "critical"
            assert "fake-cam" in alerts[0]["annotations"]["summary"]
        finally:
            prom.terminate()
            prom.wait(30)
            log.close()
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
