#!/usr/bin/env bash
# Rebuild the bundled demo checkpoint (analyzer/assets/demo.pt) and its report.
#
# Trained on synthetic face swaps only (`deepfake-monitor synth`): it is a demonstration
# of the pipeline, not a real-world deepfake detector. Train and test use disjoint photos
# (identities), donors included: train/validation clips come from sample1, sample2,
# sample4, sample5 and sample6, the held-out test clips from sample3 and astronaut.
#
#   scripts/train_demo.sh [WORK_DIR]     (default: ./demo-work; about 40 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-demo-work}
DFM=${DFM:-.venv/bin/deepfake-monitor}
EPOCHS=${EPOCHS:-12}
TRAIN_VIDEOS=${TRAIN_VIDEOS:-560}
TEST_VIDEOS=${TEST_VIDEOS:-60}
ASSETS=analyzer/assets
VERSION=synthetic-demo-1

mkdir -p "$WORK"
"$DFM" synth "$WORK/videos-train" --videos "$TRAIN_VIDEOS" --frames 180 --seed 101 --swap-all --workers 2 \
    --identities sample1,sample2,sample4,sample5,sample6
"$DFM" synth "$WORK/videos-test" --videos "$TEST_VIDEOS" --frames 180 --seed 202 --swap-all --workers 2 \
    --identities sample3,astronaut
"$DFM" preprocess "$WORK/videos-train" "$WORK/clips-train"
"$DFM" preprocess "$WORK/videos-test" "$WORK/clips-test"
"$DFM" train "$WORK/clips-train/manifest.csv" "$WORK/run" \
    --backbone mobilenet_v3_small --lstm-hidden 256 \
    --epochs "$EPOCHS" --batch 8 --lr 1e-3 --weight-decay 1e-5 --patience 4 --seed 0 \
    --model-version "$VERSION" \
    --training-data "SYNTHETIC face swaps only (deepfake-monitor synth, photos sample1,2,4,5,6); not a real-world detector"
.venv/bin/python scripts/finish_demo.py "$WORK/run/best.pt" "$WORK/clips-test/manifest.csv" "$ASSETS" "$WORK/report"
