"""NVDEC in the service's path (``DFM_DECODE``): a stream's packets, demuxed by PyAV as
ever, decoded by the GPU's video engines through PyNvVideoCodec (the optional ``gpu``
extra), the pictures left on the GPU.

A :class:`NvdecDecoder` is one connection's hardware decoder, used where its
:class:`~streamer.sources.decode.Demuxed` decodes (a decode pool worker): H.264 and HEVC
packets of an MP4 or Matroska file carry their parameter sets apart (avcC / hvcC), and
NVDEC's parser wants them in the stream, so FFmpeg's ``*_mp4toannexb`` bitstream filter
rewrites them first (Annex B input, an RTSP camera's, passes through it as it is). Each
picture NVDEC gives, NV12 in GPU memory, becomes RGB there (``analyzer/frames.py``, the
stream's colour matrix and range) before the decoder reuses its surface; its time is the
earliest presentation time of the packets sent and not yet given back, since pictures
come out in display order. So a frame crosses to the host only for an evidence frame or
a MediaPipe detector; the torch detector letterboxes it and its crops are cut on the GPU
(``FaceTracker`` takes a frame that is a tensor where it is).

``DFM_DECODE=auto`` decodes with NVDEC where the engine's device is a CUDA GPU and
PyNvVideoCodec imports, on the CPU otherwise; ``nvdec`` refuses to start without them. A
connection whose codec NVDEC does not take, or whose decoder cannot be made, decodes on
the CPU (logged); an NVDEC error mid-stream ends the connection as a CPU decoder's does,
and the next one tries NVDEC again.

This path has not run on a GPU: no GPU was lent to this work. ``tests/test_nvdec.py``
runs it with a stand-in for PyNvVideoCodec that decodes the same Annex B packets with
FFmpeg into NV12, which checks the bitstream, the times and the colour; the GPU check's
``nvdec`` part runs it for real and compares its pictures with PyAV's.
"""

from __future__ import annotations

import ctypes
import heapq
import importlib
import logging
from typing import Any

import av
import torch

from analyzer.frames import colour_of, nv12_to_rgb
from streamer.errors import ConfigError

log = logging.getLogger(__name__)

# FFmpeg's codec name -> PyNvVideoCodec's cudaVideoCodec member
CODECS = {"h264": "H264", "hevc": "HEVC", "av1": "AV1", "vp9": "VP9", "vp8": "VP8",
          "mpeg2video": "MPEG2", "mpeg4": "MPEG4"}  # fmt: skip
ANNEX_B = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


def unavailable(device: torch.device | None) -> str | None:
    """Why NVDEC cannot decode for an engine on ``device``; None when it can."""
    if device is None or device.type != "cuda":
        return "the engine's device is not a CUDA GPU (DFM_DEVICE)"
    try:
        importlib.import_module("PyNvVideoCodec")
    except ImportError:
        return "PyNvVideoCodec is not installed (pip install 'deepfake-monitor[gpu]')"
    return None


def decode_device(setting: str, device: torch.device | None) -> str | None:
    """The CUDA device NVDEC decodes on for ``DFM_DECODE=setting``, or None for the CPU;
    ``nvdec`` where NVDEC cannot run is a :class:`ConfigError` naming why and the fix."""
    if setting == "cpu":
        return None
    why = unavailable(device)
    if why is None:
        return str(device)
    if setting == "nvdec":
        raise ConfigError(f"DFM_DECODE=nvdec cannot run: {why}; set DFM_DECODE=cpu or auto")
    if device is not None and device.type == "cuda":  # worth a word: a GPU without NVDEC
        log.info("decoding on the CPU: %s", why)
    return None


class NvdecUnsupported(Exception):
    """This connection's video is not for NVDEC (its codec); it decodes on the CPU."""


class NvdecDecoder:
    """One connection's NVDEC session: PyAV packets in, (pts, RGB tensor) out."""

    def __init__(self, stream: Any, device: str, nvc: Any = None) -> None:
        name = stream.codec_context.name
        if name not in CODECS:
            raise NvdecUnsupported(f"NVDEC does not decode {name}")
        self.nvc = nvc or importlib.import_module("PyNvVideoCodec")
        self.bsf = (
            av.bitstream.BitStreamFilterContext(ANNEX_B[name], in_stream=stream)
            if name in ANNEX_B
            else None
        )
        gpu = torch.device(device)
        self.decoder = self.nvc.CreateDecoder(
            gpuid=gpu.index or 0, codec=getattr(self.nvc.cudaVideoCodec, CODECS[name]),
            cudacontext=0, cudastream=0, usedevicememory=True,
        )  # fmt: skip
        ctx = stream.codec_context
        self.matrix, self.full_range = colour_of(ctx.colorspace, ctx.color_range)
        self.pending: list[int] = []  # pts of the packets sent and not yet given back

    def decode(self, packet: av.Packet | None) -> list[tuple[int | None, torch.Tensor]]:
        """(pts in the stream's time base, (H, W, 3) uint8 RGB on the GPU) of each picture
        ``packet`` completes, in display order; None: the end (flushes the decoder)."""
        if self.bsf is not None:
            units = list(self.bsf.filter(packet))
        else:
            units = [packet] if packet is not None else []
        out = []
        for unit in units:
            out += self._send(bytes(unit), unit.pts)
        if packet is None:
            out += self._send(b"", None)  # an empty packet: the end of the stream
        return out

    def _send(self, data: bytes, pts: int | None) -> list[tuple[int | None, torch.Tensor]]:
        # The buffer must outlive Decode(), which reads it by address.
        buf = ctypes.create_string_buffer(data, len(data))
        packet = self.nvc.PacketData()
        packet.bsl_data = ctypes.addressof(buf)
        packet.bsl = len(data)
        if pts is not None:
            packet.pts = pts
            heapq.heappush(self.pending, pts)
        out = []
        for surface in self.decoder.Decode(packet):
            nv12 = torch.from_dlpack(surface)
            if nv12.ndim == 3:  # (H * 3 / 2, W, 1)
                nv12 = nv12[..., 0]
            # A new tensor: the decoder reuses its surface.
            rgb = nv12_to_rgb(nv12, matrix=self.matrix, full_range=self.full_range)
            out.append((heapq.heappop(self.pending) if self.pending else None, rgb))
        del buf
        return out


def open_nvdec(stream: Any, device: str, name: str) -> NvdecDecoder | None:
    """``stream``'s NVDEC decoder on ``device``; None (logged) where it cannot have one,
    so that this connection decodes on the CPU."""
    try:
        return NvdecDecoder(stream, device)
    except NvdecUnsupported as exc:
        log.info("%s: %s; decoding on the CPU", name, exc)
    except Exception as exc:  # the driver, the GPU's decoder count, a bad parameter set
        log.warning("%s: NVDEC could not start (%s); decoding on the CPU", name, exc)
    return None
