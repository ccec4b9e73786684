#!/usr/bin/env bash
# The second data set: build the gtsrb-dev zoo (17 width-16 models on GTSRB, 43 classes; about 27 min per model with
# one thread, so about 4 h with two processes on the 2-core CPU), then scan every model with BAN's default and the
# paper's procedure and write the report (thresholds fitted on clean models only, leave-one-out).
# Resumable: rerun after an interruption; a finished model is never retrained, a finished scan never repeated.
# Results: benchmarks/results/gtsrb-dev (the weights stay in runs/).
#
# Usage: bash benchmarks/bench_gtsrb_dev.sh        (GTSRB under $BANSCAN_DATA_DIR, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO="${ZOO:-runs/zoo-gtsrb-dev}"
OUT="${OUT:-benchmarks/results/gtsrb-dev}"
LOG="${LOG:-runs/build-gtsrb-dev}"
JOBS="${JOBS:-2}"
mkdir -p "$LOG"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for ((k = 0; k < JOBS; k++)); do
  python -m banscan zoo build gtsrb-dev --out "$ZOO" --device cpu --shard "$k/$JOBS" >"$LOG/shard$k.log" 2>&1 &
done
wait
python -m banscan zoo build gtsrb-dev --out "$ZOO" --device cpu >"$LOG/final.log" 2>&1
python -m banscan -q bench --zoo "$ZOO" --methods ban --out "$OUT" --seed 0 --device cpu --no-report
python -m banscan -q bench --zoo "$ZOO" --methods ban --preset paper --out "$OUT-paper" --seed 0 --device cpu --no-report
for o in "$OUT" "$OUT-paper"; do
  python -m banscan bench report --results "$o" --fpr 0.05 --calibration loo --bootstrap 2000
done
