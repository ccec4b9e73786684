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
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${DEV:-runs/zoo-dev}"
EVAL="${EVAL:-runs/zoo-eval}"
LOG="${LOG:-runs/build-eval}"
mkdir -p "$LOG"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for k in 0 1; do
  ( python -m banscan zoo build cifar10-dev --out "$DEV" --device cpu --shard "$k/2"
    python -m banscan zoo build cifar10-eval --out "$EVAL" --device cpu --shard "$k/2" ) >"$LOG/shard$k.log" 2>&1 &
done
wait
python -m banscan zoo build cifar10-dev --out "$DEV" --device cpu >"$LOG/final-dev.log" 2>&1
python -m banscan zoo build cifar10-eval --out "$EVAL" --device cpu >"$LOG/final-eval.log" 2>&1
echo "done: $DEV $EVAL" >"$LOG/done"
