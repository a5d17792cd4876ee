"""Fault injection, for tests only: one setting, ``DFM_FAULTS`` (JSON), off by default.

A test turns a fault on and asserts what an operator would see: a metric, a failing
probe, a recovery (the habit of FoundationDB's BUGGIFY and Envoy's fault filter). The
product never turns one on by itself; a service with faults set says so in its log at
start.

``{"engine_delay_ms": 600000}`` makes every engine call hang that long (a stalled GPU);
``{"engine_error_rate": 0.5}`` makes half of the engine calls fail (a flaky driver);
``"calls": N`` lifts the engine faults after the first N engine calls (a recovery);
``{"sink_error_rate": 0.2}`` makes a fifth of the Kafka sink's writes fail before they
reach the broker (a flaky network): the sink retries them in order, counts each in
``deepfake_sink_errors_total{sink}``, and loses none.
"""

from __future__ import annotations

import random
import time

from pydantic import BaseModel, ConfigDict, Field


class InjectedFault(RuntimeError):
    """An engine call or a sink write failed on purpose (``DFM_FAULTS``)."""


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine_delay_ms: float = Field(0.0, ge=0, description="delay added to every engine call")
    engine_error_rate: float = Field(0.0, ge=0, le=1, description="share of engine calls that fail")
    sink_error_rate: float = Field(
        0.0, ge=0, le=1, description="share of Kafka sink writes that fail (and are retried)"
    )
    calls: int | None = Field(
        None, ge=0, description="engine calls the faults apply to, from the first; then lifted"
    )
    seed: int | None = Field(None, description="for repeatable error draws")

    @property
    def any(self) -> bool:
        return self.engine_delay_ms > 0 or self.engine_error_rate > 0 or self.sink_error_rate > 0

    def engine_call(self, rng: random.Random) -> None:
        """Called in the engine thread before each call: sleep and/or fail as configured."""
        if self.engine_delay_ms:
            time.sleep(self.engine_delay_ms / 1000.0)
        if self.engine_error_rate and rng.random() < self.engine_error_rate:
            raise InjectedFault("injected engine fault (DFM_FAULTS engine_error_rate)")

    def sink_write(self, rng: random.Random) -> None:
        """Called by the Kafka sink before each write: fail as configured."""
        if self.sink_error_rate and rng.random() < self.sink_error_rate:
            raise InjectedFault("injected sink fault (DFM_FAULTS sink_error_rate)")
