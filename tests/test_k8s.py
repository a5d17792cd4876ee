"""Kubernetes manifests: kustomize renders both variants, and the built-in kinds pass
kubernetes-validate --strict (no API server exists here to apply them to)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def render(target: str) -> list[dict]:
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(REPO / target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


CUSTOM = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


@pytest.mark.parametrize("target", ["k8s/base", "k8s/overlays/gpu"])
def test_manifests_render_and_validate_strictly(target, tmp_path):
    docs = render(target)
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
    } | CUSTOM  # fmt: skip
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in CUSTOM]))
    check = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def deployment(target: str) -> dict:
    return next(d for d in render(target) if d["kind"] == "Deployment")


def test_the_pod_is_locked_down_and_drains_before_it_is_killed():
    dep = deployment("k8s/base")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False
    config = next(d for d in render("k8s/base") if d["kind"] == "ConfigMap")["data"]
    # The grace period covers the preStop sleep plus the worst case the settings allow.
    from streamer.config import Settings
    from streamer.service import shutdown_worst_case_s

    settings = Settings(
        **{k.removeprefix("DFM_").lower(): v for k, v in config.items()}, api_token="x"
    )
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    worst = pre_stop + shutdown_worst_case_s(settings)
    assert worst < pod["terminationGracePeriodSeconds"], (worst, pod)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"


def test_the_gpu_overlay_asks_for_a_gpu_node():
    pod = deployment("k8s/overlays/gpu")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert {"name": "DFM_DEVICE", "value": "cuda"} in container["env"]
    assert "nvidia.com/gpu" not in str(deployment("k8s/base"))


def test_custom_resources_validate_against_their_schemas(tmp_path):
    """KEDA and Prometheus Operator objects, checked by npm kubernetes-models validators."""
    models = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
    modules = models / "k8s-models" / "node_modules"
    assert modules.is_dir(), f"{modules} missing: run 'make setup'"
    (tmp_path / "node_modules").symlink_to(modules)
    shutil.copy(REPO / "tests" / "k8s_models" / "validate.mjs", tmp_path)
    custom = [d for d in render("k8s/overlays/gpu") if d["kind"] in CUSTOM]
    assert {d["kind"] for d in custom} == CUSTOM
    (tmp_path / "objects.json").write_text(json.dumps(custom))
    check = subprocess.run(
        ["node", "validate.mjs", "objects.json"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("valid ") == 3
    # A broken object is caught: the validators are really at work.
    broken = [{**custom[0], "spec": {"bogus": True}}]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    bad = subprocess.run(["node", "validate.mjs", "broken.json"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1 and "INVALID" in bad.stdout


def test_prometheusrule_is_generated_from_the_rule_file():
    spec = yaml.safe_load((REPO / "k8s/base/prometheusrule.yaml").read_text())["spec"]
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    assert spec["groups"] == rules["groups"], "run 'make k8s-rules'"


def test_policy_check_finds_nothing_unjustified(tmp_path):
    cache = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
    checkov = cache / "checkov-3.3.30" / "bin" / "checkov"
    assert checkov.is_file(), f"{checkov} missing: run 'make setup'"
    docs = render("k8s/overlays/gpu")
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [str(checkov), "-f", str(tmp_path / "gpu.yaml"), "--framework", "kubernetes",
         "--skip-download", "--compact", "--output", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(result.stdout)
    failed = report["results"]["failed_checks"]
    assert failed == [], [f"{c['check_id']} {c['check_name']}" for c in failed]
    assert report["summary"]["passed"] > 50
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped == {
        "CKV_K8S_43",
        "CKV_K8S_35",
        "CKV_K8S_15",
    }  # each justified in deployment.yaml
