"""The URL policy (streamer/urls.py) and the resampler's discontinuities: pure logic."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import UrlRejected
from streamer.sources.decode import resample
from streamer.urls import NetPolicy, parse_nets, parse_source_url, redact


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("rtsp://127.0.0.1:6379/a\r\nSET pwned 1\r\n", "characters"),
        ("rtsp://cam/a b", "characters"),
        ("rtsp://cam/a\tb", "characters"),
        ("rtsp://cam/\u00e9", "characters"),
        ("rtsp://u:p@cam:99999/x", "port"),
        ("rtsp://cam:0/x", "port"),
        ("rtsp://cam:/x", "port"),
        ("rtsp://cam:abc/x", "port"),
        ("rtsp:///x", "host"),
        ("rtsp://u:p@/x", "host"),
        ("rtsp://@cam/x", "userinfo"),
        ("rtsp:cam/x", "form"),
        ("rtsp://bad_host!/x", "host"),
        ("http://cam/x.mp4", "scheme"),
        ("concat:/a|/b", "scheme"),
        ("subfile:,start,1,end,2,:/etc/passwd", "scheme"),
        ("data:video/mp4;base64,AAAA", "scheme"),
        ("file:///tmp/x.mp4", "scheme"),
        ("rtsp://169.254.169.254/latest", "destination"),
        ("rtsp://[fe80::1]/x", "destination"),
        ("", "empty"),
    ],
)
def test_stream_urls_that_break_a_rule_are_refused_naming_it(url, rule):
    with pytest.raises(UrlRejected) as info:
        parse_source_url(url, policy=NetPolicy())
    assert info.value.rule == rule
    assert "hunter2" not in info.value.reason and "\r" not in info.value.reason


def test_good_urls_pass_with_the_options_that_pin_ffmpeg():
    url = parse_source_url("rtsp://admin:hunter2@cam.local:8554/live?x=1", policy=NetPolicy())
    assert (url.host, url.port, url.password) == ("cam.local", 8554, "hunter2")
    assert url.redacted == "rtsp://admin:***@cam.local:8554/live?x=1"
    opts = url.ffmpeg_options()
    assert opts["protocol_whitelist"] == "rtsp,tcp" and opts["rtsp_transport"] == "tcp"
    assert "rtsp" in opts["format_whitelist"] and "tty" not in opts["format_whitelist"]
    assert url.scrub("cannot read rtsp://admin:hunter2@cam.local:8554/live: hunter2") == (
        "cannot read rtsp://admin:***@cam.local:8554/live: ***"
    )
    f = parse_source_url("file:///data/a%20b.mp4", allow_file=True)
    assert f.local_path == "/data/a b.mp4" and f.ffmpeg_options()["protocol_whitelist"] == "file"
    assert parse_source_url("https://h/v.mp4", kind="scan").scheme == "https"
    # scan takes local paths as typed, spaces included, but no control characters
    assert parse_source_url("my clip.mp4", kind="scan").local_path == "my clip.mp4"
    with pytest.raises(UrlRejected):
        parse_source_url("a\nb.mp4", kind="scan")


def test_the_destination_policy_reads_allow_and_deny_lists():
    policy = NetPolicy(allow=parse_nets(["10.0.0.0/8"], "x"), deny=parse_nets(["10.9.0.0/16"], "x"))
    assert parse_source_url("rtsp://10.1.2.3/x", policy=policy).host == "10.1.2.3"
    for bad in ("rtsp://10.9.0.1/x", "rtsp://192.168.1.1/x"):
        with pytest.raises(UrlRejected, match="DFM_SOURCE_(DENY|ALLOW)_NETS"):
            parse_source_url(bad, policy=policy)
    with pytest.raises(ValueError, match="CIDR"):
        parse_nets(["10.0.0.0/33"], "DFM_SOURCE_DENY_NETS")
    # Names are resolved when the source connects; every address must pass.
    url = parse_source_url("rtsp://localhost:8554/x")
    url.check_destination(NetPolicy())
    with pytest.raises(UrlRejected, match="DENY"):
        url.check_destination(NetPolicy(deny=parse_nets(["127.0.0.0/8", "::1/128"], "x")))


def test_redact_masks_a_password_in_any_text_and_never_raises():
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact("rtsp://u:p@cam:99999/x") == "rtsp://u:***@cam:99999/x"
    assert redact("rtsp://cam/live") == "rtsp://cam/live"


def _frames(times):
    return [(t, np.full((2, 2, 3), i, np.uint8)) for i, t in enumerate(times)]


def test_a_huge_gap_is_a_discontinuity_not_millions_of_repeated_frames():
    out = list(resample(_frames([0.0, 0.1, 3_000_000.0, 3_000_000.1]), 10.0, max_gap_s=5.0))
    assert len(out) == 4
    assert [f.restart for f in out] == [False, False, True, False]
    assert [round(f.pts_s, 3) for f in out] == [0.0, 0.1, 0.2, 0.3]  # output time runs on
    assert [int(f.rgb[0, 0, 0]) for f in out] == [0, 1, 2, 3]


def test_a_jump_back_restarts_the_clock_at_once():
    out = list(resample(_frames([100.0, 100.1, 100.2, 5.0, 5.1]), 10.0, max_gap_s=5.0))
    assert len(out) == 5 and [f.restart for f in out].count(True) == 1 and out[3].restart
    assert [int(f.rgb[0, 0, 0]) for f in out] == [0, 1, 2, 3, 4]


def test_without_a_gap_limit_short_gaps_are_filled_as_before():
    out = list(resample(_frames([0.0, 0.5]), 10.0, max_gap_s=5.0))
    assert len(out) == 6 and not any(f.restart for f in out)
