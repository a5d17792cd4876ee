"""WebRTC ingest over WHIP (RFC 9725): one aiortc peer connection per publisher.

``POST /v1/whip/{id}`` hands the SDP offer to :meth:`WhipGateway.offer`, which answers
it (ICE candidates included: aiortc gathers before answering, so no trickle is needed)
and registers the stream. Frames from the video track are received on the event loop
and passed, still encoded as ``av.VideoFrame``, to the stream's source worker thread
through a small drop-oldest buffer (queue ``whip_frames``): conversion, resampling and
face detection happen there, as for every other source. Timestamps come from the RTP clock.

A session ends on ``DELETE`` of its Location, when the peer connection fails or closes,
or when no frame arrives for ``whip_timeout_s`` (a publisher that vanished); its stream
is then removed and the same stream id may publish again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from analyzer.errors import first_line
from streamer.buffers import BoundedBuffer, Empty, Ended, Policy, QueueMetrics
from streamer.config import Settings, StreamSpec
from streamer.errors import BadRequest, Busy, Conflict, Invalid, Rejected
from streamer.sources.base import Opener
from streamer.sources.decode import Picture, VideoFrame, resample

if TYPE_CHECKING:
    from streamer.manager import StreamManager

log = logging.getLogger(__name__)


class WhipOpener(Opener):
    """Frames pushed by the event loop, pulled by the source worker thread."""

    ends = True  # a finished session is a finished stream

    def __init__(
        self,
        fps: float,
        timeout_s: float,
        size: int = 8,
        on_drop: Callable[[], None] = lambda: None,
        queues: QueueMetrics | None = None,
    ) -> None:
        self.fps = fps
        self.timeout_s = timeout_s
        self.frames: BoundedBuffer[Any] = BoundedBuffer(
            "whip_frames",
            size,
            Policy.DROP_OLDEST,
            metrics=queues,
            on_drop=lambda _frame: on_drop(),  # counts each lost frame per stream too
        )

    @property
    def dropped(self) -> int:
        return self.frames.dropped

    def push(self, item: Any) -> None:
        """Called on the event loop; never blocks: a full buffer loses its oldest frame."""
        self.frames.put_nowait(item)

    def close(self) -> None:
        self.frames.end()

    def _decoded(self) -> Iterator[tuple[float, Picture]]:
        first: float | None = None
        try:
            while True:
                try:
                    item = self.frames.get(timeout=self.timeout_s)
                except Empty:
                    log.warning("WHIP publisher sent no frame for %.0f s", self.timeout_s)
                    return
                except Ended:
                    return
                t = float(item.pts * item.time_base) if item.pts is not None else 0.0
                first = t if first is None else first
                yield t - first, Picture(item)
        finally:
            self.frames.close()

    def open(self) -> Iterator[VideoFrame]:
        return resample(self._decoded(), self.fps)


def check_offer(sdp: str) -> None:
    """Refuse an offer aiortc would take and then fail on, or crash the loop with.

    Parsed with aiortc's own parser; every media section needs DTLS fingerprints and ICE
    credentials (else its connect task dies on an assertion after the 201), and every
    port, candidates included, must be a UDP/TCP port (else the transport's ``sendto``
    raises inside the event loop).
    """
    from aiortc.sdp import SessionDescription

    if "m=video" not in sdp:
        raise Invalid("the SDP offer has no video media section (m=video)")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises ValueError, IndexError, KeyError, ...
        raise BadRequest(f"cannot parse this SDP offer: {first_line(exc)}") from None
    if not any(m.kind == "video" for m in desc.media):
        raise Invalid("the SDP offer has no video media section (m=video)")
    for i, media in enumerate(desc.media):
        where = f"media section {i} ({media.kind})"
        if media.dtls is None or not media.dtls.fingerprints:
            raise BadRequest(f"{where} has no a=fingerprint: WebRTC needs DTLS")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise BadRequest(f"{where} has no a=ice-ufrag / a=ice-pwd")
        ports = [media.port, media.rtcp_port or 0]
        ports += [c.port for c in media.ice_candidates]
        ports += [c.relatedPort or 0 for c in media.ice_candidates]
        if any(not isinstance(p, int) or not 0 <= p <= 65535 for p in ports):
            raise BadRequest(f"{where} names a port outside 0..65535")
        for cand in media.ice_candidates:
            if cand.protocol.lower() not in ("udp", "tcp"):
                raise BadRequest(f"{where}: candidate protocol {cand.protocol[:20]!r}")


def as_dtls_server(offer: str, answer: RTCSessionDescription) -> RTCSessionDescription:
    """The answer with the service as the DTLS server wherever the offer lets it choose.

    An offer's ``a=setup:actpass`` leaves the DTLS role to the answerer; aiortc answers
    ``active`` (DTLS client), and its client offers only ECDSA cipher suites, which a
    publisher with an RSA certificate (GStreamer's webrtcbin, via OpenSSL) cannot take:
    "no shared cipher". Answering ``passive`` makes the publisher the client: its hello
    lists the suites, and the service's own (ECDSA) certificate picks one. Browsers and
    aiortc publishers take either role (RFC 8842, section 5.2).
    """
    if "a=setup:actpass" not in offer:
        return answer
    sdp = answer.sdp.replace("a=setup:active", "a=setup:passive")
    return RTCSessionDescription(sdp=sdp, type=answer.type)


@dataclass
class WhipSession:
    stream_id: str
    id: str
    pc: RTCPeerConnection
    opener: WhipOpener
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False

    @property
    def location(self) -> str:
        return f"/v1/whip/{self.stream_id}/{self.id}"


class WhipGateway:
    def __init__(self, settings: Settings, manager: StreamManager) -> None:
        self.settings = settings
        self.manager = manager
        self.sessions: dict[str, WhipSession] = {}  # by stream id
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Close every session. Safe to call twice."""
        for session in list(self.sessions.values()):
            await self._end(session, "service stopping")

    async def __aenter__(self) -> WhipGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def offer(self, stream_id: str, sdp: str) -> WhipSession:
        """Answer a publisher's offer; the answer is ``session.pc.localDescription``."""
        s = self.settings
        check_offer(sdp)
        async with self._lock:
            if stream_id in self.sessions or stream_id in self.manager.streams:
                raise Conflict(f"stream {stream_id!r} is already live; DELETE it first")
            if len(self.sessions) >= s.whip_max_sessions:
                raise Busy(
                    f"{len(self.sessions)} WHIP sessions already (DFM_WHIP_MAX_SESSIONS)",
                    retry_after_s=30,
                )
            config = RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=i.urls, username=i.username, credential=i.credential)
                    for i in s.whip_ice_servers
                ]
            )
            pc = RTCPeerConnection(configuration=config)
            dropped = self.manager.metrics.frames_dropped
            opener = WhipOpener(
                s.fps,
                s.whip_timeout_s,
                on_drop=lambda: dropped.labels(stream_id, "whip_queue").inc(),
                queues=self.manager.metrics.queues,
            )
            session = WhipSession(stream_id, uuid.uuid4().hex, pc, opener)
            try:
                await self._negotiate(session, sdp)
            except Rejected:
                await pc.close()
                raise
            except Exception as exc:  # aiortc raises ValueError and others for bad SDP
                await pc.close()
                raise BadRequest(f"cannot use this SDP offer: {first_line(exc)}") from None
            spec = StreamSpec(id=stream_id, url=f"whip:{session.id}")
            try:
                await self.manager.add_with_opener(spec, opener)
            except Exception:
                await pc.close()
                raise
            self.sessions[stream_id] = session
        log.info("stream %s: WHIP session %s connected", stream_id, session.id)
        return session

    async def _negotiate(self, session: WhipSession, sdp: str) -> None:
        pc = session.pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                self._spawn(session, self._receive(session, track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            log.info("stream %s: WebRTC connection %s", session.stream_id, state)
            if state in ("failed", "closed"):
                self._spawn(session, self._end(session, f"connection {state}"))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            raise Invalid("the SDP offer has no video track")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(as_dtls_server(sdp, answer))

    @staticmethod
    def _spawn(session: WhipSession, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    async def _receive(self, session: WhipSession, track: Any) -> None:
        try:
            while True:
                frame = await asyncio.wait_for(track.recv(), self.settings.whip_timeout_s)
                session.opener.push(frame)
        except (MediaStreamError, TimeoutError):
            reason = "publisher stopped sending"
        except asyncio.CancelledError:
            return
        await self._end(session, reason)

    async def delete(self, stream_id: str, session_id: str) -> bool:
        session = self.sessions.get(stream_id)
        if session is None or session.id != session_id:
            return False
        await self._end(session, "DELETE by the publisher")
        return True

    async def _end(self, session: WhipSession, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        log.info("stream %s: WHIP session %s ends: %s", session.stream_id, session.id, reason)
        if self.sessions.get(session.stream_id) is session:
            del self.sessions[session.stream_id]
        session.opener.close()
        current = asyncio.current_task()
        for task in list(session.tasks):
            if task is not current:
                task.cancel()
        await session.pc.close()
        await self.manager.remove(session.stream_id)
