#!/usr/bin/env bash
# Classification benchmark (issue 7): validation AUC with 95 % bootstrap CIs (1000 resamples) of
#   1. BUSI malignant-vs-rest, MobileNetV2 (ImageNet weights: the offline torchvision file), no PQC
#   2. the same with the quantum feature layer (Q=4 qubits, L=2 strongly entangling layers)
#   3. PneumoniaMNIST (normal vs pneumonia), MobileNetV2 + quantum feature layer, 28 px -> 64 px
# and the quantum layer's share of the training step time. Each run is capped by --minutes.
# Usage: bash benchmarks/classification.sh [DATA_ROOT] [OUT] [MINUTES]
#   (defaults: ../shared/data, bench-out/classification, 7)
# Runs one after another on CPU; prefix with `nice -n 19` on a shared machine.
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-bench-out/classification}
MIN=${3:-7}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)  cpus $(nproc)  $(python -c 'import torch, pennylane; print("torch", torch.__version__, "threads", torch.get_num_threads(), "pennylane", pennylane.__version__)')"

BUSI=(--data "$DATA/busi/train" --val "$DATA/busi/val" --positive malignant --model mobilenet_v2 --weights imagenet
      --image-size 128 --batch-size 32 --epochs 40 --patience 8 --minutes "$MIN" --seed 0 --force)
qmed classify train "${BUSI[@]}" --no-pqc --out "$OUT/busi-mobilenet_v2"
qmed classify train "${BUSI[@]}" --pqc --qubits 4 --layers 2 --out "$OUT/busi-mobilenet_v2-pqc"

NPZ="$DATA/pneumoniamnist/pneumoniamnist.npz"
qmed classify train --data "$NPZ:train" --val "$NPZ:val" --model mobilenet_v2 --weights imagenet --pqc --qubits 4 --layers 2 \
  --image-size 64 --batch-size 64 --epochs 30 --patience 6 --minutes "$MIN" --seed 0 --force --out "$OUT/pneumoniamnist-mobilenet_v2-pqc"

python "$(dirname "$0")/classification_summary.py" "$OUT"
