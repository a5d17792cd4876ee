#!/usr/bin/env bash
# Rebuild the bundled demo checkpoint (analyzer/assets/demo.pt) and its report.
#
# Trained on synthetic data only (`deepfake-monitor synth`): a demonstration of the
# pipeline, not a real-world deepfake detector. Training FAKEs are self-blends (a face
# blended onto itself after a colour and geometry change), so identity says nothing and
# the model has to learn the blending; the held-out test FAKEs are face swaps between
# other people. Train and test use disjoint photos, donors included: training and
# validation clips come from sample1, sample2, sample4, sample5 and sample6 (validation is
# the one photo the group split sets aside), the test clips from sample3 and astronaut.
#
#   scripts/train_demo.sh [WORK_DIR]    (default ./demo-work; about an hour on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-demo-work}
DFM=${DFM:-.venv/bin/deepfake-monitor}
TRAIN_VIDEOS=${TRAIN_VIDEOS:-560}
TEST_VIDEOS=${TEST_VIDEOS:-60}
EPOCHS=${EPOCHS:-30}

mkdir -p "$WORK"
"$DFM" synth "$WORK/videos-train" --videos "$TRAIN_VIDEOS" --frames 180 --seed 101 \
    --swap-all --method selfblend --workers 2 --identities sample1,sample2,sample4,sample5,sample6
"$DFM" synth "$WORK/videos-test" --videos "$TEST_VIDEOS" --frames 180 --seed 202 \
    --swap-all --method faceswap --workers 2 --identities sample3,astronaut
"$DFM" preprocess "$WORK/videos-train" "$WORK/clips-train" --workers 2
"$DFM" preprocess "$WORK/videos-test" "$WORK/clips-test" --workers 2
# Windows of 16 frames keep a CPU epoch near a minute; the checkpoint is served and
# evaluated on 150-frame windows (the LSTM outputs are averaged over the window).
"$DFM" train "$WORK/clips-train/manifest.csv" "$WORK/run" \
    --backbone mobilenet_v3_small --lstm-hidden 256 --frames 16 --batch 8 \
    --epochs "$EPOCHS" --lr 5e-4 --weight-decay 1e-4 --patience 8 --split 0.8,0.2,0 --seed 0 \
    --model-version synthetic-demo-1 \
    --training-data "SYNTHETIC data only (deepfake-monitor synth: self-blended FAKEs of photos sample1,2,4,5,6); not a real-world detector"
.venv/bin/python scripts/finish_demo.py "$WORK/run/best.pt" "$WORK/clips-test/manifest.csv" \
    analyzer/assets "$WORK/report"
