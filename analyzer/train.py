"""Training on preprocessed face clips (``manifest.csv`` of ``deepfake-monitor preprocess``).

Defaults follow the study and the reference project: Adam, learning rate 1e-5 (constant;
``lr_schedule="cosine"`` decays it to 0 over the run), weight decay 1e-5, batch 4, 20
epochs, windows of 150 frames. Each epoch: one pass over the training clips (a random
window of each, augmented on the device with kornia, the same transform for every frame of
a clip; optionally with self-blended twins and whole-clip blur, ``blend.py``), then the
validation clips (first window, no augmentation). Every epoch writes a checkpoint with its
metadata and history (``epoch-NNN.pt``, ``last.pt``) plus ``train_state.pt`` (optimizer,
epoch) for ``--resume``; training stops early when the validation loss has not improved
for ``patience`` epochs. Mixed precision (bf16) on CUDA. When it ends, ``best.pt`` and
``last.pt`` are calibrated on the validation clips at the served window (``calibrate.py``).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from torch import nn

from analyzer.blend import recompress, self_blend, soften, varied_blend
from analyzer.calibrate import SERVED_WINDOW, calibrate_checkpoint
from analyzer.datasets import Item
from analyzer.engine import pick_device
from analyzer.errors import DataError
from analyzer.model import (
    BACKBONE_FEATURES,
    MODEL_NAME,
    LoadedModel,
    ModelMeta,
    VideoClassifier,
    fetch_imagenet_backbone,
    load_checkpoint,
    load_imagenet_backbone,
    save_checkpoint,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 20
    batch: int = 4
    lr: float = 1e-5
    weight_decay: float = 1e-5
    # "cosine": the learning rate falls from lr to 0 over the epochs (half a cosine), so the
    # last epoch's weights are not the noise of a large constant step.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    frames: int = 150
    patience: int = 5
    seed: int = 0
    augment: bool = True
    device: str = "auto"
    # "auto": torchvision's ImageNet weights (the torch cache, else downloaded); "none":
    # random weights on purpose; a path: torchvision's .pth file.
    imagenet: Path | Literal["auto", "none"] = "auto"
    backbone: Literal["resnext50_32x4d", "mobilenet_v3_small"] = "resnext50_32x4d"
    lstm_hidden: int | None = None
    pairs: bool = False  # batch a REAL clip with the FAKEs of the same footage, same window
    self_blend: float = 0.0  # share of REAL clips given a self-blended FAKE twin (blend.py)
    # Share of training clips blurred as a whole, REAL and FAKE alike: a face pasted at a
    # low resolution is softer than its frame, and a soft frame alone must not read as FAKE.
    soften: float = 0.0
    # How the self-blended twins are made: "fixed" (blend.self_blend: a soft copy stepped
    # in colour, synth's marks) or "varied" (blend.varied_blend: a random mix of changes,
    # mask shapes and blend ratios; what carries to other manipulations).
    blend: Literal["fixed", "varied"] = "fixed"
    # Share of training clips JPEG-compressed frame by frame, REAL and FAKE alike.
    recompress: float = 0.0
    training_data: str = ""
    version: str = "trained"
    # Window the temperature is fitted at (the service's; shorter validation clips: theirs).
    calibration_window: int = SERVED_WINDOW
    history: list[dict[str, float]] = field(default_factory=list)


def read_clip(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of a preprocessed clip."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise DataError(f"clip {path} has no frames")
    return np.stack(frames)


class ClipSet:
    """Clips in memory (112x112 crops are small), windows of ``frames`` frames."""

    def __init__(self, items: list[Item], frames: int) -> None:
        if not items:
            raise DataError("no clips to train or validate on")
        self.items = items
        self.frames = frames
        self.clips = [read_clip(i.path) for i in items]
        short = [str(i.path) for i, c in zip(items, self.clips, strict=True) if len(c) < frames]
        if short:
            raise DataError(f"{len(short)} clips are shorter than {frames} frames, e.g. {short[0]}")
        self.labels = np.array([0 if i.label == "FAKE" else 1 for i in items])  # FAKE = 0

    def __len__(self) -> int:
        return len(self.items)

    def window(self, i: int, start: int = 0) -> np.ndarray:
        return self.clips[i][start : start + self.frames]

    def epoch_order(self, rng: random.Random, pairs: bool) -> list[tuple[int, int]]:
        """(clip, window start) in training order, each clip at a random window; with
        ``pairs`` the clips of one footage (``Item.pair``) come one after another and share
        their window."""
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            groups.setdefault(item.pair if pairs and item.pair else f"#{i}", []).append(i)
        keys = list(groups)
        rng.shuffle(keys)
        out = []
        for key in keys:
            members = groups[key]
            start = rng.randrange(min(len(self.clips[i]) for i in members) - self.frames + 1)
            out += [(i, start) for i in members]
        return out


def _to_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, T, 3, H, W) float in [0, 1]; normalised after augmenting."""
    return torch.from_numpy(batch).to(device).permute(0, 1, 4, 2, 3).float() / 255.0


def _augmenter() -> nn.Module:
    import kornia.augmentation as K

    return K.VideoSequential(
        K.RandomHorizontalFlip(),
        K.RandomAffine(degrees=5.0, translate=(0.03, 0.03), scale=(0.95, 1.05), p=0.7),
        K.ColorJitter(0.15, 0.15, 0.15, 0.02, p=0.7),
        K.RandomGaussianBlur((3, 3), (0.1, 1.0), p=0.2),
        K.RandomJPEG(jpeg_quality=(40.0, 95.0), p=0.3),
        data_format="BTCHW",
        same_on_frame=True,
    )


def train(
    train_items: list[Item],
    val_items: list[Item],
    out: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    init: Path | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    on_batch: Callable[[int, float, float], None] | None = None,
) -> list[dict[str, float]]:
    """Train; returns the per-epoch history (also stored in every checkpoint).

    ``init`` starts from another checkpoint's weights (a fine-tune) with a fresh optimizer:
    its history carries on, and epochs count on from its last, as ``resume`` would.
    ``progress`` gets each epoch's history row; ``on_batch`` gets, after each training
    batch, its number of clips and the epoch's running loss and accuracy.
    """
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    compact = config.backbone == "mobilenet_v3_small"
    hidden = config.lstm_hidden or BACKBONE_FEATURES[config.backbone]
    meta = ModelMeta(
        name=f"mobilenetv3s-lstm{hidden}" if compact else MODEL_NAME,
        version=config.version,
        window_frames=config.frames,
        training_data=config.training_data,
        backbone=config.backbone,
        lstm_hidden=config.lstm_hidden,
    )
    model = VideoClassifier.for_meta(meta)
    if init is not None and resume:
        raise DataError("--init starts a new run and --resume continues one; give one of them")
    resuming = resume and (out / "last.pt").is_file()
    history: list[dict[str, float]] = []  # a fine-tune carries its checkpoint's on
    if init is not None:
        started, history = _fine_tuned(model, meta, init)
        meta = meta.model_copy(update={"initial_weights": started})
    elif not resuming:  # else the weights come from last.pt, which says where it started
        meta = meta.model_copy(update={"initial_weights": _initial_weights(model, config)})
    train_set = ClipSet(train_items, config.frames)  # after the weights: offline fails at once
    val_set = ClipSet(val_items, config.frames)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch = len(history)
    if init is not None:
        rng.seed(config.seed + start_epoch)
        log.info("fine-tuning %s after its epoch %d", init, start_epoch)
    if resuming:
        loaded = _same_shape(out / "last.pt", meta, "resume")
        model.load_state_dict(loaded.model.state_dict())
        history = list(loaded.meta.history)
        meta = meta.model_copy(update={"initial_weights": loaded.meta.initial_weights})
        state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        rng.seed(config.seed + start_epoch)
        log.info("resuming after epoch %d", start_epoch)
    model.to(device)
    for group in optimizer.param_groups:  # the optimizer state follows the model
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    st[k] = v.to(device)

    mean = torch.tensor(meta.mean, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(meta.std, device=device).view(1, 1, 3, 1, 1)
    augment = _augmenter().to(device) if config.augment else None
    counts = np.bincount(train_set.labels, minlength=2).astype(float)
    counts[0] += config.self_blend * counts[1]  # the blended copies, expected
    weights = torch.tensor(
        len(train_set.labels) / (2.0 * np.maximum(counts, 1)), dtype=torch.float32
    )
    blend_gen = torch.Generator().manual_seed(config.seed + start_epoch)
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device))
    cuda = device.type == "cuda"
    best = min((h["val_loss"] for h in history), default=math.inf)
    stale = 0

    for epoch in range(start_epoch, config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(config, epoch)
        model.train()
        order = train_set.epoch_order(rng, config.pairs)
        total = correct = 0
        loss_sum = 0.0
        for at in range(0, len(order), config.batch):
            batch = order[at : at + config.batch]
            idx = [i for i, _ in batch]
            x = _to_tensor(np.stack([train_set.window(i, start) for i, start in batch]), device)
            labels = train_set.labels[idx]
            if config.self_blend > 0:
                # Paired: the blended copy joins the batch beside its REAL original, so
                # the two differ by the blending alone.
                pick = (labels == 1) & (
                    torch.rand(len(idx), generator=blend_gen).numpy() < config.self_blend
                )
                if pick.any():
                    chosen = x[torch.from_numpy(pick).to(device)]
                    blend = varied_blend if config.blend == "varied" else self_blend
                    x = torch.cat([x, blend(chosen, blend_gen)])
                    labels = np.concatenate([labels, np.zeros(int(pick.sum()), labels.dtype)])
            if config.soften > 0:
                x = soften(x, config.soften, blend_gen)
            if config.recompress > 0:
                x = recompress(x, config.recompress, blend_gen)
            if augment is not None:
                x = augment(x).clamp(0, 1)
            x = (x - mean) / std
            y = torch.from_numpy(labels).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == y).sum())
            total += len(labels)
            if on_batch is not None:
                on_batch(len(idx), loss_sum / total, correct / total)
        _recalibrate_batchnorm(model, train_set, device, mean, std, seed=config.seed * 1000 + epoch)
        val_loss, val_acc = _evaluate(model, val_set, loss_fn, device, mean, std)
        row = {
            "epoch": float(epoch + 1),
            "train_loss": loss_sum / total,
            "train_accuracy": correct / total,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": epoch_lr(config, epoch),
        }
        history.append(row)
        meta = meta.model_copy(update={"history": history, "metrics": {"val_accuracy": val_acc}})
        save_checkpoint(out / f"epoch-{epoch + 1:03d}.pt", model.cpu(), meta)
        save_checkpoint(out / "last.pt", model, meta)
        model.to(device)
        torch.save(
            {"optimizer": optimizer.state_dict(), "epoch": epoch + 1}, out / "train_state.pt"
        )
        if progress is not None:
            progress(row)
        if val_loss < best - 1e-6:
            best, stale = val_loss, 0
            save_checkpoint(out / "best.pt", model.cpu(), meta)
            model.to(device)
        else:
            stale += 1
            if stale >= config.patience:
                log.info("early stop: validation loss has not improved for %d epochs", stale)
                break
    _calibrate(out, val_set, config)
    return history


def _calibrate(out: Path, val_set: ClipSet, config: TrainConfig) -> None:
    labels = [item.label for item in val_set.items]
    if len(set(labels)) < 2:
        log.warning("not calibrated: the validation clips are all %s", labels[0])
        return
    window = min(config.calibration_window, min(len(c) for c in val_set.clips))
    for name in ("best.pt", "last.pt"):
        if (out / name).is_file():
            calibrate_checkpoint(
                out / name,
                val_set.clips,
                labels,
                window=window,
                data=f"validation clips ({len(labels)})",
                device=config.device,
            )


def _same_shape(path: Path, meta: ModelMeta, verb: str) -> LoadedModel:
    """The checkpoint at ``path``, refused unless it is the model ``meta`` describes."""
    loaded = load_checkpoint(path)
    if (loaded.meta.backbone, loaded.meta.hidden) != (meta.backbone, meta.hidden):
        raise DataError(
            f"{path} holds a {loaded.meta.backbone} LSTM{loaded.meta.hidden}; "
            f"{verb} with --backbone {loaded.meta.backbone} --lstm-hidden {loaded.meta.hidden}"
        )
    return loaded


def _fine_tuned(
    model: VideoClassifier, meta: ModelMeta, init: Path
) -> tuple[str, list[dict[str, float]]]:
    """Load ``init``'s weights into ``model``; returns what the new checkpoint started from
    and the history it carries on."""
    loaded = _same_shape(init, meta, "fine-tune it")
    model.load_state_dict(loaded.model.state_dict())
    started = f"checkpoint:{init.name} ({loaded.meta.version}, from {loaded.meta.initial_weights})"
    return started, list(loaded.meta.history)


def _initial_weights(model: VideoClassifier, config: TrainConfig) -> str:
    """Load the backbone's first weights as ``config.imagenet`` says; returns their name."""
    if config.imagenet == "none":
        return "random"
    if config.imagenet == "auto":
        return "imagenet:" + fetch_imagenet_backbone(model, config.backbone)
    load_imagenet_backbone(model, Path(config.imagenet))
    return f"imagenet-file:{Path(config.imagenet).name}"


def epoch_lr(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based); a function of the epoch alone, so a
    resumed run picks the schedule up where it stopped."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


@torch.no_grad()
def _recalibrate_batchnorm(
    model: nn.Module,
    data: ClipSet,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    seed: int,
    frames: int = 1024,
    batch: int = 32,
) -> None:
    """Recompute BatchNorm running statistics as exact averages over training frames.

    The running averages kept during training lag behind the weights, far behind with a
    small momentum (MobileNetV3's is 0.01) or few steps, and a model in eval mode with
    stale statistics can score every clip alike. So before validation and before each
    checkpoint, the statistics are measured afresh ("precise BN") over ``frames`` frames,
    each from a random clip at a random position, ``batch`` frames a forward pass: a
    variance measured within one clip's frames (or one frame) would leave out how frames
    differ from clip to clip, and too few frames give every epoch's checkpoint a different
    calibration. Draws from its own generator, so the training order does not depend on it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    rng = random.Random(seed)
    frames = min(frames, sum(len(c) for c in data.clips))
    for _ in range(max(1, frames // batch)):
        picks = [rng.randrange(len(data)) for _ in range(batch)]
        x = np.stack([data.clips[i][rng.randrange(len(data.clips[i]))][None] for i in picks])
        model.features(((_to_tensor(x, device) - mean) / std).flatten(0, 1))  # type: ignore[operator]
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@torch.inference_mode()
def _evaluate(
    model: nn.Module,
    data: ClipSet,
    loss_fn: nn.Module,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(len(data)):
        x = (_to_tensor(data.window(i)[None], device) - mean) / std
        y = torch.tensor([data.labels[i]], device=device)
        logits = model(x)
        loss_sum += float(loss_fn(logits.float(), y))
        correct += int(logits.argmax(1).item() == data.labels[i])
    return loss_sum / len(data), correct / len(data)
