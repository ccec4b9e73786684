#!/usr/bin/env bash
# Build the cifar10-cpu zoo (and its attack-variant zoo) on one GPU with parallel shards, then repair and scan it.
# The CPU path is benchmarks/bench_cifar10_cpu.sh; this is the same work in minutes on a GPU.
#   bash benchmarks/gpu_cifar10_cpu.sh build  ROOT [SHARDS]       -> ROOT/zoo, ROOT/zoo-variants, ROOT/*.log
#   bash benchmarks/gpu_cifar10_cpu.sh repair ROOT [SECONDS]      -> ROOT/res/{mit-*,bench-ban,bench-ban-noise-r5}/*.jsonl
#     (REPAIR_METHODS="btidbf_u" runs only the repairs the CPU could not)
#   bash benchmarks/gpu_cifar10_cpu.sh scan   ROOT [SECONDS]      -> ROOT/res/bench-{btidbf,nc,featurere}-{a,b}
#     (SCAN_METHODS="btidbf featurere" leaves out NC, which has run on this zoo on the CPU)
# Each phase runs its jobs as parallel processes on the one GPU (small models leave it mostly idle otherwise),
# each writing its own results folder; concatenate their results.jsonl / mitigation.jsonl afterwards.
# CIFAR-10 is read from $BANSCAN_DATA_DIR/cifar10/{train,test}.npz (benchmarks/cifar10_pack.py moves it there).
set -u
cmd=$1 root=$2
py=${PYTHON:-python3} dev=${DEVICE:-cuda}
spec=${SPEC:-cifar10-cpu} variants=${VARIANTS:-benchmarks/specs/cifar10-attack-variants.toml}
mkdir -p "$root"

# split_ids backdoored|all: the zoo's gated model ids (backdoored ones only, or all) as two comma lists $a and $b
split_ids() {
  local ids all half
  ids=$($py -c "import json,sys; print(' '.join(c['id'] for c in json.load(open(sys.argv[1]))['models']
    if c['status'] == 'ok' and (sys.argv[2] == 'all' or c.get('attack'))))" "$root/zoo/manifest.json" "$1")
  read -r -a all <<<"$ids"
  half=$(( (${#all[@]} + 1) / 2 ))
  a=$(IFS=,; echo "${all[*]:0:$half}") b=$(IFS=,; echo "${all[*]:$half}")
}
if [ "$cmd" = build ]; then
  n=${3:-8}
  t0=$(date +%s)
  for i in $(seq 0 $((n - 1))); do
    $py -m banscan zoo build "$spec" --out "$root/zoo" --device "$dev" --shard "$i/$n" >"$root/shard$i.log" 2>&1 &
  done
  for i in 0 1 2; do
    $py -m banscan zoo build "$variants" --out "$root/zoo-variants" \
      --device "$dev" --shard "$i/3" >"$root/variants$i.log" 2>&1 &
  done
  wait
  $py -m banscan zoo build "$spec" --out "$root/zoo" --device "$dev"
  $py -m banscan zoo build "$variants" --out "$root/zoo-variants" --device "$dev"
  echo "build wall time: $(( $(date +%s) - t0 )) s"
elif [ "$cmd" = repair ]; then
  secs=${3:-300}
  split_ids backdoored
  for m in ${REPAIR_METHODS:-ban ban_scan ft anp btidbf_u}; do
    for part in a b; do
      sel=${!part}
      [ -n "$sel" ] || continue
      timeout "$secs" $py -c "import sys; from banscan.mitigation.evaluation import mitigate_zoo
mitigate_zoo(sys.argv[1], [sys.argv[2]], out=sys.argv[3], ids=sys.argv[4].split(','), device=sys.argv[5], n_images=2500)" \
        "$root/zoo" "$m" "$root/res/mit-$m-$part" "$sel" "$dev" >"$root/res-mit-$m-$part.log" 2>&1 &
    done
  done
  timeout "$secs" $py -m banscan bench --zoo "$root/zoo" --methods ban --out "$root/res/bench-ban" --device "$dev" \
    --no-report >"$root/res-bench-ban.log" 2>&1 &
  timeout "$secs" $py -m banscan bench --zoo "$root/zoo" --methods ban --out "$root/res/bench-ban-noise-r5" \
    --device "$dev" --method-params '{"ban": {"statistic": "noise", "restarts": 5}}' \
    --no-report >"$root/res-bench-ban-r5.log" 2>&1 &
  wait
  echo "repair/scan done"
elif [ "$cmd" = scan ]; then
  secs=${3:-500}
  split_ids all
  for m in ${SCAN_METHODS:-btidbf nc featurere}; do
    for part in a b; do
      timeout "$secs" $py -m banscan bench --zoo "$root/zoo" --methods "$m" --models "${!part}" --device "$dev" \
        --out "$root/res/bench-$m-$part" --no-report >"$root/res-bench-$m-$part.log" 2>&1 &
    done
  done
  wait
  echo "scan done"
else
  echo "usage: $0 build|repair|scan ROOT" >&2; exit 2
fi
