#!/usr/bin/env bash
# GPU check for the COCO-scale plan (docs/scaling.md): on a machine with a CUDA GPU, in under 10 minutes,
# CondInst R-50 at COCO's image sizes (condinst_r50_1x_coco.yaml, freshly initialised, nothing downloaded):
#   1. a few hundred training iterations with AMP on synthetic data (made here by `apis data synth`),
#   2. one selection pass over the synthetic training images,
#   3. one evaluation pass (inference + COCO eval) over the synthetic validation images,
# printing images/s and the peak GPU memory of each, and writing them as a record (bench/records.py) to RECORD.
#
#   bench/gpu_check.sh                  # on the GPU machine, from the repository root
#   bench/gpu_check.sh --cpu-smoke      # anywhere: a tiny R-18 on the CPU, only checks that the script runs
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3), OUT (default: runs/gpu_check),
# ITERS (default 300), BATCH (images per iteration, default 8), IMAGES (synthetic images, default 200: 150 train, 50 val),
# RECORD (default results/gpu_check.json; with --cpu-smoke $OUT/gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's apis, installed or not
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-runs/gpu_check}

if [ "${1:-}" = "--cpu-smoke" ]; then
    ITERS=${ITERS:-4}; BATCH=${BATCH:-2}; IMAGES=${IMAGES:-8}; SIZE=64; EXTRA=(--cpu-smoke)
    RECORD=${RECORD:-$OUT/gpu_check.json}
elif [ $# -gt 0 ]; then
    echo "usage: bench/gpu_check.sh [--cpu-smoke]" >&2; exit 2
else
    ITERS=${ITERS:-300}; BATCH=${BATCH:-8}; IMAGES=${IMAGES:-200}; SIZE=512; EXTRA=()
    RECORD=${RECORD:-results/gpu_check.json}
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: PyTorch sees no CUDA GPU (torch.cuda.is_available() is False with $PYTHON); this check" \
             "needs one. On a CPU, bench/gpu_check.sh --cpu-smoke checks that the script runs." >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

rm -rf "$OUT/train"  # a previous check's training would be resumed, not timed
start=$(date +%s)
"$PYTHON" -m apis.cli data synth "$OUT/data" --images "$IMAGES" --size "$SIZE" --seed 0 --overwrite
"$PYTHON" bench/gpu_check.py --data "$OUT/data" --out "$OUT" --iters "$ITERS" --batch "$BATCH" --record "$RECORD" \
    "${EXTRA[@]}"
echo "gpu_check: $(( $(date +%s) - start )) s in all; record in $RECORD"
