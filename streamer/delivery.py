"""When input is done: windows acknowledged by every sink, in order, per stream.

A source that keeps its input for us (Kafka) hands delivery marks along with its frames
(:attr:`~streamer.sources.base.FrameItem.marks`): the input wholly before frame ``i``.
Frames before the first frame of an acknowledged window are in no window still to come
or still unacknowledged (windows are made, published and acknowledged in order), so a
mark at frame ``i`` is released once a window starting at ``i`` or later is acknowledged
by every sink, or skipped (counted in ``deepfake_windows_skipped_total``). Pure logic: the
stream task feeds it, and hands what it releases back to its source.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class Acknowledgements:
    def __init__(self, sinks: int) -> None:
        if sinks < 1:
            raise ValueError("a stream publishes to at least one sink")
        self.sinks = sinks
        self._windows: deque[list[int]] = deque()  # [first frame, acks still due]
        self._base = 0  # number of the oldest window in _windows
        self._marks: deque[tuple[int, Sequence[object]]] = deque()  # (frame, marks)

    def add_marks(self, frame: int, marks: Sequence[object]) -> None:
        self._marks.append((frame, marks))

    def window(self, first_frame: int) -> int:
        """A window is published to every sink; returns its number for :meth:`acked`."""
        self._windows.append([first_frame, self.sinks])
        return self._base + len(self._windows) - 1

    def skipped(self, first_frame: int) -> list[object]:
        """A due window without a verdict: nothing to wait for."""
        self._windows.append([first_frame, 0])
        return self._settle()

    def acked(self, number: int) -> list[object]:
        """One sink acknowledged window ``number``; returns the marks now released."""
        i = number - self._base
        if 0 <= i < len(self._windows) and self._windows[i][1] > 0:
            self._windows[i][1] -= 1
        return self._settle()

    @property
    def unacknowledged(self) -> int:
        return len(self._windows)

    @property
    def held(self) -> int:
        """Marks waiting for their windows."""
        return sum(len(m) for _, m in self._marks)

    def _settle(self) -> list[object]:
        covered = -1
        while self._windows and self._windows[0][1] == 0:
            covered = self._windows.popleft()[0]
            self._base += 1
        released: list[object] = []
        while self._marks and self._marks[0][0] <= covered:
            released.extend(self._marks.popleft()[1])
        return released
