"""The overload shedder's control law (pure logic; the service test is in test_supervision)."""

from __future__ import annotations

from streamer.shedding import CALM_INTERVALS, PROBE_INTERVALS, LoadShedder, Pacer, Sample


def test_no_loss_means_no_shedding():
    shed = LoadShedder(max_stride=8)
    for _ in range(50):
        assert shed.observe(Sample(analysed=300, dropped=0)) == 1


def test_loss_raises_the_stride_to_what_the_node_managed():
    shed = LoadShedder(max_stride=8)
    # 600 frames offered, 200 analysed: the node manages a third of the load, so the
    # stride it needs is 600 / (0.85 * 200) = 3.53 -> 3.75 (quarters), reached in steps
    # that at most double.
    assert shed.observe(Sample(analysed=200, dropped=400)) == 2
    assert shed.observe(Sample(analysed=150, dropped=150)) == 2  # settling: not judged
    assert shed.observe(Sample(analysed=150, dropped=150)) == 4
    # 3x the load the node sustains: 3.75 after a doubling, not 4 (quarters, not wholes).
    three = LoadShedder(max_stride=8)
    three.observe(Sample(analysed=100, dropped=200))  # 2: doubling at most
    three.observe(Sample(analysed=100, dropped=50))  # settling
    assert three.observe(Sample(analysed=100, dropped=50)) == 3.75  # 150 x 2 / 85 = 3.53


def test_a_small_loss_is_tolerated_and_the_stride_is_capped():
    shed = LoadShedder(max_stride=3)
    assert shed.observe(Sample(analysed=1000, dropped=20)) == 1  # 2 % loss
    for _ in range(4):
        shed.observe(Sample(analysed=10, dropped=990))
    assert shed.stride == 3


def test_stride_1_max_disables_shedding():
    shed = LoadShedder(max_stride=1)
    assert not shed.enabled
    assert shed.observe(Sample(analysed=10, dropped=990)) == 1


def test_the_interval_after_a_change_is_not_judged():
    shed = LoadShedder(max_stride=8)
    assert shed.observe(Sample(analysed=200, dropped=200)) == 2
    # The queues still drain frames taken at the old stride: no second step on that.
    assert shed.observe(Sample(analysed=200, dropped=200)) == 2
    assert shed.observe(Sample(analysed=200, dropped=200)) > 2


def test_steps_down_when_calm_and_the_lower_stride_fits():
    shed = LoadShedder(max_stride=8)
    shed.observe(Sample(analysed=300, dropped=300))  # capacity 300 per interval
    stride = shed.stride
    # Streams left: now far below capacity at this stride.
    strides = [shed.observe(Sample(analysed=50, dropped=0)) for _ in range(CALM_INTERVALS + 1)]
    # Straight down to what fits: 50 x 2 / (0.85 x 300) = 0.39, so no shedding at all.
    assert stride == 2 and strides[-1] == 1


def test_at_equilibrium_it_holds_then_probes_a_fifth_down():
    shed = LoadShedder(max_stride=8)
    shed.observe(Sample(analysed=300, dropped=300))
    stride = shed.stride
    offered = int(600 / stride)  # what the new stride brings it to: under 0.85 x 300
    # One settling interval, then PROBE_INTERVALS calm ones.
    held = [shed.observe(Sample(analysed=offered, dropped=0)) for _ in range(PROBE_INTERVALS + 1)]
    assert held[:-1] == [stride] * PROBE_INTERVALS
    assert held[-1] == 1.5  # 2 x 0.8 = 1.6, on the grid of quarters below it


def test_an_idle_node_stops_shedding():
    shed = LoadShedder(max_stride=8)
    shed.observe(Sample(analysed=100, dropped=300))
    assert shed.stride > 1
    # Every stream ended: a stream that starts later must not inherit the old stride.
    strides = [shed.observe(Sample(analysed=0, dropped=0)) for _ in range(CALM_INTERVALS)]
    assert strides[-1] == 1


def test_fractional_strides_analyse_evenly_spread_frames():
    cases = {1.0: [1] * 6, 1.5: [0, 1, 1] * 4, 2.0: [0, 1] * 6, 1.25: [0, 1, 1, 1, 1] * 2,
             3.5: [0, 0, 0, 1, 0, 0, 1] * 2}  # fmt: skip
    for stride, expected in cases.items():
        pacer = Pacer()
        assert [int(pacer.take(stride)) for _ in expected] == expected, stride


# -- the supervision pattern every background loop runs under (streamer/tasks.py) --------


def test_a_failing_loop_is_restarted_counted_then_given_up():
    import asyncio

    from streamer.metrics import Metrics
    from streamer.tasks import GIVE_UP_AFTER, Backoff, Supervisor

    async def main() -> tuple[int, list[str], float]:
        metrics = Metrics()
        sup = Supervisor(metrics.task_restarts, Backoff(0.001, 0.002))
        runs = 0

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            raise RuntimeError("boom")

        task = sup.spawn("flaky", flaky)
        await asyncio.wait_for(task, 5)
        restarts = metrics.task_restarts.labels("flaky")._value.get()
        return runs, sup.problems(), restarts

    runs, problems, restarts = asyncio.run(main())
    assert runs == GIVE_UP_AFTER and restarts == GIVE_UP_AFTER
    assert problems == [
        f"the flaky task failed {GIVE_UP_AFTER} times in a row: RuntimeError('boom')"
    ]


def test_a_loop_that_recovers_keeps_running_and_cancel_stops_it():
    import asyncio

    from streamer.tasks import Backoff, Supervisor

    async def main() -> tuple[int, list[str], bool]:
        sup = Supervisor(None, Backoff(0.001, 0.002))
        runs = 0
        beating = asyncio.Event()

        async def once_flaky() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise OSError("blip")
            beating.set()
            await asyncio.sleep(3600)

        task = sup.spawn("loop", once_flaky)
        await asyncio.wait_for(beating.wait(), 5)
        await sup.cancel("loop")
        return runs, sup.problems(), task.cancelled()

    runs, problems, cancelled = asyncio.run(main())
    assert runs == 2 and problems == [] and cancelled


def test_a_burst_of_frames_is_not_read_as_the_nodes_throughput():
    """Seen in the service test: the streams took 60 frames in one interval (a batch's
    features landed at once) and about 10 in the others; the burst, read as throughput,
    sent the stride from 5.75 to 1.25 and the inboxes dropped a third of the frames."""
    shed = LoadShedder(max_stride=8)
    # Start-up (per 1 s interval: frames taken, frames dropped), as measured.
    for analysed, dropped in ((0, 30), (0, 30), (0, 18), (60, 12)):
        shed.observe(Sample(analysed, dropped))
    high = shed.stride
    strides = []
    for analysed in (0, 10, 10, 0, 10, 10, 10, 0, 10, 10):  # about 10 a second, calm
        strides.append(shed.observe(Sample(analysed, 0)))
    # The node manages about 10 a second: every stride it tries keeps the load near that.
    assert min(strides) >= high / 2, (high, strides)
    steps = [b / a for a, b in zip([high, *strides], strides, strict=False)]
    assert min(steps) >= 0.5, strides  # never more than halved in one step
