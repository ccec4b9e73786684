#!/usr/bin/env bash
# Build the development zoo (cifar10-dev, 10 models) and then the evaluation zoo (cifar10-eval, 57 models) on the
# 2-core CPU: two processes with one thread each, process k building shard k/2 of each spec, then one pass without
# shards per spec that checks completeness (and trains whatever is still missing). Resumable: rerun the script
# after an interruption; a finished model is never retrained. Progress: runs/build-eval/*.log.
#
# Usage: bash benchmarks/build_cifar10_eval.sh       (CIFAR-10 under $BANSCAN_DATA_DIR, default ../shared/data)
# To keep editing the code while it runs, run it from a frozen checkout of one commit (it runs the banscan of the
# folder it lies in), with absolute output folders:
#   git worktree add runs/src-build HEAD
#   DEV=$PWD/runs/zoo-dev EVAL=$PWD/runs/zoo-eval LOG=$PWD/runs/build-eval nohup bash runs/src-build/benchmarks/build_cifar10_eval.sh &
# The second evaluation zoo: EVAL_SPEC=cifar10-eval2 EVAL=runs/zoo-eval2 LOG=runs/build-eval2 (JOBS=1: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${DEV:-runs/zoo-dev}"
EVAL="${EVAL:-runs/zoo-eval}"
LOG="${LOG:-runs/build-eval}"
SPEC="${EVAL_SPEC:-cifar10-eval}"
JOBS="${JOBS:-2}"
mkdir -p "$LOG"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for ((k = 0; k < JOBS; k++)); do
  ( python -m banscan zoo build cifar10-dev --out "$DEV" --device cpu --shard "$k/$JOBS"
    python -m banscan zoo build "$SPEC" --out "$EVAL" --device cpu --shard "$k/$JOBS" ) >"$LOG/shard$k.log" 2>&1 &
done
wait
python -m banscan zoo build cifar10-dev --out "$DEV" --device cpu >"$LOG/final-dev.log" 2>&1
python -m banscan zoo build "$SPEC" --out "$EVAL" --device cpu >"$LOG/final-eval.log" 2>&1
echo "done: $DEV $EVAL" >"$LOG/done"
