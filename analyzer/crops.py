"""Face crops cut on the engine's device: many frames' crops in one ``roi_align`` call.

:func:`analyzer.faces.crop_face` cuts one crop from a host frame with OpenCV. Here the
frames are a tensor already on the device (what a GPU decoder gives), and every crop of
every frame in a batch comes from one :func:`torchvision.ops.roi_align` call, so a frame
crosses to the device once and its crops never come back to the host. Both take the same
square (:func:`analyzer.faces.square`). ``roi_align`` averages ``ceil(side / size)``
samples a bin on each axis (its adaptive sampling, per crop): the counterpart of OpenCV's
area resampling for a shrinking crop and of bilinear for a growing one. The frames get a
one-pixel black border, so that outside the frame is black as in ``crop_face``.
``tests/test_crops.py`` holds the two to the same pixels within a few levels;
``bench --parts stages`` times them side by side (on the CPU the host's OpenCV is far
faster). The service cuts its crops here with ``DFM_CROP=device``
(:class:`analyzer.faces.FaceTracker` with a ``device``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from analyzer.faces import Box, square


def crop_on_device(
    frames: Tensor, boxes: Sequence[tuple[int, Box]], *, margin: float, size: int
) -> Tensor:
    """``frames``: (N, H, W, 3) uint8 RGB on any device; ``boxes``: (frame index, box)
    pairs -> (K, 3, size, size) float32 crops in 0..255 on the frames' device, in the
    order of ``boxes``."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got {tuple(frames.shape)}")
    n, height, width = frames.shape[:3]
    if not boxes:
        return torch.zeros((0, 3, size, size), device=frames.device)
    rois = []
    for index, box in boxes:
        if not 0 <= index < n:
            raise ValueError(f"box for frame {index}, but there are {n} frames")
        x0, y0, side = square(box, width, height, margin)
        # +1: the border added below
        rois.append((float(index), x0 + 1.0, y0 + 1.0, x0 + side + 1.0, y0 + side + 1.0))
    # float32 (roi_align takes the boxes in the frames' dtype, and float16 would round the
    # corners of a 4K frame to 2 pixels)
    planes = F.pad(frames.permute(0, 3, 1, 2).float(), (1, 1, 1, 1))
    roi = torch.tensor(rois, dtype=torch.float32, device=frames.device)
    crops = roi_align(planes, roi, (size, size), spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True)  # fmt: skip
    return crops.float()


def as_uint8(crops: Tensor) -> Tensor:
    """Float crops in 0..255 -> uint8, rounded (a quarter of the memory while they wait)."""
    return crops.round().clamp(0, 255).to(torch.uint8)
