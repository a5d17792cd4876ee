"""The directory of running streams: add, remove, drain, and the overload governor.

Each stream is a :class:`~streamer.pipeline.StreamRunner` (its worker thread and loop
task); the manager checks a stream's URL and options against the policy, picks the
opener for its kind of input, and keeps at most ``max_streams``. Under overload its
governor raises the node's analysis stride (``streamer/shedding.py``), and every worker
skips frames before face detection instead of inboxes dropping them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from analyzer.faces import Detector
from streamer.batcher import Batcher
from streamer.config import Settings, StreamOptions, StreamSpec, first_error
from streamer.errors import Conflict, Invalid, LimitReached, Rejected
from streamer.evidence import EvidenceWriter
from streamer.metrics import Metrics
from streamer.pipeline import StreamRunner
from streamer.shedding import LoadShedder, Sample
from streamer.sinks.base import Sink
from streamer.sinks.stdout import RecentVerdicts
from streamer.sources.base import Opener
from streamer.sources.decode import DecodeLimits
from streamer.sources.file import FileOpener
from streamer.sources.pool import LANE_PACKETS, FramePool
from streamer.sources.rtsp import RtspOpener
from streamer.tasks import Supervisor
from streamer.urls import SourceUrl, parse_source_url
from streamer.verdict import ModelRef

log = logging.getLogger(__name__)


class StreamManager:
    def __init__(
        self,
        settings: Settings,
        batcher: Batcher,
        sinks: Sequence[Sink],
        recent: RecentVerdicts,
        metrics: Metrics,
        model: ModelRef,
        detector_factory: Callable[[], Detector],
        supervisor: Supervisor | None = None,
        evidence: EvidenceWriter | None = None,
        gpu_decode: str | None = None,
    ) -> None:
        self.settings = settings
        self.evidence = evidence
        self.supervisor = supervisor or Supervisor(metrics.task_restarts)
        self.shedder = LoadShedder(settings.shed_max_stride)
        self.batcher = batcher
        self.sinks = sinks
        self.recent = recent
        self.metrics = metrics
        self.model = model
        self.detector_factory = detector_factory
        # NVDEC's device (DFM_DECODE: streamer.sources.nvdec.decode_device), or None: the CPU
        self.gpu_decode = gpu_decode
        self.streams: dict[str, StreamRunner] = {}
        # Every stream's per-frame work (RGB, faces, crops): streamer/sources/pool.py
        self.frames = FramePool(
            settings.frame_threads(batcher.face_network is not None), metrics=metrics.queues
        )
        # File and RTSP streams' decoding, from the packets their readers demux.
        decoders = settings.decode_pool_threads()
        self.decoders = (
            FramePool(
                decoders,
                lane_frames=LANE_PACKETS,
                metrics=metrics.queues,
                name="packet_lane",
                thread_name="decode",
            )
            if decoders
            else None
        )
        self.policy = settings.net_policy()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.metrics.analysis_stride.set(self.shedder.stride)
        self.supervisor.spawn("shed-governor", self._govern)
        # With Kafka, DFM_SOURCES go to the cluster's directory instead (streamer/cluster.py).
        if not self.settings.kafka_bootstrap:
            for spec in self.settings.sources:
                await self.add(spec)

    def check(self, spec: StreamSpec) -> tuple[SourceUrl, StreamOptions]:
        """The spec's URL and options once they pass the policy; raises Rejected if not."""
        try:
            options = StreamOptions.model_validate(spec.options)
        except ValidationError as exc:
            known = ", ".join(StreamOptions.model_fields)
            why = first_error(exc, _option_name, f"unknown option; options are {known}")
            raise Invalid(f"bad options: {why}") from None
        source = parse_source_url(
            spec.url, allow_file=self.settings.allow_file_sources, policy=self.policy
        )
        return source, options

    async def stop(self) -> None:
        """Drain every stream within the grace period. Safe to call twice."""
        await self.supervisor.cancel("shed-governor")
        runners = list(self.streams.values())
        await asyncio.gather(
            *(r.stop(drain=True, grace_s=self.settings.drain_grace_s) for r in runners)
        )
        await asyncio.to_thread(self.frames.stop)
        if self.decoders is not None:
            await asyncio.to_thread(self.decoders.stop)

    async def __aenter__(self) -> StreamManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def decode_limits(self) -> DecodeLimits:
        """What a stream's decoder may do: frame size, destinations, FFmpeg threads."""
        s = self.settings
        return DecodeLimits(
            max_pixels=s.max_frame_pixels,
            policy=self.policy,
            threads=s.decoder_threads(),
            gpu=self.gpu_decode,
        )

    def opener_for(self, source: SourceUrl, options: StreamOptions) -> Opener:
        s = self.settings
        limits = self.decode_limits()
        if source.scheme == "file":
            return FileOpener(
                source,
                s.fps,
                loop=options.loop,
                realtime=options.realtime,
                limits=limits,
                max_gap_s=s.max_gap_s,
            )
        return RtspOpener(
            source, s.fps, stall_timeout_s=s.stall_timeout_s, limits=limits, max_gap_s=s.max_gap_s
        )

    async def add(self, spec: StreamSpec) -> StreamRunner:
        """Watch a stream given by URL (``POST /v1/streams``, ``DFM_SOURCES``)."""
        try:
            source, options = self.check(spec)
        except Rejected:
            self.metrics.streams_refused.labels("invalid").inc()
            raise
        return await self._start(spec, options, self.opener_for(source, options), source)

    async def add_with_opener(self, spec: StreamSpec, opener: Opener) -> StreamRunner:
        """Watch a stream whose frames arrive another way (a WHIP session, a replayed
        recording)."""
        return await self._start(spec, StreamOptions(), opener)

    async def _start(
        self,
        spec: StreamSpec,
        options: StreamOptions,
        opener: Opener,
        source: SourceUrl | None = None,
    ) -> StreamRunner:
        async with self._lock:
            if spec.id in self.streams:
                self.metrics.streams_refused.labels("conflict").inc()
                raise Conflict(f"stream {spec.id!r} exists; DELETE it first")
            if len(self.streams) >= self.settings.max_streams:
                self.metrics.streams_refused.labels("limit").inc()
                raise LimitReached(
                    f"already watching {len(self.streams)} streams (DFM_MAX_STREAMS)"
                )
            runner = StreamRunner(
                spec,
                options,
                self.settings,
                opener,
                self.batcher,
                [*self.sinks, self.recent],
                self.metrics,
                self.model,
                self.detector_factory,
                source,
                self.shedder,
                self.evidence,
                pool=self.frames,
                decoders=self.decoders,
            )
            self.streams[spec.id] = runner
            self.metrics.streams_active.set(len(self.streams))
            await runner.start()
            log.info("stream %s: added (%s)", spec.id, runner.url)
            return runner

    async def _govern(self) -> None:
        """Every ``shed_interval_s``: judge the load and set the node's analysis stride."""
        last: dict[str, tuple[int, int]] = {}
        while True:
            await asyncio.sleep(self.settings.shed_interval_s)
            now = {sid: (r.counters.frames, r.counters.dropped) for sid, r in self.streams.items()}
            analysed = dropped = 0
            for sid, (frames, drops) in now.items():
                f0, d0 = last.get(sid, (frames, drops))  # a new stream counts from here
                analysed += frames - f0
                dropped += drops - d0
            last = now
            before = self.shedder.stride
            stride = self.shedder.observe(Sample(analysed, dropped))
            if stride != before:
                log.warning(
                    "overload: streams now analyse 1 frame in %g (was %g): %d frames taken, "
                    "%d dropped in the last %.0f s",
                    stride,
                    before,
                    analysed,
                    dropped,
                    self.settings.shed_interval_s,
                )
                self.metrics.analysis_stride.set(stride)

    async def remove(self, stream_id: str, *, drain: bool = False) -> bool:
        """Stop a stream; with ``drain``, its queued frames and due windows finish first."""
        async with self._lock:
            runner = self.streams.pop(stream_id, None)
            if runner is None:
                return False
            self.metrics.streams_active.set(len(self.streams))
        await runner.stop(drain=drain, grace_s=self.settings.drain_grace_s)
        self.metrics.forget_stream(stream_id)
        self.recent.forget(stream_id)
        log.info("stream %s: removed", stream_id)
        return True


def _option_name(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in loc)
