"""Overload shedding: one analysis stride for the whole node, set from measured loss.

When the node cannot analyse every frame of every stream, frames pile up in the streams'
inboxes and the oldest are dropped: every stream loses frames at random, windows cover
gaps, and the work spent decoding and finding faces in a dropped frame is wasted. The
shedder replaces that with a stated policy: **every stream analyses 1 frame in
``stride``**, the same stride for all, chosen so the node keeps up. The stride moves in
quarters (``STEP``): 1.5 analyses 2 frames in 3, evenly spread, so the node runs close to
what it manages instead of a whole step below it (3x the load a node sustains needs a
stride of 3.5, not 4: 86 % of its capacity used instead of 75 %). Frames not analysed are
skipped by the source thread before face detection and before their conversion to RGB
(so they cost only their decode), and counted as
``deepfake_frames_dropped_total{reason="shed"}``. A window
stays ``window_frames`` analysed frames and a verdict comes every ``hop_frames``
analysed frames, so at stride ``s`` each stream still gets verdicts, ``s`` times less
often, each over ``s`` times more time (the verdict's ``window.fps`` says so).

The control law, evaluated every ``interval_s`` from the frames the streams took and
the frames their inboxes dropped in that interval:

* **up** at once when more than ``HIGH_LOSS`` of the offered frames were dropped: the
  new stride makes the offered load ``TARGET`` of what the node just managed, at most
  doubling in one step (one bad interval, a pause at start-up, must not jump to the cap);
* **down** after ``CALM_INTERVALS`` intervals without loss, to the lowest stride whose
  load fits ``TARGET`` of the throughput last measured while saturated, at most halving
  in one step; and, since a
  node that keeps up only shows a lower bound of what it could do (a start-up pause
  measures little), after ``PROBE_INTERVALS`` calm intervals by a fifth in any case;
* the interval right after a change is not judged: frames queued before it still drain;
* the lower bound a calm node shows is the mean of ``MEASURE_INTERVALS`` calm intervals:
  streams take frames in bursts (a batch's features land at once);
* only ``CALM_INTERVALS`` empty intervals in a row make the node idle (stride 1): one
  empty second among bursts is not idleness.

``deepfake_analysis_stride`` exports the stride: above 1 this node is shedding, the
signal an autoscaler or an alert reads.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

HIGH_LOSS = 0.05  # dropped / offered above this: shed more
TARGET = 0.85  # after a step up, offered load is this share of the measured throughput
CALM_INTERVALS = 5  # intervals without loss before a step down is tried
PROBE_INTERVALS = 10  # calm intervals after which a step down is tried regardless
STEP = 0.25  # strides are multiples of this
PROBE_DOWN = 0.8  # a probe lowers the stride by a fifth (at least one STEP)
MEASURE_INTERVALS = 3  # a calm node's lower bound: the mean of this many intervals


def _up(stride: float) -> float:
    """The smallest stride of the grid at or above ``stride``."""
    return math.ceil(stride / STEP - 1e-9) * STEP


def _down(stride: float) -> float:
    """The largest stride of the grid at or below ``stride``."""
    return math.floor(stride / STEP + 1e-9) * STEP


class Pacer:
    """A source thread's rule: analyse 1 frame in ``stride``, evenly spread (1.5: 2 in 3)."""

    def __init__(self) -> None:
        self.credit = 0.0  # the share of a frame earned so far

    def take(self, stride: float) -> bool:
        """True when this frame is analysed; False when it is shed."""
        self.credit += 1.0 / stride
        if self.credit < 1.0 - 1e-9:
            return False
        self.credit -= 1.0
        return True


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
        self.max_stride = float(max_stride)
        self.stride = 1.0
        self.capacity: float | None = None  # analysed frames per interval when saturated
        self._calm_analysed: deque[int] = deque(maxlen=MEASURE_INTERVALS)  # since a change
        self._calm = 0
        self._idle = 0
        self._settle = False

    @property
    def enabled(self) -> bool:
        return self.max_stride > 1

    def observe(self, sample: Sample) -> float:
        """Take one interval's counts; returns the stride for the next interval."""
        offered = sample.analysed + sample.dropped
        if not self.enabled:
            return self.stride
        if offered == 0:  # nothing to analyse: an idle node sheds nothing (after a while)
            self._idle += 1  # in a row: streams that take frames in bursts show empty seconds
            if self.stride > 1 and self._idle >= CALM_INTERVALS:
                self.capacity = None
                self._change(1.0)
            return self.stride
        self._idle = 0
        if self._settle:
            self._settle = False
            return self.stride
        loss = sample.dropped / offered
        if loss > HIGH_LOSS:
            self._calm = 0
            self._calm_analysed.clear()
            self.capacity = float(max(sample.analysed, 1))
            # The raw frame rate behind this interval is offered * stride; pick the
            # stride that brings it to TARGET of what was analysed.
            need = _up(offered * self.stride / (TARGET * self.capacity))
            self._change(min(self.max_stride, 2 * self.stride, max(self.stride + STEP, need)))
            return self.stride
        if sample.dropped:
            self._calm = 0
            self._calm_analysed.clear()
            return self.stride
        self._calm += 1
        self._calm_analysed.append(sample.analysed)
        full = len(self._calm_analysed) == MEASURE_INTERVALS
        if self.capacity is not None and full:  # it managed this without loss: a lower bound
            self.capacity = max(self.capacity, sum(self._calm_analysed) / MEASURE_INTERVALS)
        if self.stride == 1 or self._calm < CALM_INTERVALS:
            return self.stride
        raw = offered * self.stride  # frames per interval the streams offer at stride 1
        if self.capacity is None:  # no measure of what the node manages: a probe step
            fits = min(self.stride - STEP, _down(self.stride * PROBE_DOWN))
        else:
            fits = _up(raw / (TARGET * self.capacity))
        if fits < self.stride:
            self._change(max(1.0, fits, _up(self.stride / 2)))
        elif self._calm >= PROBE_INTERVALS:
            # The estimate may be stale (streams left, faces changed, a slow start): probe.
            self.capacity = None
            self._change(max(1.0, min(self.stride - STEP, _down(self.stride * PROBE_DOWN))))
        return self.stride

    def _change(self, stride: float) -> None:
        self._settle = stride != self.stride
        self.stride, self._calm = stride, 0
        self._calm_analysed.clear()
