#!/usr/bin/env bash
# The GPU check: what one GPU node does, in at most 8 minutes, on a machine that reaches no
# package index and takes at most 64 MiB of extra files.
#
#   scripts/gpu_check.sh --probe          what this machine lacks (imports), nothing else
#   scripts/gpu_check.sh OUT_DIR          the check; tables on stdout and in OUT_DIR
#   scripts/gpu_check.sh OUT_DIR --quick  the same on the CPU in seconds: checks the plumbing
#
# First run --probe on the GPU machine and carry only what it names: wheels of those
# packages for the machine's Python (`pip download --only-binary=:all: --no-deps
# --python-version X.Y --platform manylinux_2_28_x86_64 -d wheels PKG`) in the folder
# named by DFM_WHEELS (default ./wheels), and the face photos (`python -m analyzer.photos
# DIR`, 3 MB) in DFM_PHOTOS_DIR. The check installs the wheels with `pip install
# --no-index`, then runs scripts/gpu_bench.py: the device; the engine table (backbone and
# head; fp32, bf16, channels_last; batches 1 to 512); the detector's frames/s (MediaPipe
# on the host against the PyTorch BlazeFace batched on the GPU) and crops on the host
# against crops cut on the GPU; the frame pool with 64 streams; the pipeline with N
# one-face 480p streams (DFM_MAX_BATCH=256 unless set, as the GPU overlay's pods run)
# doubling from 1 up to 1,024, stopping at the first N that drops
# frames or misses p99 <= 1 s; decode alone, PyAV on the CPU against NVDEC at 1, 8 and 32
# sessions (PyNvVideoCodec's own demuxer; skipped, saying why, without the optional
# pynvvideocodec wheel, 26 MB); the pipeline again with DFM_CROP=device (frames sent to
# the GPU, letterboxed and cropped there) and with DFM_DECODE=nvdec (NVDEC in the
# service's path; skipped without the wheel); and last the backbone at batches 32 and 256
# under every DFM_COMPILE mode that can run there, side by side with eager. The pipeline's
# streams replay one clip's packets, demuxed once (streamer/sources/replay.py), decoded
# on the host by the decode pool (a reader thread each paces them), so at some N it is the
# node's CPUs, not the GPU, that stop it; the pipeline table's CPU seconds per stage say
# which.
# TensorRT only where torch-tensorrt is already installed (with TensorRT's libraries it is
# far over 64 MiB); inductor needs Triton and a C compiler there (the probe names them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Import name of each runtime dependency (pyproject.toml) that the check uses.
MODULES="torch torchvision numpy mediapipe tflite av pydantic pydantic_settings yaml tqdm
skimage fastapi starlette uvicorn prometheus_client aiortc aiokafka kornia httpx cv2
matplotlib sklearn"

missing() {  # the modules of $MODULES that this Python cannot find (none imported)
  "$PY" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' $MODULES
}

if [[ "${1:-}" == "--probe" ]]; then
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
        "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' \
    2>/dev/null || echo "torch: missing"
  echo "missing: $(missing)"
  MODULES=PyNvVideoCodec  # optional: NVDEC's frames/s
  echo "optional, missing: $(missing)"
  MODULES="triton torch_tensorrt"  # optional: DFM_COMPILE=inductor on CUDA, tensorrt
  echo "compile, missing: $(missing)$(command -v cc >/dev/null || echo ' (and no C compiler, cc)')"
  exit 0
fi
if [[ $# -lt 1 || $# -gt 2 || ( $# -eq 2 && "$2" != "--quick" ) ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
OUT=$1
QUICK=${2:-}
mkdir -p "$OUT"
started=$(date +%s)

need=$(missing)
if [[ -n "$need" ]]; then
  wheels=${DFM_WHEELS:-wheels}
  echo "gpu_check: installing from $wheels for: $need"
  if [[ ! -d "$wheels" ]]; then
    echo "gpu_check: missing imports ($need) and no wheels folder $wheels; run --probe" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --find-links "$wheels" "$wheels"/*.whl
  need=$(missing)
  if [[ -n "$need" ]]; then
    echo "gpu_check: still missing after the wheels: $need; carry those too" >&2
    exit 2
  fi
fi
if ! "$PY" -c "from analyzer.photos import default_photos_dir, missing; import sys
sys.exit(1 if missing(default_photos_dir()) else 0)"; then
  echo "gpu_check: the face photos are not in DFM_PHOTOS_DIR (${DFM_PHOTOS_DIR:-unset});" \
    "carry them (python -m analyzer.photos DIR makes the folder)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "CPUs: $(nproc)"
# 8 minutes in all: what is left after the set-up, less 15 s to write the report.
left=$((480 - ($(date +%s) - started) - 15))
timeout --signal=INT "$left" "$PY" scripts/gpu_bench.py "$OUT" $QUICK
