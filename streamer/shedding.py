"""Overload shedding: one analysis stride for the whole node, set from measured loss.

When the node cannot analyse every frame of every stream, frames pile up in the streams'
inboxes and the oldest are dropped: every stream loses frames at random, windows cover
gaps, and the work spent decoding and finding faces in a dropped frame is wasted. The
shedder replaces that with a stated policy: **every stream analyses 1 frame in
``stride``**, the same stride for all, chosen so the node keeps up. Frames not analysed
are skipped by the source thread before face detection (so they cost only their
decode), and counted as ``deepfake_frames_dropped_total{reason="shed"}``. A window
stays ``window_frames`` analysed frames and a verdict comes every ``hop_frames``
analysed frames, so at stride ``s`` each stream still gets verdicts, ``s`` times less
often, each over ``s`` times more time (the verdict's ``window.fps`` says so).

The control law, evaluated every ``interval_s`` from the frames the streams took and
the frames their inboxes dropped in that interval:

* **up** at once when more than ``HIGH_LOSS`` of the offered frames were dropped: the
  new stride makes the offered load ``TARGET`` of what the node just managed, at most
  doubling in one step (one bad interval, a pause at start-up, must not jump to the cap);
* **down** by one step after ``CALM_INTERVALS`` intervals without loss, if the load one
  step down fits under the throughput last measured while saturated (and, that estimate
  going stale, after ``PROBE_INTERVALS`` calm intervals in any case);
* the interval right after a change is not judged: frames queued before it still drain.

``deepfake_analysis_stride`` exports the stride: above 1 this node is shedding, the
signal an autoscaler or an alert reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HIGH_LOSS = 0.05  # dropped / offered above this: shed more
TARGET = 0.85  # after a step up, offered load is this share of the measured throughput
CALM_INTERVALS = 5  # intervals without loss before a step down is tried
PROBE_INTERVALS = 30  # calm intervals after which a step down is tried regardless


@dataclass(frozen=True)
class Sample:
    """What the streams did in one interval, summed over all streams."""

    analysed: int  # frames the stream tasks took in
    dropped: int  # frames their inboxes dropped for backpressure


class LoadShedder:
    """The node's analysis stride (read by every source thread, set by one task)."""

    def __init__(self, max_stride: int) -> None:
        if max_stride < 1:
            raise ValueError("max_stride must be at least 1")
        self.max_stride = max_stride
        self.stride = 1
        self.capacity: float | None = None  # analysed frames per interval when saturated
        self._calm = 0
        self._settle = False

    @property
    def enabled(self) -> bool:
        return self.max_stride > 1

    def observe(self, sample: Sample) -> int:
        """Take one interval's counts; returns the stride for the next interval."""
        offered = sample.analysed + sample.dropped
        if not self.enabled or offered == 0:
            return self.stride
        if self._settle:
            self._settle = False
            return self.stride
        loss = sample.dropped / offered
        if loss > HIGH_LOSS:
            self._calm = 0
            self.capacity = float(max(sample.analysed, 1))
            # The raw frame rate behind this interval is offered * stride; pick the
            # stride that brings it to TARGET of what was analysed.
            need = math.ceil(offered * self.stride / (TARGET * self.capacity))
            self._change(min(self.max_stride, 2 * self.stride, max(self.stride + 1, need)))
            return self.stride
        if sample.dropped:
            self._calm = 0
            return self.stride
        self._calm += 1
        if self.capacity is not None:  # it managed this much without loss: a lower bound
            self.capacity = max(self.capacity, float(sample.analysed))
        if self.stride == 1 or self._calm < CALM_INTERVALS:
            return self.stride
        lower = self.stride - 1
        predicted = offered * self.stride / lower
        if self.capacity is None or predicted <= TARGET * self.capacity:
            self._change(lower)
        elif self._calm >= PROBE_INTERVALS:
            # The estimate may be stale (streams left, faces changed): try one step.
            self.capacity = None
            self._change(lower)
        return self.stride

    def _change(self, stride: int) -> None:
        self._settle = stride != self.stride
        self.stride, self._calm = stride, 0
