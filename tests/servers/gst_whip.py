#!/usr/bin/python3
"""A WHIP publisher on GStreamer's own WebRTC stack (webrtcbin, libnice, OpenSSL DTLS).

Run with the system python3 (python3-gi). It publishes VIDEO (an MP4 with H.264) as VP8
to WHIP_URL the way GStreamer-based encoders and media servers do: offer with
``a=setup:actpass``, all ICE candidates gathered first, POST, set the answer.

Prints ``PUBLISHING <location>`` once the answer is set and ``CONNECTED`` once the peer
connection is up (DTLS included); ``FAILED <why>`` and exit 1 if it fails. A line (or
EOF) on stdin ends the session with a WHIP ``DELETE``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("video")
    parser.add_argument("--token")
    args = parser.parse_args()
    Gst.init(None)
    loop = GLib.MainLoop()
    state = {"location": None, "code": 0, "tries": 0}

    pipeline = Gst.parse_launch(
        "webrtcbin name=pc bundle-policy=max-bundle "
        f'filesrc location="{args.video}" ! qtdemux ! h264parse ! avdec_h264 ! videoconvert '
        "! videoscale ! video/x-raw,width=320,height=240 ! clocksync "
        "! vp8enc deadline=1 target-bitrate=600000 keyframe-max-dist=30 "
        "! rtpvp8pay pt=96 ! application/x-rtp,media=video,encoding-name=VP8,payload=96 ! pc."
    )
    pc = pipeline.get_by_name("pc")

    def headers(extra: dict[str, str]) -> dict[str, str]:
        if args.token:
            extra["Authorization"] = f"Bearer {args.token}"
        return extra

    def fail(why: str) -> None:
        print(f"FAILED {why}", flush=True)
        state["code"] = 1
        loop.quit()

    def post_offer() -> bool:
        offer = pc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(
            args.url,
            data=offer.encode(),
            method="POST",
            headers=headers({"Content-Type": "application/sdp"}),
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = response.read().decode()
                state["location"] = urllib.parse.urljoin(args.url, response.headers["Location"])
        except Exception as exc:  # noqa: BLE001 - one line for the test to read
            fail(f"POST: {exc}")
            return False
        ok, sdp = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        pc.emit("set-remote-description", desc, Gst.Promise.new())
        setup = next((ln for ln in answer.splitlines() if ln.startswith("a=setup:")), "none")
        print(f"PUBLISHING {state['location']}", flush=True)
        print(f"ANSWER {setup.strip()}", flush=True)
        return False

    def on_gathering(element: Gst.Element, _pspec: object) -> None:
        if (
            element.get_property("ice-gathering-state")
            == GstWebRTC.WebRTCICEGatheringState.COMPLETE
        ):
            GLib.idle_add(post_offer)

    def on_offer(promise: Gst.Promise) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:  # caps not there yet: webrtcbin asks again once they are
            state["tries"] += 1
            if state["tries"] > 50:
                GLib.idle_add(fail, f"create-offer: {reply.to_string() if reply else 'no reply'}")
            else:
                GLib.timeout_add(100, lambda: on_negotiation(pc) and False)
            return
        pc.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation(element: Gst.Element) -> None:
        element.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer))

    def on_connection(element: Gst.Element, _pspec: object) -> None:
        value = element.get_property("connection-state")
        if value == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            print("CONNECTED", flush=True)
        elif value == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            GLib.idle_add(fail, "peer connection failed")

    def on_message(_bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            err, _ = message.parse_error()
            fail(f"pipeline: {err.message}")
        elif message.type == Gst.MessageType.EOS:
            print("EOS", flush=True)

    pc.connect("on-negotiation-needed", on_negotiation)
    pc.connect("notify::ice-gathering-state", on_gathering)
    pc.connect("notify::connection-state", on_connection)
    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)

    def wait_for_stdin() -> None:
        sys.stdin.readline()
        GLib.idle_add(loop.quit)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    pipeline.set_state(Gst.State.PLAYING)
    transceiver = pc.emit("get-transceiver", 0)
    if transceiver is not None:
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
    loop.run()
    if state["location"]:
        request = urllib.request.Request(state["location"], method="DELETE", headers=headers({}))
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except Exception as exc:  # noqa: BLE001
            print(f"DELETE failed: {exc}", flush=True)
    pipeline.set_state(Gst.State.NULL)
    return state["code"]


if __name__ == "__main__":
    sys.exit(main())
