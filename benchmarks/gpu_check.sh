#!/usr/bin/env bash
# qmed's one-shot GPU check (issue 21): on a machine with one NVIDIA GPU, in under 8 minutes, prints
# ONE table (benchmarks/gpu_check.py says what each row measures):
#   - the `paper` preset (EfficientNet-B7 UNet++, 512², batch 4, AMP: bfloat16 where the GPU has it)
#     trains ~50 optimizer steps on dsb2018-fluo through qmed's trainer, without a non-finite step;
#   - inference images/s and peak GPU memory at 512², with and without 7-fold TTA, eager against
#     torch.compile, against the paper's 28 FPS / 4.2 GB; the same for the `cpu` preset's model;
#   - qmed export of the trained model to ONNX, then ONNX Runtime on CUDA if the provider is there.
#
# Needs only this repository, and the data: DATA_DIR as the first argument, else the carry kit's
# .gpu_kit/data/dsb2018-fluo where benchmarks/gpu_kit.sh made one (issue 40), else
# ../shared/data/dsb2018-fluo:
#   bash benchmarks/gpu_check.sh [DATA_DIR] [extra gpu_check.py options]
# e.g. `bash benchmarks/gpu_check.sh ../shared/data/dsb2018-fluo --no-compile`; `--dry-run` runs the
# plumbing on a CPU with the tiny preset (a few minutes), to check the script without a GPU.
# The table also goes to $OUT/gpu_check.json when OUT is set (else /tmp/gpu_check.json).
# QMED_GPU_BUDGET (whole seconds of work, default 450) is gpu_check.py's --budget; the Python part is
# stopped 20 s after it, and then prints the table of what it finished.
#
# Python, in this order (qmed itself always from src/ on PYTHONPATH, never installed):
#   1. $QMED_PYTHON, if set;
#   2. python3 on PATH if it imports what gpu_check.py needs (qmed's modules, hence torch,
#      segmentation_models_pytorch, pydantic, albumentations, ...);
#   3. python3 on PATH plus the carry kit's wheels (.gpu_kit/wheels, made by benchmarks/gpu_kit.sh),
#      installed with `pip install --no-index --no-deps --target` into a folder under /tmp that goes
#      on PYTHONPATH (python3's own packages are left as they are). This is the road on the lent GPU
#      machine: its image has torch, timm, onnxruntime, scipy, ... but not smp, pydantic or
#      albumentations, and it reaches no package index;
#   4. .venv/bin/python of this checkout if it has them;
#   5. else a new .venv-gpu (with the system's site packages) and `pip install -e '.[test]'`.
#      NOTE: step 5 needs the package index and takes several minutes (torch is large), which
#      counts against the 8 minutes; on a machine without network it fails, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu_kit
DATA="../shared/data/dsb2018-fluo"
if [ -d "$KIT/data/dsb2018-fluo" ]; then DATA="$KIT/data/dsb2018-fluo"; fi
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then DATA="$1"; shift; fi
BUDGET="${QMED_GPU_BUDGET:-450}"
case "$BUDGET" in
    '' | *[!0-9]*) echo "gpu_check: QMED_GPU_BUDGET must be whole seconds, not '$BUDGET'" >&2; exit 2 ;;
esac
SRC_PATH="$PWD/src"
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONPATH="$SRC_PATH${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -d "$DATA/train/images" ] || [ ! -d "$DATA/val/images" ]; then
    echo "gpu_check: no dataset at $DATA (expected train/images, train/masks, val/images, val/masks)" >&2
    exit 2
fi
echo "gpu_check: data $DATA ($(ls "$DATA/train/images" | wc -l) train, $(ls "$DATA/val/images" | wc -l) val images)" >&2

# The imports gpu_check.py needs: the qmed modules it calls (from src/), hence all their
# dependencies. Says which import failed unless QUIET is set.
has_deps() {
    local err
    if err=$("$1" -c '
import torch, yaml
import qmed.config, qmed.data.batches, qmed.models.segmenter
import qmed.segment.train, qmed.segment.predict, qmed.segment.checkpoint, qmed.segment.export, qmed.segment.onnx_backend
' 2>&1); then
        return 0
    fi
    [ -n "${QUIET:-}" ] || echo "gpu_check: $1 lacks a dependency: $(printf '%s\n' "$err" | tail -1)" >&2
    return 1
}

# Step 3: the kit's wheels, without an index, into a folder of their own.
install_kit() {
    local site="${TMPDIR:-/tmp}/qmed-gpu-kit-site"
    echo "gpu_check: installing the carry kit's $(ls "$KIT"/wheels/*.whl | wc -l) wheels into $site (no index)" >&2
    "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --upgrade --target "$site" "$KIT"/wheels/*.whl || return 1
    PYTHONPATH="$SRC_PATH:$site${PYTHONPATH#"$SRC_PATH"}"
    export PYTHONPATH
}

PY=""
if [ -n "${QMED_PYTHON:-}" ]; then
    PY="$QMED_PYTHON"
elif command -v python3 >/dev/null && QUIET=1 has_deps python3; then
    PY=python3
fi
# (only for a python3 that has torch: the kit carries what the GPU image lacks, not torch)
if [ -z "$PY" ] && command -v python3 >/dev/null && ls "$KIT"/wheels/*.whl >/dev/null 2>&1 \
        && python3 -c "import torch" 2>/dev/null; then
    has_deps python3 || true  # say what is missing before installing
    if install_kit python3 && has_deps python3; then
        PY=python3
    else
        echo "gpu_check: the carry kit did not make python3 work ($KIT/MANIFEST.txt says for which Python it was made)" >&2
    fi
fi
if [ -z "$PY" ] && [ -x .venv/bin/python ] && has_deps .venv/bin/python; then
    PY=.venv/bin/python
fi
if [ -z "$PY" ]; then
    echo "gpu_check: no Python with qmed's dependencies; making .venv-gpu and installing (needs the package index, minutes)" >&2
    python3 -m venv --system-site-packages .venv-gpu
    if ! .venv-gpu/bin/pip install -q -e '.[test]'; then
        echo "gpu_check: pip install -e '.[test]' failed (no network?); make the carry kit (bash benchmarks/gpu_kit.sh), install torch with CUDA and qmed's dependencies, or set QMED_PYTHON" >&2
        exit 2
    fi
    PY=.venv-gpu/bin/python
fi
echo "gpu_check: python $("$PY" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__, "cuda", torch.cuda.is_available())')" >&2
"$PY" -c 'import onnx, onnxruntime' 2>/dev/null || echo "gpu_check: onnx/onnxruntime missing: the ONNX rows will say skipped" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 2>/dev/null || true

# The Python part keeps to BUDGET seconds of work and is stopped 20 s later (it then prints the
# table of what it finished); 450 s by default, 8 minutes in all.
timeout -k 15 $((BUDGET + 20)) "$PY" benchmarks/gpu_check.py --data "$DATA" --budget "$BUDGET" --json "${OUT:-/tmp}/gpu_check.json" "$@"
