"""Composition root: builds the service's components, starts them in order, stops them in
reverse (an ``AsyncExitStack``), and turns SIGTERM/SIGINT into a drain.

Start order: metrics, model + engine (warmed up), batcher, sinks, streams, and with Kafka
the stream directory (``deepfake.sources``) and the video ingest (``deepfake.video``),
then the WHIP gateway and HTTP. On a signal ``/readyz`` turns 503 (new work goes
elsewhere), WHIP sessions end, the stream directory leaves its group, the Kafka video
ingest stops reading, streams stop taking frames and finish their due windows (within
``drain_grace_s``), sinks flush (within ``flush_grace_s``), then the video ingest commits
what was acknowledged and leaves its group, the engine thread ends, and HTTP closes last,
so ``/metrics`` shows the shutdown's own counts. :func:`shutdown_worst_case_s` bounds it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING

import torch
import uvicorn

from analyzer.compiled import unavailable as compile_unavailable
from analyzer.engine import Engine, pick_device
from analyzer.faces import Detector, detector_kind, open_detector
from analyzer.model import LoadedModel, load_checkpoint, random_model
from streamer import __version__
from streamer.api import Server, guarded_app
from streamer.batcher import Batcher
from streamer.config import Settings, checkpoint_path, evidence_folder, is_loopback
from streamer.control import ClusterControl, LocalControl, StreamControl
from streamer.cpus import cpu_budget
from streamer.errors import ConfigError
from streamer.evidence import EvidenceStore, EvidenceTopic, EvidenceWriter
from streamer.manager import StreamManager
from streamer.memory import trim_forever
from streamer.metrics import Metrics
from streamer.sinks.base import Sink
from streamer.sinks.stdout import RecentVerdicts, StdoutSink
from streamer.sources.nvdec import decode_device
from streamer.sources.webrtc import WhipGateway
from streamer.tasks import Supervisor
from streamer.uploads import UploadScanner
from streamer.verdict import ModelRef

if TYPE_CHECKING:
    from streamer.cluster import SourceDirectory
    from streamer.sources.kafka import KafkaVideoIngest

log = logging.getLogger(__name__)

HTTP_CLOSE_S = 5  # uvicorn's graceful close: open responses (an upload's events) are cut


def without_directories(text: str) -> str:
    """``text`` with every file path in it cut to the file's name: the page and the API
    show no machine's directories (a checkpoint's training-data note names the manifest
    it was trained on). A path is a word that starts at a root (``/``, ``~/``, ``./``,
    ``C:\\``) or has a folder before a file name with an extension."""

    def name(word: re.Match[str]) -> str:
        w = word.group(0)
        rooted = re.match(r"(?:[A-Za-z]:)?[\\/]|~[\\/]|\.\.?[\\/]", w)
        if rooted or re.search(r"[\\/][^\\/]*\.[A-Za-z][A-Za-z0-9]*$", w):
            return re.split(r"[\\/]", w.rstrip("\\/"))[-1] or w
        return w

    return re.sub(r"[^\s;,()]*[\\/][^\s;,()]*", name, text)


def shutdown_worst_case_s(settings: Settings) -> float:
    """The longest a SIGTERM can take to end in an exit: the pod's grace must be longer.

    Streams finish due windows (``drain_grace_s``), their source threads get
    ``WORKER_JOIN_S``, sinks deliver what they buffer (``flush_grace_s``), then HTTP closes
    (``HTTP_CLOSE_S``); with Kafka away, the verdict producer's close and the video
    ingest's last commit wait ``CLOSE_S`` each. Everything else (Kafka consumers leaving,
    WHIP sessions closing, the frame pool's threads, at most 1 s, the engine thread) is
    quick, within the margin added here.
    """
    from streamer.kafka_common import CLOSE_S
    from streamer.pipeline import WORKER_JOIN_S

    return (
        settings.drain_grace_s
        + WORKER_JOIN_S
        + settings.flush_grace_s
        + 2 * CLOSE_S
        + HTTP_CLOSE_S
        + 2.0
    )


def build_labels(
    version: str, loaded: LoadedModel, engine: Engine, threshold_source: str
) -> tuple[str, ...]:
    """``deepfake_build_info``'s labels: what an on-call engineer compares across replicas."""
    cuda = torch.version.cuda or "none"
    return (
        version,
        loaded.meta.version,
        loaded.sha256 or "none",  # random weights (DFM_RANDOM_WEIGHTS) have no file
        str(engine.device),
        str(torch.__version__),
        cuda,
        threshold_source,
    )


class Service:
    def __init__(self, settings: Settings, *, extra_sinks: Sequence[Sink] = ()) -> None:
        self.settings = settings
        self.extra_sinks = list(extra_sinks)
        self.version = __version__
        self.metrics = Metrics()
        self.supervisor = Supervisor(self.metrics.task_restarts)
        self.recent = RecentVerdicts(settings.verdict_ring)
        self.sinks: list[Sink] = []
        self.http_port: int | None = None
        self._stack: AsyncExitStack | None = None
        self._engine: Engine | None = None
        self._manager: StreamManager | None = None
        self._whip: WhipGateway | None = None
        self._uploads: UploadScanner | None = None
        self.evidence: EvidenceWriter | None = None  # None with DFM_EVIDENCE=off
        self._batcher: Batcher | None = None
        self._http: tuple[Server, asyncio.Task[None]] | None = None
        self._sock: socket.socket | None = None
        self.directory: SourceDirectory | None = None
        self._ingest: KafkaVideoIngest | None = None
        self.closing = asyncio.Event()  # set on stop: long-lived responses (SSE) end

    @property
    def manager(self) -> StreamManager:
        assert self._manager is not None, "service not started"
        return self._manager

    @property
    def whip(self) -> WhipGateway:
        assert self._whip is not None, "service not started"
        return self._whip

    @property
    def control(self) -> StreamControl:
        """Stream control for the API: this replica's streams, or the cluster's directory."""
        if self.directory is not None:
            return ClusterControl(self.manager, self.recent, self.directory)
        return LocalControl(self.manager, self.recent)

    def warnings(self) -> list[str]:
        s = self.settings
        if not s.api_token and not is_loopback(s.http_host):
            return [
                f"DFM_AUTH=none: the API on {s.http_host} takes requests from anyone who "
                "reaches it; set DFM_API_TOKEN"
            ]
        return []

    def info(self) -> dict[str, object]:
        """The model being served and the settings an uploader needs to know."""
        s = self.settings
        meta = self.engine.meta
        return {
            "version": self.version,
            "model": {
                "name": meta.name,
                "version": meta.version,
                "sha256": self.engine.sha256,
                "training_data": without_directories(meta.training_data),
            },
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "window_frames": s.window_frames,
            "hop_frames": s.hop_frames,
            "fps": s.fps,
            "scan_max_bytes": s.scan_max_bytes,
            "warnings": self.warnings(),
        }

    def _check_calibration(self, loaded: LoadedModel) -> None:
        """Says where the threshold comes from, and warns when the checkpoint's calibration
        or operating points were measured at another window than the one served."""
        s = self.settings
        log.info("threshold %.4f (%s)", self.threshold, self.threshold_source)
        measured = {
            "calibrated": loaded.meta.calibration,
            "operating points measured": loaded.meta.operating_points,
        }
        for what, found in measured.items():
            if found is not None and found.window_frames != s.window_frames:
                log.warning(
                    "the checkpoint was %s on %d-frame windows and DFM_WINDOW_FRAMES is %d: "
                    "its scores mean less than they say; recalibrate at %d (deepfake-monitor "
                    "calibrate --window %d) or serve at %d",
                    what, found.window_frames, s.window_frames, s.window_frames,
                    s.window_frames, found.window_frames,
                )  # fmt: skip

    @property
    def threshold(self) -> float:
        """The served P(FAKE) threshold (DFM_THRESHOLD, the checkpoint's, or the default)."""
        return self.engine.meta.served_threshold(self.settings.threshold)[0]

    @property
    def threshold_source(self) -> str:
        """``setting`` (DFM_THRESHOLD), ``checkpoint`` (its operating point) or ``default``."""
        return self.engine.meta.served_threshold(self.settings.threshold)[1]

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "service not started"
        return self._engine

    @property
    def uploads(self) -> UploadScanner:
        assert self._uploads is not None, "service not started"
        return self._uploads

    def _desired_streams(self) -> int:
        """Streams running here plus those of this replica's share it refused."""
        running = len(self._manager.streams) if self._manager is not None else 0
        refused = len(self.directory.refused()) if self.directory is not None else 0
        return running + refused

    def health(self) -> list[str]:
        """What makes this replica unfit to live (Kubernetes restarts it); empty when fine."""
        problems = []
        batcher = self._batcher
        if batcher is not None:
            stalled = batcher.stalled_for()
            if stalled > self.settings.engine_stall_s:
                problems.append(
                    f"engine stalled: one call has run {stalled:.0f} s "
                    f"(over DFM_ENGINE_STALL_S={self.settings.engine_stall_s:g})"
                )
        problems += self.supervisor.problems()
        return problems

    def readiness(self) -> dict[str, bool]:
        """Can this replica take streams? Each check must hold for ``/readyz`` to be 200.

        ``room`` (below ``DFM_MAX_STREAMS``) counts only without Kafka, where the Service's
        routing decides which replica a new stream lands on. With Kafka the stream
        directory places streams by partition, and a full replica must stay reachable:
        its own streams are read and deleted through it. A sink's state is never a check:
        with Kafka away every replica holds its verdicts alike, and taking them all out of
        the Service would only turn the API off (``deepfake_sink_up`` and its alert say it).
        """
        manager = self._manager
        checks = {
            "accepting": not self.closing.is_set(),  # draining: send new work elsewhere
            "model": self._engine is not None,
            "engine": not self.health(),
            "streams": manager is not None,
        }
        if not self.settings.kafka_bootstrap:
            checks["room"] = (
                manager is not None and len(manager.streams) < self.settings.max_streams
            )
        return checks

    async def start(self) -> None:
        s = self.settings
        stack = AsyncExitStack()
        self._stack = stack
        loop = asyncio.get_running_loop()
        self.metrics.loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        # Registered first, so it runs last: /metrics and the probes answer through the
        # whole drain, and the losses counted at shutdown can still be scraped.
        stack.push_async_callback(self._stop_http)
        self._bind_http()
        try:
            for warning in self.warnings():
                log.warning("%s", warning)
            device = pick_device(s.device, "DFM_DEVICE")
            gpu_decode = decode_device(s.decode, device)  # DFM_DECODE=nvdec: or why not
            if why := compile_unavailable(s.compile, device):
                raise ConfigError(f"DFM_COMPILE={s.compile} cannot run: {why}; set DFM_COMPILE=off")
            if "OMP_NUM_THREADS" not in os.environ:  # PyTorch sizes its pool by the node
                torch.set_num_threads(cpu_budget())
            checkpoint = checkpoint_path(s.checkpoint, random_weights=s.random_weights)
            loaded: LoadedModel
            if checkpoint is None:
                loaded = await asyncio.to_thread(random_model)
            else:
                loaded = await asyncio.to_thread(load_checkpoint, checkpoint)
            self._engine = engine = await asyncio.to_thread(
                Engine, loaded, device, compile=s.compile, max_batch=s.max_batch
            )
            await asyncio.to_thread(engine.warmup, s.window_frames)
            self._check_calibration(loaded)
            labels = build_labels(self.version, loaded, engine, self.threshold_source)
            self.metrics.build_info.labels(*labels).set(1)
            self.metrics.threshold.set(self.threshold)
            model = ModelRef(
                name=loaded.meta.name, version=loaded.meta.version, sha256=loaded.sha256
            )

            if s.faults.any:
                log.warning("DFM_FAULTS is set (%s): faults are injected; tests only", s.faults)
            face_network = None
            if detector_kind(s.detector, str(engine.device)) == "torch":
                from analyzer.blazeface import TorchFaceDetector

                face_network = await asyncio.to_thread(TorchFaceDetector, device=engine.device)
            batcher = Batcher(
                engine,
                self.metrics,
                max_batch=s.max_batch,
                max_wait_ms=s.batch_wait_ms(),
                max_inflight=s.max_inflight_crops,
                faults=s.faults,
                supervisor=self.supervisor,
                face_network=face_network,
                detect_batch=s.detect_batch,
                detect_wait_ms=s.detect_wait_ms,
            )
            await stack.enter_async_context(batcher)
            self._batcher = batcher
            self._uploads = UploadScanner(s, batcher, self.metrics)
            stack.push_async_callback(self._uploads.stop)  # before the batcher stops
            if s.evidence != "off":
                store = await asyncio.to_thread(
                    EvidenceStore, evidence_folder(s.evidence_dir), int(s.evidence_max_mb * 1e6)
                )
                topic = EvidenceTopic(s, self.metrics) if s.kafka_bootstrap else None
                if topic is not None:
                    stack.push_async_callback(topic.stop)
                self.evidence = EvidenceWriter(
                    store, batcher, self.metrics, per_min=s.evidence_per_min,
                    context=s.evidence == "full", topic=topic,
                )  # fmt: skip
                self.supervisor.spawn("evidence", self.evidence.run)
                stack.callback(self.evidence.count_unwritten)  # after the task's cancel
                stack.push_async_callback(self.supervisor.cancel, "evidence")

            # Registered before the sinks, so it runs after they flush: video offsets are
            # committed only for input whose verdicts were acknowledged.
            stack.push_async_callback(self._close_ingest)
            self.sinks = self._make_sinks()
            for sink in self.sinks:
                await sink.start()
                stack.push_async_callback(sink.stop)

            self._manager = StreamManager(
                s,
                batcher,
                self.sinks,
                self.recent,
                self.metrics,
                model,
                detector_factory(s, engine.device, batcher),
                self.supervisor,
                self.evidence,
                gpu_decode=gpu_decode,
            )
            await stack.enter_async_context(self._manager)
            if s.kafka_bootstrap:
                from streamer.cluster import SourceDirectory

                self.directory = SourceDirectory(s, self._manager)
                await stack.enter_async_context(self.directory)
                for spec in s.sources:
                    await self.directory.put(spec)
                from streamer.sources.kafka import KafkaVideoIngest

                self._ingest = KafkaVideoIngest(s, self._manager, self.metrics)
                await self._ingest.start()
                stack.push_async_callback(self._ingest.stop_consuming)
            self.supervisor.spawn("memory-trim", trim_forever)  # streamer/memory.py
            stack.push_async_callback(self.supervisor.cancel, "memory-trim")
            self._whip = whip = WhipGateway(s, self._manager)
            await stack.enter_async_context(whip)
            self.metrics.whip_sessions.set_function(lambda: len(whip.sessions))
            self.metrics.streams_desired.set_function(self._desired_streams)
            await self._start_http()
        except BaseException:
            await stack.aclose()
            raise
        log.info(
            "serving: model %s on %s, HTTP on http://%s:%s",
            loaded.meta.version,
            engine.device,
            s.http_host,
            self.http_port,
        )

    async def _close_ingest(self) -> None:
        if self._ingest is not None:
            await self._ingest.close()
            self._ingest = None

    def _make_sinks(self) -> list[Sink]:
        kind = self.settings.sink
        if kind == "stdout":
            return [StdoutSink(), *self.extra_sinks]
        if kind == "none":
            return list(self.extra_sinks)
        from streamer.sinks.kafka import KafkaSink

        return [
            KafkaSink(
                self.settings,
                self.metrics,
                flush_timeout_s=self.settings.flush_grace_s,
                supervisor=self.supervisor,
            ),
            *self.extra_sinks,
        ]

    async def _start_http(self) -> None:
        s = self.settings
        config = uvicorn.Config(
            guarded_app(self),
            host=s.http_host,
            port=s.http_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=HTTP_CLOSE_S,  # then open responses are cut
        )
        server = Server(config)
        assert self._sock is not None
        sock, self._sock = self._sock, None
        task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        self._http = (server, task)
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise ConfigError(
                    f"HTTP server could not listen on {s.http_host}:{s.http_port} "
                    "(DFM_HTTP_HOST / DFM_HTTP_PORT)"
                )
            await asyncio.sleep(0.02)
        self.http_port = server.servers[0].sockets[0].getsockname()[1]

    def _bind_http(self) -> None:
        """Take the HTTP port first: a taken port fails in one line, before the model loads
        (uvicorn, left to bind it, would ``sys.exit`` from inside its task)."""
        s = self.settings
        family = socket.AF_INET6 if ":" in s.http_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.http_host, s.http_port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"HTTP server could not listen on {s.http_host}:{s.http_port} ({exc.strerror}); "
                "change DFM_HTTP_HOST / DFM_HTTP_PORT or stop what holds the port"
            ) from None
        self._sock = sock

    async def _stop_http(self) -> None:
        if self._sock is not None:  # bound, never served (start-up failed later)
            self._sock.close()
            self._sock = None
        if self._http is None:
            return
        server, task = self._http
        self._http = None
        if task.done():  # it never started (the port was taken): start() says why
            return
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(self) -> None:
        """Stop everything in reverse start order. Safe to call twice."""
        stack, self._stack = self._stack, None
        self.closing.set()
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Service:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def detector_factory(
    settings: Settings, device: torch.device, batcher: Batcher
) -> Callable[[], Detector]:
    """One face detector per stream (each runs in its stream's thread), of the kind
    ``DFM_DETECTOR`` names: MediaPipe's runtime in that thread, or PyTorch's BlazeFace
    whose network runs in the batcher's detection stage, batched across streams."""
    if batcher.face_network is None:
        return partial(open_detector, settings.detector, str(device))
    from analyzer.blazeface import TorchFaceDetector
    from streamer.detection import BatchedDetector

    net = batcher.face_network
    assert isinstance(net, TorchFaceDetector)
    loop = asyncio.get_running_loop()
    return partial(BatchedDetector, net, batcher, loop, timeout_s=settings.engine_stall_s)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain; returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Service(settings):
            await stop.wait()
            log.info("signal received: draining (up to %.0f s)", settings.drain_grace_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
