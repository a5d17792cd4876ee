"""The frame pool: a few threads do every stream's per-frame work, in order per stream,
without one stream's stall or bug holding up the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from analyzer.faces import Detection, FaceTracker
from streamer.metrics import Metrics
from streamer.sources.base import FrameItem, Opener, SourceState, SourceWorker
from streamer.sources.decode import (
    DecodeLimits,
    Picture,
    VideoFrame,
    decode_pictures,
    resample,
)
from streamer.sources.file import FileOpener
from streamer.sources.kafka import JPEG, TS, KafkaOpener, Message
from streamer.sources.pool import LANE_PACKETS, FramePool
from streamer.sources.replay import Recording, ReplayOpener
from streamer.tasks import Backoff
from streamer.urls import parse_source_url
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
                picture._frame = picture._rgb = picture._tensor = None
                picture.marks = ()
            yield VideoFrame(i, i / 30, picture)


class _OneFace:
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection((0.25, 0.25, 0.75, 0.75), 0.9)]


def _worker(
    name: str,
    opener: Opener,
    pool: FramePool,
    items: list[FrameItem],
    decoders: FramePool | None = None,
    on_drop=lambda: None,
    ready=lambda: True,
    detector=None,
    tracker_factory=None,
):
    states: list[SourceState] = []
    worker = SourceWorker(
        name,
        opener,
        tracker_factory or (lambda: FaceTracker(detector or _OneFace(), detect_every=1)),
        on_item=items.append,
        on_state=lambda state, _reason: states.append(state),
        on_reconnect=lambda: None,
        backoff=Backoff(0.01, 0.01),
        pool=pool,
        decoders=decoders,
        on_drop=on_drop,
        ready=ready,
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


# -- the decode pool: file and RTSP streams' packets decoded by a few threads ---------------


def _gop_clip(path, frames: int = 90, gop: int = 10, bframes: int = 0, rate: int = 30):
    """An H.264 clip of ``frames`` 64x48 frames at ``rate`` fps, a keyframe every ``gop``
    frames, no B-frames unless asked (then decode order is not display order); frame i
    is filled with 2 * i."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {
            "bf": str(bframes), "keyint_min": str(gop), "sc_threshold": "0", "b-adapt": "0"
        }  # fmt: skip
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 2 * i, np.uint8), "rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _levels(items: list[FrameItem]) -> np.ndarray:
    """Each item's frame number, read from its grey level (see _gop_clip)."""
    return np.array([np.median(x.faces.crops[0].crop) / 2 for x in items])


def test_file_streams_decoded_by_two_pool_threads_get_the_frames_their_readers_would(tmp_path):
    clip = _gop_clip(tmp_path / "a.mp4")
    source = parse_source_url(str(clip), kind="scan")
    alone = [f for f in resample(decode_pictures(source), 30.0)]
    pool = FramePool(2, lane_frames=1000)
    decoders = FramePool(2, lane_frames=1000, name="packet_lane", thread_name="decode")
    items = {k: [] for k in range(4)}
    workers = [
        _worker(
            f"s{k}", FileOpener(source, 30.0, loop=False, realtime=False), pool, items[k], decoders
        )
        for k in range(4)
    ]
    for worker, _ in workers:
        worker.start()
    wait_until(lambda: all(w.join(0) for w, _ in workers), 20.0, "every reader to end", 0.05)
    assert decoders.threads == 2  # four streams decoded by two threads
    for k, (worker, states) in enumerate(workers):
        assert states[-1] == SourceState.STOPPED, worker.reason
        assert [x.pts_s for x in items[k]] == [f.pts_s for f in alone]  # every frame, in order
        assert len(items[k]) == 90
        assert worker.stage_cpu_s()["decode"] > 0
    # The frames' own pixels: frame i is grey level 2 * i (give or take the codec's).
    assert np.abs(_levels(items[0]) - np.arange(90)).max() <= 1
    pool.stop()
    decoders.stop()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_decode_lane_that_overflows_skips_to_a_keyframe_and_counts_every_frame_lost(
    tmp_path, threads
):
    """A live stream whose decoder falls behind loses packets; since a P-frame without the
    frames before it decodes to garbage, decoding resumes at the next keyframe, that frame
    starts new tracks and windows (``restart``), and every packet not decoded is counted.
    A decoder of two threads hands the keyframe's picture back a packet later: the gap
    still marks it."""
    clip = _gop_clip(tmp_path / "a.mp4", frames=90, gop=10)
    source = parse_source_url(str(clip), kind="scan")
    pool = FramePool(1, lane_frames=1000)
    decoders = FramePool(1, lane_frames=4, name="packet_lane", thread_name="decode")
    blocked, go = threading.Event(), threading.Event()
    blocker = decoders.lane(lambda _i: (blocked.set(), go.wait(10.0)))
    items: list[FrameItem] = []
    drops: list[int] = []
    worker: SourceWorker | None = None

    class Choked(FileOpener):
        def demux(self):
            feed = super().demux()
            inner = feed.packets

            def packets(*, realtime: bool = False):
                lane = worker._packets
                for i, packet in enumerate(inner(realtime=realtime)):
                    if i == 60:
                        go.set()
                    if i <= 25 or i >= 60:
                        wait_until(lambda: len(lane) == 0, 5.0, "the lane to empty", 0.001)
                    if i == 25:  # the decode worker is stuck while 35 packets arrive
                        blocker.put(0)
                        assert blocked.wait(5.0)
                    yield packet

            feed.packets = packets
            return feed

    opener = Choked(source, 30.0, loop=False, realtime=False, limits=DecodeLimits(threads=threads))
    worker, states = _worker("s", opener, pool, items, decoders, lambda: drops.append(1))
    worker.start()
    assert worker.join(20.0)
    assert states[-1] == SourceState.STOPPED, worker.reason  # no decoder error
    # 25 frames, then 35 packets lost (31 pushed out of the full lane, then 56-59, which
    # are no keyframe), then from the keyframe at 60 on.
    assert len(drops) == 35
    assert len(items) == 25 + 30
    expected = np.r_[np.arange(25), np.arange(60, 90)]
    assert np.abs(_levels(items) - expected).max() <= 1
    assert [k for k, x in enumerate(items) if x.restart] == [25]
    pool.stop()
    decoders.stop()


def test_a_file_played_as_if_live_gives_its_frames_evenly_though_it_has_b_frames(tmp_path):
    """Pacing packets by their presentation times, which jump ahead at each reference
    frame that B-frames follow, handed the frames on in bursts of four, which a live
    lane of two frames then dropped (at 8 streams here, a quarter of all frames). And the
    frames a flush gives back at the end have no time of their own (NaN), which lost the
    last two of this file."""
    clip = _gop_clip(tmp_path / "b.mp4", frames=45, gop=45, bframes=3)
    with av.open(str(clip)) as probe:
        pts = [p.pts for p in probe.demux(probe.streams.video[0]) if p.size]
    assert pts != sorted(pts)  # B-frames: decode order is not display order
    source = parse_source_url(str(clip), kind="scan")
    pool = FramePool(1, lane_frames=1000)
    decoders = FramePool(1, lane_frames=1000, name="packet_lane", thread_name="decode")
    items: list[FrameItem] = []
    opener = FileOpener(source, 30.0, loop=False, realtime=True)
    worker, states = _worker("s", opener, pool, items, decoders)
    worker.start()
    assert worker.join(10.0) and states[-1] == SourceState.STOPPED
    assert len(items) == 45
    # Between the decoder's first frames and the few its flush gives back at the end.
    gaps = np.diff([x.arrival for x in items[5:-5]])
    assert np.median(gaps) > 0.02 and (gaps < 0.005).mean() < 0.1, np.round(gaps * 1000)
    pool.stop()
    decoders.stop()


def test_a_file_of_undecodable_packets_fails_with_the_readers_own_words(tmp_path):
    """Decoding moved to the pool, a file none of whose packets decode still ends
    ``failed``, saying what decoding in the reader says."""
    path = tmp_path / "garbage.mkv"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("h264", rate=30)
        stream.width, stream.height = 64, 48
        for i in range(30):
            packet = av.Packet(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base, packet.is_keyframe = Fraction(1, 30), i == 0
            out.mux(packet)
    source = parse_source_url(str(path), kind="scan")
    reasons = {}
    for way, decoders in (("reader", None), ("pool", FramePool(1, name="packet_lane"))):
        pool = FramePool(1)
        opener = FileOpener(source, 30.0, loop=False, realtime=False)
        worker, states = _worker(way, opener, pool, [], decoders)
        worker.start()
        assert worker.join(10.0)
        assert states[-1] == SourceState.FAILED
        reasons[way] = worker.reason
        pool.stop()
        if decoders is not None:
            decoders.stop()
    assert reasons["pool"] == reasons["reader"]
    assert "holds no decodable video frame" in reasons["pool"]


# -- Kafka MPEG-TS through the decode pool --------------------------------------------------


def _ts_messages(tmp_path, chunk: int = 188 * 4, rate: int = 30) -> list[Message]:
    """A 90-frame MPEG-TS clip (see _gop_clip) cut into messages of ``chunk`` bytes."""
    data = _gop_clip(tmp_path / "a.ts", frames=90, gop=10, rate=rate).read_bytes()
    return [Message(0, k, data[i : i + chunk]) for k, i in enumerate(range(0, len(data), chunk))]


def _kafka(messages: list[Message], kind: str = TS, on_bad=None) -> KafkaOpener:
    """A key's opener with every message already read from the topic, and no more to come."""
    on_bad = on_bad or (lambda _m, why: pytest.fail(why))
    opener = KafkaOpener(kind, 30.0, 5.0, on_bad=on_bad, threads=1)
    for msg in messages:
        assert opener.push(msg)
    opener.close()
    return opener


def test_kafka_video_decoded_in_the_pool_gives_the_readers_frames_and_delivery_marks(tmp_path):
    """A Kafka key's MPEG-TS is demuxed by its reader and decoded by a pool worker: the
    same frames as decoding it in the reader, and the same messages handed back as done
    (each once, in order, each only with a frame its pictures are all before)."""
    messages = _ts_messages(tmp_path)
    got = {}
    for way, decoders in (("reader", None), ("pool", FramePool(2, name="packet_lane"))):
        pool = FramePool(1)
        items: list[FrameItem] = []
        worker, states = _worker(way, _kafka(messages), pool, items, decoders)
        worker.start()
        assert worker.join(20.0) and states[-1] == SourceState.STOPPED, worker.reason
        assert (worker._decode_s > 0) == (decoders is not None)  # where it was decoded
        marks = [msg.offset for x in items for msg in x.marks]
        got[way] = ([x.pts_s for x in items], marks)
        assert np.abs(_levels(items) - np.arange(90)).max() <= 1
        pool.stop()
        if decoders is not None:
            decoders.stop()
    assert got["pool"] == got["reader"]
    frames, marks = got["pool"]
    assert len(frames) == 90
    # Every message but the last few (done when the stream ends), in order.
    assert marks == list(range(len(marks))) and len(marks) >= len(messages) - 40


def test_a_kafka_stream_without_room_holds_up_no_other_stream_of_its_decode_worker(tmp_path):
    """A Kafka key's frames wait for room rather than being dropped; its decode worker
    must not wait with them, or every stream it decodes stalls behind the full one."""
    messages = _ts_messages(tmp_path)
    pool = FramePool(1)
    decoders = FramePool(1, name="packet_lane", thread_name="decode")
    room = threading.Event()
    stuck: list[FrameItem] = []
    moving: list[FrameItem] = []
    a, a_states = _worker("a", _kafka(messages), pool, stuck, decoders, ready=room.is_set)
    b, b_states = _worker("b", _kafka(messages), pool, moving, decoders)
    a.start()
    time.sleep(0.2)  # its lanes fill up
    b.start()
    assert b.join(20.0) and b_states[-1] == SourceState.STOPPED, b.reason
    assert len(moving) == 90 and stuck == []
    room.set()
    assert a.join(20.0) and a_states[-1] == SourceState.STOPPED, a.reason
    assert len(stuck) == 90
    pool.stop()
    decoders.stop()


def test_a_kafka_stream_whose_packet_gives_more_frames_than_its_lane_holds_stalls_no_other(
    tmp_path,
):
    """A 6-fps key gives five frames for each packet at the model's 30 fps: while its
    frame worker is busy, they are queued past the lane's two, not waited for by the
    decode worker that also decodes another stream."""
    messages = _ts_messages(tmp_path, rate=6)
    pool = FramePool(2)  # a frame worker for each stream
    decoders = FramePool(1, name="packet_lane", thread_name="decode")
    go = threading.Event()

    class Busy(_OneFace):
        def detect(self, rgb: np.ndarray) -> list[Detection]:
            assert go.wait(20.0)
            return super().detect(rgb)

    stuck: list[FrameItem] = []
    moving: list[FrameItem] = []
    a, a_states = _worker("a", _kafka(messages), pool, stuck, decoders, detector=Busy())
    b, b_states = _worker("b", _kafka(messages), pool, moving, decoders)
    a.start()
    time.sleep(0.2)  # its frame worker is stuck in its first frame
    b.start()
    assert b.join(20.0) and b_states[-1] == SourceState.STOPPED, b.reason
    assert len(moving) == 446 and stuck == []  # 90 frames at 6 fps: 446 ticks at 30
    go.set()
    assert a.join(20.0) and a_states[-1] == SourceState.STOPPED, a.reason
    assert [x.pts_s for x in stuck] == [x.pts_s for x in moving]
    pool.stop()
    decoders.stop()


def test_kafka_jpeg_frames_decoded_in_the_pool_are_the_readers_and_a_bad_one_is_skipped():
    """A key's JPEG messages are read by its reader and decoded by a pool worker: the same
    frames and delivery marks as decoding them in the reader, a bad one handed to on_bad."""
    messages = []
    for i in range(40):
        ok, data = cv2.imencode(".jpg", np.full((48, 64, 3), 2 * i, np.uint8))
        assert ok
        messages.append(Message(0, len(messages), data.tobytes(), pts_s=100 + i / 30))
        if i == 20:
            messages.append(Message(0, len(messages), b"not a JPEG", pts_s=100 + i / 30))
    got = {}
    for way, decoders in (("reader", None), ("pool", FramePool(1, name="packet_lane"))):
        pool = FramePool(1)
        items: list[FrameItem] = []
        bad: list[tuple[int, str]] = []
        opener = _kafka(messages, JPEG, on_bad=lambda m, why, bad=bad: bad.append((m.offset, why)))
        worker, states = _worker(way, opener, pool, items, decoders)
        worker.start()
        assert worker.join(20.0) and states[-1] == SourceState.STOPPED, worker.reason
        assert (worker._decode_s > 0) == (decoders is not None)  # where it was decoded
        assert bad == [(21, "not a decodable JPEG")]
        got[way] = (
            [x.pts_s for x in items],
            [msg.offset for x in items for msg in x.marks],
            list(np.round(_levels(items)).astype(int)),
        )
        pool.stop()
        if decoders is not None:
            decoders.stop()
    assert got["pool"] == got["reader"]
    frames, marks, levels = got["pool"]
    assert levels == list(range(40))
    # Each message once the next is shown; the last one's is done when the stream ends.
    assert marks == [k for k in range(41) if k not in (21, 40)]


def test_a_kafka_streams_decode_worker_is_woken_as_soon_as_its_frame_lane_empties(
    tmp_path, monkeypatch
):
    """The decode worker takes a Kafka key's packet only once the key's frame lane is
    empty; the frame pool taking that frame must wake it, not leave it to look again
    after its poll (made 2 s here: 90 frames would take minutes)."""
    monkeypatch.setattr("streamer.sources.pool.NOT_READY_POLL_S", 2.0)
    pool = FramePool(1)
    decoders = FramePool(1, name="packet_lane", thread_name="decode")
    items: list[FrameItem] = []
    worker, states = _worker("a", _kafka(_ts_messages(tmp_path)), pool, items, decoders)
    started = time.monotonic()
    worker.start()
    assert worker.join(30.0) and states[-1] == SourceState.STOPPED, worker.reason
    assert len(items) == 90
    assert time.monotonic() - started < 5.0
    pool.stop()
    decoders.stop()


def test_a_kafka_key_without_room_leaves_its_messages_in_its_buffer():
    """A key whose stream has no room takes no more than a few messages out of its
    buffer (the rest wait there, or in the topic, not in the decode pool's lane)."""
    messages = []
    for i in range(100):
        ok, data = cv2.imencode(".jpg", np.full((48, 64, 3), i, np.uint8))
        messages.append(Message(0, i, data.tobytes(), pts_s=i / 30))
    pool = FramePool(1)
    # As the service makes it: lanes of 60 packets for the live sources that drop.
    decoders = FramePool(1, lane_frames=LANE_PACKETS, name="packet_lane", thread_name="decode")
    room = threading.Event()
    items: list[FrameItem] = []
    opener = _kafka(messages, JPEG)
    worker, states = _worker("a", opener, pool, items, decoders, ready=room.is_set)
    worker.start()
    wait_until(lambda: len(opener.items) < 100, 5.0, "the reader to start", 0.01)
    time.sleep(0.3)
    assert len(opener.items) >= 100 - 10  # 8 in the lane, one in the reader's hand
    room.set()
    assert worker.join(20.0) and states[-1] == SourceState.STOPPED, worker.reason
    assert len(items) == 100
    pool.stop()
    decoders.stop()


# -- replayed video: the benchmarks' load generator ----------------------------------------


@pytest.mark.parametrize("bframes", [0, 3])
def test_a_replayed_clip_is_one_endless_stream_of_the_files_frames(tmp_path, bframes):
    """A clip demuxed once and replayed twice with fresh timestamps: its frames twice
    over, on one unbroken clock (no restart at the loop), in the decode pool as in the
    reader."""
    clip = _gop_clip(tmp_path / "a.mp4", frames=45, gop=15, bframes=bframes)
    recording = Recording(clip)
    got = {}
    decoding = FramePool(1, lane_frames=1000, name="packet_lane")
    for way, decoders in (("reader", None), ("pool", decoding)):
        pool = FramePool(1, lane_frames=1000)  # as fast as it decodes: nothing dropped
        items: list[FrameItem] = []
        opener = ReplayOpener(recording, 30.0, limits=DecodeLimits(threads=1), realtime=False,
                              loops=2)  # fmt: skip
        worker, states = _worker(way, opener, pool, items, decoders)
        worker.start()
        assert worker.join(20.0) and states[-1] == SourceState.STOPPED, worker.reason
        got[way] = [x.pts_s for x in items]
        assert np.abs(_levels(items) - np.r_[np.arange(45), np.arange(45)]).max() <= 1
        assert [k for k, x in enumerate(items) if x.restart] == []
        pool.stop()
        if decoders is not None:
            decoders.stop()
    assert got["pool"] == got["reader"]
    assert np.allclose(got["pool"], np.arange(90) / 30)


class _SlowFace(_OneFace):
    """A detector that takes as long as MediaPipe's does on a 480p frame."""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        time.sleep(0.004)
        return super().detect(rgb)


@pytest.mark.parametrize(("rate", "bframes"), [(10, 0), (15, 0), (30, 3)])
def test_a_live_file_decoded_in_the_pool_loses_no_frame_on_an_idle_node(tmp_path, rate, bframes):
    """The service's lane sizes, one stream, nothing else to do. Before: a camera slower
    than the model's 30 fps gave each picture's ticks at once (three at 10 fps), and a
    lane of two frames dropped a third of them (10 of every 30 frames at 10 fps); the
    frames a file's decoder gives back at its end (B-frames held for reordering) came at
    once too, and two of them were dropped at every loop of a looped file."""
    clip = _gop_clip(tmp_path / "c.mp4", frames=rate * 2, gop=rate, bframes=bframes, rate=rate)
    source = parse_source_url(str(clip), kind="scan")
    expected = len(list(resample(decode_pictures(source), 30.0)))
    pool = FramePool(1)  # LANE_FRAMES, as served
    decoders = FramePool(1, lane_frames=LANE_PACKETS, name="packet_lane", thread_name="decode")
    items: list[FrameItem] = []
    drops: list[int] = []
    opener = FileOpener(source, 30.0, loop=False, realtime=True)
    worker, states = _worker(
        "s", opener, pool, items, decoders, on_drop=lambda: drops.append(1), detector=_SlowFace()
    )
    worker.start()
    assert worker.join(10.0) and states[-1] == SourceState.STOPPED, worker.reason
    assert (len(drops), len(items)) == (0, expected)
    pool.stop()
    decoders.stop()


class _Live(Opener):
    """A live camera: a frame every 1/30 s until stopped (or ``n`` frames)."""

    ends = True

    def __init__(self, n: int | None = None) -> None:
        self.stop = threading.Event()
        self.n = n

    def open(self) -> Iterator[VideoFrame]:
        i = 0
        while i != self.n and not self.stop.wait(1 / 30):
            yield VideoFrame(i, i / 30, Picture(np.full((8, 8, 3), 9, np.uint8)))
            i += 1


def _drops_beside_a_live_stream(name: str, opener: Opener, items: list, **kwargs) -> list[str]:
    """A live 30-fps stream alone on one frame worker (the service's lane size); once its
    frames flow, another stream joins that worker and plays to its end: whose frames were
    lost, one name a frame."""
    pool = FramePool(1)  # LANE_FRAMES, as served
    live = _Live()
    drops: list[str] = []
    seen: list[FrameItem] = []
    first, _ = _worker("live", live, pool, seen, on_drop=lambda: drops.append("live"))
    first.start()
    wait_until(lambda: len(seen) >= 5, 5.0, "the live stream's frames", 0.01)
    other, states = _worker(name, opener, pool, items, on_drop=lambda: drops.append(name),
                            **kwargs)  # fmt: skip
    other.start()
    assert other.join(5.0) and states[-1] == SourceState.STOPPED, other.reason
    time.sleep(0.1)
    live.stop.set()
    assert first.join(5.0)
    pool.stop()
    return drops


def test_a_stream_joining_a_frame_worker_costs_the_streams_it_serves_no_frame():
    """A stream's face tracker is built (MediaPipe's runtime loads its model: a third of
    a second and more) by its own reader thread. Before: the pool worker built it on the
    stream's first frame, and every other stream that worker served lost that long of
    frames (about ten each)."""

    def slow_tracker() -> FaceTracker:
        time.sleep(0.4)
        return FaceTracker(_OneFace(), detect_every=1)

    joined: list[FrameItem] = []
    drops = _drops_beside_a_live_stream("new", _Live(10), joined, tracker_factory=slow_tracker)
    assert drops == []  # neither stream lost a frame while the new one got ready
    assert len(joined) == 10


class _StallsOnce(_OneFace):
    """A detector whose first call takes 100 ms (a slow detection, a collector's pause)."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.1)
        return super().detect(rgb)


def test_a_frame_worker_held_up_a_tenth_of_a_second_costs_a_live_stream_no_frame():
    """A worker that serves many streams is late for one of them now and then: another
    stream's frame took long, or the interpreter paused. Before: a lane of two frames (66 ms
    at 30 fps) lost frames to every such tenth of a second (at 14 streams on this machine,
    24 and 46 frames in 15 s; with lanes of four, 1 and 7)."""
    stalled: list[FrameItem] = []
    assert _drops_beside_a_live_stream("other", _Live(3), stalled, detector=_StallsOnce()) == []
    assert len(stalled) == 3
