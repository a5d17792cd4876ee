"""The frame pool: a few threads do every stream's per-frame work, in order per stream,
without one stream's stall or bug holding up the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from analyzer.faces import Detection, FaceTracker
from streamer.metrics import Metrics
from streamer.sources.base import FrameItem, Opener, SourceState, SourceWorker
from streamer.sources.decode import Picture, VideoFrame
from streamer.sources.pool import FramePool
from streamer.tasks import Backoff
from tests.servers import metric_in, registry_text, wait_until


def test_a_few_workers_serve_many_lanes_each_in_its_order_on_one_thread():
    pool = FramePool(3, lane_frames=64)
    seen: dict[int, list[tuple[int, str]]] = {k: [] for k in range(12)}

    def work(k: int):
        return lambda i: seen[k].append((i, threading.current_thread().name))

    lanes = [pool.lane(work(k), waits=True) for k in range(12)]
    for i in range(50):
        for lane in lanes:
            assert lane.put(i)
    for lane in lanes:
        assert lane.finish(10.0)
    assert pool.threads == 3
    for got in seen.values():
        assert [i for i, _ in got] == list(range(50))  # every frame, in order
        assert len({name for _, name in got}) == 1  # one thread per stream: no shared tracker
    assert len({got[0][1] for got in seen.values()}) == 3  # and the streams spread
    pool.stop()
    assert pool.threads == 0


def test_streams_coming_and_going_one_at_a_time_keep_one_thread():
    pool = FramePool(8)
    for _ in range(5):
        lane = pool.lane(lambda _i: None)
        lane.put(0)
        assert lane.finish(5.0)
        lane.close()
    assert pool.threads == 1  # an idle worker is found again: nothing piles up
    pool.stop()


def test_a_lane_without_room_downstream_does_not_hold_up_its_workers_other_lanes():
    pool = FramePool(1)
    stuck: list[int] = []
    moving: list[int] = []
    room = threading.Event()
    a = pool.lane(stuck.append, ready=room.is_set)
    b = pool.lane(moving.append, waits=True)
    a.put(1)
    for i in range(20):
        b.put(i)  # waits for room in its lane: only possible if the worker moves on
    assert b.finish(5.0) and moving == list(range(20))
    assert stuck == []
    room.set()
    assert a.finish(5.0) and stuck == [1]
    pool.stop()


def test_a_worker_takes_one_frame_from_each_lane_in_turn():
    pool = FramePool(1, lane_frames=64)
    go = threading.Event()
    order: list[str] = []
    lanes = [pool.lane(lambda i, k=k: order.append(f"{k}{i}"), ready=go.is_set) for k in "ab"]
    for i in range(3):
        for lane in lanes:
            lane.put(i)
    go.set()
    assert all(lane.finish(5.0) for lane in lanes)
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]  # a busy stream starves no other
    pool.stop()


def test_a_live_lane_loses_its_oldest_and_hands_on_what_it_carried():
    metrics = Metrics()
    pool = FramePool(1, lane_frames=2, metrics=metrics.queues)
    go = threading.Event()
    worked: list[list[str]] = []
    handed: list[tuple[list[str], list[str]]] = []

    def drop(lost: list[str], heir: list[str]) -> None:
        handed.append((list(lost), list(heir)))
        heir[:0] = lost

    lane = pool.lane(worked.append, ready=go.is_set, on_drop=drop)
    for name in "abcd":
        lane.put([name])
    assert handed == [(["a"], ["b"]), (["a", "b"], ["c"])]
    text = registry_text(metrics)
    assert metric_in(text, "deepfake_queue_depth", queue="frame_lane") == 2
    assert metric_in(text, "deepfake_queue_capacity", queue="frame_lane") == 2
    assert metric_in(text, "deepfake_queue_dropped_total", queue="frame_lane") == 2
    go.set()
    assert lane.finish(5.0)
    assert worked == [["a", "b", "c"], ["d"]]
    lane.close()
    # A closed lane leaves the sums.
    assert metric_in(registry_text(metrics), "deepfake_queue_capacity", queue="frame_lane") == 0
    pool.stop()


def test_closing_a_lane_frees_a_reader_waiting_for_room():
    pool = FramePool(1, lane_frames=1)
    lane = pool.lane(lambda _i: None, waits=True, ready=lambda: False)
    lane.put(0)
    outcome: list[bool] = []
    reader = threading.Thread(target=lambda: outcome.append(lane.put(1)))
    reader.start()
    time.sleep(0.1)
    assert reader.is_alive()  # waiting for room that never comes
    assert lane.close(1.0)
    reader.join(1.0)
    assert outcome == [False]
    pool.stop()


class _Frames(Opener):
    """A file of ``n`` small frames; with ``bad``, frame 3 cannot be converted."""

    ends = True

    def __init__(self, n: int, bad: bool = False) -> None:
        self.n, self.bad = n, bad

    def open(self) -> Iterator[VideoFrame]:
        for i in range(self.n):
            picture = Picture(np.full((8, 8, 3), i, np.uint8))
            if self.bad and i == 3:
                picture = Picture.__new__(Picture)  # no pixels at all: converting it fails
                picture._frame = picture._rgb = None
                picture.marks = ()
            yield VideoFrame(i, i / 30, picture)


class _OneFace:
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection((0.25, 0.25, 0.75, 0.75), 0.9)]


def _worker(name: str, opener: Opener, pool: FramePool, items: list[FrameItem]):
    states: list[SourceState] = []
    worker = SourceWorker(
        name,
        opener,
        lambda: FaceTracker(_OneFace(), detect_every=1),
        on_item=items.append,
        on_state=lambda state, _reason: states.append(state),
        on_reconnect=lambda: None,
        backoff=Backoff(0.01, 0.01),
        pool=pool,
    )
    return worker, states


def test_streams_sharing_two_workers_get_every_frame_and_a_bug_fails_only_its_stream():
    pool = FramePool(2, lane_frames=64)
    items = {k: [] for k in range(6)}
    workers = [_worker(f"s{k}", _Frames(40, bad=(k == 0)), pool, items[k]) for k in range(6)]
    for worker, _ in workers:
        worker.start()
    wait_until(lambda: all(w.join(0) for w, _ in workers), 20.0, "every reader to end", 0.05)
    assert pool.threads == 2  # six streams' faces found by two threads
    bad_worker, bad_states = workers[0]
    assert bad_states[-1] == SourceState.FAILED and "AssertionError" in (bad_worker.reason or "")
    for k in range(1, 6):
        assert workers[k][1][-1] == SourceState.STOPPED
        assert [round(x.pts_s * 30) for x in items[k]] == list(range(40))  # the file's end too
        assert all(len(x.faces.crops) == 1 for x in items[k])
    pool.stop()
