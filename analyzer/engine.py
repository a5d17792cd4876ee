"""Batched inference: the backbone once per face crop, the LSTM head once per window.

Crops come in as 112x112 RGB uint8 arrays (what :mod:`analyzer.faces` makes), or as
tensors already on the device (what :mod:`analyzer.crops` cuts); the engine converts them
to the checkpoint's colour order and normalisation, so preprocessing is the same for
training, scanning and serving. On CUDA it runs channels_last under bf16
autocast; on the CPU in fp32. Scores are ``softmax(logits / T)[FAKE]`` with the
checkpoint's calibrated temperature ``T`` (1 when it has none). Results go back as float32
numpy arrays. With ``compile`` set (``DFM_COMPILE``), the backbone runs compiled
(:mod:`analyzer.compiled`); :meth:`Engine.warmup` compiles it, before serving.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from analyzer.compiled import CompiledBackbone, CompileMode, buckets
from analyzer.errors import DeviceError
from analyzer.model import LoadedModel

log = logging.getLogger(__name__)


def pick_device(name: str = "auto", setting: str = "--device / DFM_DEVICE") -> torch.device:
    """``auto`` means CUDA when one is visible, else the CPU; ``setting`` names the knob."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{setting} {name!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"{setting} asks for {name!r}, but no usable CUDA GPU or driver is visible here; "
            "use auto (the CPU when there is no GPU) or cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{setting} {name!r} is not supported; use auto, cpu or cuda")
    return device


class Engine:
    """Runs one loaded model. Not thread-safe: give it one thread of its own."""

    def __init__(
        self,
        loaded: LoadedModel,
        device: str | torch.device = "auto",
        *,
        compile: CompileMode = "off",
        max_batch: int = 64,
    ) -> None:
        self.device = pick_device(device) if isinstance(device, str) else device
        self.meta = loaded.meta
        self.sha256 = loaded.sha256
        self.model = loaded.model.to(self.device).eval()
        self.fake_index = loaded.meta.fake_index
        self.temperature = loaded.meta.temperature
        self.feature_dim = loaded.meta.feature_dim
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(loaded.meta.mean, device=self.device).view(shape) * 255.0
        self._std = torch.tensor(loaded.meta.std, device=self.device).view(shape) * 255.0
        self._bgr = loaded.meta.colour_order == "BGR"
        self.compiled: CompiledBackbone | None = None
        if compile != "off":
            self.compiled = CompiledBackbone(
                self.model,
                self.device,
                compile,
                sizes=buckets(max_batch),
                input_size=self.input_size,
            )
        log.info(
            "engine: %s %s on %s (%s, backbone %s)",
            loaded.meta.name,
            loaded.meta.version,
            self.device,
            "bf16 autocast" if self.cuda else "fp32",
            "eager" if compile == "off" else f"compiled: {compile}",
        )

    def warmup(self, window: int) -> None:
        """Compile the backbone if asked to, then one small backbone and head call, so the
        first real batch pays no set-up cost. A compiler that fails is a one-line
        :class:`DeviceError` naming the way out."""
        if self.compiled is not None:
            self.compiled.warm()
        size = self.meta.input_size
        feats = self.backbone(np.zeros((2, size, size, 3), np.uint8))
        self.head([np.repeat(feats[:1], window, axis=0)])

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    def prepare(self, crops: np.ndarray) -> Tensor:
        """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float, normalised, model colour order."""
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"crops must be (N, H, W, 3) uint8, got {crops.shape} {crops.dtype}")
        size = self.meta.input_size
        if crops.shape[1:3] != (size, size):
            raise ValueError(f"crops must be {size}x{size}, got {crops.shape[1]}x{crops.shape[2]}")
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device, non_blocking=True)
        return self.normalise(x.permute(0, 3, 1, 2))

    def normalise(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) RGB in 0..255 on the device -> the model's input."""
        if self._bgr:
            x = x.flip(1)
        x = (x.float() - self._mean) / self._std
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def features(self, x: Tensor) -> Tensor:
        """The model's input (what :meth:`normalise` makes) -> (N, F) features, through
        the compiled backbone when there is one."""
        if self.compiled is not None:
            return self.compiled(x)
        with self._autocast():
            return self.model.features(x)

    @torch.inference_mode()
    def backbone(self, crops: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB crops -> (N, F) float32 features."""
        if len(crops) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        return self.features(self.prepare(crops)).float().cpu().numpy()

    @torch.inference_mode()
    def backbone_on_device(self, crops: Tensor) -> np.ndarray:
        """(N, 3, H, W) RGB crops in 0..255 already on the device (what
        :func:`analyzer.crops.crop_on_device` cuts) -> (N, F) float32 features."""
        if len(crops) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        feats = self.features(self.normalise(crops.to(self.device)))
        return feats.float().cpu().numpy()

    @torch.inference_mode()
    def head(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Windows of cached features, each (T_i, F) -> P(FAKE) per window.

        Windows of equal length run as one batch; unequal lengths run in groups.
        """
        scores = np.zeros(len(windows), np.float32)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        for length, idx in by_length.items():
            if length == 0:
                raise ValueError("a window needs at least one frame of features")
            batch = torch.from_numpy(np.stack([windows[i] for i in idx])).to(self.device)
            with self._autocast():
                logits = self.model.head(batch.float())
            scores[idx] = self._p_fake(logits).cpu().numpy()
        return scores

    def _p_fake(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits.float() / self.temperature, dim=1)[:, self.fake_index]

    @torch.inference_mode()
    def clip_logits(self, clips: np.ndarray) -> Tensor:
        """(B, T, H, W, 3) uint8 RGB clips through the whole model -> (B, classes) float
        logits, before the temperature (what calibration fits)."""
        b, t = clips.shape[:2]
        x = self.prepare(clips.reshape(b * t, *clips.shape[2:]))
        x = x.view(b, t, *x.shape[1:])
        with self._autocast():
            return self.model(x).float()

    @torch.inference_mode()
    def score_clips(self, clips: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 RGB clips through the whole model at once -> P(FAKE).

        The way the study scores a clip; the server uses backbone + head instead.
        """
        return self._p_fake(self.clip_logits(clips)).cpu().numpy()
