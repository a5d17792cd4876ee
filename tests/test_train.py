"""`deepfake-monitor train`: the loss goes down, checkpoints load, resume continues."""

from __future__ import annotations

import json

import pytest
import torch

from analyzer.model import load_checkpoint
from analyzer.train import TrainConfig, epoch_lr
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def manifest(synth_clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    result = run_cli("preprocess", str(synth_clips), str(out), "--frames", "12", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return out / "manifest.csv"


def test_short_training_lowers_the_loss_and_resumes(manifest, tmp_path):
    out = tmp_path / "run"
    # The compact model fits the few clips within a few epochs; ResNeXt50 from scratch
    # needs far more steps before its loss moves.
    common = ["--frames", "6", "--batch", "2", "--lr", "1e-3", "--no-augment", "--device", "cpu",
              "--pairs", "--backbone", "mobilenet_v3_small", "--lstm-hidden", "32",
              "--imagenet", "none"]  # fmt: skip
    first = run_cli("train", str(manifest), str(out), "--epochs", "3", *common, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "epoch 3/3" in first.stderr
    loaded = load_checkpoint(out / "last.pt")
    history = loaded.meta.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert loaded.meta.window_frames == 6 and loaded.meta.version == "trained"
    assert loaded.meta.initial_weights == "random"  # --imagenet none, recorded
    assert (out / "epoch-001.pt").is_file() and (out / "best.pt").is_file()

    again = run_cli("train", str(manifest), str(out), "--epochs", "4", "--resume", *common,
                    timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "epoch 4/4" in again.stderr and "epoch 1/4" not in again.stderr
    assert [h["epoch"] for h in load_checkpoint(out / "last.pt").meta.history] == [1, 2, 3, 4]

    # A fine-tune starts from the weights of a checkpoint, counting its epochs on: at a
    # learning rate too small to move them, one epoch later they are still its weights.
    tuned = tmp_path / "tuned"
    init = ["--init", str(out / "last.pt")]
    slow = [*common[:5], "1e-9", *common[6:]]
    fine = run_cli("train", str(manifest), str(tuned), "--epochs", "5", *init, *slow, timeout=600)
    assert fine.returncode == 0, fine.stderr[-3000:]
    assert "epoch 5/5" in fine.stderr and "epoch 1/5" not in fine.stderr
    start, after = load_checkpoint(out / "last.pt"), load_checkpoint(tuned / "last.pt")
    assert [h["epoch"] for h in after.meta.history] == [1, 2, 3, 4, 5]
    assert after.meta.initial_weights == "checkpoint:last.pt (trained, from random)"
    tuned_params = dict(after.model.named_parameters())
    for name, p0 in start.model.named_parameters():
        assert torch.allclose(p0, tuned_params[name], atol=1e-5), name
    other = run_cli("train", str(manifest), str(tmp_path / "x"), *init, "--device", "cpu",
                    "--backbone", "mobilenet_v3_small", "--lstm-hidden", "64")  # fmt: skip
    assert other.returncode == 2
    assert "fine-tune it with --backbone mobilenet_v3_small --lstm-hidden 32" in other.stderr
    both = run_cli("train", str(manifest), str(tuned), *init, "--resume")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_augmented_training_of_the_compact_model(manifest, tmp_path):
    # With FAKE twins self-blended on the fly, validated on a manifest of its own.
    result = run_cli("train", str(manifest), str(tmp_path / "aug"), "--epochs", "1", "--frames",
                     "4", "--batch", "2", "--device", "cpu", "--backbone", "mobilenet_v3_small",
                     "--lstm-hidden", "32", "--model-version", "tiny-1", "--self-blend", "1",
                     "--val-manifest", str(manifest), "--lr-schedule", "cosine", "--lr", "1e-4",
                     "--imagenet", "none", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    meta = load_checkpoint(tmp_path / "aug" / "last.pt").meta
    assert meta.history[0]["train_loss"] > 0 and meta.version == "tiny-1"
    assert meta.history[0]["lr"] == pytest.approx(1e-4)  # the schedule starts at --lr
    clips = len(manifest.read_text().splitlines()) - 1
    assert f"(train {clips}, val {clips})" in meta.training_data
    assert (meta.backbone, meta.hidden) == ("mobilenet_v3_small", 32)
    # Resuming with another architecture is refused with the options that would fit.
    again = run_cli("train", str(manifest), str(tmp_path / "aug"), "--epochs", "2", "--frames",
                    "4", "--device", "cpu", "--resume")  # fmt: skip
    assert again.returncode == 2
    assert "--backbone mobilenet_v3_small --lstm-hidden 32" in again.stderr
    bad = run_cli("train", str(manifest), str(tmp_path / "bad"), "--self-blend", "2")
    assert bad.returncode == 2 and "not a share between 0 and 1" in bad.stderr


def test_imagenet_weights_come_from_a_file_or_stop_training_at_once_offline(manifest, tmp_path):
    """--imagenet auto (the default) fetches torchvision's weights; offline it stops at
    once with one line naming the two ways on. A file of torchvision's weights loads, and
    the checkpoint says which start it had."""
    import os

    import torch
    from torchvision.models import mobilenet_v3_small

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"),  # nothing cached
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # fmt: skip
    offline = run_cli("train", str(manifest), str(tmp_path / "off"), "--backbone",
                      "mobilenet_v3_small", "--device", "cpu", env=env, timeout=120)  # fmt: skip
    assert offline.returncode == 2, offline.stderr[-2000:]
    line = offline.stderr.strip().splitlines()[-1]
    assert "MobileNet_V3_Small_Weights.IMAGENET1K_V1" in line
    assert "--imagenet FILE" in line and "--imagenet none" in line
    assert "Traceback" not in offline.stderr and not (tmp_path / "off" / "last.pt").exists()

    torch.manual_seed(3)
    weights = tmp_path / "mobilenet_v3_small-imagenet.pth"
    torch.save(mobilenet_v3_small(weights=None).state_dict(), weights)
    run = tmp_path / "file"
    result = run_cli("train", str(manifest), str(run), "--epochs", "1", "--frames", "4",
                     "--batch", "2", "--no-augment", "--device", "cpu", "--backbone",
                     "mobilenet_v3_small", "--lstm-hidden", "16", "--imagenet", str(weights),
                     "--lr", "0", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_checkpoint(run / "last.pt")
    assert loaded.meta.initial_weights == f"imagenet-file:{weights.name}"
    first = torch.load(weights, weights_only=True)["features.0.0.weight"]
    assert torch.equal(loaded.model.backbone[0][0].weight, first)  # lr 0: still the file's
    missing = run_cli("train", str(manifest), str(run), "--imagenet", str(tmp_path / "nope.pth"))
    assert missing.returncode == 2 and "neither auto, none nor an existing file" in missing.stderr


def test_cosine_schedule_falls_from_lr_towards_zero_and_constant_stays():
    cosine = TrainConfig(lr=1e-3, epochs=10, lr_schedule="cosine")
    rates = [epoch_lr(cosine, e) for e in range(10)]
    assert rates[0] == pytest.approx(1e-3) and rates[5] == pytest.approx(5e-4)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False)) and 0 < rates[-1] < 1e-4
    assert {epoch_lr(TrainConfig(lr=1e-3, epochs=10), e) for e in range(10)} == {1e-3}


def test_evaluate_writes_a_report_for_a_trained_checkpoint(manifest, tmp_path):
    from analyzer.model import file_sha256

    run = tmp_path / "run"
    # Validated on all four clips (two REAL, two FAKE), so training ends by calibrating.
    trained = run_cli("train", str(manifest), str(run), "--epochs", "1", "--frames", "6",
                      "--batch", "2", "--no-augment", "--device", "cpu", "--val-manifest",
                      str(manifest), "--imagenet", "none", timeout=600)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    # Fitted at the served window, cut to the clips' 12 frames, not the 6 trained on.
    calibration = load_checkpoint(run / "last.pt").meta.calibration
    assert calibration is not None and calibration.window_frames == 12
    assert calibration.videos == 4 and calibration.log_loss_after <= calibration.log_loss_before
    assert "calibrated on 4 validation clips (4) at 12-frame windows" in trained.stdout
    report = tmp_path / "report"
    result = run_cli("evaluate", str(manifest), str(run / "last.pt"), str(report), "--split", "all",
                     "--device", "cpu", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 videos: accuracy" in result.stdout
    for name in ("metrics.json", "confusion_matrix.png", "roc.png", "loss.png", "predictions.csv",
                 "reliability.png"):  # fmt: skip
        assert (report / name).stat().st_size > 0, name
    assert "(12-frame windows)" in result.stdout  # the window it was calibrated at
    written = json.loads((report / "metrics.json").read_text())
    assert written["window_frames"] == 12
    assert written["temperature"] == pytest.approx(calibration.temperature)
    # The operating points went into the checkpoint, where the service reads them.
    points = load_checkpoint(run / "last.pt").meta.operating_points
    assert points is not None and (points.videos, points.window_frames) == (4, 12)
    assert points.target_fpr.threshold == pytest.approx(
        written["operating_points"]["target_fpr"]["threshold"]
    )
    assert f"recorded in {run / 'last.pt'}" in result.stdout
    before = file_sha256(run / "last.pt")
    shorter = run_cli("evaluate", str(manifest), str(run / "last.pt"), str(tmp_path / "r3"),
                      "--split", "all", "--window", "3", "--device", "cpu",
                      "--no-record")  # fmt: skip
    assert shorter.returncode == 0 and "(3-frame windows)" in shorter.stdout
    assert "not recorded in the checkpoint (--no-record)" in shorter.stdout
    assert file_sha256(run / "last.pt") == before  # --no-record: untouched
    assert json.loads((tmp_path / "r3" / "metrics.json").read_text())["window_frames"] == 3

    def p_fake(folder):
        lines = (folder / "predictions.csv").read_text().splitlines()[1:]
        return [float(line.rsplit(",", 1)[1]) for line in lines]

    assert p_fake(tmp_path / "r3") != p_fake(report)  # scored on 3 frames, not labelled so
    # Four clips of two identities: the 70/20/10 split leaves the test part empty.
    empty = run_cli("evaluate", str(manifest), str(run / "last.pt"), str(report), "--split",
                    "test", "--device", "cpu")  # fmt: skip
    assert empty.returncode == 2 and "split" in empty.stderr


def test_calibrate_makes_a_reference_state_dict_a_calibrated_native_checkpoint(manifest, tmp_path):
    import torch

    from analyzer.engine import Engine
    from analyzer.train import read_clip
    from tests.test_model import ReferenceModel

    torch.manual_seed(7)
    path = tmp_path / "model_90_acc_12_frames_x.pt"
    torch.save(ReferenceModel().eval().state_dict(), path)
    result = run_cli("calibrate", str(manifest), str(path), "--split", "all", "--window", "12",
                     "--device", "cpu", timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "model_90_acc_12_frames_x.calibrated.pt"
    assert f"written to {out}" in result.stdout and "temperature" in result.stdout
    plain, calibrated = load_checkpoint(path), load_checkpoint(out)
    assert calibrated.native and not plain.native
    assert calibrated.meta.legacy and calibrated.meta.colour_order == "BGR"  # still served so
    c = calibrated.meta.calibration
    assert c is not None and (c.videos, c.window_frames) == (4, 12)
    assert c.log_loss_after <= c.log_loss_before
    # The same weights; only the temperature differs.
    clip = read_clip(next(manifest.parent.glob("**/*.mp4")))[None, :12]
    z = Engine(plain, "cpu").clip_logits(clip)
    got = Engine(calibrated, "cpu").score_clips(clip)[0]
    assert got == pytest.approx(float(torch.softmax(z / c.temperature, 1)[0, 0]), abs=1e-5)
    # Clips shorter than the window: one line naming the fix.
    short = run_cli("calibrate", str(manifest), str(path), "--split", "all", "--device", "cpu")
    assert short.returncode == 2 and "pass --window 12" in short.stderr


def test_pairs_are_batched_together_on_the_same_frames(manifest):
    import random

    from analyzer.datasets import read_csv
    from analyzer.train import ClipSet

    clips = ClipSet(read_csv(manifest), frames=6)
    pairs = [item.pair for item in clips.items]
    assert len(set(pairs)) < len(pairs), "the synth manifest should hold REAL/FAKE pairs"
    order = clips.epoch_order(random.Random(0), pairs=True)
    assert sorted(i for i, _ in order) == list(range(len(clips)))
    for (a, start_a), (b, start_b) in zip(order, order[1:], strict=False):
        if pairs[a] == pairs[b]:
            assert start_a == start_b
    # Each pair's clips are neighbours in the order.
    seen = [pairs[i] for i, _ in order]
    assert all(seen.index(p) + seen.count(p) - 1 == len(seen) - 1 - seen[::-1].index(p)
               for p in set(seen))  # fmt: skip
    unpaired = clips.epoch_order(random.Random(0), pairs=False)
    assert sorted(i for i, _ in unpaired) == list(range(len(clips)))


def test_precise_bn_measures_how_frames_differ_between_clips():
    # Eight clips, each one flat colour: all the variance is between clips. Statistics
    # measured a frame (or a clip) at a time would see none of it.
    import numpy as np
    import torch
    from torch import nn

    from analyzer.train import ClipSet, _recalibrate_batchnorm

    levels = np.linspace(0, 255, 8).astype(np.uint8)
    data = ClipSet.__new__(ClipSet)
    data.clips = [np.full((20, 4, 4, 3), v, np.uint8) for v in levels]
    data.items = [None] * len(data.clips)

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.BatchNorm2d(3, momentum=0.01)

    model = Tiny()
    zero, one = torch.zeros(1, 1, 3, 1, 1), torch.ones(1, 1, 3, 1, 1)
    _recalibrate_batchnorm(model, data, torch.device("cpu"), zero, one, seed=0)
    expected = (levels / 255.0).var()
    assert model.features.running_var.numpy() == pytest.approx([expected] * 3, rel=0.25)
    assert model.features.running_mean.numpy() == pytest.approx([0.5] * 3, abs=0.06)
    assert model.features.momentum == 0.01 and not model.training
