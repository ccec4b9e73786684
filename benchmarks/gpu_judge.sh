#!/usr/bin/env bash
# A blind judgement (benchmarks/judge.py) continued on a lent GPU machine: the models that have no card yet are
# trained there in parallel shards (--device cuda, the zoo's build commit) and judged there on its CPU (the frozen
# detector, one thread, as here); cards.json and signals.jsonl come back in $OUT, the weights stay there (the
# summary needs only the records). Only the judge's "models judged" lines are printed; its score log stays there.
#
# Here, once (the machine has neither git nor CIFAR-10, and a call carries at most 64 MiB):
#   mkdir -p .gpu && python benchmarks/cifar10_pack.py pack 1 .gpu/part1.bin && \
#     python benchmarks/cifar10_pack.py pack 2 .gpu/part2.bin && for c in 43753a3 8acf2ff; do git archive -o .gpu/src-$c.tar.gz $c banscan benchmarks/dev_signals.py; done
# Device calls while the machine stays warm (a carried path stays there until a call carries it again):
#   1. carry [".gpu/part1.bin"], command "true"
#   2. carry [".gpu/part2.bin", ".gpu/src-43753a3.tar.gz", ".gpu/src-8acf2ff.tar.gz"], command "bash benchmarks/gpu_judge.sh cifar10-eval3 8 420",
#      timeout_s 590; repeat without carry while device time lasts
# Then here, with no local scan running: python benchmarks/judge.py cifar10-eval3 merge --from <files_at>
set -u
zoo=$1 shards=${2:-8} secs=${3:-420}
root=$(pwd)
export BANSCAN_DATA_DIR=$root/.gpu/data PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
[ -f .gpu/data/cifar10/test.npz ] || $py benchmarks/cifar10_pack.py unpack .gpu/part1.bin .gpu/part2.bin .gpu/data || exit 1
read -r build frozen < <($py -c "import sys; sys.path.insert(0, 'benchmarks'); import judge; j = judge.JUDGES['$zoo']; \
print(j['build'], j['frozen'])")
for pair in "build $build" "judge $frozen"; do
  set -- $pair
  d=runs/src-$1-$zoo
  [ -d "$d" ] || { mkdir -p "$d" && tar -xzf ".gpu/src-$2.tar.gz" -C "$d"; } || exit 1
done
judge() { $py benchmarks/judge.py "$zoo" scan >>/tmp/judge-scan.log 2>&1; grep "models judged" /tmp/judge-scan.log | tail -n 1; }
pids=()  # each shard in its own process group, so that only this script's builds are stopped at the end
for k in $(seq 0 $((shards - 1))); do
  setsid $py benchmarks/judge.py "$zoo" build --shard "$k/$shards" --device cuda >"/tmp/build$k.log" 2>&1 &
  pids+=($!)
done
end=$(( $(date +%s) + secs ))
running() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
while [ "$(date +%s)" -lt "$end" ] && running; do
  sleep 60
  judge
done
for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null; done; sleep 3
judge
# at most 8 files come back: the two records and the shards' logs in one file
cp "benchmarks/results/$zoo/cards.json" "benchmarks/results/$zoo/signals.jsonl" "$OUT/"
tail -n 20 /tmp/build*.log >"$OUT/build.log"
