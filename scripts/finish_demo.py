"""Bundle a trained demo checkpoint: calibrated, evaluated twice, its report beside it.

    python scripts/finish_demo.py CHECKPOINT CALIBRATION_MANIFEST OWN_TEST_MANIFEST \\
        INDEPENDENT_TEST_MANIFEST analyzer/assets [REPORT_DIR]

Writes ``analyzer/assets/demo.pt``: the weights with metadata for serving (150-frame
windows, the DFM_WINDOW_FRAMES default, whatever window it was trained on; a name that says
it is the synthetic demo), then

1. scores the own-generator test clips (``synth``, held-out photos) uncalibrated, for the
   calibration error before;
2. fits the temperature on CALIBRATION_MANIFEST's clips (validation photos, never trained
   on) at 150 frames (``analyzer/calibrate.py``);
3. evaluates on the own-generator test clips again, calibrated, and records the operating
   points in the checkpoint (the service's threshold);
4. evaluates on the independent generator's clips (``testfakes``: other photos, other
   manipulations, another camera; never trained on), recorded nowhere.

Every figure goes into the checkpoint's ``metrics`` and ``analyzer/assets/demo-report/``
(``metrics.json`` and plots of the own-generator test, ``reliability-uncalibrated.png``,
``independent/``). Called by ``scripts/train_demo.sh``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from analyzer.calibrate import calibrate_checkpoint
from analyzer.datasets import read_csv
from analyzer.evaluate import evaluate_checkpoint
from analyzer.model import load_checkpoint, save_checkpoint
from analyzer.train import read_clip

NAME = "synthetic-demo-mobilenetv3s-lstm256"
WINDOW = 150
REPORT_FILES = ["metrics.json", "confusion_matrix.png", "roc.png", "reliability.png"]
HISTORY_FILES = ["loss.png", "accuracy.png"]
LIMIT = 15 * 1024 * 1024
KEYS = ("accuracy", "roc_auc", "eer", "log_loss", "brier", "ece")


def main(
    checkpoint: Path, calibration: Path, own: Path, independent: Path, assets: Path, report: Path
) -> int:
    loaded = load_checkpoint(checkpoint)
    meta = loaded.meta.model_copy(
        update={"name": NAME, "window_frames": WINDOW, "calibration": None,
                "operating_points": None}
    )  # fmt: skip
    target = assets / "demo.pt"
    save_checkpoint(target, loaded.model, meta)

    own_items, indep_items = read_csv(own), read_csv(independent)
    before = evaluate_checkpoint(target, own_items, report / "uncalibrated", device="cpu",
                                 window=WINDOW)  # fmt: skip
    indep_before = evaluate_checkpoint(target, indep_items, report / "uncalibrated-independent",
                                       device="cpu", window=WINDOW)  # fmt: skip
    items = read_csv(calibration)
    _, fitted = calibrate_checkpoint(
        target,
        [read_clip(i.path) for i in items],
        [i.label for i in items],
        window=WINDOW,
        data=f"{len(items)} clips of the validation photo (synth, never trained on)",
        device="cpu",
    )
    result = evaluate_checkpoint(target, own_items, report, device="cpu", window=WINDOW,
                                 record=f"own-generator test clips ({len(own_items)})")  # fmt: skip
    indep = evaluate_checkpoint(target, indep_items, report / "independent", device="cpu",
                                window=WINDOW)  # fmt: skip

    metrics = {f"test_{k}": float(result[k]) for k in KEYS}
    metrics["test_videos"] = float(result["videos"])
    metrics["test_ece_uncalibrated"] = float(before["ece"])
    metrics["test_brier_uncalibrated"] = float(before["brier"])
    metrics |= {f"independent_{k}": float(indep[k]) for k in KEYS}
    metrics["independent_videos"] = float(indep["videos"])
    metrics["independent_ece_uncalibrated"] = float(indep_before["ece"])
    final = load_checkpoint(target)  # calibrated, with the operating points
    assert final.meta.operating_points is not None
    served = final.meta.operating_points.target_fpr.threshold
    metrics["test_accuracy_served"] = accuracy_at(report, served)
    metrics["independent_accuracy_served"] = accuracy_at(report / "independent", served)
    meta = final.meta.model_copy(update={"metrics": {**loaded.meta.metrics, **metrics}})
    digest = save_checkpoint(target, final.model, meta)
    size = target.stat().st_size
    if size > LIMIT:
        target.unlink()
        print(f"demo checkpoint is {size / 2**20:.1f} MiB, over the 15 MiB limit", file=sys.stderr)
        return 1

    folder = assets / "demo-report"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "independent").mkdir(parents=True)
    for name in REPORT_FILES + HISTORY_FILES:
        if (report / name).is_file():
            shutil.copyfile(report / name, folder / name)
    shutil.copyfile(report / "uncalibrated" / "reliability.png",
                    folder / "reliability-uncalibrated.png")  # fmt: skip
    for name in REPORT_FILES:
        shutil.copyfile(report / "independent" / name, folder / "independent" / name)
    summary = {
        "checkpoint_sha256": digest,
        "window_frames": WINDOW,
        "calibration": fitted.model_dump(),
        "operating_points": meta.operating_points.model_dump() if meta.operating_points else None,
        "own_generator_test": {k: result[k] for k in (*KEYS, "videos")},
        "own_generator_test_uncalibrated": {k: before[k] for k in ("ece", "brier", "log_loss")},
        "own_generator_test_accuracy_at_served_threshold": metrics["test_accuracy_served"],
        "independent_test": {k: indep[k] for k in (*KEYS, "videos")},
        "independent_test_uncalibrated": {k: indep_before[k] for k in ("ece", "brier", "log_loss")},
        "independent_test_accuracy_at_served_threshold": metrics["independent_accuracy_served"],
        "independent_per_method": indep.get("per_method", {}),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{target}: {size / 2**20:.1f} MiB, sha256 {digest}")
    print(
        f"calibrated: temperature {fitted.temperature:.3f}; ECE own-generator test "
        f"{before['ece']:.4f} -> {result['ece']:.4f}, independent test "
        f"{indep_before['ece']:.4f} -> {indep['ece']:.4f}; served threshold {served:.4f} "
        f"(accuracy there: own {metrics['test_accuracy_served']:.4f}, independent "
        f"{metrics['independent_accuracy_served']:.4f})"
    )
    for label, found in (("own-generator test", result), ("independent test", indep)):
        print(f"{label}: " + ", ".join(f"{k} {float(found[k]):.4f}" for k in KEYS)
              + f" ({found['videos']} clips)")  # fmt: skip
    return 0


def accuracy_at(report: Path, threshold: float) -> float:
    """Accuracy of an evaluation's predictions.csv at ``threshold``."""
    rows = (report / "predictions.csv").read_text().splitlines()[1:]
    right = 0
    for row in rows:
        _, label, _, p_fake = row.rsplit(",", 3)
        right += (float(p_fake) >= threshold) == (label == "FAKE")
    return right / len(rows)


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    args = [Path(a) for a in sys.argv[1:6]]
    out = Path(sys.argv[6]) if len(sys.argv) == 7 else Path(tempfile.mkdtemp(prefix="demo-report-"))
    sys.exit(main(*args, out))
