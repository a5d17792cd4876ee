"""Decoded pictures turned to RGB on the engine's device (``analyzer/frames.py``, through
``Picture.yuv_to``, what ``Picture.pixels`` does for a GPU), here on the CPU: FFmpeg's own
RGB of the same pictures, whatever their colour tags, within 2 levels of 255."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch

from analyzer.frames import nv12_to_rgb, yuv420_to_rgb
from streamer.sources.decode import Picture


def _picture(width: int = 96, height: int = 66, **tags: int) -> av.VideoFrame:
    """A decoded 4:2:0 picture of colourful gradients and noise, encoded with ``tags``
    (colorspace, color_range) set on the encoder. Odd sizes of chroma are not possible in
    H.264; 66 rows leave 33 chroma rows, an odd count."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1)
    rgb = np.clip(rgb + rng.integers(-30, 30, rgb.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for key, value in tags.items():
            setattr(stream.codec_context, key, value)
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf) as inp:
        return next(inp.decode(video=0))


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"colorspace": 1, "color_range": 1},
        {"colorspace": 5, "color_range": 2},
        {"colorspace": 9, "color_range": 1},
    ],  # fmt: skip
    ids=["untagged", "bt709", "bt601-full", "bt2020"],
)
def test_the_devices_rgb_is_ffmpegs_within_two_levels(tags):
    frame = _picture(**tags)
    assert frame.format.name in ("yuv420p", "yuvj420p")  # j: full range
    want = frame.to_ndarray(format="rgb24").astype(np.int16)
    got = Picture(frame).yuv_to("cpu")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8
    assert tuple(got.shape) == want.shape
    diff = np.abs(got.numpy().astype(np.int16) - want)
    assert diff.max() <= 2 and diff.mean() <= 1.0, (diff.max(), diff.mean())
    # The host picture is still there for whoever asks for it (an evidence frame).
    picture = Picture(frame)
    picture.yuv_to("cpu")
    assert np.array_equal(picture.rgb, want.astype(np.uint8))
    # For the CPU itself pixels() takes FFmpeg's RGB, the faster there.
    assert np.array_equal(Picture(frame).pixels("cpu").numpy(), want.astype(np.uint8))


def test_nv12_gives_the_same_rgb_as_three_planes():
    """NV12, what NVDEC leaves: the same picture as its three-plane form, to the level."""
    frame = _picture()
    nv12 = frame.reformat(format="nv12")
    h, w = frame.height, frame.width
    luma = np.frombuffer(nv12.planes[0], np.uint8).reshape(-1, nv12.planes[0].line_size)
    chroma = np.frombuffer(nv12.planes[1], np.uint8).reshape(-1, nv12.planes[1].line_size)
    packed = torch.from_numpy(np.concatenate([luma[:h, :w], chroma[: h // 2, :w]]))
    three = Picture(frame).yuv_to("cpu")
    assert torch.equal(nv12_to_rgb(packed), three)


def test_other_pictures_cross_as_host_rgb():
    frame = _picture().reformat(format="yuv444p")
    got = Picture(frame).pixels("cpu")
    assert np.array_equal(got.numpy(), frame.to_ndarray(format="rgb24"))
    with pytest.raises(ValueError, match="4:2:0"):
        Picture(frame).yuv_to("cpu")
    host = np.zeros((4, 6, 3), np.uint8)
    assert Picture(host).pixels(None) is host
    assert np.array_equal(Picture(host).pixels("cpu").numpy(), host)


def test_bad_planes_are_refused_with_a_reason():
    y = torch.zeros((4, 6), dtype=torch.uint8)
    with pytest.raises(ValueError, match="chroma planes"):
        yuv420_to_rgb(
            y, torch.zeros((2, 2), dtype=torch.uint8), torch.zeros((2, 3), dtype=torch.uint8)
        )
    with pytest.raises(ValueError, match="unknown colour matrix 'bt999'"):
        yuv420_to_rgb(y, y[:2, :3], y[:2, :3], matrix="bt999")
    with pytest.raises(ValueError, match="NV12"):
        nv12_to_rgb(torch.zeros((5, 6), dtype=torch.uint8))
