#!/usr/bin/env bash
# The CPU benchmark that fits one session on the 2-core machine (about 1.5 h): the cifar10-mini zoo
# (3 clean, 2 BadNets, 1 Blend, 1 IAD; width-16 ResNet-18, the cifar10-cpu recipe), BAN's BN modes on every
# model, BAN and Neural Cleanse through the harness, and BAN's fine-tuning vs plain fine-tuning.
# Results and the report land in benchmarks/results/cifar10-mini (the zoo's weights stay in runs/).
set -euo pipefail
cd "$(dirname "$0")/.."

ZOO="${ZOO:-runs/zoo-mini}"
OUT="${OUT:-benchmarks/results/cifar10-mini}"

banscan -q zoo build benchmarks/specs/cifar10-mini.toml --out "$ZOO" --device cpu
python benchmarks/ban_bn_modes.py --zoo "$ZOO" --out "$OUT/bn_modes.json"
banscan -q bench --zoo "$ZOO" --methods ban,nc --out "$OUT" --seed 0 --device cpu --no-report \
    --mitigate ban,ft --mitigate-images 2500
banscan bench report --results "$OUT" --fpr 0.05 --calibration loo --bootstrap 2000
