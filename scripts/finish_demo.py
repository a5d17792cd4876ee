"""Bundle a trained demo checkpoint, evaluated on held-out clips, with its report beside it.

    python scripts/finish_demo.py RUN/best.pt TEST_MANIFEST analyzer/assets [REPORT_DIR]

Writes ``analyzer/assets/demo.pt``: the weights with metadata for serving (150-frame
windows, the DFM_WINDOW_FRAMES default, whatever window it was trained on; a name that says
it is the synthetic demo) and the held-out test metrics, measured on that 150-frame window
of every clip in TEST_MANIFEST. Copies ``metrics.json`` and the plots to
``analyzer/assets/demo-report/``. Called by ``scripts/train_demo.sh``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from analyzer.datasets import read_csv
from analyzer.evaluate import evaluate_checkpoint
from analyzer.model import load_checkpoint, save_checkpoint

NAME = "synthetic-demo-mobilenetv3s-lstm256"
WINDOW = 150
REPORT_FILES = ["metrics.json", "confusion_matrix.png", "roc.png", "loss.png", "accuracy.png"]
LIMIT = 15 * 1024 * 1024


def main(checkpoint: Path, test_manifest: Path, assets: Path, report: Path) -> int:
    loaded = load_checkpoint(checkpoint)
    meta = loaded.meta.model_copy(update={"name": NAME, "window_frames": WINDOW})
    target = assets / "demo.pt"
    save_checkpoint(target, loaded.model, meta)
    result = evaluate_checkpoint(target, read_csv(test_manifest), report, device="cpu")
    test = {f"test_{k}": float(result[k]) for k in ("accuracy", "roc_auc", "eer", "log_loss")}
    test["test_videos"] = float(result["videos"])
    meta = meta.model_copy(update={"metrics": {**meta.metrics, **test}})
    digest = save_checkpoint(target, loaded.model, meta)
    size = target.stat().st_size
    if size > LIMIT:
        target.unlink()
        print(f"demo checkpoint is {size / 2**20:.1f} MiB, over the 15 MiB limit", file=sys.stderr)
        return 1
    folder = assets / "demo-report"
    folder.mkdir(exist_ok=True)
    for name in REPORT_FILES:
        shutil.copyfile(report / name, folder / name)
    print(f"{target}: {size / 2**20:.1f} MiB, sha256 {digest}")
    print("held-out test: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    out = Path(sys.argv[4]) if len(sys.argv) == 5 else Path(tempfile.mkdtemp(prefix="demo-report-"))
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), out))
