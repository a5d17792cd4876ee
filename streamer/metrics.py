"""Every Prometheus metric the service exports, in one place (prefix ``deepfake_``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from streamer.buffers import QueueMetrics

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """One registry per service, so tests can run several services in one process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_* (CPU, resident memory, open files) and python_* (GC, version): what a
        # restart or an OOM kill is read from.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        self.streams_active = Gauge("deepfake_streams_active", "Streams being watched", registry=r)
        self.streams_desired = Gauge(
            "deepfake_streams_desired",
            "Streams this replica is asked to watch (its share of deepfake.sources, plus the "
            "API's); above deepfake_streams_active, some were refused: scale out",
            registry=r,
        )
        self.streams_refused = Counter(
            "deepfake_streams_refused_total",
            "Streams not started, by reason (limit: DFM_MAX_STREAMS reached; conflict: the "
            "id runs already; invalid: a bad URL or options)",
            ["reason"],
            registry=r,
        )
        for reason in ("limit", "conflict", "invalid"):
            self.streams_refused.labels(reason)
        self.whip_sessions = Gauge(
            "deepfake_whip_sessions", "WebRTC publishers connected over WHIP", registry=r
        )
        self.http_requests = Counter(
            "deepfake_http_requests_total",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "code"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "deepfake_http_request_duration_seconds",
            "HTTP request to its response's start (a streamed body continues after it)",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.kafka_lag = Gauge(
            "deepfake_kafka_consumer_lag",
            "Video messages in this replica's partitions not yet taken (high watermark of "
            "the last fetch minus the next offset)",
            ["topic"],
            registry=r,
        )
        self.kafka_rebalances = Counter(
            "deepfake_kafka_rebalances_total",
            "Partition assignments this replica received, by consumer group",
            ["group"],
            registry=r,
        )
        self.source_up = Gauge(
            "deepfake_source_up",
            "1 while the stream's source delivers frames",
            ["stream"],
            registry=r,
        )
        self.source_reconnects = Counter(
            "deepfake_source_reconnects_total", "Source reconnect attempts", ["stream"], registry=r
        )
        self.frames_decoded = Counter(
            "deepfake_frames_decoded_total",
            "Frames decoded (after resampling)",
            ["stream"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "deepfake_frames_dropped_total",
            "Frames dropped, by reason",
            ["stream", "reason"],
            registry=r,
        )
        self.discontinuities = Counter(
            "deepfake_stream_discontinuities_total",
            "Timestamp gaps over DFM_MAX_GAP_S or jumps back: tracks and windows restarted",
            ["stream"],
            registry=r,
        )
        self.kafka_rejected = Counter(
            "deepfake_kafka_messages_rejected_total",
            "Video messages skipped as unusable (bad key, header, payload or size), by reason",
            ["reason"],
            registry=r,
        )
        self.dlq_messages = Counter(
            "deepfake_dlq_messages_total",
            "Video messages written to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.sink_up = Gauge(
            "deepfake_sink_up",
            "1 while a sink delivers; 0 while it holds verdicts because its broker is away",
            ["sink"],
            registry=r,
        )
        self.http_rejected = Counter(
            "deepfake_http_rejected_total",
            "Requests refused before their body was read (auth, size, host, timeout, busy)",
            ["reason"],
            registry=r,
        )
        self.faces_detected = Counter(
            "deepfake_faces_detected_total", "Face crops taken", ["stream"], registry=r
        )
        self.verdicts = Counter(
            "deepfake_verdicts_total", "Verdicts emitted", ["stream", "label"], registry=r
        )
        self.score = Gauge("deepfake_score", "Latest window score P(FAKE)", ["stream"], registry=r)
        self.window_scores = Histogram(
            "deepfake_window_score",
            "Every window's score P(FAKE): a spike between two scrapes shows here, where the "
            "deepfake_score gauge holds the latest only",
            ["stream"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.threshold = Gauge(
            "deepfake_threshold",
            "The score from which a window is labelled FAKE (DFM_THRESHOLD)",
            registry=r,
        )
        self.verdict_latency = Histogram(
            "deepfake_verdict_latency_seconds",
            "Last frame of a window in to its verdict out",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "deepfake_inference_seconds",
            "Engine call duration",
            ["stage"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.inference_batch = Histogram(
            "deepfake_inference_batch_size",
            "Items per engine call",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.engine_max_batch = Gauge(
            "deepfake_engine_max_batch",
            "Most items one engine call takes (DFM_MAX_BATCH, DFM_DETECT_BATCH): batch size over "
            "this is the fill",
            ["stage"],
            registry=r,
        )
        self.engine_queue_wait = Histogram(
            "deepfake_engine_queue_wait_seconds",
            "Oldest request of an engine call: queued to the call's start",
            ["stage"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.engine_errors = Counter(
            "deepfake_engine_errors_total",
            "Engine calls that failed, by stage",
            ["stage"],
            registry=r,
        )
        self.engine_last_batch = Gauge(
            "deepfake_engine_last_batch_timestamp_seconds",
            "Unix time the engine last finished a batch (its heartbeat)",
            registry=r,
        )
        self.evidence_records = Counter(
            "deepfake_evidence_records_total",
            "Evidence records written (a window whose label turned FAKE)",
            registry=r,
        )
        self.evidence_skipped = Counter(
            "deepfake_evidence_skipped_total",
            "Evidence not made: what (record, heatmap, kafka), why (queue_full, rate, busy, "
            "error, stopped)",
            ["what", "reason"],
            registry=r,
        )
        self.evidence_bytes = Gauge(
            "deepfake_evidence_store_bytes",
            "Bytes of evidence records kept under DFM_EVIDENCE_DIR (capped by DFM_EVIDENCE_MAX_MB)",
            registry=r,
        )
        self.analysis_stride = Gauge(
            "deepfake_analysis_stride",
            "Streams analyse 1 frame in this many (above 1: the node sheds load)",
            registry=r,
        )
        self.task_restarts = Counter(
            "deepfake_task_restarts_total",
            "Background task failures (each restarted with backoff, or given up)",
            ["task"],
            registry=r,
        )
        self.windows_skipped = Counter(
            "deepfake_windows_skipped_total",
            "Due windows that got no verdict, by reason (engine_error: their features or "
            "head call failed, so a verdict would have been wrong)",
            ["stream", "reason"],
            registry=r,
        )
        self.uploads_active = Gauge(
            "deepfake_uploads_active", "Uploaded videos being scanned (POST /v1/scan)", registry=r
        )
        self.uploads = Counter(
            "deepfake_uploads_total",
            "Uploads by outcome (done, rejected, failed, cancelled)",
            ["result"],
            registry=r,
        )
        self.queue_depth = Gauge("deepfake_queue_depth", "Items waiting", ["queue"], registry=r)
        self.queue_capacity = Gauge(
            "deepfake_queue_capacity",
            "Items a queue holds at most (depth / capacity is its fill)",
            ["queue"],
            registry=r,
        )
        self.queue_dropped = Counter(
            "deepfake_queue_dropped_total",
            "Items a full queue lost by its policy (drop-oldest, drop-newest, block)",
            ["queue"],
            registry=r,
        )
        self.queues = QueueMetrics(self.queue_depth, self.queue_capacity, self.queue_dropped)
        self.sink_errors = Counter(
            "deepfake_sink_errors_total",
            "Sink writes that failed and were retried (the verdict is kept)",
            ["sink"],
            registry=r,
        )
        self.kafka_publish_errors = Counter(
            "deepfake_kafka_publish_errors_total", "Verdicts Kafka did not take", registry=r
        )
        self.loop_tasks = Gauge(
            "deepfake_event_loop_tasks",
            "asyncio tasks alive in the service's event loop (a leak shows as growth)",
            registry=r,
        )
        self.build_info = Gauge(
            "deepfake_build_info",
            "Version, model version and sha256, device, PyTorch and CUDA versions, and where "
            "the served threshold comes from (setting, checkpoint or default)",
            ["version", "model", "sha256", "device", "torch", "cuda", "threshold_source"],
            registry=r,
        )

    def forget_stream(self, stream: str) -> None:
        """Drop every per-stream series of a deleted stream."""
        for metric in (
            self.source_up,
            self.source_reconnects,
            self.frames_decoded,
            self.faces_detected,
            self.discontinuities,
            self.score,
            self.window_scores,
        ):
            try:
                metric.remove(stream)
            except KeyError:
                pass
        for metric in (self.frames_dropped, self.verdicts, self.windows_skipped):
            for labels in [s.labels for s in _samples(metric) if s.labels.get("stream") == stream]:
                try:
                    metric.remove(*[labels[n] for n in metric._labelnames])
                except KeyError:
                    pass

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _samples(metric: Counter) -> list[Any]:
    return [s for family in metric.collect() for s in family.samples]


def metrics_table() -> str:
    """The Markdown table of ``docs/metrics.md``: every ``deepfake_`` series exported."""
    metrics = Metrics()
    labels = {
        m._name: m._labelnames  # noqa: SLF001 (prometheus_client keeps no public accessor)
        for m in vars(metrics).values()
        if isinstance(m, (Counter, Gauge, Histogram))
    }
    rows = ["| Metric | Type | Labels | Meaning |", "| --- | --- | --- | --- |"]
    for family in sorted(metrics.registry.collect(), key=lambda f: f.name):
        if not family.name.startswith("deepfake_"):
            continue  # process_* and python_*: prometheus_client's own
        name = family.name + ("_total" if family.type == "counter" else "")
        cell = ", ".join(f"`{n}`" for n in labels.get(family.name, ()))
        rows.append(f"| `{name}` | {family.type} | {cell} | {family.documentation} |")
    return "\n".join(rows) + "\n"
