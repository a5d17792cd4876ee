"""Verdicts per second the Kafka sink delivers to a broker (acks=all, idempotent, in order).

    .venv/bin/python scripts/kafka_sink_rate.py [--bootstrap HOST:PORT] [--count 3000]

Without --bootstrap it starts the tests' local Apache Kafka (KRaft) in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.config import load_settings  # noqa: E402
from streamer.metrics import Metrics  # noqa: E402
from streamer.sinks.kafka import KafkaSink  # noqa: E402
from streamer.verdict import ModelRef, Verdict, WindowSpan, utc_now_iso  # noqa: E402
from tests.servers.kafka import KafkaBroker  # noqa: E402


async def measure(bootstrap: str, count: int) -> float:
    settings = load_settings(kafka_bootstrap=bootstrap, sink="kafka", kafka_buffer=count)
    sink = KafkaSink(settings, Metrics())
    await sink.start()
    model = ModelRef(name="resnext50-lstm", version="rate-test", sha256=None)
    verdicts = [
        Verdict(
            stream_id="rate",
            session="00000000-0000-0000-0000-000000000000",
            seq=i,
            window=WindowSpan(start_pts_s=i, end_pts_s=i + 5, frames=150, fps=30.0),
            score=0.5,
            smoothed_score=0.5,
            label="REAL",
            threshold=0.5,
            faces=[],
            model=model,
            latency_ms=1.0,
            emitted_at=utc_now_iso(),
        )  # fmt: skip
        for i in range(count)
    ]
    await sink.publish(verdicts[0])
    await sink.flush(60)  # connected and writing
    start = time.perf_counter()
    for v in verdicts[1:]:
        await sink.publish(v)
    await sink.flush(600)
    elapsed = time.perf_counter() - start
    await sink.stop()
    return (count - 1) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    if args.bootstrap:
        rate = asyncio.run(measure(args.bootstrap, args.count))
    else:
        with KafkaBroker(Path(tempfile.mkdtemp()) / "kafka") as broker:
            asyncio.run(measure(broker.bootstrap, 20))  # topic creation, warm-up
            rate = asyncio.run(measure(broker.bootstrap, args.count))
    print(f"{args.count} verdicts, {rate:.0f} verdicts/s delivered (acks=all, one in flight)")


if __name__ == "__main__":
    main()
