"""Apache Kafka for the tests: KRaft, one node acting as broker and controller, on loopback.

The jars come from Maven Central (``tests/kafka/pom.xml``, fetched by ``make setup`` into
``$DFM_CACHE/kafka-<version>``). The storage is formatted once with Kafka's own
``StorageTool``; :meth:`KafkaBroker.stop` and :meth:`KafkaBroker.start` may be called again
to take the broker away and bring it back with its data and ports.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kafka_jars() -> Path:
    pom = (REPO / "tests" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>(.+?)</kafka.version>", pom)
    assert match, "tests/kafka/pom.xml names no kafka.version"
    cache = Path(os.environ.get("DFM_CACHE", Path.home() / ".cache" / "deepfake-monitor"))
    jars = cache / f"kafka-{match.group(1)}"
    assert (jars / ".complete").is_file(), f"Kafka jars missing in {jars}: run 'make setup'"
    return jars


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KafkaBroker:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = _free_port()
        self.controller_port = _free_port()
        self.jars = kafka_jars()
        self.proc: subprocess.Popen[bytes] | None = None
        self._formatted = False
        # The port clients are told to use: another one puts a proxy (Toxiproxy) between
        # every client and the broker, since clients follow the advertised address.
        self.advertised_port = self.port

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def _config(self) -> Path:
        self.data.mkdir(parents=True, exist_ok=True)
        props = self.data / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.advertised_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data / 'logs'}",
                    "num.partitions=4",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                ]
            )
            + "\n"
        )
        return props

    def _java(self, *args: str) -> list[str]:
        return ["java", "-Xmx512m", "-cp", f"{self.jars}/*", *args]

    def start(self, timeout: float = 60) -> KafkaBroker:
        props = self._config()
        if not self._formatted:
            cluster = "-"
            while not cluster[0].isalnum():  # an id starting with '-' reads as an option
                cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props)),
                check=True,
                capture_output=True,
                timeout=120,
            )
            self._formatted = True
        log = open(self.data / "broker.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self._java("kafka.Kafka", str(props)), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Kafka exited {self.proc.returncode}; see {self.data}/broker.log"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"Kafka did not listen on {self.bootstrap} within {timeout:g} s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s); its data stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    # A throw-away local broker for `deepfake-monitor bench --parts sink --kafka ...` and
    # for trying the service by hand: python -m tests.servers.kafka (Ctrl-C stops it).
    import tempfile

    with KafkaBroker(Path(tempfile.mkdtemp(prefix="dfm-kafka-"))) as broker:
        print(f"Kafka (KRaft) listening on {broker.bootstrap}; Ctrl-C stops it", flush=True)
        try:
            while broker.proc is not None and broker.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
