"""Service settings: ``DFM_*`` environment variables, or a YAML file with the same keys.

Every field is typed, bounded and documented; an unknown key or a bad value stops the
service at start-up with one line naming the setting (:func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streamer.cpus import cpu_budget
from streamer.errors import ConfigError, UrlRejected
from streamer.faults import Faults
from streamer.urls import DEFAULT_DENY_NETS, NetPolicy, parse_nets, parse_source_url

# analyzer.compiled.CompileMode, spelled here so settings load without importing torch.
CompileMode = Literal["off", "inductor", "cudagraphs", "inductor-cudagraphs", "tensorrt"]
STREAM_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class StreamSpec(BaseModel):
    """A stream to watch: the body of ``POST /v1/streams``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="1-64 of A-Z a-z 0-9 . _ -")
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="rtsp:// or rtsps:// (file:// with DFM_ALLOW_FILE_SOURCES); checked by "
        "the URL policy when the stream is added",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="per-stream overrides")

    @field_validator("id")
    @classmethod
    def _id_charset(cls, value: str) -> str:
        if not STREAM_ID.match(value):
            raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ -")
        return value


class StreamOptions(BaseModel):
    """What a stream spec's ``options`` may set."""

    model_config = ConfigDict(extra="forbid")

    loop: bool = Field(False, description="file sources: start again at the end")
    realtime: bool = Field(True, description="file sources: pace frames as if live")
    max_faces: int | None = Field(None, ge=1, le=16)


class IceServer(BaseModel):
    """A STUN or TURN server, as in RTCIceServer: ``{"urls": "turn:host:3478", ...}``."""

    model_config = ConfigDict(extra="forbid")

    urls: str = Field(pattern=r"^(stun|stuns|turn|turns):")
    username: str | None = None
    credential: str | None = None


class WindowSchedule(BaseModel):
    """How frames become windows and verdicts, and how faces are followed: the one
    definition of these options, their bounds and their defaults. :class:`Settings` holds
    them as ``DFM_*`` settings (``serve``, uploads); ``scan`` builds its options from them.
    """

    model_config = ConfigDict(extra="forbid")

    window_frames: int = Field(150, ge=2, le=600, description="frames per window")
    hop_frames: int = Field(30, ge=1, le=600, description="frames between window starts")
    fps: float = Field(30.0, gt=0, le=120, description="frame rate streams are resampled to")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="P(FAKE) for a FAKE label; unset: the checkpoint's target-FPR operating "
        "point (recorded by evaluate), else 0.5",
    )
    max_faces: int = Field(4, ge=1, le=16, description="faces tracked per stream")
    detect_every: int = Field(3, ge=1, le=30, description="frames between face detections")

    @model_validator(mode="after")
    def _hop_within_window(self) -> Self:
        if self.hop_frames > self.window_frames:
            raise ValueError("hop_frames must not exceed window_frames; windows would skip frames")
        return self


def first_error(
    exc: ValidationError,
    name: Callable[[tuple[str | int, ...]], str],
    unknown: str = "unknown setting; see docs/settings.md",
) -> str:
    """The first problem in ``exc`` as one line, each field named as the user wrote it
    (``name`` of its location: a ``DFM_*`` variable, a file's key, a command's option);
    ``unknown`` is what a name the model does not have is told."""
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = unknown
    if not err["loc"]:  # a rule over several fields: name them inside the message
        return re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", lambda m: name((m.group(0),)), msg)
    return f"{name(tuple(err['loc']))}: {msg}"


class Settings(WindowSchedule, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DFM_", extra="forbid", validate_default=True)

    http_host: str = Field("127.0.0.1", description="HTTP listen address")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port (0: any free port)")
    api_token: str | None = Field(
        None, description="bearer token for everything but health/metrics (whitespace stripped)"
    )
    auth: Literal["token", "none"] = Field(
        "token",
        description="'none' must be said explicitly to serve a non-loopback address without "
        "a token",
    )
    http_read_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="longest wait for the next piece of a request body"
    )
    events_max_clients: int = Field(
        32, ge=1, le=10000, description="concurrent /v1/events (SSE) connections"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto (CUDA when present), cpu or cuda"
    )
    compile: CompileMode = Field(
        "off",
        description="the backbone compiled at start-up for batches up to DFM_MAX_BATCH "
        "(analyzer/compiled.py): inductor (torch.compile; CPU or CUDA), cudagraphs, "
        "inductor-cudagraphs or tensorrt (CUDA; tensorrt needs torch-tensorrt), or off (eager)",
    )
    detector: Literal["mediapipe", "torch"] | None = Field(
        None,
        description="face detector: MediaPipe's runtime in each stream's thread, or the same "
        "BlazeFace in PyTorch, batched across streams on the engine's device "
        "(streamer/detection.py); unset: torch on CUDA, mediapipe on the CPU",
    )
    crop: Literal["host", "device"] = Field(
        "host",
        description="where face crops are cut: host (OpenCV, from the host frame) or device "
        "(each frame crosses to the engine's device once; the torch detector letterboxes it "
        "there and its crops are cut there by roi_align, never coming back: analyzer/crops.py)",
    )
    detect_batch: int = Field(
        32, ge=1, le=1024, description="frames per batched detection call (torch detector)"
    )
    detect_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="wait to fill a detection batch (torch detector)"
    )
    decode_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="FFmpeg threads of each stream's decoder; unset: the CPUs over "
        "DFM_MAX_STREAMS, at least 1 (scan uses every CPU)",
    )
    decode: Literal["auto", "cpu", "nvdec"] = Field(
        "auto",
        description="video decoder of file, RTSP and Kafka MPEG-TS streams: nvdec (the GPU's "
        "NVDEC through PyNvVideoCodec, the gpu extra; pictures stay on the GPU: "
        "streamer/sources/nvdec.py), cpu (FFmpeg), or auto (nvdec where the engine is on CUDA "
        "and PyNvVideoCodec imports)",
    )
    decode_workers: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="threads decoding the video of every file, RTSP and Kafka stream, "
        "from packets their reader threads demux (streamer/sources/base.py); 0: each "
        "stream decodes in its own reader thread; unset: the CPUs",
    )
    frame_workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="threads doing every stream's per-frame work (RGB, faces, crops; "
        "streamer/sources/pool.py); unset: twice the CPUs, at least 4, and with the torch "
        "detector at least twice DFM_DETECT_BATCH",
    )
    evidence: Literal["full", "crops", "off"] = Field(
        "full",
        description="evidence records of windows whose label turns FAKE: full (face crops, "
        "heat maps and the frame around the faces), crops (no frame), or off",
    )
    evidence_dir: Path | None = Field(
        None,
        description="where evidence records are kept; default: ~/.cache/deepfake-monitor/evidence",
    )
    evidence_max_mb: float = Field(
        256.0, gt=0, le=1_000_000, description="evidence kept at most; the oldest records go first"
    )
    evidence_per_min: int = Field(
        6, ge=0, le=600, description="evidence heat maps (Grad-CAM on the engine) a minute, at most"
    )
    checkpoint: Path | None = Field(None, description="model checkpoint; default: bundled demo")
    random_weights: bool = Field(False, description="untrained weights (smoke tests, benchmarks)")
    max_streams: int = Field(16, ge=1, le=1024, description="streams one replica runs")
    kafka_bootstrap: str | None = Field(None, description="host:port,...; unset: no Kafka")
    kafka_verdicts_topic: str = Field("deepfake.verdicts", description="verdicts out")
    kafka_video_topic: str = Field("deepfake.video", description="encoded video in")
    kafka_sources_topic: str = Field(
        "deepfake.sources", description="stream specs, spread over replicas (compacted)"
    )
    kafka_evidence_topic: str = Field(
        "deepfake.evidence",
        description="evidence records: per record its manifest (JSON), then its sheet and "
        "context JPEGs, key = stream id",
    )
    kafka_dlq_topic: str = Field(
        "deepfake.video.dlq", description="unusable video messages, with a 'reason' header"
    )
    kafka_video_start: Literal["latest", "earliest"] = Field(
        "latest",
        description="where a new consumer group starts on the video topic: latest (live "
        "video) or earliest (replay what the topic retains)",
    )
    kafka_group: str = Field("deepfake-monitor", description="consumer group of all replicas")
    kafka_idle_s: float = Field(30.0, gt=0, description="a Kafka video key this quiet ends")
    kafka_sources_partitions: int = Field(
        12, ge=1, le=1000, description="when it creates the topic"
    )
    kafka_replication_factor: int = Field(1, ge=1, le=10, description="when it creates topics")
    kafka_max_message_bytes: int = Field(
        8 << 20, ge=1024, le=1 << 30, description="larger video messages are skipped and counted"
    )
    kafka_buffer: int = Field(
        10000, ge=1, le=1_000_000, description="verdicts held while Kafka is away"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_*; unset: PLAIN)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: str | None = Field(None, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (SSL, SASL_SSL)")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = Field(None, description="client key (mutual TLS)")
    sink: Literal["stdout", "kafka", "none"] = Field(
        "stdout", description="where verdicts go: stdout (JSON lines), kafka or none"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR (to stderr)"
    )

    sources: list[StreamSpec] = Field(
        default_factory=list, description="streams at start-up: a JSON list of stream specs"
    )
    allow_file_sources: bool = Field(False, description="accept file:// stream URLs")
    source_allow_nets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDR networks sources may connect to (comma-separated; empty: any)",
    )
    source_deny_nets: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_DENY_NETS),
        description="CIDR networks sources may never connect to (default: link-local and "
        "cloud metadata addresses)",
    )
    max_frame_pixels: int = Field(
        3840 * 2160,
        ge=64 * 64,
        le=1 << 28,
        description="largest frame (width x height) decoded; checked before conversion",
    )
    max_gap_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="a timestamp gap longer than this, or a jump back, restarts the stream's "
        "clock, tracks and windows",
    )
    max_batch: int = Field(64, ge=1, le=1024, description="crops per backbone batch")
    max_wait_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="longest wait to fill a backbone batch (it closes sooner once every "
        "stream sending crops is in it); unset: one frame interval at DFM_FPS",
    )
    frame_queue: int = Field(30, ge=1, le=600, description="frames queued per stream")
    max_inflight_crops: int = Field(
        256, ge=1, le=8192, description="crops awaiting the GPU; at least 2 x DFM_MAX_BATCH"
    )
    stall_timeout_s: float = Field(10.0, gt=0, description="no frame this long: source down")
    open_timeout_s: float = Field(
        10.0, gt=0, description="open/read timeout of a file or URL scanned through the API"
    )
    reconnect_initial_s: float = Field(0.5, gt=0, description="first wait before reconnecting")
    reconnect_max_s: float = Field(
        30.0, gt=0, description="longest wait between reconnects (jittered doubling)"
    )
    drain_grace_s: float = Field(10.0, ge=0, description="SIGTERM: time to finish due windows")
    flush_grace_s: float = Field(
        10.0, ge=0, le=600, description="SIGTERM: time for sinks to deliver buffered verdicts"
    )
    verdict_ring: int = Field(100, ge=1, le=10000, description="recent verdicts kept per stream")
    whip_max_sessions: int = Field(8, ge=0, le=1024, description="concurrent WHIP publishers")
    whip_max_sdp_bytes: int = Field(65536, ge=1024, le=1 << 20, description="largest SDP offer")
    whip_ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers for the service's own candidates"
    )
    whip_timeout_s: float = Field(10.0, gt=0, description="no frame this long: publisher gone")
    scan_max_bytes: int = Field(
        256 << 20, ge=1024, le=16 << 30, description="largest video POST /v1/scan accepts"
    )
    scan_concurrency: int = Field(1, ge=1, le=64, description="uploads scanned at once")
    scan_max_seconds: float = Field(
        600.0, gt=0, le=86400, description="media time an upload may run; longer is cut"
    )
    scan_spool_max_bytes: int = Field(
        512 << 20,
        ge=1024,
        le=64 << 30,
        description="bytes of all uploads being received at once (the spool's disk quota)",
    )
    events_interval_s: float = Field(1.0, gt=0, le=60, description="web page stream updates")
    shed_max_stride: int = Field(
        8, ge=1, le=30, description="overload: streams analyse at least 1 frame in this many"
    )
    shed_interval_s: float = Field(2.0, gt=0, le=60, description="overload: judged this often")
    engine_stall_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="work queued and no engine batch done this long: /healthz fails",
    )
    faults: Faults = Field(
        default_factory=Faults,
        description="tests only: injected faults, JSON (engine_delay_ms, engine_error_rate, "
        "sink_error_rate, calls, seed; streamer/faults.py)",
    )

    @field_validator("api_token", mode="before")
    @classmethod
    def _strip_token(cls, value: Any) -> Any:
        # A Secret made from a file ends in a newline; the token is what is before it.
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise ValueError(
                    "is set but empty; unset it, or give a token (DFM_AUTH=none "
                    "turns authentication off explicitly)"
                )
            if not all("\x21" <= ch <= "\x7e" for ch in value):
                raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("source_allow_nets", "source_deny_nets", mode="before")
    @classmethod
    def _split_nets(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in value.replace(";", ",").split(",") if v.strip()]
        return value

    @field_validator("source_allow_nets", "source_deny_nets")
    @classmethod
    def _check_nets(cls, value: list[str]) -> list[str]:
        parse_nets(value, "the list")
        return value

    def batch_wait_ms(self) -> float:
        """The backbone batch's longest wait: DFM_MAX_WAIT_MS, or one frame interval."""
        return self.max_wait_ms if self.max_wait_ms is not None else 1000.0 / self.fps

    def decoder_threads(self) -> int:
        """FFmpeg threads for each stream's decoder: DFM_DECODE_THREADS, or the CPUs
        shared among as many streams as the replica runs."""
        return self.decode_threads or max(1, cpu_budget() // self.max_streams)

    def decode_pool_threads(self) -> int:
        """The decode pool's threads: DFM_DECODE_WORKERS, or the CPUs; 0: no pool."""
        return self.decode_workers if self.decode_workers is not None else cpu_budget()

    def frame_threads(self, batched_detection: bool) -> int:
        """The frame pool's threads: DFM_FRAME_WORKERS, or twice the CPUs (at least 4),
        since a worker also waits (for the GIL, a lane with no room); with batched
        detection, twice a detection batch, so that the frames of enough streams wait for
        the detection stage together."""
        if self.frame_workers is not None:
            return self.frame_workers
        workers = max(4, 2 * cpu_budget())
        return max(workers, 2 * self.detect_batch) if batched_detection else workers

    def net_policy(self) -> NetPolicy:
        return NetPolicy(
            allow=parse_nets(self.source_allow_nets, "DFM_SOURCE_ALLOW_NETS"),
            deny=parse_nets(self.source_deny_nets, "DFM_SOURCE_DENY_NETS"),
        )


def evidence_folder(explicit: Path | None) -> Path:
    """``DFM_EVIDENCE_DIR``, or the cache's ``evidence`` folder."""
    if explicit is not None:
        return explicit
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "deepfake-monitor" / "evidence"


def checkpoint_path(explicit: Path | None, *, random_weights: bool) -> Path | None:
    """The checkpoint to load (given, DFM_CHECKPOINT, or the bundled demo); None: random."""
    from analyzer.model import BUNDLED_CHECKPOINT

    if random_weights:
        return None
    env = os.environ.get("DFM_CHECKPOINT")
    if explicit is not None or env:
        return explicit or Path(str(env))
    if BUNDLED_CHECKPOINT.is_file():
        return BUNDLED_CHECKPOINT
    raise ConfigError(
        f"no checkpoint: the bundled demo checkpoint {BUNDLED_CHECKPOINT} is missing from this "
        "install; pass --checkpoint PATH "
        "(or set DFM_CHECKPOINT), or --random-weights (DFM_RANDOM_WEIGHTS=true) for a smoke test"
    )


# DFM_* variables that are not service settings: the CLI's, set-up's and the tests' own.
NOT_SETTINGS = ("DFM_CONFIG", "DFM_CACHE", "DFM_PHOTOS_DIR", "DFM_SKIP_TEST_DEPS")
NOT_SETTINGS_PREFIXES = ("DFM_TEST_",)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def settings_table() -> str:
    """Every setting as a Markdown table row: name, default, range, meaning.

    ``docs/settings.md`` holds this table (``scripts/doc_tables.py`` writes it, a test
    compares), so the field descriptions here are its single source.
    """
    rows = ["| setting | default | range | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `DFM_{name.upper()}` | {_shown(default)} | {_bounds(field)} | {meaning} |")
    return "\n".join(rows) + "\n"


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        text = json.dumps(value) if not value or isinstance(value, dict) else ", ".join(value)
        return f"`{text}`"
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{value >> 20} MiB"
    return f"`{value}`"


def _bounds(field: Any) -> str:
    parts = []
    for rule in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(rule, attr, None)
            if bound is not None:
                parts.append(f"{sign} {bound}")
    return ", ".join(parts)


def unknown_env(environ: dict[str, str] | None = None) -> list[str]:
    """``DFM_*`` variables that name no setting (a typo is otherwise silently ignored)."""
    env = os.environ if environ is None else environ
    known = {f"DFM_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        key
        for key in env
        if key.upper().startswith("DFM_")
        and key.upper() not in known
        and key.upper() not in NOT_SETTINGS
        and not key.upper().startswith(NOT_SETTINGS_PREFIXES)
    )


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, a YAML file (``DFM_CONFIG``) and ``overrides``.

    Every problem is one :class:`ConfigError` line naming the setting as the operator
    wrote it: ``DFM_X`` for the environment, ``file.yaml: key`` for the file.
    """
    unknown = unknown_env()
    if unknown:
        close = get_close_matches(
            unknown[0], [f"DFM_{n.upper()}" for n in Settings.model_fields], n=1
        )
        hint = f"; did you mean {close[0]}?" if close else "; see docs/settings.md"
        raise ConfigError(f"unknown setting {unknown[0]} in the environment{hint}")
    path = config_file or (Path(os.environ["DFM_CONFIG"]) if os.environ.get("DFM_CONFIG") else None)
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        values.update(loaded)
    from_file = set(values)
    values.update(overrides)
    try:
        settings = Settings(**values)
    except ValidationError as exc:

        def name(loc: tuple[str | int, ...]) -> str:
            dotted, top = ".".join(str(p) for p in loc), str(loc[0])
            if top in from_file:
                return f"{path}: key {dotted}"
            return f"DFM_{top.upper()}" + (f" ({dotted})" if len(loc) > 1 else "")

        raise ConfigError(f"setting {first_error(exc, name)}") from None
    if settings.sink == "kafka" and not settings.kafka_bootstrap:
        raise ConfigError("setting DFM_SINK=kafka needs DFM_KAFKA_BOOTSTRAP")
    if settings.auth == "token" and not settings.api_token and not is_loopback(settings.http_host):
        raise ConfigError(
            f"DFM_HTTP_HOST={settings.http_host} is not a loopback address and no DFM_API_TOKEN "
            "is set: anyone who reaches the port could control the service; set DFM_API_TOKEN, "
            "or DFM_AUTH=none to serve without one on purpose"
        )
    policy = settings.net_policy()
    for spec in settings.sources:
        try:
            parse_source_url(spec.url, allow_file=settings.allow_file_sources, policy=policy)
        except UrlRejected as exc:
            raise ConfigError(f"setting DFM_SOURCES: stream {spec.id!r}: {exc.reason}") from None
    return settings
