#!/usr/bin/env bash
# qmed's one-shot GPU check (issue 21): on a machine with one NVIDIA GPU, in under 8 minutes, prints
# ONE table (benchmarks/gpu_check.py says what each row measures):
#   - the `paper` preset (EfficientNet-B7 UNet++, 512², batch 4, AMP: bfloat16 where the GPU has it)
#     trains ~50 optimizer steps on dsb2018-fluo through qmed's trainer, without a non-finite step;
#   - inference images/s and peak GPU memory at 512², with and without 7-fold TTA, eager against
#     torch.compile, against the paper's 28 FPS / 4.2 GB; the same for the `cpu` preset's model;
#   - qmed export of the trained model to ONNX, then ONNX Runtime on CUDA if the provider is there.
#
# Needs only this repository and ../shared/data beside it (or DATA as the first argument):
#   bash benchmarks/gpu_check.sh [DATA_DIR=../shared/data/dsb2018-fluo] [extra gpu_check.py options]
# e.g. `bash benchmarks/gpu_check.sh ../shared/data/dsb2018-fluo --no-compile`; `--dry-run` runs the
# plumbing on a CPU with the tiny preset (a few minutes), to check the script without a GPU.
# The table also goes to $OUT/gpu_check.json when OUT is set (else /tmp/gpu_check.json).
#
# Python, in this order (no install when one already works):
#   1. $QMED_PYTHON, if set;
#   2. python3 on PATH if it imports torch (with CUDA), segmentation_models_pytorch, pydantic, typer,
#      albumentations and scipy: qmed itself is then taken from src/ (PYTHONPATH), not installed;
#   3. .venv/bin/python of this checkout if it has them;
#   4. else a new .venv-gpu (with the system's site packages) and `pip install -e '.[test]'`.
#      NOTE: step 4 needs the package index and takes several minutes (torch is large), which
#      counts against the 8 minutes; on a machine without network it fails, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="../shared/data/dsb2018-fluo"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then DATA="$1"; shift; fi
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -d "$DATA/train/images" ] || [ ! -d "$DATA/val/images" ]; then
    echo "gpu_check: no dataset at $DATA (expected train/images, train/masks, val/images, val/masks)" >&2
    exit 2
fi

has_deps() {
    "$1" - <<'EOF' 2>/dev/null
import torch, segmentation_models_pytorch, pydantic, typer, albumentations, scipy, yaml  # noqa: F401
EOF
}

PY=""
if [ -n "${QMED_PYTHON:-}" ]; then
    PY="$QMED_PYTHON"
elif command -v python3 >/dev/null && has_deps python3; then
    PY=python3
elif [ -x .venv/bin/python ] && has_deps .venv/bin/python; then
    PY=.venv/bin/python
else
    echo "gpu_check: no Python with qmed's dependencies; making .venv-gpu and installing (needs the package index, minutes)" >&2
    python3 -m venv --system-site-packages .venv-gpu
    if ! .venv-gpu/bin/pip install -q -e '.[test]'; then
        echo "gpu_check: pip install -e '.[test]' failed (no network?); install torch with CUDA and qmed's dependencies, or set QMED_PYTHON" >&2
        exit 2
    fi
    PY=.venv-gpu/bin/python
fi
echo "gpu_check: python $("$PY" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__, "cuda", torch.cuda.is_available())')" >&2
"$PY" -c 'import onnx, onnxruntime' 2>/dev/null || echo "gpu_check: onnx/onnxruntime missing: the ONNX rows will say skipped" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 2>/dev/null || true

# 8 minutes in all: the Python part keeps to 450 s of work and is stopped at 470 s (it then prints the
# table of what it finished).
timeout -k 15 470 "$PY" benchmarks/gpu_check.py --data "$DATA" --budget 450 --json "${OUT:-/tmp}/gpu_check.json" "$@"
