"""The classifier: reference-project checkpoints (legacy mode), native checkpoints, batching."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models

from analyzer.engine import Engine
from analyzer.errors import CheckpointError
from analyzer.model import (
    ModelMeta,
    VideoClassifier,
    load_checkpoint,
    random_model,
    save_checkpoint,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ReferenceModel(nn.Module):
    """The reference project's network as its published code builds it.

    Kept literal on purpose, down to the LSTM's positional arguments (the 4th is `bias`,
    so passing `bidirectional=False` there builds an LSTM without biases) and the
    time-major LSTM fed a batch-major tensor.
    """

    def __init__(self, num_classes: int = 2, latent_dim: int = 2048, lstm_layers: int = 1,
                 hidden_dim: int = 2048, bidirectional: bool = False) -> None:  # fmt: skip
        super().__init__()
        model = models.resnext50_32x4d(weights=None)
        self.model = nn.Sequential(*list(model.children())[:-2])
        self.lstm = nn.LSTM(latent_dim, hidden_dim, lstm_layers, bidirectional)
        self.relu = nn.LeakyReLU()
        self.dp = nn.Dropout(0.4)
        self.linear1 = nn.Linear(2048, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, seq_length, c, h, w = x.shape
        x = x.view(batch_size * seq_length, c, h, w)
        fmap = self.model(x)
        x = self.avgpool(fmap)
        x = x.view(batch_size, seq_length, 2048)
        x_lstm, _ = self.lstm(x, None)
        return fmap, self.dp(self.linear1(x_lstm[:, -1, :]))


def reference_preprocess(frames_bgr: np.ndarray) -> torch.Tensor:
    """The reference's transform on OpenCV (BGR) frames: ToTensor, Normalize."""
    x = torch.from_numpy(frames_bgr).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    # Trained networks have non-trivial running statistics; make the test see some.
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReferenceModel]:
    torch.manual_seed(1234)
    ref = ReferenceModel()
    _randomise_batchnorm(ref, 1)
    ref.eval()
    path = tmp_path_factory.mktemp("ref") / "model_93_acc_100_frames_final_data.pt"
    torch.save(ref.state_dict(), path)
    return path, ref


def test_a_reference_file_loads_every_weight_and_adds_none(reference_file):
    """The loader maps the reference's keys (``model.N``, ``lstm`` without biases,
    ``linear1``) one to one: nothing left over, nothing made up."""
    path, ref = reference_file
    loaded = load_checkpoint(path)
    ours = loaded.model.state_dict()
    theirs = ref.state_dict()
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in theirs.values())
    assert not any("lstm.bias" in k for k in ours)


def test_legacy_checkpoint_reproduces_reference_outputs(reference_file, caplog):
    path, ref = reference_file
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(path)
    assert "legacy checkpoint" in caplog.text
    assert loaded.meta.legacy and loaded.meta.colour_order == "BGR"
    assert loaded.meta.window_frames == 100  # read from the reference file name
    engine = Engine(loaded, "cpu")

    rng = np.random.default_rng(5)
    for frames in (1, 4, 9):
        rgb = rng.integers(0, 256, (frames, 112, 112, 3), dtype=np.uint8)
        with torch.inference_mode():
            _, logits = ref(reference_preprocess(rgb[..., ::-1].copy())[None])
        expected = torch.softmax(logits, 1)[0, 0].item()  # index 0 = FAKE
        whole = engine.score_clips(rgb[None])[0]
        cached = engine.head([engine.backbone(rgb)])[0]
        assert abs(whole - expected) <= 1e-5, (frames, whole, expected)
        assert abs(cached - expected) <= 1e-5, (frames, cached, expected)


def test_legacy_score_depends_on_the_last_frame_only(reference_file):
    engine = Engine(load_checkpoint(reference_file[0]), "cpu")
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    b = a.copy()
    b[:-1] = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    c = a.copy()
    c[-1] = 255 - c[-1]
    sa, sb, sc = engine.score_clips(np.stack([a, b, c]))
    assert abs(sa - sb) <= 1e-7  # earlier frames changed: same score
    assert abs(sa - sc) > 1e-5  # last frame changed: another score


def test_native_checkpoint_round_trip(tmp_path):
    loaded = random_model(seed=3)
    meta = ModelMeta(version="test-1", training_data="synthetic", metrics={"accuracy": 0.5})
    digest = save_checkpoint(tmp_path / "m.pt", loaded.model, meta)
    again = load_checkpoint(tmp_path / "m.pt")
    assert again.meta == meta and again.sha256 == digest and not again.meta.legacy
    clip = np.random.default_rng(0).integers(0, 256, (1, 3, 112, 112, 3), dtype=np.uint8)
    a = Engine(loaded, "cpu").score_clips(clip)
    b = Engine(again, "cpu").score_clips(clip)
    np.testing.assert_allclose(a, b, atol=0)


def test_compact_checkpoint_round_trip_and_cached_features(tmp_path):
    torch.manual_seed(0)
    model = VideoClassifier(backbone="mobilenet_v3_small", hidden=256).eval()
    meta = ModelMeta(version="compact-1", backbone="mobilenet_v3_small", lstm_hidden=256)
    save_checkpoint(tmp_path / "c.pt", model, meta)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded.model.lstm.hidden_size == 256 and loaded.meta.feature_dim == 576
    engine = Engine(loaded, "cpu")
    clip = np.random.default_rng(1).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    feats = engine.backbone(clip)
    assert feats.shape == (5, 576) and engine.backbone(clip[:0]).shape == (0, 576)
    np.testing.assert_allclose(engine.head([feats]), engine.score_clips(clip[None]), atol=1e-5)
    # The study's architecture cannot read it, and says which architecture it is.
    meta_big = meta.model_copy(update={"backbone": "resnext50_32x4d", "lstm_hidden": None})
    save_checkpoint(tmp_path / "mixed.pt", model, meta_big)
    with pytest.raises(CheckpointError, match="resnext50_32x4d-LSTM2048"):
        load_checkpoint(tmp_path / "mixed.pt")


def test_model_is_correct_for_any_batch_size():
    model = random_model(seed=4).model
    torch.manual_seed(0)
    clips = torch.randn(3, 4, 3, 112, 112)
    with torch.inference_mode():
        together = model(clips)
        alone = torch.cat([model(clips[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_wrong_shape_checkpoint_names_the_weight(tmp_path):
    state = {
        "model.0.weight": torch.zeros(64, 3, 3, 3),  # the model's conv1 is 7x7
        "lstm.weight_ih_l0": torch.zeros(8, 2048),
        "linear1.weight": torch.zeros(2, 2048),
    }
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"'backbone.0.weight' has shape \[64, 3, 3, 3\]"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_unreadable_checkpoint_is_one_clear_error(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a checkpoint this program can read") as info:
        load_checkpoint(tmp_path / "x.pt")
    assert "\n" not in str(info.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_native_model_has_lstm_biases_and_batch_first():
    model = VideoClassifier()
    assert model.lstm.batch_first and model.lstm.bias
    assert VideoClassifier(legacy=True).lstm.bias is False
