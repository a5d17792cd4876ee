"""Decoded pictures turned to RGB on the engine's device, from their YUV planes.

A decoder leaves a picture as 4:2:0 YUV: a full-size luma plane and two chroma planes of
half the width and height, 1.5 bytes a pixel against RGB's 3. Where frames go to the
engine's device (``DFM_CROP=device``) it is these planes that cross, and the conversion
to RGB, which on the host costs more than decoding (FFmpeg's ``sws_scale``, one thread),
runs there: :func:`yuv420_to_rgb` for a software decoder's three planes, :func:`nv12_to_rgb`
for NV12, the two-plane layout hardware decoders give (NVDEC). The colour matrix and range
are the picture's own, as FFmpeg's ``rgb24`` conversion takes them (BT.601 where untagged,
limited range unless full range is tagged), and each chroma sample stands for its 2x2
pixels, as FFmpeg's unscaled converter does: the host's RGB within 2 levels of 255
(``tests/test_frames.py``; FFmpeg's fixed point truncates, so the conversion floors).
"""

from __future__ import annotations

import torch
from torch import Tensor

# (Kr, Kb) of each colour matrix; Kg = 1 - Kr - Kb.
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}
# FFmpeg's AVColorSpace values with a matrix of their own (others, and untagged, are
# BT.601, as its rgb24 takes them), and its full-range AVColorRange (AVCOL_RANGE_JPEG).
TAGGED = {1: "bt709", 9: "bt2020", 10: "bt2020"}
FULL_RANGE = 2


def colour_of(colorspace: int | None, color_range: int | None) -> tuple[str, bool]:
    """A picture's (or stream's) FFmpeg colour tags -> (matrix, full range)."""
    return TAGGED.get(int(colorspace or 0), "bt601"), int(color_range or 0) == FULL_RANGE


def yuv420_to_rgb(
    y: Tensor, u: Tensor, v: Tensor, *, matrix: str = "bt601", full_range: bool = False
) -> Tensor:
    """``y`` (H, W), ``u`` and ``v`` (ceil(H / 2), ceil(W / 2)), uint8 on any device ->
    (H, W, 3) uint8 RGB on that device."""
    if matrix not in MATRICES:
        raise ValueError(f"unknown colour matrix {matrix!r}; use one of {', '.join(MATRICES)}")
    h, w = y.shape
    if u.shape != v.shape or u.shape != ((h + 1) // 2, (w + 1) // 2):
        raise ValueError(
            f"chroma planes {tuple(u.shape)} and {tuple(v.shape)} for a {w}x{h} picture"
        )
    kr, kb = MATRICES[matrix]
    luma, chroma = (255 / 255, 255 / 255) if full_range else (255 / 219, 255 / 224)
    yy = (y.float() - (0 if full_range else 16)) * luma

    def full(plane: Tensor) -> Tensor:  # each sample over its 2x2 pixels, centred on 0
        up = plane.float().repeat_interleave(2, 0).repeat_interleave(2, 1)[:h, :w]
        return (up - 128) * chroma

    cb, cr = full(u), full(v)
    r = yy + 2 * (1 - kr) * cr
    b = yy + 2 * (1 - kb) * cb
    g = (yy - kr * r - kb * b) / (1 - kr - kb)
    return torch.stack([r, g, b], dim=-1).floor_().clamp_(0, 255).to(torch.uint8)


def nv12_to_rgb(nv12: Tensor, *, matrix: str = "bt601", full_range: bool = False) -> Tensor:
    """An NV12 picture, (H * 3 / 2, W) uint8 (the luma rows, then rows of interleaved U and
    V), on any device -> (H, W, 3) uint8 RGB on that device."""
    if nv12.ndim != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2:
        raise ValueError(
            f"an NV12 picture is (H * 3 / 2, W) with H and W even, got {tuple(nv12.shape)}"
        )
    h = nv12.shape[0] * 2 // 3
    uv = nv12[h:].reshape(h // 2, -1, 2)
    return yuv420_to_rgb(nv12[:h], uv[..., 0], uv[..., 1], matrix=matrix, full_range=full_range)
