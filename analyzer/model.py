"""The backbone-LSTM video classifier and its checkpoints.

The study's architecture is a ResNeXt50_32x4d per frame and an LSTM of 2048 units over
the frames of a window; that is the default for training and for every checkpoint that
does not say otherwise. The same head design also runs on a light backbone
(``mobilenet_v3_small``, 576 features, LSTM of 256), which is what the bundled demo
checkpoint uses so that it fits in the repository. Which one a checkpoint holds is in its
:class:`ModelMeta` (``backbone``, ``lstm_hidden``).

Two layouts load here:

* native checkpoints, written by :func:`save_checkpoint`: the weights plus a
  :class:`ModelMeta` describing how the model must be fed;
* the reference project's bare ``state_dict`` files (keys ``model.N.*``, ``lstm.*``
  without biases, ``linear1.*``). Those load in *legacy* mode, which serves them the way
  the reference project does: BGR input, and the verdict of a window is the verdict of
  its last frame alone (see :meth:`ResNeXtLSTM.head`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_small, resnext50_32x4d

from analyzer.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deepfake-monitor/checkpoint/v1"
MODEL_NAME = "resnext50-lstm"
# Backbone -> width of its pooled features.
BACKBONE_FEATURES = {"resnext50_32x4d": 2048, "mobilenet_v3_small": 576}
FEATURES = BACKBONE_FEATURES["resnext50_32x4d"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_VERSION = "random-init"
# The demo checkpoint ships here once the offline workflow has made one.
BUNDLED_CHECKPOINT = Path(__file__).parent / "assets" / "demo.pt"


DEFAULT_THRESHOLD = 0.5  # P(FAKE) for a FAKE label when neither setting nor checkpoint says


class Calibration(BaseModel):
    """Temperature scaling fitted on labelled clips at one window length: served scores
    are ``softmax(logits / temperature)``, so a score of 0.8 means about 8 in 10 such
    windows are FAKE (:mod:`analyzer.calibrate`)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(gt=0)
    window_frames: int = Field(ge=1)
    videos: int = Field(ge=1)
    data: str = ""
    # On the clips it was fitted on, before and after: negative log-likelihood, ECE.
    log_loss_before: float
    log_loss_after: float
    ece_before: float
    ece_after: float


class OperatingPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0, le=1)
    fpr: float
    tpr: float


class OperatingPoints(BaseModel):
    """Two thresholds measured by ``evaluate`` on labelled clips, in calibrated scores:
    where misses and false alarms are equal (``eer``), and the most FAKEs found with a
    false-positive rate of at most ``target`` (``target_fpr``; what the service uses)."""

    model_config = ConfigDict(extra="forbid")

    eer: OperatingPoint
    target_fpr: OperatingPoint
    target: float = Field(gt=0, lt=1)
    window_frames: int = Field(ge=1)
    videos: int = Field(ge=1)
    data: str = ""


class ModelMeta(BaseModel):
    """Everything a server needs to feed a checkpoint the way it was trained."""

    model_config = ConfigDict(extra="forbid")

    name: str = MODEL_NAME
    version: str
    class_names: list[str] = Field(default_factory=lambda: ["FAKE", "REAL"])
    window_frames: int = Field(150, ge=1)
    fps: float = Field(30.0, gt=0)
    input_size: int = Field(112, ge=32)
    colour_order: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    backbone: Literal["resnext50_32x4d", "mobilenet_v3_small"] = "resnext50_32x4d"
    # LSTM units; None means as many as the backbone has features (the study's choice).
    lstm_hidden: int | None = Field(None, ge=1)
    # "lstm-mean": batch-first LSTM over the window, outputs averaged over time.
    # "legacy-last-frame": the reference project's serving behaviour.
    head: Literal["lstm-mean", "legacy-last-frame"] = "lstm-mean"
    training_data: str = ""
    # Where the backbone's first weights came from: "imagenet:<torchvision weights>",
    # "imagenet-file:<name>", "random", or "" (not recorded: older checkpoints).
    initial_weights: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    history: list[dict[str, float]] = Field(default_factory=list)
    calibration: Calibration | None = None
    operating_points: OperatingPoints | None = None

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    def served_threshold(self, setting: float | None) -> tuple[float, str]:
        """The threshold to serve and where it comes from: ``setting`` (DFM_THRESHOLD,
        ``--threshold``) when given, else the checkpoint's target-FPR operating point,
        else :data:`DEFAULT_THRESHOLD`."""
        if setting is not None:
            return setting, "setting"
        if self.operating_points is not None:
            return self.operating_points.target_fpr.threshold, "checkpoint"
        return DEFAULT_THRESHOLD, "default"

    @property
    def fake_index(self) -> int:
        try:
            return self.class_names.index("FAKE")
        except ValueError:
            raise CheckpointError(
                f"checkpoint classes {self.class_names} have no 'FAKE' class; "
                "retrain or relabel the checkpoint"
            ) from None

    @property
    def legacy(self) -> bool:
        return self.head == "legacy-last-frame"

    @property
    def feature_dim(self) -> int:
        return BACKBONE_FEATURES[self.backbone]

    @property
    def hidden(self) -> int:
        return self.lstm_hidden or self.feature_dim


def _backbone(name: str) -> nn.Sequential:
    """The convolutional part of a torchvision classifier, without pooling and classifier."""
    if name == "resnext50_32x4d":
        # conv1, bn1, relu, maxpool, layer1..layer4 (the reference's `model.0` .. `model.7`).
        return nn.Sequential(*list(resnext50_32x4d(weights=None).children())[:-2])
    if name == "mobilenet_v3_small":
        features = nn.Sequential(*mobilenet_v3_small(weights=None).features)
        # torchvision builds it with BatchNorm momentum 0.01, tuned for ImageNet's many
        # steps; on a small data set the running statistics then stay near their initial
        # values and the model in eval mode scores every clip alike. 0.1 is the default.
        for module in features.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
        return features
    raise CheckpointError(f"unknown backbone {name!r}; use one of {sorted(BACKBONE_FEATURES)}")


class VideoClassifier(nn.Module):
    """A CNN per frame, then an LSTM over the frames of a window.

    ``features`` works on single frames and ``head`` on sequences of their features, so a
    server can run the backbone once per frame and the head once per window; in eval mode
    that gives the same score as ``forward`` on the whole clip.
    """

    def __init__(
        self,
        *,
        backbone: str = "resnext50_32x4d",
        hidden: int | None = None,
        legacy: bool = False,
        num_classes: int = 2,
        dropout: float = 0.4,
    ):
        super().__init__()
        self.backbone = _backbone(backbone)
        self.feature_dim = BACKBONE_FEATURES[backbone]
        hidden = hidden or self.feature_dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        # The reference passes False as nn.LSTM's 4th positional argument, which is `bias`.
        self.lstm = nn.LSTM(
            self.feature_dim, hidden, num_layers=1, bias=not legacy, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        self.legacy = legacy

    @classmethod
    def for_meta(cls, meta: ModelMeta) -> VideoClassifier:
        return cls(
            backbone=meta.backbone,
            hidden=meta.lstm_hidden,
            legacy=meta.legacy,
            num_classes=len(meta.class_names),
        )

    def features(self, frames: Tensor) -> Tensor:
        """(N, 3, H, W) normalised frames -> (N, F) features."""
        return self.pool(self.backbone(frames)).flatten(1)

    def head(self, feats: Tensor) -> Tensor:
        """(B, T, F) features of B windows -> (B, classes) logits."""
        if self.legacy:
            # The reference feeds (1, T, F) to a time-major LSTM: T sequences of one step
            # each, from a zero state, and keeps the output of the last one. So only the
            # window's last frame counts, and it counts on its own.
            out, _ = self.lstm(feats[:, -1:, :])
            return self.classifier(self.dropout(out[:, 0]))
        out, _ = self.lstm(feats)
        return self.classifier(self.dropout(out.mean(dim=1)))

    def forward(self, clips: Tensor) -> Tensor:
        """(B, T, 3, H, W) normalised clips -> (B, classes) logits."""
        b, t = clips.shape[:2]
        feats = self.features(clips.flatten(0, 1)).view(b, t, -1)
        return self.head(feats)


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with the facts about where it came from."""

    model: VideoClassifier
    meta: ModelMeta
    sha256: str | None = None
    path: Path | None = None
    native: bool = True  # False: a reference-project state_dict, served in legacy mode


def random_model(seed: int = 0) -> LoadedModel:
    """Untrained weights from a fixed seed, for smoke tests and benchmarks only."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = VideoClassifier()
    finally:
        torch.random.set_rng_state(gen_state)
    meta = ModelMeta(version=RANDOM_VERSION, training_data="none: random weights")
    return LoadedModel(model.eval(), meta)


def save_checkpoint(path: Path, model: VideoClassifier, meta: ModelMeta) -> str:
    """Write weights and metadata to ``path``; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "meta": meta.model_dump(mode="json"),
        "state_dict": model.state_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a native checkpoint or a reference-project state_dict (legacy mode)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing file")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for a bad file
        log.debug("torch.load(%s) failed: %r", path, exc)
        raise CheckpointError(
            f"{path} is not a checkpoint this program can read (not a PyTorch file, damaged, "
            "or holding objects other than tensors); pass a file written by "
            "'deepfake-monitor train' or a reference-project state_dict"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a state_dict")

    if raw.get("format") == CHECKPOINT_FORMAT:
        try:
            meta = ModelMeta.model_validate(raw["meta"])
        except Exception as exc:
            raise CheckpointError(f"{path} has unreadable metadata: {exc}") from None
        state = raw["state_dict"]
    elif _is_reference_layout(raw):
        state = {_legacy_key(k): v for k, v in raw.items()}
        meta = _legacy_meta(path)
        log.warning(
            "%s is a legacy checkpoint in the reference project's layout: serving it as "
            "that project did (BGR input, each window scored by its last frame alone)",
            path,
        )
    else:
        keys = ", ".join(list(raw)[:4])
        raise CheckpointError(
            f"{path} is neither a deepfake-monitor checkpoint nor a reference state_dict "
            f"(first keys: {keys})"
        )

    model = VideoClassifier.for_meta(meta)
    _check_fits(path, model, state, meta)
    model.load_state_dict(state)
    model.to(map_location)
    native = raw.get("format") == CHECKPOINT_FORMAT
    return LoadedModel(model.eval(), meta, file_sha256(path), path, native)


def load_imagenet_backbone(model: VideoClassifier, path: Path) -> None:
    """Load torchvision's ImageNet weights of the model's backbone from a local file.

    ``resnext50_32x4d-*.pth`` for the study's model, ``mobilenet_v3_small-*.pth`` for the
    compact one; nothing is downloaded.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read ImageNet weights {path}: {exc}") from None
    _load_backbone_state(model, state, str(path))


# torchvision's ImageNet weights of each backbone: the ones the study's code gets with
# pretrained=True (V1), fetched by ``--imagenet auto`` into the torch cache.
IMAGENET_WEIGHTS = {
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights.IMAGENET1K_V1",
    "mobilenet_v3_small": "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
}


def fetch_imagenet_backbone(model: VideoClassifier, backbone: str) -> str:
    """Load torchvision's ImageNet weights through its weights API: from the torch cache,
    else downloaded into it. Returns the weights' name; one clear error when offline."""
    from torchvision.models import get_weight

    name = IMAGENET_WEIGHTS[backbone]
    weights = get_weight(name)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; RuntimeError: bad hash
        log.debug("fetching %s failed: %r", name, exc)
        raise CheckpointError(
            f"cannot fetch torchvision's ImageNet weights {name} ({weights.url}): "
            f"{type(exc).__name__}; offline, pass --imagenet FILE (that .pth file) or "
            "--imagenet none to start from random weights"
        ) from None
    _load_backbone_state(model, state, name)
    return name


def _load_backbone_state(model: VideoClassifier, state: dict[str, Tensor], source: str) -> None:
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    index = {name: str(i) for i, name in enumerate(names)}
    mapped = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in index:
            mapped[f"{index[head]}.{rest}"] = value
        elif head == "features":  # MobileNet: features.N.* -> N.*
            mapped[rest] = value
    missing, _ = model.backbone.load_state_dict(mapped, strict=False)
    if missing:
        raise CheckpointError(f"{source} lacks backbone weights such as {missing[0]}")


def find_cached_imagenet_weights() -> Path | None:
    """torchvision's ResNeXt50 ImageNet file if it is already in the local torch cache."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob("resnext50_32x4d-*.pth"))
    return found[-1] if found else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_reference_layout(state: dict[str, Any]) -> bool:
    keys = {k.removeprefix("module.") for k in state}
    return "model.0.weight" in keys and "linear1.weight" in keys and "lstm.bias_ih_l0" not in keys


def _legacy_key(key: str) -> str:
    key = key.removeprefix("module.")
    if key.startswith("model."):
        return "backbone." + key.removeprefix("model.")
    if key.startswith("linear1."):
        return "classifier." + key.removeprefix("linear1.")
    return key


def _legacy_meta(path: Path) -> ModelMeta:
    # Reference files are named model_<acc>_acc_<frames>_frames_<data>.pt
    match = re.search(r"_(\d+)_frames", path.name)
    frames = int(match.group(1)) if match else 150
    return ModelMeta(
        version=f"legacy:{path.name}",
        window_frames=frames,
        colour_order="BGR",
        head="legacy-last-frame",
        training_data="reference project checkpoint (see its own documentation)",
    )


def _check_fits(path: Path, model: nn.Module, state: dict[str, Tensor], meta: ModelMeta) -> None:
    arch = f"{meta.backbone}-LSTM{meta.hidden}"
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks weight '{key}' of the {arch}")
        got = tuple(state[key].shape)
        if got != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path} does not fit the {arch}: '{key}' has shape "
                f"{list(got)} in the file, the model needs {list(tensor.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"checkpoint {path} has weights this model lacks, e.g. '{extra[0]}'")
