"""A WHIP publisher for the tests: sends a video file, looped, over WebRTC (aiortc).

    python tests/servers/whip_client.py URL FILE [--token T]

Prints ``PUBLISHING <location> <unix time of the first frame sent>`` once the answer is in
and the first frame went out; then publishes until it reads a line on stdin (it then
DELETEs its session, as WHIP asks) or is killed (a publisher that vanishes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import httpx
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError


class Looped(MediaStreamTrack):
    """The file's frames, again from the start at its end, on one growing timeline; notes
    when the first one was sent.

    Not ``MediaPlayer(loop=True)``: with PyAV 18 its decoder ends with an error that is
    not ``StopIteration``, so aiortc 1.16's player stops at the end of the file instead
    of seeking back.
    """

    kind = "video"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.player = MediaPlayer(path)
        self.offset = 0  # added to the pts of this pass through the file
        self.last_pts: int | None = None
        self.step = 0  # one frame, in the stream's time base
        self.first_sent = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        assert self.player.video is not None
        try:
            frame = await self.player.video.recv()
        except MediaStreamError:
            self.player.video.stop()
            self.player = MediaPlayer(self.path)
            assert self.player.video is not None and self.last_pts is not None
            self.offset = self.last_pts + self.step
            frame = await self.player.video.recv()
        frame.pts += self.offset
        if self.last_pts is not None and frame.pts > self.last_pts:
            self.step = frame.pts - self.last_pts
        self.last_pts = frame.pts
        if not self.first_sent.done():
            self.first_sent.set_result(time.time())
        return frame

    def stop(self) -> None:
        if self.player.video is not None:
            self.player.video.stop()
        super().stop()


async def publish(url: str, path: str, token: str | None) -> int:
    track = Looped(path)
    pc = RTCPeerConnection()
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(url, content=pc.localDescription.sdp, headers=headers)
        if r.status_code != 201:
            print(f"REFUSED {r.status_code} {r.text}", flush=True)
            await pc.close()
            return 1
        location = str(httpx.URL(url).join(r.headers["location"]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        first = await asyncio.wait_for(track.first_sent, 30)
        print(f"PUBLISHING {location} {first:.6f}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await client.delete(location, headers=headers)
    await pc.close()
    track.stop()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("file")
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    sys.exit(asyncio.run(publish(args.url, args.file, args.token)))


if __name__ == "__main__":
    main()
