"""Fuzzing what faces the network, bounded, against a real ``serve``.

* the HTTP API, from its own OpenAPI document (schemathesis, valid and invalid data);
* SDP offers to ``POST /v1/whip/{id}`` (hypothesis: real offers, mutated and random);
* truncated and bit-flipped videos through ``POST /v1/scan``.

(Kafka video messages are fuzzed in ``test_kafka.py``, beside the broker.)

After each run: no 5xx, ``/readyz`` still answers, threads and event-loop tasks back to
where they were, RSS within bounds. The counts are printed. ``DFM_TEST_FUZZ_SCALE=10``
runs ten times as many cases (outside ``make test``).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.servers import Service, wait_until
from tests.test_security import rss_mb, write_video

SCALE = float(os.environ.get("DFM_TEST_FUZZ_SCALE", "1"))
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {
    "DFM_FPS": "10",
    "DFM_WINDOW_FRAMES": "20",
    "DFM_HOP_FRAMES": "10",
    "DFM_API_TOKEN": TOKEN,
    "DFM_LOG_LEVEL": "WARNING",
    # Generated stream URLs may only ever reach this machine.
    "DFM_SOURCE_ALLOW_NETS": "127.0.0.0/8,::1/128",
    "DFM_SCAN_MAX_BYTES": str(1 << 20),
    "DFM_MAX_STREAMS": "4",
    "DFM_WHIP_TIMEOUT_S": "2",
}


def run_settings(count: int) -> settings:
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


class Health:
    """What must hold after a fuzz run, measured against a baseline taken before it."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.rss = rss_mb(svc.proc.pid)
        self.threads = threads(svc.proc.pid)
        self.tasks = svc.metric("deepfake_event_loop_tasks")

    def check(self, what: str, count: int, codes: dict[int, int]) -> None:
        svc = self.svc
        print(f"fuzz {what}: {count} cases, statuses {dict(sorted(codes.items()))}")
        assert not [c for c in codes if c >= 500], codes
        assert svc.client.get("/readyz").status_code == 200
        # Threads of finished work end; the default executor keeps at most 6 warm.
        wait_until(lambda: threads(svc.proc.pid) <= self.threads + 6, 30, f"{what}: threads")
        wait_until(
            lambda: svc.metric("deepfake_event_loop_tasks") <= self.tasks + 2, 30, f"{what}: tasks"
        )
        grown = rss_mb(svc.proc.pid) - self.rss
        print(f"fuzz {what}: RSS {self.rss:.0f} MB -> +{grown:.0f} MB")
        assert grown < 300, grown


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    with Service(ENV, tmp_path_factory.mktemp("fuzz")) as svc:
        yield svc
        svc.terminate()


def test_the_http_api_from_its_openapi_document(service):
    import schemathesis
    from schemathesis import GenerationMode

    base = f"http://127.0.0.1:{service.port}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=AUTH)
    # Server-Sent Events never end: a request that reads it whole would wait forever.
    schema = schema.exclude(path="/v1/events")
    strategy = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(
        GenerationMode.NEGATIVE
    )
    health = Health(service)
    codes: dict[int, int] = {}
    count = int(1000 * SCALE)

    @run_settings(count)
    @given(case=strategy)
    def call(case) -> None:
        response = case.call(base_url=base, headers=AUTH, timeout=15)
        codes[response.status_code] = codes.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.method, case.path, response.text[:300])

    started = time.monotonic()
    call()
    print(f"fuzz http: {time.monotonic() - started:.0f} s")
    assert sum(codes.values()) >= count
    for stream in service.client.get("/v1/streams", headers=AUTH).json()["streams"]:
        service.client.delete(f"/v1/streams/{stream['id']}", headers=AUTH)
    health.check("http", sum(codes.values()), codes)


OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=msid-semantic: WMS
m=video 9 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:abcd
a=ice-pwd:abcdefghijklmnopqrstuvwx
a=ice-options:trickle
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:0
a=sendonly
a=rtcp-mux
a=rtpmap:96 VP8/90000
a=rtpmap:97 H264/90000
a=fmtp:97 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f
a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host
""".format(fingerprint=":".join(["AA", "BB", "CC", "DD", "EE", "FF", "00", "11"] * 4))


def sdp_bodies() -> st.SearchStrategy[bytes]:
    """Real offers with lines dropped, duplicated, cut or garbled; and plain noise."""
    lines = OFFER.splitlines()
    junk = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(out) - 1))
            op = draw(st.sampled_from(["drop", "dup", "cut", "junk", "value", "number"]))
            if op == "drop" and len(out) > 1:
                out.pop(i)
            elif op == "dup":
                out.insert(i, out[i])
            elif op == "cut":
                out[i] = out[i][: draw(st.integers(0, len(out[i])))]
            elif op == "junk":
                out.insert(i, draw(junk))
            elif op == "value":
                key = out[i].split(":", 1)[0]
                out[i] = f"{key}:{draw(junk)}"
            else:
                out[i] = out[i].replace("9", str(draw(st.integers(-(2**40), 2**40))), 1)
        sep = draw(st.sampled_from(["\r\n", "\n"]))
        return sep.join(out) + sep

    return st.one_of(
        mutated().map(str.encode),
        st.binary(max_size=2048),
        (junk.map(lambda t: "v=0\r\nm=video " + t)).map(str.encode),
    )


def test_sdp_offers_to_whip(service):
    health = Health(service)
    codes: dict[int, int] = {}
    count = int(500 * SCALE)  # each valid offer builds a peer connection: the slow one
    client = httpx.Client(base_url=f"http://127.0.0.1:{service.port}", timeout=30)
    sessions: list[str] = []

    @run_settings(count)
    @given(body=sdp_bodies())
    def offer(body: bytes) -> None:
        headers = {**AUTH, "Content-Type": "application/sdp"}
        r = client.post("/v1/whip/fuzz", content=body, headers=headers)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body[:300], r.text[:300])
        if r.status_code == 201:
            sessions.append(r.headers["location"])
            client.delete(r.headers["location"], headers=AUTH)

    started = time.monotonic()
    offer()
    print(f"fuzz sdp: {time.monotonic() - started:.0f} s, {len(sessions)} answered")
    client.close()
    assert sum(codes.values()) >= count
    health.check("sdp", sum(codes.values()), codes)


def test_truncated_and_bit_flipped_videos_through_scan(service, tmp_path):
    base = write_video(tmp_path / "base.mkv", [i / 10 for i in range(12)], size=(96, 64))
    mp4 = tmp_path / "base.mp4"
    import av

    with av.open(str(base)) as src, av.open(str(mp4), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    seeds = [base.read_bytes(), mp4.read_bytes()]
    rng = random.Random(16)
    client = httpx.Client(base_url=f"http://127.0.0.1:{service.port}", timeout=60)
    # Warm the scan path once, so the baseline includes its threads.
    client.post("/v1/scan?name=warm.mkv", content=seeds[0], headers=AUTH)
    health = Health(service)
    codes: dict[int, int] = {}
    outcomes: dict[str, int] = {}
    count = int(300 * SCALE)
    started = time.monotonic()
    for i in range(count):
        data = bytearray(rng.choice(seeds))
        if i % 3 == 0:
            data = data[: rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randint(1, 24)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        r = client.post(f"/v1/scan?name=fuzz{i}.mkv", content=bytes(data), headers=AUTH)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        assert r.status_code < 500, r.text[:300]
        if r.status_code == 200:
            last = r.text.strip().splitlines()[-1]
            outcome = "done" if '"event":"done"' in last else "error"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    client.close()
    print(f"fuzz scan: {time.monotonic() - started:.0f} s, scans ended {outcomes}")
    health.check("scan", count, codes)
