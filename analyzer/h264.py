"""Writing RGB frames as an H.264 MP4, the same bytes for the same frames."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np


def write_h264(
    path: Path, frames: Iterator[np.ndarray], size: tuple[int, int], fps: float, crf: int = 23
) -> int:
    """Encode RGB frames to an H.264 MP4 (yuv420p, no audio); returns the frame count."""
    tmp = path.with_name(path.name + ".part")
    count = 0
    with av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        # Without the rate-control lookahead and macroblock tree, x264's output was seen
        # to vary from run to run for the same frames here; with them off it does not.
        stream.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "x264-params": "threads=1:rc-lookahead=0:mbtree=0",
        }
        for rgb in frames:
            # BT.601 I420 by OpenCV: the frame handed over owns fully written planes.
            yuv = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                out.mux(packet)
            count += 1
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return count
