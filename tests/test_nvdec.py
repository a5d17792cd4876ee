"""NVDEC in the service's path (``streamer/sources/nvdec.py``), run here with a stand-in
for PyNvVideoCodec: FFmpeg's H.264 decoder with no parameter sets given apart (as NVDEC's
parser has none but what the stream carries), giving each picture as an NV12 tensor and no
time (our wrapper times them). It checks what is ours: the Annex B rewrite, the times of
pictures that come out in display order, the RGB made from NV12 on the device, the
fallback to the CPU and the settings. NVDEC itself has not run: no GPU was lent."""

from __future__ import annotations

import ctypes
import sys
import types

import av
import numpy as np
import pytest
import torch

from streamer.errors import ConfigError
from streamer.sources.decode import DecodeLimits, Demuxed
from streamer.sources.nvdec import decode_device


class _Surfaces:
    """PyNvVideoCodec's decoder as far as the service uses it, over FFmpeg."""

    def __init__(self, codec: str) -> None:
        self.ctx = av.CodecContext.create(codec, "r")
        self.packets = 0

    def Decode(self, packet: types.SimpleNamespace) -> list[torch.Tensor]:  # noqa: N802
        if packet.bsl:
            data = ctypes.string_at(packet.bsl_data, packet.bsl)
            assert data.startswith((b"\0\0\0\1", b"\0\0\1")), "NVDEC takes Annex B"
            self.packets += 1
            frames = self.ctx.decode(av.Packet(data))
        else:
            frames = self.ctx.decode(None)
        out = []
        for frame in frames:
            nv12 = frame.reformat(format="nv12")
            h, w = frame.height, frame.width
            planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in nv12.planes]
            packed = np.concatenate([planes[0][:h, :w], planes[1][: h // 2, :w]])
            out.append(torch.from_numpy(packed)[..., None])  # (H * 3 / 2, W, 1), as DLPack's
        return out


@pytest.fixture
def stand_in(monkeypatch):
    made: list[_Surfaces] = []

    def create(*, gpuid, codec, cudacontext, cudastream, usedevicememory):  # noqa: N803
        assert usedevicememory and gpuid == 0
        made.append(_Surfaces(codec))
        return made[-1]

    module = types.SimpleNamespace(
        CreateDecoder=create,
        PacketData=types.SimpleNamespace,
        cudaVideoCodec=types.SimpleNamespace(H264="h264", HEVC="hevc"),
    )
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
    return made


def _clip(path, *, bframes: bool, codec: str = "libx264", fmt: str = "mp4") -> str:
    """Twelve frames of a moving gradient; x264's default has B-frames, so pictures come out
    of the decoder in another order than their packets go in."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        if codec == "libx264":
            stream.options = {"bf": "3" if bframes else "0", "g": "6"}
        yy, xx = np.mgrid[0:64, 0:96]
        for i in range(12):
            rgb = np.stack([(xx * 2 + i * 9) % 256, yy * 3, (xx + yy + i * 20) % 256], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


def _decoded(path: str, gpu: str | None) -> tuple[Demuxed, list[tuple[float, object]]]:
    video = Demuxed.open(path, limits=DecodeLimits(gpu=gpu))
    pictures = []
    for packet in video.packets():
        pictures += video.pictures(packet)
    pictures += video.pictures(None)
    video.check()
    video.close()
    return video, pictures


@pytest.mark.parametrize("bframes", [False, True], ids=["ip", "b-frames"])
def test_nvdec_pictures_are_the_cpus_at_the_same_times(tmp_path, stand_in, bframes):
    path = _clip(tmp_path / "clip.mp4", bframes=bframes)
    video, on_gpu = _decoded(path, "cpu")  # the stand-in's "GPU" is the CPU
    assert len(stand_in) == 1 and stand_in[0].packets == 12  # every packet to NVDEC
    assert video.nvdec is None  # closed: its session let go
    _, on_cpu = _decoded(path, None)
    assert len(on_gpu) == len(on_cpu) == 12
    for (t_gpu, gpu), (t_cpu, cpu) in zip(on_gpu, on_cpu, strict=True):
        assert t_gpu == pytest.approx(t_cpu)
        tensor = gpu.pixels(None)  # type: ignore[attr-defined]
        assert isinstance(tensor, torch.Tensor) and tensor.shape == (64, 96, 3)
        want = cpu.rgb.astype(np.int16)  # type: ignore[attr-defined]
        assert np.abs(tensor.numpy().astype(np.int16) - want).max() <= 2
        assert np.array_equal(gpu.rgb, tensor.numpy())  # type: ignore[attr-defined]


def test_a_codec_nvdec_does_not_take_decodes_on_the_cpu(tmp_path, stand_in, caplog):
    path = _clip(tmp_path / "clip.mkv", bframes=False, codec="ffv1", fmt="matroska")
    with caplog.at_level("INFO"):
        video, pictures = _decoded(path, "cpu")
    assert video.nvdec is None and not stand_in
    assert "NVDEC does not decode ffv1; decoding on the CPU" in caplog.text
    assert len(pictures) == 12 and not isinstance(pictures[0][1].pixels(None), torch.Tensor)  # type: ignore[attr-defined]


def test_an_annex_b_stream_passes_as_it_is(tmp_path, stand_in):
    """An RTSP camera's H.264 (here a raw .h264 file) is Annex B already."""
    raw = tmp_path / "clip.h264"
    _clip(raw, bframes=False, fmt="h264")
    _, pictures = _decoded(str(raw), "cpu")
    assert len(pictures) == 12 and stand_in[0].packets >= 12


def test_the_decode_setting_names_why_nvdec_cannot_run(monkeypatch, caplog):
    assert decode_device("cpu", torch.device("cuda")) is None
    with caplog.at_level("DEBUG"):
        assert decode_device("auto", torch.device("cpu")) is None
    assert not caplog.text  # a CPU node decodes on the CPU: nothing to say at start-up
    with pytest.raises(
        ConfigError, match=r"DFM_DECODE=nvdec cannot run: the engine's device is not"
    ):
        decode_device("nvdec", torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # not installed
    with pytest.raises(ConfigError, match=r"PyNvVideoCodec is not installed .*DFM_DECODE=cpu"):
        decode_device("nvdec", torch.device("cuda"))
    with caplog.at_level("INFO"):
        assert decode_device("auto", torch.device("cuda")) is None
    assert "decoding on the CPU: PyNvVideoCodec is not installed" in caplog.text


def test_the_gpu_checks_agreement_row_compares_the_service_path_with_ffmpeg(tmp_path, stand_in):
    """``bench --parts nvdec`` on a GPU compares the service's NVDEC pictures with FFmpeg's;
    here the stand-in's: every frame, of the same size, within 2 levels."""
    from pathlib import Path

    from streamer.bench import nvdec_agreement

    agree = nvdec_agreement(Path(_clip(tmp_path / "clip.mp4", bframes=True)), "cpu")
    assert agree["frames_nvdec"] == agree["frames_ffmpeg"] == agree["same_size"] == 12
    assert 0 <= agree["max_level_diff"] <= 2 and agree["mean_level_diff"] < 1


def test_a_kafka_keys_mpeg_ts_decodes_on_nvdec_too(tmp_path, stand_in):
    """A Kafka key's MPEG-TS video (Annex B already) through its feed with DFM_DECODE's
    device: every frame, each a tensor where the decoder left it."""
    from streamer.sources.decode import run_feed
    from streamer.sources.kafka import TS, KafkaOpener
    from tests.test_pool import _ts_messages

    opener = KafkaOpener(TS, 30.0, 5.0, on_bad=lambda _m, why: pytest.fail(why), gpu="cpu")
    for message in _ts_messages(tmp_path):
        assert opener.push(message)
    opener.close()
    frames = list(run_feed(opener.demux()))
    assert len(frames) == 90 and stand_in and stand_in[0].packets >= 90
    assert all(isinstance(f.picture.pixels(None), torch.Tensor) for f in frames)
