#!/usr/bin/env bash
# Which part of the recipe holds val Dice back? Short runs of the `cpu` preset with one part
# switched at a time, same seed and budget, two at a time with one thread each (2 cores).
# Usage: bash benchmarks/ablate_parts.sh [DATA_ROOT] [OUT] [EPOCHS] [SAMPLES_PER_EPOCH]
set -euo pipefail
DATA=${1:-../shared/data/dsb2018-fluo}
OUT=${2:-bench-out/ablate}
EPOCHS=${3:-4}
SPE=${4:-256}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
declare -A VARIANTS=(
  [recipe]=""
  [loss_dice_bce]="--set train.loss=dice_bce"
  [no_edge]="--set model.input_mode=none"
  [pos_weight_1]="--set train.pos_weight_max=1"
)
run() {
  local name=$1; shift
  qmed train --preset cpu --data "$DATA/train" --val "$DATA/val" --out "$OUT/$name" --force --quiet --no-report \
    --set train.epochs=$EPOCHS --set data.samples_per_epoch=$SPE "$@" > "$OUT/$name.log" 2>&1
}
names=(${!VARIANTS[@]})
for ((i = 0; i < ${#names[@]}; i += 2)); do
  for n in "${names[@]:i:2}"; do run "$n" ${VARIANTS[$n]} & done
  wait
done
printf "%-18s %10s %10s\n" variant dice_fg dice_pooled
for n in "${names[@]}"; do
  python - "$OUT/$n" "$n" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/metrics.csv")))
r = rows[-1]
print(f"{sys.argv[2]:18s} {float(r['val_dice_fg']):10.4f} {float(r['val_dice_pooled']):10.4f}")
PY
done
