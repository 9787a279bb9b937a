#!/usr/bin/env bash
# The `cpu` preset on DSB2018 fluorescence: train with the default budget, then predict the val
# split with and without 7-fold TTA and score both with `qmed evaluate`.
# Usage: bash benchmarks/recipe_quality.sh [DATA_ROOT] [OUT] [TRAIN OPTIONS...]
#   (defaults: ../shared/data/dsb2018-fluo, bench-out/recipe; TRAIN OPTIONS go to `qmed train`,
#   e.g. --minutes 30 --no-report --set data.sampler=uniform)
set -euo pipefail
DATA=${1:-../shared/data/dsb2018-fluo}
OUT=${2:-bench-out/recipe}
shift $(( $# < 2 ? $# : 2 ))
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
start=$(date +%s)
qmed train --preset cpu --data "$DATA/train" --val "$DATA/val" --out "$OUT/run" --force --quiet "$@"
echo "train_wall_seconds $(( $(date +%s) - start ))"
for mode in tta no-tta; do
  qmed predict --model "$OUT/run" --input "$DATA/val/images" --out "$OUT/preds-$mode" --$mode --force
  qmed evaluate --pred "$OUT/preds-$mode" --truth "$DATA/val" --out "$OUT/eval-$mode.json"
done
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'':8s} {'dice_empty1':>12s} {'dice_fg':>24s} {'dice_pooled':>12s} {'iou_fg':>8s} {'hd95':>7s} {'small_rec':>9s} {'obj_f1':>7s} {'aji':>7s}")
for mode in ("no-tta", "tta"):
    s = json.load(open(f"{out}/eval-{mode}.json"))["summary"]
    fg = s["dice_mean_fg"]
    print(f"{mode:8s} {s['dice_mean_empty1']['mean']:12.4f} {fg['mean']:.4f} [{fg['ci_low']:.4f},{fg['ci_high']:.4f}] "
          f"{s['dice_pooled']:12.4f} {s['iou_mean_fg']['mean']:8.4f} {s['hd95']['mean']:7.2f} {s['small_object_recall']:9.4f} "
          f"{s['object_f1']:7.4f} {s['aji']['mean']:7.4f}")
PY
