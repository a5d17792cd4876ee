"""Verdicts per second the Kafka sink delivers: one acknowledged write at a time vs pipelined.

    .venv/bin/python scripts/kafka_sink_rate.py [--bootstrap HOST:PORT] [--verdicts 50000]

The same measurement as ``deepfake-monitor bench --parts sink --kafka HOST:PORT``; without
--bootstrap it starts the tests' local Apache Kafka (KRaft) in a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.bench import format_report, sink_bench  # noqa: E402
from tests.servers.kafka import KafkaBroker  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--verdicts", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args()
    if args.bootstrap:
        result = sink_bench(args.bootstrap, verdicts=args.verdicts)
    else:
        with KafkaBroker(Path(tempfile.mkdtemp()) / "kafka") as broker:
            result = sink_bench(broker.bootstrap, verdicts=args.verdicts)
    print(format_report({"sink": result}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
