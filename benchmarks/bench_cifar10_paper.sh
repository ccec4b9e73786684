#!/usr/bin/env bash
# Benchmark of every detector on the cifar10-paper zoo (the BAN paper's setting: ResNet-18, VGG-16,
# DenseNet-121 at full width), on one CUDA GPU.
#
# Same protocol as bench_cifar10_cpu.sh: the zoo build and the scans both resume, thresholds are fitted on
# the zoo's clean models only (leave-one-out, 5% FPR budget), and the report names the commit and command.
#
# Usage: bash benchmarks/bench_cifar10_paper.sh   (CIFAR-10 under $BANSCAN_DATA_DIR/cifar10/{train,test}.npz)
set -euo pipefail
cd "$(dirname "$0")/.."

ZOO="${ZOO:-runs/zoo-cifar10-paper}"
OUT="${OUT:-benchmarks/results/cifar10-paper}"

banscan zoo build cifar10-paper --out "$ZOO" --device cuda
banscan bench --zoo "$ZOO" --methods ban,btidbf,nc,featurere --out "$OUT" --seed 0 --device cuda --no-report \
    --mitigate ban,ban_scan,ft,anp,btidbf_u --mitigate-images 2500
banscan bench report --results "$OUT" --fpr 0.05 --calibration loo --bootstrap 2000
