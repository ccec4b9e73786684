#!/usr/bin/env bash
# Issue 14, part 3: what a reduced budget costs the baselines, on 4 cifar10-eval ResNet-18s (2 clean, 2 backdoored).
# BTI-DBF at about 1% (1/1/1 epochs of 7 batches: 21 of the official 2,400 batches), 10% (budget 0.1: 5/2/3
# epochs of 20 batches) and 100% (50/20/30 epochs; about an hour per width-16 model on one thread) of its
# official budget, then Neural Cleanse at BackdoorBench's budget (its default; about 50 min per model). One thread,
# one results folder per setting, resumable: rerun after an interruption and finished models are skipped. Models
# missing from ZOO (runs/ is not kept between sessions) are first rebuilt from the shipped spec SPEC.
#
#   nohup bash benchmarks/baseline_budgets.sh > runs/baseline-budgets.log 2>&1 &
#   the same four seeds on cifar10-eval2 (seeds + 300; the evaluation zoo: no baseline is tuned on it):
#   SPEC=cifar10-eval2 ZOO=runs/zoo-eval2 OUT=benchmarks/results/cifar10-eval2/budgets \
#     MODELS=clean-resnet18-w16-s300,clean-resnet18-w16-s301,badnets-resnet18-w16-s310,blend-resnet18-w16-s313 \
#     nohup bash benchmarks/baseline_budgets.sh > runs/baseline-budgets-eval2.log 2>&1 &
#   DEVICE=cuda bash benchmarks/baseline_budgets.sh     (on a GPU: minutes per model instead of an hour)
#   DEVICE=cuda SETTINGS="100pct nc" OUT=$OUT/budgets bash benchmarks/baseline_budgets.sh   (what the CPU lacks)
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO="${ZOO:-runs/zoo-eval}"
OUT="${OUT:-benchmarks/results/cifar10-eval/budgets}"
MODELS="${MODELS:-clean-resnet18-w16-s0,clean-resnet18-w16-s1,badnets-resnet18-w16-s10,blend-resnet18-w16-s13}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m banscan zoo build "${SPEC:-cifar10-eval}" --out "$ZOO" --only "$MODELS" --device "${DEVICE:-cpu}"
run() { python -m banscan bench --zoo "$ZOO" --models "$MODELS" --seed 0 --device "${DEVICE:-cpu}" --no-report "$@"; }
for setting in ${SETTINGS:-1pct 10pct 100pct nc}; do  # e.g. SETTINGS="100pct nc" on a short GPU lease
  case "$setting" in
    1pct) run --methods btidbf --param btidbf.budget=0.01 --param btidbf.batches_per_epoch=7 --out "$OUT/btidbf-1pct" ;;
    10pct) run --methods btidbf --param btidbf.budget=0.1 --out "$OUT/btidbf-10pct" ;;
    100pct) run --methods btidbf --out "$OUT/btidbf-100pct" ;;
    nc) run --methods nc --out "$OUT/nc-backdoorbench" ;;
    *) echo "unknown setting $setting (1pct 10pct 100pct nc)" >&2; exit 2 ;;
  esac
done
