#!/usr/bin/env bash
# Classification ablation (issue 8), BUSI malignant-vs-rest, one split (busi/train -> busi/val), one budget:
#   1. MobileNetV2 (ImageNet weights: the offline torchvision file)
#   2. + PQC (quantum feature layer, Q=4 qubits, L=2 strongly entangling layers)
#   3. + SimCLR: the backbone further pretrained with SimCLR on busi/train's images (labels unused,
#      starting from the ImageNet weights), then fine-tuned
#   4. + SimCLR + PQC
#   5. + diffusion augmentation + PQC (SDA-QEC): a DDPM trained on busi/train/malignant generates
#      N_SYN images (default: enough to balance malignant against the rest), added to training only
# Every classifier run gets MINUTES of training (and the same epochs/patience/seed); SimCLR and the
# DDPM get PRETRAIN_MINUTES and DDPM_MINUTES (default: MINUTES each) before that. Validation images
# are never used for pretraining or synthesis. Prints one table: AUC, F1, sensitivity, specificity
# with 95 % bootstrap CIs (1000 resamples), and each row's paired AUC difference to row 1.
# Usage: bash benchmarks/classification_ablation.sh [DATA_ROOT] [OUT] [MINUTES] [PRETRAIN_MINUTES] [DDPM_MINUTES] [N_SYN]
#   (defaults: ../shared/data, bench-out/classification-ablation, 7, MINUTES, MINUTES, n_rest - n_malignant)
# Runs one after another on CPU; prefix with `nice -n 19` on a shared machine.
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-bench-out/classification-ablation}
MIN=${3:-7}
PRE_MIN=${4:-$MIN}
DDPM_MIN=${5:-$MIN}
TRAIN="$DATA/busi/train"
N_MAL=$(find "$TRAIN/malignant" -name '*.png' | wc -l)
N_ALL=$(find "$TRAIN" -name '*.png' | wc -l)
N_SYN=${6:-$((N_ALL - 2 * N_MAL))}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)  cpus $(nproc)  $(python -c 'import torch, pennylane, diffusers; print("torch", torch.__version__, "threads", torch.get_num_threads(), "pennylane", pennylane.__version__, "diffusers", diffusers.__version__)')"
echo "train: $N_ALL images, $N_MAL malignant; synthetic malignant: $N_SYN; minutes per classifier $MIN, SimCLR $PRE_MIN, DDPM $DDPM_MIN"

qmed pretrain simclr --data "$TRAIN" --out "$OUT/simclr-pretrain" --model mobilenet_v2 --weights imagenet --image-size 128 \
  --batch-size 32 --epochs 200 --minutes "$PRE_MIN" --temperature 0.5 --seed 0 --force
qmed synthesize --data "$TRAIN/malignant" --n "$N_SYN" --out "$OUT/ddpm" --image-size 64 --batch-size 16 --epochs 100000 \
  --minutes "$DDPM_MIN" --sample-steps 50 --seed 0 --force

BUSI=(--data "$TRAIN" --val "$DATA/busi/val" --positive malignant --model mobilenet_v2 --image-size 128 --batch-size 32
      --epochs 40 --patience 8 --minutes "$MIN" --seed 0 --force)
PQC=(--pqc --qubits 4 --layers 2)
SSL="$OUT/simclr-pretrain/encoder.pth"
qmed classify train "${BUSI[@]}" --weights imagenet --no-pqc --out "$OUT/1-mobilenet_v2"
qmed classify train "${BUSI[@]}" --weights imagenet "${PQC[@]}" --out "$OUT/2-mobilenet_v2-pqc"
qmed classify train "${BUSI[@]}" --weights "$SSL" --no-pqc --out "$OUT/3-simclr"
qmed classify train "${BUSI[@]}" --weights "$SSL" "${PQC[@]}" --out "$OUT/4-simclr-pqc"
qmed classify train "${BUSI[@]}" --weights imagenet "${PQC[@]}" --synthetic "$OUT/ddpm" --out "$OUT/5-sda-qec"

python "$(dirname "$0")/classification_ablation_summary.py" "$OUT"
