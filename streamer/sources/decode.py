"""Blocking decode with PyAV and resampling to the model frame rate.

Runs in a worker thread (or the calling thread for ``scan``), never on the event loop.
Every failure becomes a :class:`~streamer.errors.SourceError` with one line that names
the source and what went wrong.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

import av
import numpy as np

from analyzer.errors import first_line
from streamer.cpus import cpu_budget
from streamer.errors import FrameTooLarge, SourceError, SourceUnreachable, UrlRejected
from streamer.urls import NetPolicy, SourceUrl, parse_source_url, redact

if TYPE_CHECKING:
    import torch

    from streamer.sources.nvdec import NvdecDecoder

log = logging.getLogger(__name__)

# Frames of this many pixels or fewer are always fine (tests and tools open tiny clips).
DEFAULT_MAX_PIXELS = 3840 * 2160


class Picture:
    """A decoded picture, converted to RGB the first time someone looks at it.

    Converting a 640x480 frame from the decoder's YUV to RGB costs more than decoding it
    (``sws_scale`` on one thread), and under overload most frames are shed unseen
    (``streamer/shedding.py``), so the conversion waits until a frame is analysed. The
    decoder's frame is let go once converted.
    """

    __slots__ = ("_frame", "_rgb", "_tensor", "marks")

    def __init__(self, frame: av.VideoFrame | np.ndarray | torch.Tensor) -> None:
        self._frame: av.VideoFrame | None = None
        self._rgb: np.ndarray | None = None
        self._tensor: torch.Tensor | None = None  # RGB a GPU decoder left on its device
        # Delivery marks (Kafka messages): input that is wholly before this picture, so
        # done once the windows up to this picture's first tick are acknowledged. The
        # source worker takes them off with the picture's first tick (streamer/pipeline.py).
        self.marks: tuple[object, ...] = ()
        if isinstance(frame, np.ndarray):
            self._rgb = frame
        elif isinstance(frame, av.VideoFrame):
            self._frame = frame
        else:
            self._tensor = frame

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            if self._tensor is not None:  # copied back (an evidence frame, MediaPipe)
                self._rgb = self._tensor.cpu().numpy()
                return self._rgb
            assert self._frame is not None
            self._rgb, self._frame = self._frame.to_ndarray(format="rgb24"), None
        return self._rgb

    def pixels(self, device: str | torch.device | None) -> np.ndarray | torch.Tensor:
        """What the face tracker takes: RGB on the host (``device`` None), or an (H, W, 3)
        uint8 tensor on ``device`` (``DFM_CROP=device``). For a GPU a decoder's 4:2:0
        picture sends its YUV planes there, half the bytes of RGB, and becomes RGB there
        (:meth:`yuv_to`), so the host's conversion is skipped; the decoder's frame is kept
        for the host RGB an evidence frame may ask for later. A GPU decoder's picture
        (NVDEC) stays where it is."""
        if self._tensor is not None:  # a GPU decoder's: it stays where it is
            return self._tensor
        if device is None:
            return self.rgb
        import torch

        if torch.device(device).type == "cpu" or not self._yuv420():
            # On the CPU FFmpeg's conversion is the faster (2 ms a 480p frame less than
            # torch's), and the host's RGB is a tensor there as it is.
            return torch.from_numpy(self.rgb).to(device)
        return self.yuv_to(device)

    def yuv_to(self, device: str | torch.device) -> torch.Tensor:
        """A decoder's 4:2:0 picture as (H, W, 3) uint8 RGB on ``device``, made there from
        its YUV planes (what :meth:`pixels` does for a GPU)."""
        from analyzer.frames import colour_of, yuv420_to_rgb

        frame = self._frame
        if not self._yuv420():
            raise ValueError("not a decoder's 4:2:0 picture")
        assert frame is not None
        y, u, v = (_plane(frame.planes[i]).to(device) for i in range(3))
        matrix, full = colour_of(frame.colorspace, frame.color_range)
        full = full or frame.format.name == "yuvj420p"
        return yuv420_to_rgb(y, u, v, matrix=matrix, full_range=full)

    def _yuv420(self) -> bool:
        """Whether this is a decoder's picture in one of FFmpeg's planar 4:2:0 formats."""
        return self._frame is not None and self._frame.format.name in YUV420


# What Picture.pixels converts on the device: FFmpeg's planar 4:2:0 formats.
YUV420 = ("yuv420p", "yuvj420p")


def _plane(plane: Any) -> torch.Tensor:
    """A decoded frame's plane as an (height, width) uint8 tensor on the host (its rows'
    padding cut off; it shares the frame's memory until it is copied to the device)."""
    import torch

    rows = np.frombuffer(plane, np.uint8)[: plane.height * plane.line_size]
    return torch.from_numpy(rows.reshape(plane.height, plane.line_size)[:, : plane.width])


@dataclass(frozen=True)
class VideoFrame:
    index: int  # position in the resampled sequence
    pts_s: float  # stream time, seconds from the first frame
    picture: Picture  # the pixels, as RGB on first use (``rgb``)
    # The first frame after a discontinuity (a gap over max_gap_s, or a jump back): face
    # tracks and windows start over here, nothing was filled in.
    restart: bool = False

    @property
    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        return self.picture.rgb


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost: the frame size, the destinations it may reach, and the
    decoder's threads (None: every CPU this process may use, as ``scan`` wants)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    policy: NetPolicy | None = None
    threads: int | None = None
    # The CUDA device whose NVDEC decodes (DFM_DECODE; streamer/sources/nvdec.py), or None
    gpu: str | None = None


def open_video(
    source: SourceUrl | str, *, timeout_s: float = 10.0, limits: DecodeLimits | None = None
) -> Any:
    """Open a file or URL with PyAV; returns an input container with a video stream.

    ``source`` has passed the URL policy (a plain ``str`` is parsed as ``scan`` would).
    FFmpeg gets the protocol and demuxer allow-lists of the URL's scheme; a network
    host is resolved and checked against the destination policy first, and an RTSP
    server that answers with a redirect to another host is refused.
    """
    if isinstance(source, str):
        source = parse_source_url(source, kind="scan")
    limits = limits or DecodeLimits()
    name = source.redacted
    if source.is_network:
        source.check_destination(limits.policy or NetPolicy())
        if source.is_rtsp:
            check_rtsp_redirect(source, timeout_s)
        target = source.text
    else:
        target = source.local_path
        path = Path(target)
        if not path.exists():
            raise SourceError(f"video {name} does not exist; check the path")
        if path.is_dir():
            raise SourceError(f"video {name} is a folder; pass a video file")
        if path.stat().st_size == 0:
            raise SourceError(f"video {name} is empty (0 bytes); pass a complete video file")
    started = time.monotonic()
    try:
        container = av.open(
            target,
            options=source.ffmpeg_options(),
            timeout=(timeout_s, timeout_s),
            metadata_errors="replace",  # tags are whatever bytes the file holds
        )
    except (av.error.InvalidDataError, av.error.ArgumentError) as exc:
        # EINVAL: the data matched a demuxer outside the allow-list (text, images, playlists).
        if isinstance(exc, av.error.ArgumentError) and exc.errno != errno.EINVAL:
            raise SourceError(f"cannot read video {name}: {source.scrub(_reason(exc))}") from None
        if source.is_network:
            # FFmpeg reports a server that stays silent past the timeout as bad data.
            if time.monotonic() - started >= 0.9 * timeout_s:
                raise SourceUnreachable(
                    f"{name} did not answer within {timeout_s:g} s; "
                    "check the address and that the server is up"
                ) from None
            raise SourceUnreachable(
                f"{name} answered, but not with video this program reads"
            ) from None
        raise SourceError(
            f"{name} is not a video this program can read (no known container format, "
            "or the file is truncated); pass an MP4, MKV, WebM, AVI or MPEG-TS file"
        ) from None
    except (av.error.ConnectionRefusedError, av.error.ConnectionResetError) as exc:
        raise SourceUnreachable(f"{name} refused the connection ({exc.strerror})") from None
    except (TimeoutError, av.error.ExitError) as exc:
        raise SourceUnreachable(
            f"{name} did not answer within {timeout_s:g} s ({source.scrub(_reason(exc))}); "
            "check the address and that the server is up"
        ) from None
    except (av.error.FFmpegError, OSError) as exc:
        if source.is_network:
            raise SourceUnreachable(f"cannot read {name}: {source.scrub(_reason(exc))}") from None
        raise SourceError(f"cannot read video {name}: {source.scrub(_reason(exc))}") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{name} has no video stream; pass a file with video in it")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise SourceError(f"{name} holds video in a codec this program cannot decode")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        container.close()
        raise FrameTooLarge(_too_large(name, width, height, limits.max_pixels))
    return container


def media_seconds(source: SourceUrl) -> float | None:
    """A local file's length in seconds as its container states it; None when unknown.

    For progress bars only: nothing else depends on it (a container can misstate it).
    """
    if source.is_network:
        return None
    try:
        with av.open(source.local_path, metadata_errors="replace") as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
    except (av.error.FFmpegError, OSError, IndexError):
        pass
    return None


def decode(
    source: SourceUrl | str, *, timeout_s: float = 10.0, limits: DecodeLimits | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (seconds from the first frame, RGB frame) for each decoded frame."""
    for t, picture in decode_pictures(source, timeout_s=timeout_s, limits=limits):
        yield t, picture.rgb


def decode_pictures(
    source: SourceUrl | str, *, timeout_s: float = 10.0, limits: DecodeLimits | None = None
) -> Iterator[tuple[float, Picture]]:
    """Yield (seconds from the first frame, picture) for each decoded frame.

    Live sources use this: a picture becomes RGB only when it is analysed.

    A stream that breaks off after some frames ends with a warning (what was decoded is
    kept, as a player would show it); one that yields no frame at all raises.
    """
    video = Demuxed.open(source, timeout_s=timeout_s, limits=limits)
    try:
        for packet in video.packets():
            yield from video.pictures(packet)
        yield from video.pictures(None)
        video.check()
    finally:
        video.close()


class LivePace:
    """Packets handed on as if live: each once its decode time has come, counted from the
    first packet's (decode times rise packet by packet; presentation times jump ahead at
    each reference frame that B-frames follow, which would give bursts of frames)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.origin: float | None = None

    def wait(self, packet: av.Packet) -> None:
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is None or packet.time_base is None:
            return
        t = float(stamp * packet.time_base)
        self.origin = t if self.origin is None else self.origin
        wait = self.start + (t - self.origin) - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 1.0))


class Demuxed:
    """One opened video, demuxed and decoded a packet at a time: ``packets`` (the demuxer,
    which waits on the network) and ``pictures`` (the decoder, which costs CPU) may run
    in different threads, one packet after another (:class:`PacketFeed`).

    A failure of either only stops the video and is kept (``failed``, and ``error`` for
    one that is raised as it is); ``check`` at the end raises what ended it before any
    frame, and warns about what ended it after some.
    """

    def __init__(self, container: Any, name: str, limits: DecodeLimits) -> None:
        self.limits = limits
        self.container = container  # with a video stream
        self.name = name  # the source as shown in errors
        self.stream = self.container.streams.video[0]
        # The decoder refuses larger pictures too (a stream can change size mid-way).
        self.stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
        self.stream.thread_type = "AUTO"
        # FFmpeg's default is the node's cores, for each stream's decoder: a node with a
        # thousand streams would run tens of thousands of decoder threads.
        self.stream.thread_count = self.limits.threads or cpu_budget()
        self.rate = float(self.stream.average_rate or self.stream.guessed_rate or 30)
        self.first: float | None = None  # the first decoded frame's time
        self.demuxed = 0  # packets demuxed
        self.decoded = 0  # pictures decoded
        self.failed: str | None = None  # why demuxing or decoding stopped early
        self.error: SourceError | None = None  # an error ``check`` raises as it is
        self.nvdec: NvdecDecoder | None = None
        if limits.gpu is not None:
            from streamer.sources.nvdec import open_nvdec

            self.nvdec = open_nvdec(self.stream, limits.gpu, name)

    @classmethod
    def open(
        cls,
        source: SourceUrl | str,
        *,
        timeout_s: float = 10.0,
        limits: DecodeLimits | None = None,
        **more: Any,
    ) -> Self:
        """Open a file or URL (:func:`open_video`); ``more`` goes to the constructor."""
        limits = limits or DecodeLimits()
        container = open_video(source, timeout_s=timeout_s, limits=limits)
        name = source.redacted if isinstance(source, SourceUrl) else redact(source)
        return cls(container, name, limits, **more)

    def packets(self, *, realtime: bool = False) -> Generator[av.Packet, None, None]:
        """The stream's packets in decode order, paced by their decode times when
        ``realtime`` (a file played as if live). Ends early, with ``failed`` set, when the
        demuxer fails or the decoder has."""
        live = LivePace()
        try:
            for packet in self.container.demux(self.stream):
                if self.failed is not None:
                    return
                if packet.size == 0:  # the demuxer's own end: ``pictures(None)`` flushes
                    continue
                if realtime:
                    live.wait(packet)
                self.demuxed += 1
                yield packet
        except (av.error.FFmpegError, OSError) as exc:
            self.failed = self.failed or redact(_reason(exc))

    def pictures(self, packet: av.Packet | None) -> list[tuple[float, Picture]]:
        """(seconds from the first frame, picture) for each frame ``packet`` completes;
        None flushes the decoder at the end. Nothing once it has failed."""
        if self.failed is not None:
            return []
        if self.nvdec is not None:
            return self._nvdec_pictures(packet)
        try:
            frames = self.stream.codec_context.decode(packet)
        except (av.error.FFmpegError, OSError) as exc:
            self.failed = redact(_reason(exc))
            return []
        out: list[tuple[float, Picture]] = []
        for frame in frames:
            if not self._take(out, self._seconds(frame), Picture(frame), frame.width, frame.height):
                break
        return out

    def _nvdec_pictures(self, packet: av.Packet | None) -> list[tuple[float, Picture]]:
        assert self.nvdec is not None
        try:
            decoded = self.nvdec.decode(packet)
        except Exception as exc:  # the GPU's decoder: this connection ends, as on the CPU
            self.failed = redact(f"NVDEC: {_reason(exc)}")
            return []
        out: list[tuple[float, Picture]] = []
        base = self.stream.time_base
        for pts, rgb in decoded:
            if pts is None or base is None:
                t = self.decoded / self.rate
            else:
                t = float(pts * base)
            height, width = rgb.shape[:2]
            if not self._take(out, t, Picture(rgb), width, height):
                break
        return out

    def _take(
        self, out: list[tuple[float, Picture]], t: float, picture: Picture, width: int, height: int
    ) -> bool:
        """Add a decoded picture at time ``t``; False (and ``failed``) if it is too large."""
        if width * height > self.limits.max_pixels:
            self.error = FrameTooLarge(_too_large(self.name, width, height, self.limits.max_pixels))
            self.failed = "frame too large"
            return False
        if not math.isfinite(t):
            return True
        if self.first is None:
            self.first = t
        self.decoded += 1
        out.append((t - self.first, picture))
        return True

    def check(self) -> None:
        """Once every packet is decoded: raise what ended the video before any frame;
        warn about what ended it after some."""
        if self.error is not None:
            raise self.error
        if self.decoded == 0:
            if self.failed is not None:
                raise SourceError(f"could not decode any frame of {self.name}: {self.failed}")
            raise SourceError(
                f"{self.name} holds no decodable video frame; the file may be truncated"
            )
        if self.failed is not None:
            log.warning("%s: decoding stopped after %d frames: %s", self.name, self.decoded,
                        self.failed)  # fmt: skip

    def close(self) -> None:
        """Only once no thread decodes for it any more."""
        self.container.close()
        self.nvdec = None  # its NVDEC session and surfaces go now, not at the next GC

    def _seconds(self, frame: av.VideoFrame) -> float:
        """A decoded frame's time. The frames a flush (``decode(None)``) returns have no
        time base of their own, so their ``time`` is NaN: the stream's is used."""
        time_base = frame.time_base or self.stream.time_base
        if frame.pts is not None and time_base is not None:
            return float(frame.pts * time_base)
        return self.decoded / self.rate


class Feed(Protocol):
    """One connection's input split where its work is: the reader thread reads it
    (``packets``), a decode pool worker decodes and resamples it (``decode``), one item at a
    time and in order; ``check`` in the reader at the end. :class:`PacketFeed` is a
    video's; a Kafka key's JPEG messages have one of their own."""

    decoded: int  # pictures decoded so far
    failed: str | None  # why it stopped early
    resync: bool  # items were lost: decode nothing until the next keyframe
    last: float | None  # the last tick's time, from the connection's start

    def packets(self, *, realtime: bool = False) -> Generator[Any, None, None]: ...

    def keyframe(self, packet: Any) -> bool: ...

    def decode(self, packet: Any, *, gap: bool = False) -> list[VideoFrame]: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


def run_feed(feed: Feed, *, realtime: bool = False) -> Iterator[VideoFrame]:
    """A feed read and decoded in one thread (without a decode pool): its frames."""
    try:
        for packet in feed.packets(realtime=realtime):
            yield from feed.decode(packet)
        yield from feed.decode(None)
        feed.check()
    finally:
        feed.close()


class PacketFeed(Demuxed):
    """One connection's video split where its work is: the reader thread demuxes
    (``packets``), a decode pool worker decodes and resamples (``decode``), one packet at
    a time and in order; together what :func:`decode_pictures` and :func:`resample` do in
    one thread, with the same errors (``check``, in the reader)."""

    def __init__(
        self,
        container: Any,
        name: str,
        limits: DecodeLimits,
        *,
        fps: float,
        offset: float = 0.0,
        max_gap_s: float | None = None,
    ) -> None:
        super().__init__(container, name, limits)
        self.offset = offset  # stream time of this connection's first tick
        self.clock = Resampler(fps, max_gap_s=max_gap_s)
        self.last: float | None = None  # the last tick's time, from this connection's start
        self.resync = False  # packets were lost: skip to the next keyframe (the worker's)
        # Packets were lost before the picture at this time (None: the next one): a
        # decoder of several threads hands back pictures of packets before the gap later.
        self._gap_at: float | None = None
        self._gap = False

    def keyframe(self, packet: av.Packet) -> bool:
        return bool(packet.is_keyframe)

    def decode(self, packet: av.Packet | None, *, gap: bool = False) -> list[VideoFrame]:
        """The decode worker's side: the ticks ``packet`` completes (None: the end, which
        flushes the decoder and the clock); ``gap``: packets before it were lost."""
        if gap and packet is not None:
            self._gap = True
            stamp, base, first = packet.pts, packet.time_base, self.first
            self._gap_at = None
            if stamp is not None and base is not None and first is not None:
                self._gap_at = float(stamp * base) - first
        out: list[VideoFrame] = []
        for t, picture in self.pictures(packet):
            starts = self._gap and (self._gap_at is None or t >= self._gap_at - 1e-6)
            out += self.clock.push(t, picture, gap=starts)
            self._gap = self._gap and not starts
        if packet is None:
            out += self.clock.end()
        if out:
            self.last = out[-1].pts_s
        return [VideoFrame(f.index, self.offset + f.pts_s, f.picture, f.restart) for f in out]


def resample(
    frames: Iterable[tuple[float, Picture | np.ndarray]],
    fps: float,
    *,
    max_gap_s: float | None = None,
) -> Iterator[VideoFrame]:
    """Frames on a regular clock of ``fps``: each tick shows the latest frame at or before it.

    Faster sources lose frames, slower ones repeat them, so windows of N frames always
    span N / fps seconds of stream time. A gap longer than ``max_gap_s`` or a jump back
    by more than a tick is a discontinuity: nothing is filled in, the clock restarts at
    the new frame (output times keep running), and that frame says ``restart``.
    """
    clock = Resampler(fps, max_gap_s=max_gap_s)
    for t, pixels in frames:
        yield from clock.push(t, pixels)
    yield from clock.end()


class Resampler:
    """:func:`resample` one frame at a time, for a decoder fed packet by packet (the
    decode pool, ``streamer/sources/base.py``): ``push`` each decoded frame, ``end`` once."""

    def __init__(self, fps: float, *, max_gap_s: float | None = None) -> None:
        self.step = 1.0 / fps
        self.eps = self.step * 1e-3
        self.max_gap_s = max_gap_s
        self.k = 0  # output ticks so far
        self.base_k, self.base_t = 0, 0.0  # the tick that input time base_t maps to
        self.prev: tuple[float, Picture] | None = None
        self.shown = False  # prev has had a tick
        self.restart = False  # the next tick out starts a new segment

    def push(
        self, t: float, pixels: Picture | np.ndarray, *, gap: bool = False
    ) -> list[VideoFrame]:
        """The ticks that end before frame ``t``; ``gap``: frames before it were lost, so
        it starts a new segment whatever its time (nothing is filled in)."""
        picture = pixels if isinstance(pixels, Picture) else Picture(pixels)
        prev, out = self.prev, []
        if prev is not None:
            since = t - prev[0]
            max_gap = self.max_gap_s
            if gap or (max_gap is not None and (since > max_gap or since < -self.step)):
                # Close the segment with its last frame, then start a new one at t.
                out = self._until(prev, lambda when: when <= prev[0] + self.eps)
                self.base_k, self.base_t, self.restart = self.k, t, True
            else:
                out = self._until(prev, lambda when: when < t - self.eps)
        else:
            self.base_t = t
            self.restart = self.restart or gap
        if prev is not None and not self.shown and prev[1].marks:
            # Never shown (a faster source, or a gap right after it): its delivery marks
            # ride on the next picture, or its input would never be done.
            picture.marks = prev[1].marks + picture.marks
            prev[1].marks = ()
        self.prev, self.shown = (t, picture), False
        return out

    def end(self) -> list[VideoFrame]:
        """The last frame's ticks."""
        prev = self.prev
        if prev is None:
            return []
        return self._until(prev, lambda when: when <= prev[0] + self.eps)

    def _until(
        self, prev: tuple[float, Picture], more: Callable[[float], bool]
    ) -> list[VideoFrame]:
        out = []
        while more((self.k - self.base_k) * self.step + self.base_t):
            out.append(VideoFrame(self.k, self.k * self.step, prev[1], self.restart))
            self.restart, self.shown = False, True
            self.k += 1
        return out


def check_rtsp_redirect(source: SourceUrl, timeout_s: float) -> None:
    """Refuse an RTSP server that redirects to another host (FFmpeg would follow it).

    Asks the server once with ``OPTIONS`` + ``DESCRIBE``, as FFmpeg is about to; a 3xx
    answer whose ``Location`` names another host is refused. Anything else (including no
    answer) is left to FFmpeg, which reports it in its own words.
    """
    assert source.host is not None
    port = source.port or (322 if source.scheme == "rtsps" else 554)
    request = (
        f"DESCRIBE {source.text} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n"
        "User-Agent: deepfake-monitor\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((source.host, port), timeout=min(timeout_s, 5.0)) as raw:
            conn: socket.socket = raw
            if source.scheme == "rtsps":
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                conn = context.wrap_socket(raw, server_hostname=source.host)
            conn.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
    except (OSError, ssl.SSLError):
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ") if lines else []
    if len(parts) < 2 or not parts[1].isdigit() or not 300 <= int(parts[1]) < 400:
        return
    location = next(
        (ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("location:")),
        "",
    )
    try:
        target = parse_source_url(location) if location else None
    except UrlRejected:
        target = None
    if target is None or target.host != source.host or target.port != source.port:
        shown = redact(location)[:200] or "(no Location)"
        raise SourceError(
            f"{source.redacted} redirects to {shown}; redirects to another host are not "
            "followed: add that URL itself"
        )


def _too_large(name: str, width: int, height: int, limit: int) -> str:
    return (
        f"{name} has {width}x{height} frames, more than {limit} pixels "
        "(DFM_MAX_FRAME_PIXELS); send smaller frames or raise the limit"
    )


def _reason(exc: BaseException) -> str:
    return first_line(exc, text=getattr(exc, "strerror", None))
