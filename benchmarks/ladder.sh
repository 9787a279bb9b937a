#!/usr/bin/env bash
# Table II on DSB2018 fluorescence: the paper's ladder, the recipe's component ablations and
# HQ-UNet vs its classical twin (`qmed ablate --only all`, 13 rows, 12 trainings), then the
# data-efficiency curve (`qmed curve`, 4 subsets x qmed and smp = 8 trainings), each training
# BUDGET minutes of wall-clock time (default 10: about 2 h + 1.5 h on 2 CPU cores, plus prediction).
# Usage: bash benchmarks/ladder.sh [BUDGET_MINUTES] [DATA_ROOT] [OUT]
#   (defaults: 10, ../shared/data/dsb2018-fluo, bench-out/ladder)
set -euo pipefail
BUDGET=${1:-10}
DATA=${2:-../shared/data/dsb2018-fluo}
OUT=${3:-bench-out/ladder}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
qmed ablate --data "$DATA/train" --val "$DATA/val" --budget "$BUDGET" --only all --out "$OUT/ablate" --force \
  2> "$OUT/ablate.log"
qmed curve --data "$DATA/train" --val "$DATA/val" --fractions 0.1,0.25,0.5,1.0 --budget "$BUDGET" --out "$OUT/curve" --force \
  2> "$OUT/curve.log"
echo "tables: $OUT/ablate/ablate.md, $OUT/curve/curve.md; plot: $OUT/curve/curve.png"
