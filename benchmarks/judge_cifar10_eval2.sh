#!/usr/bin/env bash
# The blind judgement of BAN's default (issue 13) on cifar10-eval2, exactly as pre-registered in
# benchmarks/results/cifar10-eval2/preregistration.md: the frozen candidate (= BAN() since commit 1c098a7), seed 0,
# one thread, threshold 0.16; signals and summary are written beside the pre-registration. Run it once, after
# `EVAL_SPEC=cifar10-eval2 EVAL=runs/zoo-eval2 LOG=runs/build-eval2 bash benchmarks/build_cifar10_eval.sh` has
# finished (runs/build-eval2/done exists). Resumable (models already scanned are skipped). About 5 s per model.
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO="${ZOO:-runs/zoo-eval2}"
OUT=benchmarks/results/cifar10-eval2
C=ban-noise-r5-s10-b64-e2500
python -c "import json, sys; m = json.load(open('$ZOO/manifest.json')); sys.exit(0 if m['complete'] else
    'the zoo is not complete yet: finish its build first')"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python benchmarks/dev_signals.py --zoo "$ZOO" --out "$OUT/signals.jsonl" --candidates "$C"
python benchmarks/dev_signals.py --zoo "$ZOO" --out "$OUT/signals.jsonl" --analyze --brief \
  --threshold "$C=0.16" --summary "$OUT/summary.json"
