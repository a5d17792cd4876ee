"""Write the Grafana dashboards of ``deploy/grafana/dashboards/`` from one description.

    .venv/bin/python scripts/dashboards.py          # rewrite them
    .venv/bin/python scripts/dashboards.py --check  # exit 1 if one is out of date

Both dashboards share the variables an on-call engineer filters by (data source,
namespace, pod; the stream dashboard adds stream), every rate uses ``$__rate_interval``,
and every panel names its unit. The fleet dashboard has a saturation row per pod (engine
busy, batch fill, queue fill, engine queue wait, GPU if DCGM is scraped); the stream
dashboard shows the served threshold from ``deepfake_threshold`` beside the score, and
links each stream to its pod's fleet view. ``tests/test_deploy.py`` checks that the files
are current, that every query parses and names exported metrics, and that they type-check
against ``@grafana/schema`` (tsc).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", pod=~"$pod"'
RI = "$__rate_interval"
BACKBONE = f'{SEL}, stage="backbone"'
FLEET_UID, STREAM_UID = "deepfake-fleet", "deepfake-stream"


def variables(stream: bool) -> dict[str, Any]:
    def query(name: str, label: str, expr: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": expr, "refId": name},
            "refresh": 2,  # on time range change: pods come and go
            "multi": True,
            "includeAll": True,
            "allValue": ".*",  # also matches series without the label (compose, no k8s)
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    out = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            # The compose set-up's datasource; elsewhere Grafana picks its default.
            "current": {"text": "Prometheus", "value": "prometheus"},
        },
        query("namespace", "Namespace", "label_values(deepfake_build_info, namespace)"),
        query("pod", "Pod", 'label_values(deepfake_build_info{namespace=~"$namespace"}, pod)'),
    ]
    if stream:
        out.append(query("stream", "Stream", f"label_values(deepfake_source_up{{{SEL}}}, stream)"))
        out.append(
            {  # where a browser reaches the service's API: the evidence links point there
                "name": "service",
                "label": "Service URL",
                "type": "textbox",
                "query": "http://localhost:8080",
                "current": {"text": "http://localhost:8080", "value": "http://localhost:8080"},
                "hide": 0,
            }
        )
    return {"list": out}


class Layout:
    """Places panels left to right in rows of 24 columns."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {"id": len(self.panels) + 1, **panel}
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0


def targets(*queries: tuple[str, str], instant: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, (expr, legend) in enumerate(queries):
        target: dict[str, Any] = {
            "refId": chr(ord("A") + i),
            "datasource": DS,
            "expr": expr,
            "legendFormat": legend,
        }
        if instant:
            target |= {"instant": True, "range": False, "format": "table"}
        out.append(target)
    return out


def panel(
    kind: str,
    title: str,
    *queries: tuple[str, str],
    unit: str = "short",
    description: str = "",
    defaults: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    instant: bool = False,
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(*queries, instant=instant),
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
    }


def alert_list(title: str, label_filter: str) -> dict[str, Any]:
    return {
        "type": "alertlist",
        "title": title,
        "options": {
            "showOptions": "current",
            "maxItems": 20,
            "sortOrder": 1,
            "stateFilter": {"firing": True, "pending": True},
            # ${var:regex} expands a multi-value selection to (a|b), which =~ matches.
            "alertInstanceLabelFilter": label_filter,
            "viewMode": "list",
        },
    }


RATIO = {"min": 0, "max": 1}


def fleet() -> dict[str, Any]:
    lay = Layout()
    lay.add(
        panel("stat", "Streams watched", (f"sum(deepfake_streams_active{{{SEL}}})", "streams")),
        4,
        4,
    )
    lay.add(
        panel(
            "stat",
            "Streams refused",
            (
                f"sum(deepfake_streams_desired{{{SEL}}}) - sum(deepfake_streams_active{{{SEL}}})",
                "refused",
            ),
            description="Asked for (deepfake.sources), not running: replicas at DFM_MAX_STREAMS.",
        ),
        4,
        4,
    )
    lay.add(panel("stat", "Sources up", (f"sum(deepfake_source_up{{{SEL}}})", "up")), 4, 4)
    lay.add(
        panel(
            "stat",
            "Verdicts per second",
            (f"sum(rate(deepfake_verdicts_total{{{SEL}}}[{RI}]))", "verdicts/s"),
            unit="ops",
        ),
        4,
        4,
    )
    lay.add(
        alert_list(
            "Firing alerts",
            '{namespace=~"${namespace:regex}", pod=~"${pod:regex}"}',
        ),
        8,
        8,
    )
    lay.x, lay.y, lay.row_h = 0, 4, 4
    lay.add(
        panel(
            "stat",
            "Kafka publish errors (range)",
            (f"sum(increase(deepfake_kafka_publish_errors_total{{{SEL}}}[$__range]))", "lost"),
        ),
        8,
        4,
    )
    lay.add(
        panel(
            "stat",
            "Threshold",
            (f"max(deepfake_threshold{{{SEL}}})", "threshold"),
            unit="percentunit",
            description="DFM_THRESHOLD as served: a window scoring at least this is FAKE.",
        ),
        8,
        4,
    )
    lay.x, lay.y, lay.row_h = 0, 8, 0

    lay.row("Traffic")
    lay.add(
        panel(
            "timeseries",
            "Frames decoded per second",
            (f"sum by (pod) (rate(deepfake_frames_decoded_total{{{SEL}}}[{RI}]))", "{{pod}}"),
            unit="fps",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Frames dropped per second",
            (
                f"sum by (pod, reason) (rate(deepfake_frames_dropped_total{{{SEL}}}[{RI}]))",
                "{{pod}} {{reason}}",
            ),
            unit="fps",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Verdicts by label",
            (f"sum by (label) (rate(deepfake_verdicts_total{{{SEL}}}[{RI}]))", "{{label}}"),
            unit="ops",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Verdict latency",
            *[
                (
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(deepfake_verdict_latency_seconds_bucket{{{SEL}}}[{RI}])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            unit="s",
            description="Last frame of a window to its verdict. SLO: 99 % within 2 s.",
        ),
        12,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Verdict latency p99 by pod",
            (
                "histogram_quantile(0.99, sum by (pod, le) "
                f"(rate(deepfake_verdict_latency_seconds_bucket{{{SEL}}}[{RI}])))",
                "{{pod}}",
            ),
            unit="s",
        ),
        12,
        8,
    )

    lay.row("Saturation per pod")
    lay.add(
        panel(
            "timeseries",
            "Engine busy",
            (f"sum by (pod) (rate(deepfake_inference_seconds_sum{{{SEL}}}[{RI}]))", "{{pod}}"),
            unit="percentunit",
            defaults=RATIO,
            description="Seconds of engine work per second; at 1 the engine never idles.",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Engine batch size over its maximum (batch fill)",
            (
                f"sum by (pod) (rate(deepfake_inference_batch_size_sum{{{BACKBONE}}}[{RI}]))"
                f" / sum by (pod) (rate(deepfake_inference_batch_size_count{{{BACKBONE}}}[{RI}]))"
                f" / max by (pod) (deepfake_engine_max_batch{{{BACKBONE}}})",
                "{{pod}}",
            ),
            unit="percentunit",
            defaults=RATIO,
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Queue depth over capacity",
            (
                f"max by (pod, queue) (deepfake_queue_depth{{{SEL}}})"
                f" / max by (pod, queue) (deepfake_queue_capacity{{{SEL}}})",
                "{{pod}} {{queue}}",
            ),
            unit="percentunit",
            defaults=RATIO,
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Engine queue wait p95",
            (
                "histogram_quantile(0.95, sum by (pod, le) "
                f"(rate(deepfake_engine_queue_wait_seconds_bucket{{{SEL}}}[{RI}])))",
                "{{pod}}",
            ),
            unit="s",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Analysis stride (load shedding)",
            (f"max by (pod) (deepfake_analysis_stride{{{SEL}}})", "{{pod}}"),
            description="Above 1: the pod analyses 1 frame in this many to keep up.",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "GPU utilisation (DCGM exporter)",
            ('avg by (pod) (DCGM_FI_DEV_GPU_UTIL{pod=~"$pod"})', "{{pod}}"),
            unit="percent",
            description="Empty unless the DCGM exporter is scraped with honorLabels "
            "(docs/gpu-nodes.md).",
        ),
        8,
        8,
    )

    lay.row("Engine, HTTP, process")
    lay.add(
        panel(
            "timeseries",
            "Engine call p95",
            (
                "histogram_quantile(0.95, sum by (stage, le) "
                f"(rate(deepfake_inference_seconds_bucket{{{SEL}}}[{RI}])))",
                "{{stage}}",
            ),
            unit="s",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Engine batch size (mean)",
            (
                f"sum by (stage) (rate(deepfake_inference_batch_size_sum{{{SEL}}}[{RI}]))"
                f" / sum by (stage) (rate(deepfake_inference_batch_size_count{{{SEL}}}[{RI}]))",
                "{{stage}}",
            ),
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Engine errors per second",
            (
                f"sum by (pod, stage) (rate(deepfake_engine_errors_total{{{SEL}}}[{RI}]))",
                "{{pod}} {{stage}}",
            ),
            unit="ops",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "HTTP requests by status",
            (f"sum by (code) (rate(deepfake_http_requests_total{{{SEL}}}[{RI}]))", "{{code}}"),
            unit="reqps",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "HTTP p95 by route",
            (
                "histogram_quantile(0.95, sum by (route, le) "
                f"(rate(deepfake_http_request_duration_seconds_bucket{{{SEL}}}[{RI}])))",
                "{{route}}",
            ),
            unit="s",
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Resident memory",
            (f"process_resident_memory_bytes{{{SEL}}}", "{{pod}}"),
            unit="bytes",
        ),
        8,
        8,
    )

    lay.row("Kafka, uploads, build")
    lay.add(
        panel(
            "timeseries",
            "Kafka publish errors and held verdicts",
            (
                f"sum by (pod) (rate(deepfake_kafka_publish_errors_total{{{SEL}}}[{RI}]))",
                "lost/s {{pod}}",
            ),
            (
                f'max by (pod) (deepfake_queue_depth{{{SEL}, queue="kafka_verdicts"}})',
                "held {{pod}}",
            ),
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Uploads (POST /v1/scan)",
            (f"sum(deepfake_uploads_active{{{SEL}}})", "active"),
            (f"sum by (result) (rate(deepfake_uploads_total{{{SEL}}}[{RI}]))", "{{result}}/s"),
        ),
        8,
        8,
    )
    lay.add(
        panel(
            "table",
            "Build",
            (
                "max by (pod, version, model, sha256, device, torch, cuda) "
                f"(deepfake_build_info{{{SEL}}})",
                "",
            ),
            instant=True,
            description="One row per pod: what it runs, now.",
        ),
        8,
        8,
    )
    return dashboard(FLEET_UID, "deepfake-monitor: fleet overview", lay.panels, stream=False)


def stream_view() -> dict[str, Any]:
    lay = Layout()
    sel = f'{SEL}, stream=~"$stream"'
    threshold_line = {
        "matcher": {"id": "byName", "options": "threshold"},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        ],
    }
    lay.add(
        panel(
            "timeseries",
            "Score P(FAKE) of the latest window, and the served threshold",
            (f"deepfake_score{{{sel}}}", "{{stream}}"),
            (f"max(deepfake_threshold{{{SEL}}})", "threshold"),
            unit="percentunit",
            defaults=RATIO,
            overrides=[threshold_line],
        ),
        16,
        9,
    )
    lay.add(
        panel(
            "heatmap",
            "Every window's score",
            (f"sum by (le) (increase(deepfake_window_score_bucket{{{sel}}}[{RI}]))", "{{le}}"),
            description="Windows per score bucket: a spike between two scrapes shows here.",
            options={"calculate": False, "yAxis": {"unit": "percentunit"}},
        ),
        8,
        9,
    )
    lay.panels[-1]["targets"][0]["format"] = "heatmap"  # buckets, not series
    lay.add(
        panel(
            "timeseries",
            "Verdicts by label per minute",
            (
                f"sum by (stream, label) (rate(deepfake_verdicts_total{{{sel}}}[{RI}])) * 60",
                "{{stream}} {{label}}",
            ),
            unit="short",
        ),
        12,
        8,
    )
    lay.add(
        panel(
            "timeseries",
            "Faces per second",
            (f"sum by (stream) (rate(deepfake_faces_detected_total{{{sel}}}[{RI}]))", "{{stream}}"),
            unit="ops",
        ),
        12,
        8,
    )
    lay.add(
        panel(
            "state-timeline",
            "Source up",
            (f"deepfake_source_up{{{sel}}}", "{{stream}}"),
            defaults={
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "down", "color": "red"},
                            "1": {"text": "up", "color": "green"},
                        },
                    }
                ]
            },
        ),
        12,
        6,
    )
    lay.add(
        panel(
            "timeseries",
            "Reconnects",
            (
                f"sum by (stream) (increase(deepfake_source_reconnects_total{{{sel}}}[{RI}]))",
                "{{stream}}",
            ),
        ),
        12,
        6,
    )
    lay.add(
        panel(
            "timeseries",
            "Frames decoded and dropped per second",
            (
                f"sum by (stream) (rate(deepfake_frames_decoded_total{{{sel}}}[{RI}]))",
                "{{stream}} decoded",
            ),
            (
                f"sum by (stream, reason) (rate(deepfake_frames_dropped_total{{{sel}}}[{RI}]))",
                "{{stream}} dropped ({{reason}})",
            ),
            unit="fps",
        ),
        12,
        8,
    )
    fleet_link = (
        f"/d/{FLEET_UID}/?var-datasource=${{datasource}}"
        "&var-namespace=${__data.fields.namespace}&var-pod=${__data.fields.pod}"
    )
    lay.add(
        panel(
            "table",
            "Owning pod (GET /v1/streams/{id} answers there)",
            (f"max by (namespace, pod, stream) (deepfake_source_up{{{sel}}})", ""),
            instant=True,
            defaults={"links": [{"title": "This pod in the fleet overview", "url": fleet_link}]},
        ),
        12,
        8,
    )
    evidence_link = "${service}/v1/streams/${__data.fields.stream}/evidence/sheet.jpg"
    lay.add(
        panel(
            "table",
            "Evidence: FAKE windows in the range (a link opens what the model saw)",
            (
                "sum by (namespace, pod, stream) "
                f'(increase(deepfake_verdicts_total{{{sel}, label="FAKE"}}[$__range])) > 0',
                "",
            ),
            instant=True,
            description="GET /v1/streams/{id}/evidence/sheet.jpg on the owning pod: the "
            "stream's newest evidence record (crops, heat maps). Set 'Service URL' to where "
            "your browser reaches the API (behind its token).",
            defaults={
                "links": [
                    {"title": "Newest evidence sheet", "url": evidence_link, "targetBlank": True}
                ]
            },  # fmt: skip
        ),
        12,
        8,
    )
    lay.add(alert_list("Alerts for these streams", '{stream=~"${stream:regex}"}'), 24, 6)
    return dashboard(STREAM_UID, "deepfake-monitor: stream", lay.panels, stream=True)


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
    other = "the fleet overview" if stream else "stream drill-down"
    return {
        "uid": uid,
        "title": title,
        "tags": ["deepfake-monitor"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": variables(stream),
        "annotations": {"list": []},
        "links": [
            {
                "title": other,
                "type": "dashboards",
                "tags": ["deepfake-monitor"],
                "asDropdown": False,
                "icon": "dashboard",
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
                "tooltip": "",
            }
        ],
        "panels": panels,
    }


def render() -> dict[str, str]:
    return {
        "fleet.json": json.dumps(fleet(), indent=2) + "\n",
        "stream.json": json.dumps(stream_view(), indent=2) + "\n",
    }


def main() -> int:
    from generated import write_or_check  # scripts/, beside this one

    def files() -> dict[Path, str]:
        return {OUT / name: text for name, text in render().items()}

    return write_or_check(__doc__.splitlines()[0], "dashboards.py", files)


if __name__ == "__main__":
    sys.exit(main())
