#!/usr/bin/python3
"""A GStreamer RTSP server for the tests: serves MP4 (H.264) files on loopback.

Runs with the system Python (Debian's python3-gi and gir1.2-gst-rtsp-server-1.0):

    /usr/bin/python3 tests/servers/rtsp_server.py PORT /mount=FILE.mp4 [...]

Each client gets its own pipeline from the start of the file, paced in real time.
Prints READY on stdout once listening; SIGTERM or SIGINT stops it.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, mounts = sys.argv[1], sys.argv[2:]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    points = server.get_mount_points()
    for mount in mounts:
        path, _, video = mount.partition("=")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(
            f'( filesrc location="{video}" ! qtdemux ! h264parse '
            "! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        factory.set_shared(False)
        points.add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        sys.exit(1)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("READY", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
