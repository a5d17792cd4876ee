"""Verdict v1: the one message this system publishes, as JSON line and Kafka value.

``deploy/schemas/verdict.v1.json`` is generated from :class:`Verdict` (``deepfake-monitor
schema``) and a test keeps the two equal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_ID: Final = "deepfake-monitor/verdict/v1"
Label = Literal["REAL", "FAKE", "NO_FACE"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WindowSpan(_Strict):
    start_pts_s: float = Field(description="stream time of the window's first frame, seconds")
    end_pts_s: float = Field(description="stream time of the window's last frame, seconds")
    frames: int = Field(ge=1, description="frames in the window")
    fps: float = Field(
        gt=0,
        description="frames per second analysed: the model frame rate, divided by the "
        "analysis stride while the node sheds overload",
    )


class FaceScore(_Strict):
    track_id: int = Field(ge=1, description="face track within this session")
    score: float = Field(ge=0, le=1, description="P(FAKE) for this face over the window")
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="last box of the face in the window: x, y, width, height, as fractions",
    )
    frames: int = Field(ge=1, description="frames of this face in the window")


class ModelRef(_Strict):
    name: str
    version: str = Field(description="checkpoint version; 'random-init' for untrained weights")
    sha256: str | None = Field(description="sha256 of the checkpoint file; null when none")


class EvidenceLink(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="evidence record id")
    url: str = Field(description="the record's manifest: /v1/evidence/{id} (behind the token)")


class Verdict(_Strict):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, title="deepfake-monitor verdict v1"
    )

    schema_id: Literal["deepfake-monitor/verdict/v1"] = Field(SCHEMA_ID, alias="schema")
    stream_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    session: str = Field(description="uuid of this ingest session; (session, seq) is unique")
    seq: int = Field(ge=0, description="verdict number in the session, without gaps")
    window: WindowSpan
    score: float | None = Field(ge=0, le=1, description="P(FAKE), max over faces; null if none")
    smoothed_score: float | None = Field(ge=0, le=1, description="EMA of score over windows")
    label: Label
    threshold: float = Field(ge=0, le=1)
    faces: list[FaceScore]
    model: ModelRef
    latency_ms: float = Field(ge=0, description="last frame of the window in -> verdict out")
    emitted_at: str = Field(description="UTC time of emission, ISO 8601 with milliseconds")
    evidence: EvidenceLink | None = Field(
        None,
        description="what the model saw (crops, heat maps, the frame), on a window whose "
        "label turned FAKE; absent otherwise",
    )

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`to_json`, as a dict."""
        return self.model_dump(by_alias=True, exclude=self._omitted())

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude=self._omitted())

    def _omitted(self) -> set[str] | None:
        """Left out of the message: ``evidence`` when there is none (as before it existed)."""
        return {"evidence"} if self.evidence is None else None


def utc_now_iso() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def json_schema() -> dict[str, Any]:
    schema = Verdict.model_json_schema(by_alias=True, mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
