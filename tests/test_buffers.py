"""The one bounded buffer type: each policy, the end of a stream, and what /metrics shows."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.buffers import BoundedBuffer, Empty, Ended, Policy
from streamer.metrics import Metrics


def series(metrics: Metrics) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if "queue" in s.labels:
                out[(s.name, s.labels["queue"])] = s.value
    return out


async def test_drop_oldest_keeps_the_newest_and_counts_every_loss():
    lost: list[int] = []
    buf: BoundedBuffer[int] = BoundedBuffer("t", 3, Policy.DROP_OLDEST, on_drop=lost.append)
    for i in range(5):
        assert buf.put_nowait(i)
    buf.end()
    got = []
    with pytest.raises(Ended):
        while True:
            got.append(await buf.aget())
    assert got == [2, 3, 4] and lost == [0, 1] and buf.dropped == 2


def test_drop_newest_refuses_and_block_waits_for_room_then_refuses():
    lost: list[int] = []
    buf: BoundedBuffer[int] = BoundedBuffer("t", 2, Policy.DROP_NEWEST, on_drop=lost.append)
    assert [buf.put_nowait(i) for i in range(3)] == [True, True, False]
    assert lost == [2] and buf.get_nowait() == 0

    blocking: BoundedBuffer[int] = BoundedBuffer("b", 1, Policy.BLOCK, block_timeout_s=0.2)
    assert blocking.put(1)
    started = time.monotonic()
    assert not blocking.put(2)  # nobody takes: refused after the timeout, and counted
    assert time.monotonic() - started >= 0.2 and blocking.dropped == 1
    threading.Timer(0.1, blocking.get_nowait).start()
    assert blocking.put(3, timeout=5)  # a consumer made room in time
    assert blocking.get(timeout=1) == 3
    with pytest.raises(Empty):
        blocking.get(timeout=0.01)


async def test_a_loop_consumer_wakes_for_a_thread_producer_and_the_end():
    buf: BoundedBuffer[int] = BoundedBuffer("t", 100, Policy.DROP_OLDEST)

    def produce() -> None:
        for i in range(50):
            buf.put_nowait(i)
            time.sleep(0.001)
        buf.end()

    threading.Thread(target=produce).start()
    got = []
    with pytest.raises(Ended):
        while True:
            got.append(await asyncio.wait_for(buf.aget(), 5))
    assert got == list(range(50))
    assert not buf.put_nowait(99) and buf.dropped == 0  # after the end: refused, not a loss


def test_every_queue_shows_depth_capacity_and_drops_summed_over_its_buffers():
    metrics = Metrics()
    a: BoundedBuffer[int] = BoundedBuffer(
        "stream_inbox", 4, Policy.DROP_OLDEST, metrics=metrics.queues
    )
    b: BoundedBuffer[int] = BoundedBuffer(
        "stream_inbox", 4, Policy.DROP_OLDEST, metrics=metrics.queues
    )
    for i in range(6):
        a.put_nowait(i)
    b.put_nowait(0)
    got = series(metrics)
    assert got[("deepfake_queue_depth", "stream_inbox")] == 5
    assert got[("deepfake_queue_capacity", "stream_inbox")] == 8
    assert got[("deepfake_queue_dropped_total", "stream_inbox")] == 2
    a.close()
    got = series(metrics)
    assert got[("deepfake_queue_depth", "stream_inbox")] == 1
    assert got[("deepfake_queue_capacity", "stream_inbox")] == 4


def test_take_and_unget_keep_the_order_and_count_what_overflows():
    lost: list[int] = []
    buf: BoundedBuffer[int] = BoundedBuffer("t", 4, Policy.DROP_OLDEST, on_drop=lost.append)
    for i in range(4):
        buf.put_nowait(i)
    taken = buf.take(3)
    assert taken == [0, 1, 2] and len(buf) == 1
    buf.put_nowait(4)
    buf.unget(taken[1:])  # 0 went out; 1 and 2 come back first
    assert buf.take(10) == [1, 2, 3, 4] and lost == [] and buf.take(1) == []
    for i in range(4):
        buf.put_nowait(i)
    buf.unget([8, 9])  # over capacity: the oldest (the ones put back) are lost
    assert lost == [8, 9] and buf.take(10) == [0, 1, 2, 3]
