#!/usr/bin/env bash
# Benchmark on the cifar10-cpu zoo, on a CPU machine (the 2-core project machine).
#
# Builds the zoo (resumes; a finished model is never retrained; about 4 h on a quiet 2-core CPU), scans every
# model with BAN on the zoo's held-out defender split (resumes; a finished (model, method) pair is never
# rescanned; about 8 s per model), repairs every backdoored model with BAN's fine-tuning, BAN's fine-tuning aimed
# at the class BAN's scan names (ban_scan) and plain fine-tuning (about 10, 10 and 4 min per model on one thread;
# ANP, MITIGATE=...,anp, about 20 min in bf16), and writes report.md / report.html, which list the commit and the
# exact command of every run that wrote results.
#
# The baselines cost far more per model on this CPU (benchmarks/RESULTS.md: BTI-DBF ~87x and FeatureRE ~5,900x
# BAN's time at their official defaults, Neural Cleanse ~54x at its former short budget, now the `fast` preset), so they are not in the default METHODS; run them on a
# GPU (benchmarks/gpu_cifar10_cpu.sh scan) or add them here: METHODS=ban,btidbf,nc,featurere.
#
# Usage: bash benchmarks/bench_cifar10_cpu.sh     (CIFAR-10 under $BANSCAN_DATA_DIR/cifar10/{train,test}.npz,
#                                                  default ../shared/data relative to the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

ZOO="${ZOO:-runs/zoo-cpu}"
OUT="${OUT:-benchmarks/results/cifar10-cpu}"
METHODS="${METHODS:-ban}"
MITIGATE="${MITIGATE:-ban,ban_scan,ft}"

banscan zoo build cifar10-cpu --out "$ZOO" --device cpu
banscan bench --zoo "$ZOO" --methods "$METHODS" --out "$OUT" --seed 0 --device cpu --no-report \
    --mitigate "$MITIGATE" --mitigate-images 2500
banscan bench --zoo "$ZOO" --methods ban --out "$OUT-noise-statistic" --seed 0 --device cpu \
    --method-params '{"ban": {"statistic": "noise"}}' --no-report
banscan bench --zoo "$ZOO" --methods ban --out "$OUT-noise-r5" --seed 0 --device cpu \
    --method-params '{"ban": {"statistic": "noise", "restarts": 5}}' --no-report
for r in "$OUT" "$OUT-noise-statistic" "$OUT-noise-r5"; do
  banscan bench report --results "$r" --fpr 0.05 --calibration loo --bootstrap 2000
done
