"""Service settings: ``DFM_*`` environment variables, or a YAML file with the same keys.

Every field is typed, bounded and documented; an unknown key or a bad value stops the
service at start-up with one line naming the setting (:func:`load_settings`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamer.errors import ConfigError

STREAM_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class StreamSpec(BaseModel):
    """A stream to watch: the body of ``POST /v1/streams``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="1-64 of A-Z a-z 0-9 . _ -")
    url: str = Field(min_length=1, max_length=2048, description="rtsp://, rtsps:// or file://")
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DFM_", extra="forbid", validate_default=True)

    http_host: str = Field("127.0.0.1", description="HTTP listen address")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port (0: any free port)")
    api_token: str | None = Field(
        None, description="bearer token for everything but health/metrics"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint: Path | None = Field(None, description="model checkpoint; default: bundled demo")
    random_weights: bool = Field(False, description="untrained weights (smoke tests, benchmarks)")
    window_frames: int = Field(150, ge=2, le=600)
    hop_frames: int = Field(30, ge=1, le=600)
    fps: float = Field(30.0, gt=0, le=120)
    threshold: float = Field(0.5, ge=0, le=1)
    max_streams: int = Field(16, ge=1, le=1024)
    max_faces: int = Field(4, ge=1, le=16)
    detect_every: int = Field(3, ge=1, le=30, description="frames between face detections")
    kafka_bootstrap: str | None = Field(None, description="host:port,...; unset: no Kafka")
    kafka_verdicts_topic: str = "deepfake.verdicts"
    kafka_video_topic: str = "deepfake.video"
    kafka_sources_topic: str = "deepfake.sources"
    kafka_group: str = Field("deepfake-monitor", description="consumer group of all replicas")
    kafka_idle_s: float = Field(30.0, gt=0, description="a Kafka video key this quiet ends")
    kafka_sources_partitions: int = Field(
        12, ge=1, le=1000, description="when it creates the topic"
    )
    kafka_replication_factor: int = Field(1, ge=1, le=10, description="when it creates topics")
    kafka_buffer: int = Field(
        10000, ge=1, le=1_000_000, description="verdicts held while Kafka is away"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    sink: Literal["stdout", "kafka", "none"] = "stdout"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    sources: list[StreamSpec] = Field(default_factory=list, description="streams at start-up")
    allow_file_sources: bool = Field(False, description="accept file:// stream URLs")
    max_batch: int = Field(64, ge=1, le=1024, description="crops per backbone batch")
    max_wait_ms: float = Field(10.0, ge=0, le=1000, description="wait to fill a batch")
    frame_queue: int = Field(30, ge=1, le=600, description="frames queued per stream")
    max_inflight_crops: int = Field(256, ge=1, le=8192, description="crops awaiting the GPU")
    stall_timeout_s: float = Field(10.0, gt=0, description="no frame this long: source down")
    open_timeout_s: float = Field(10.0, gt=0, description="connect/read timeout of a source")
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    drain_grace_s: float = Field(10.0, ge=0, description="SIGTERM: time to finish due windows")
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
    events_interval_s: float = Field(1.0, gt=0, le=60, description="web page stream updates")
    slow_engine_ms: float = Field(0.0, ge=0, description="testing only: delay per engine call")


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


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, a YAML file (``DFM_CONFIG``) and ``overrides``."""
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
    values.update(overrides)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "?"
        name = f"DFM_{loc.upper()}" if "." not in loc else loc
        raise ConfigError(f"setting {name} ({loc}): {err['msg']}") from None
    if settings.hop_frames > settings.window_frames:
        raise ConfigError("setting DFM_HOP_FRAMES must not exceed DFM_WINDOW_FRAMES")
    if settings.sink == "kafka" and not settings.kafka_bootstrap:
        raise ConfigError("setting DFM_SINK=kafka needs DFM_KAFKA_BOOTSTRAP")
    return settings
