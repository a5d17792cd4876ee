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
        [str(BIN / "kubectl"), "kustomize", str(REPO / target)],  # an absolute one stays
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


CUSTOM = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


def gpu_with(folder: Path, *components: str) -> str:
    """An overlay in ``folder``: the gpu variant plus ``components`` of k8s/components."""
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(REPO / "k8s/overlays/gpu", folder)],
                "components": [
                    os.path.relpath(REPO / "k8s/components" / name, folder) for name in components
                ],
            }
        )
    )
    return str(folder)


@pytest.mark.parametrize("target", ["k8s/base", "k8s/overlays/gpu", "k8s/overlays/example"])
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
    # The startup probe must not wait on readiness: a full replica is unready, yet up.
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_rollout_scaling_and_drains_work_on_a_full_gpu_pool():
    docs = render("k8s/overlays/gpu")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    # The autoscaler owns the replica count: a value here resets it on every apply.
    assert "replicas" not in dep["spec"]
    # No surge pod waiting for a GPU that no node has free.
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")["spec"]
    assert scaled["fallback"]["replicas"] >= scaled["minReplicaCount"]
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    # Saturation, not Kafka lag (which does not grow when a busy replica drops frames).
    assert {t["type"] for t in scaled["triggers"]} == {"prometheus"}
    queries = " ".join(t["metadata"]["query"] for t in scaled["triggers"])
    for metric in ("deepfake_inference_seconds_sum", "deepfake_frames_dropped_total",
                   "deepfake_streams_desired"):  # fmt: skip
        assert metric in queries
    # Thread pools from the CPU limit.
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    omp = next(e for e in container["env"] if e["name"] == "OMP_NUM_THREADS")
    assert omp["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_the_namespace_and_network_are_locked_down():
    docs = render("k8s/base")
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]
    assert all(rule.get("from") for rule in policy["ingress"]), "ingress from anywhere"
    assert all(rule.get("to") for rule in policy["egress"]), "egress to anywhere"
    service = next(d for d in docs if d["kind"] == "Service")["spec"]
    assert service["sessionAffinity"] == "ClientIP"  # a WHIP session's PATCH and DELETE


def test_the_optional_components_render(tmp_path):
    docs = render(gpu_with(tmp_path, "nvidia-runtime", "prometheus-release"))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    for kind in ("ServiceMonitor", "PrometheusRule"):
        obj = next(d for d in docs if d["kind"] == kind)
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "runtimeClassName" not in str(deployment("k8s/overlays/gpu"))


def test_the_gpu_overlay_asks_for_a_gpu_node():
    pod = deployment("k8s/overlays/gpu")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Driver >= 580 (CUDA 13 wheels) and compute capability >= 8 (bf16), from GFD labels.
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    rules = {e["key"]: (e["operator"], e["values"]) for e in term["matchExpressions"]}
    assert rules == {
        "nvidia.com/gpu.present": ("In", ["true"]),
        "nvidia.com/cuda.driver-version.major": ("Gt", ["579"]),
        "nvidia.com/gpu.compute.major": ("Gt", ["7"]),
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")  # NVDEC
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


@pytest.mark.parametrize("target", ["k8s/overlays/gpu", "k8s/overlays/example"])
def test_policy_check_finds_nothing_unjustified(target, tmp_path):
    """checkov over the rendered manifests (on the example overlay it caught the
    components' Ingress and claim landing in the default namespace)."""
    cache = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
    checkov = cache / "checkov-3.3.30" / "bin" / "checkov"
    assert checkov.is_file(), f"{checkov} missing: run 'make setup'"
    docs = render(target)
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


def test_the_worked_example_overlay_says_what_a_cluster_install_changes():
    """k8s/overlays/example (docs/deploy.md, "From zero"): the pushed image, a checkpoint
    from a volume, the ingress with TLS, and the addresses a cluster sets; it validates
    strictly, and its settings load."""
    from streamer.config import Settings

    docs = render("k8s/overlays/example")
    kinds = {d["kind"] for d in docs}
    assert {"Ingress", "PersistentVolumeClaim"} <= kinds
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "deepfake-monitor"
    }
    dep = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/deepfake-monitor:0.1.0"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    settings = Settings(**{k.removeprefix("DFM_").lower(): v for k, v in config.items()},
                        api_token="x")  # fmt: skip
    assert str(settings.checkpoint) == "/models/model.pt"
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "deepfake-monitor-tls"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")["spec"]
    assert any(
        s.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        == "ingress-nginx"
        for rule in policy["ingress"] for s in rule["from"]
    )  # fmt: skip
    assert policy["egress"][2]["to"][0]["ipBlock"]["cidr"] == "10.20.0.0/16"
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")["spec"]
    assert {t["metadata"]["serverAddress"] for t in scaled["triggers"]} == {
        "http://prometheus-operated.monitoring.svc:9090"
    }


def test_without_kafka_the_stdout_sink_component_gives_settings_that_load(tmp_path):
    from streamer.config import Settings

    docs = render(gpu_with(tmp_path, "stdout-sink"))
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert not any(k.startswith("DFM_KAFKA") for k in config)
    settings = Settings(**{k.removeprefix("DFM_").lower(): v for k, v in config.items()},
                        api_token="x")  # fmt: skip
    assert settings.sink == "stdout" and settings.kafka_bootstrap is None
