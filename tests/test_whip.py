"""WebRTC ingest over WHIP, with real aiortc publishers on loopback."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import synthetic_clip
from tests.servers import GstWhipPublisher, Service, WhipPublisher, thread_count, wait_until

ENV = {
    "DFM_FPS": "10",
    "DFM_WINDOW_FRAMES": "20",
    "DFM_HOP_FRAMES": "10",
    "DFM_WHIP_TIMEOUT_S": "3",
}


@pytest.fixture(scope="module")
def face_clip(photos_dir: Path) -> Path:
    # FAKE astronaut: one face
    return synthetic_clip(
        1, "FAKE", videos=2, frames=150, seed=4, identities=["astronaut", "sample3"]
    )


def gapless(verdicts: list[dict]) -> bool:
    seqs = [v["seq"] for v in verdicts]
    return seqs == list(range(len(seqs))) and len({v["session"] for v in verdicts}) == 1


def sessions(svc: Service, stream_id: str) -> int:
    return len({v["session"] for v in svc.verdicts(stream_id)})


def listed(svc: Service) -> set[str]:
    return {s["id"] for s in svc.client.get("/v1/streams").json()["streams"]}


def test_publish_verdicts_then_delete_ends_the_stream(face_clip, tmp_path):
    # The session ends after DFM_WHIP_TIMEOUT_S without a frame. Twice in full runs it
    # ended 'publisher stopped sending' (3 s without a frame) before any verdict, a cause
    # not pinned down (not seen alone in 7 runs); this test is about DELETE, so 10 s.
    with Service({**ENV, "DFM_WHIP_TIMEOUT_S": "10"}, tmp_path) as svc:
        url = f"http://127.0.0.1:{svc.port}/v1/whip/phone-1"
        pub = WhipPublisher(url, face_clip).start()
        try:
            assert pub.location and pub.location.startswith(f"{url}/")
            # 120 s: on a busy machine the first seconds (the model warming up) can push the
            # node into shedding, and 3 verdicts then take several times longer.
            try:
                wait_until(lambda: len(svc.verdicts("phone-1")) >= 3, 120, "WHIP verdicts")
            except AssertionError as exc:
                status = svc.client.get("/v1/streams").text
                pub.kill()
                raise AssertionError(
                    f"{exc}\nstreams: {status}\nservice log: {svc.log()[-4000:]}"
                ) from None
            verdicts = svc.verdicts("phone-1")
            assert gapless(verdicts) and any(v["faces"] for v in verdicts)
            assert svc.client.get("/v1/streams/phone-1").json()["state"] == "running"
            # End-to-end: from the publisher sending a window's last frame to its verdict.
            delays = [
                datetime.fromisoformat(v["emitted_at"].replace("Z", "+00:00")).timestamp()
                - (pub.first_sent + v["window"]["end_pts_s"])
                for v in verdicts
            ]
            print(f"WHIP end-to-end delay s: {[round(d, 3) for d in delays]}")
            # Same machine, same clock: never before the frame was sent, and a verdict
            # this late would mean frames queue up somewhere (1.5-1.8 s measured here,
            # the first one with the model's warm-up).
            assert all(-0.5 < d < 10 for d in delays), delays
            assert pub.stop() == 0
        finally:
            pub.kill()
        wait_until(lambda: "phone-1" not in listed(svc), 10, "the stream to go")
        assert svc.metric("deepfake_frames_decoded_total", stream="phone-1") is None
        assert svc.terminate() == 0


def test_two_publishers_give_independent_verdicts(face_clip, tmp_path):
    with Service(ENV, tmp_path) as svc:
        base = f"http://127.0.0.1:{svc.port}/v1/whip"
        with WhipPublisher(f"{base}/a", face_clip), WhipPublisher(f"{base}/b", face_clip):
            wait_until(
                lambda: len(svc.verdicts("a")) >= 2 and len(svc.verdicts("b")) >= 2, 60, "both"
            )
            a, b = svc.verdicts("a"), svc.verdicts("b")
            assert gapless(a) and gapless(b) and a[0]["session"] != b[0]["session"]
            assert listed(svc) == {"a", "b"}
        assert svc.terminate() == 0


def test_a_vanished_publisher_is_cleaned_up(face_clip, tmp_path):
    with Service(ENV, tmp_path) as svc:
        url = f"http://127.0.0.1:{svc.port}/v1/whip/gone"
        idle = []
        for round_ in (1, 2):
            with WhipPublisher(url, face_clip) as pub:
                wait_until(
                    lambda n=round_: sessions(svc, "gone") == n, 60, "this session's verdicts"
                )
                pub.kill()  # no DELETE: the publisher just disappears
                wait_until(lambda: "gone" not in listed(svc), 20, "the stream to be removed")
            wait_until(lambda: svc.metric("deepfake_streams_active") == 0, 10, "no streams")
            idle.append(thread_count(svc.proc.pid))
        # Publishing again under the same id worked, and nothing piled up in between.
        assert idle[1] <= idle[0], idle
        assert sessions(svc, "gone") == 2
        assert svc.terminate() == 0


def test_bad_whip_requests_get_a_4xx_with_a_reason(face_clip, tmp_path):
    env = {**ENV, "DFM_API_TOKEN": "tok"}
    auth = {"Authorization": "Bearer tok"}
    with Service(env, tmp_path) as svc:
        base = f"http://127.0.0.1:{svc.port}/v1/whip"
        c = svc.client
        sdp = {"Content-Type": "application/sdp", **auth}

        def post(sid: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
            return c.post(f"/v1/whip/{sid}", content=body, headers=headers)

        r = c.options("/v1/whip/x")
        assert r.status_code == 204 and r.headers["accept-post"] == "application/sdp"
        r = post("x", b"v=0\r\n", {"Content-Type": "application/sdp"})
        assert r.status_code == 401 and "token" in r.json()["error"]
        r = post("x", b"", sdp)
        assert r.status_code == 400 and "empty" in r.json()["error"]
        r = post("x", b"v=0\r\n", {"Content-Type": "text/plain", **auth})
        assert r.status_code == 415 and "application/sdp" in r.json()["error"]
        r = post("x", b"hello, this is not SDP at all", sdp)
        assert r.status_code == 422 and "m=video" in r.json()["error"]
        audio_only = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
        )
        r = post("x", audio_only.encode(), sdp)
        assert r.status_code == 422 and "video" in r.json()["error"]
        broken = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
        r = post("x", broken.encode(), sdp)
        assert 400 <= r.status_code < 500 and r.json()["error"]
        r = post("x", b"v=0\r\n" + b"a=x\r\n" * 20000, sdp)
        assert r.status_code == 413
        with WhipPublisher(f"{base}/live", face_clip, token="tok"):
            wait_until(lambda: len(svc.verdicts("live")) >= 1, 60, "verdicts")
            second = WhipPublisher(f"{base}/live", face_clip, token="tok")
            with pytest.raises(AssertionError, match="REFUSED 409"):
                second.start()
            before = len(svc.verdicts("live"))
            wait_until(lambda: len(svc.verdicts("live")) > before, 30, "the live one to go on")
        assert c.get("/healthz").status_code == 200
        assert svc.terminate() == 0


def test_a_gstreamer_webrtcbin_publisher_gets_verdicts(live_clip, tmp_path):
    """GStreamer's WebRTC stack (libnice, OpenSSL DTLS with an RSA certificate).

    It used to fail its DTLS handshake with "no shared cipher": the service answered as
    the DTLS client, whose hello lists only ECDSA suites. It now answers as the server.
    """
    with Service(ENV, tmp_path) as svc:
        url = f"http://127.0.0.1:{svc.port}/v1/whip/gst-1"
        with GstWhipPublisher(url, live_clip) as pub:
            wait_until(lambda: pub.said("CONNECTED") or pub.said("FAILED"), 30, "the publisher")
            assert pub.said("CONNECTED"), pub.lines
            assert pub.said("ANSWER") == "ANSWER a=setup:passive"
            wait_until(lambda: len(svc.verdicts("gst-1")) >= 3, 60, "verdicts from GStreamer")
            verdicts = svc.verdicts("gst-1")
            assert gapless(verdicts) and any(v["faces"] for v in verdicts)
            assert pub.stop() == 0 and not pub.said("DELETE failed"), pub.lines
        wait_until(lambda: "gst-1" not in listed(svc), 10, "the stream to end on DELETE")
        assert svc.terminate() == 0
