"""Benchmark a zoo sequentially (1 torch thread) and on Ray (2 workers of 1 CPU each), side by side in one run.

Usage (from the repository root; needs ``pip install -e ".[ray]"``):

    python benchmarks/ray_speed.py                                  # builds the tiny spec, 3 seeds per group
    python benchmarks/ray_speed.py --zoo Z --methods ban --workers 2 --out benchmarks/results/ray_speed_cpu.json

Both paths run ``banscan.bench.run_bench`` on the same zoo with the same seed and parameters, into fresh results
folders, and the script checks that they wrote the same scores. Times:

* ``sequential_s``: the sequential path, ``torch.set_num_threads(1)``;
* ``ray_s``: the Ray path inside an already started local instance (``--workers`` CPUs, one per task);
  ``ray_start_s`` is the instance's start and its workers' (one empty task each), reported on its own; ``ratio`` is ``ray_s / sequential_s`` and
  ``ratio_with_start`` counts the start too;
* ``per_task_overhead_s``: the round trip of an empty Ray task (submit, schedule, run, return), the mean over
  ``--noop-tasks`` tasks run one at a time; ``noop_throughput_s``: the same tasks run all at once, per task.

The machine may be shared: say what else ran next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _scores(path: Path) -> dict[tuple[str, str], float]:
    return {(r["model"], r["method"]): r.get("score") for r in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None, help="zoo folder (default: build the tiny spec into a temporary folder)")
    ap.add_argument("--seeds", type=int, default=3,
                    help="seeds per model group of the tiny spec when building (3: 12 models; the shipped spec has 4)")
    ap.add_argument("--methods", default="ban")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (1 CPU each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noop-tasks", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/ray_speed_cpu.json")
    ap.add_argument("--note", default="", help="what else ran on the machine, recorded with the numbers")
    args = ap.parse_args()

    import ray
    import torch

    from banscan._utils import json_safe, versions
    from banscan.bench import BenchConfig, run_bench
    from banscan.distributed import RayConfig, ray_session, run_tasks
    from banscan.zoo import build_zoo, load_manifest, load_spec

    tmp = Path(tempfile.mkdtemp(prefix="ray_speed_"))
    zoo = Path(args.zoo) if args.zoo else tmp / "zoo"
    if args.zoo is None:
        t0 = time.perf_counter()
        spec = load_spec("tiny")
        for i, g in enumerate(spec["models"]):  # more models, so that each worker runs several tasks
            g["seeds"] = list(range(args.seeds)) if g.get("attack") else list(range(i * 100, i * 100 + args.seeds))
        build_zoo(spec, zoo)
        print(f"built a tiny zoo of {len(load_manifest(zoo)['models'])} models in {time.perf_counter() - t0:.1f}s")
    methods = tuple(m for m in args.methods.split(",") if m)
    n_models = sum(c["status"] == "ok" for c in load_manifest(zoo)["models"])

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run_bench(BenchConfig(zoo=str(zoo), methods=methods, out=str(tmp / "seq"), seed=args.seed))
    seq_s = time.perf_counter() - t0
    print(f"sequential, 1 thread: {seq_s:.1f}s for {n_models} models x {len(methods)} methods")

    cfg = RayConfig(cpus_per_task=1, num_cpus=args.workers)
    t0 = time.perf_counter()
    with ray_session(cfg):
        # start the workers (processes that import torch and banscan), as a long-running cluster has them
        run_tasks(json_safe, [(i, {"obj": i}) for i in range(args.workers)], cfg, lambda k, v: None, desc="start")
        start_s = time.perf_counter() - t0
        one = []
        for i in range(args.noop_tasks):  # one at a time: the latency of a task
            t1 = time.perf_counter()
            run_tasks(json_safe, [(i, {"obj": i})], cfg, lambda k, v: None, desc="noop")
            one.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        run_tasks(json_safe, [(i, {"obj": i}) for i in range(args.noop_tasks)], cfg, lambda k, v: None, desc="noop")
        noop_all = (time.perf_counter() - t1) / args.noop_tasks
        t1 = time.perf_counter()
        run_bench(BenchConfig(zoo=str(zoo), methods=methods, out=str(tmp / "ray"), seed=args.seed), ray=cfg)
        ray_s = time.perf_counter() - t1
    same = _scores(tmp / "seq" / "results.jsonl") == _scores(tmp / "ray" / "results.jsonl")
    out = {
        "zoo": str(zoo), "models": n_models, "methods": list(methods), "workers": args.workers, "seed": args.seed,
        "sequential_s": round(seq_s, 2), "ray_s": round(ray_s, 2), "ray_start_s": round(start_s, 2),
        "ratio": round(ray_s / seq_s, 3), "ratio_with_start": round((ray_s + start_s) / seq_s, 3),
        "per_task_overhead_s": round(sum(one) / len(one), 4), "noop_throughput_s": round(noop_all, 4),
        "same_scores": same, "note": args.note, "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "ray": ray.__version__, "versions": versions(),
    }
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if not same:
        raise SystemExit("the Ray path wrote other scores than the sequential one")


if __name__ == "__main__":
    main()
