#!/usr/bin/env bash
# Benchmark of every detector on the cifar10-cpu zoo, on a CPU machine (the 2-core project machine).
#
# Builds the zoo (resumes; a finished model is never retrained), scans every model with every method on the
# zoo's held-out defender split (resumes; a finished (model, method) pair is never rescanned), and writes
# report.md / report.html. The report lists the commit and the exact command of every run that wrote results.
#
# Usage: bash benchmarks/bench_cifar10_cpu.sh     (CIFAR-10 under $BANSCAN_DATA_DIR/cifar10/{train,test}.npz,
#                                                  default ../shared/data relative to the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

ZOO="${ZOO:-runs/zoo-cifar10-cpu}"
OUT="${OUT:-benchmarks/results/cifar10-cpu}"

banscan zoo build cifar10-cpu --out "$ZOO" --device cpu
banscan bench --zoo "$ZOO" --methods ban,btidbf,nc,featurere --out "$OUT" --seed 0 --device cpu --no-report \
    --mitigate ban,ft,anp,btidbf_u --mitigate-images 2500
banscan bench report --results "$OUT" --fpr 0.05 --calibration loo --bootstrap 2000
