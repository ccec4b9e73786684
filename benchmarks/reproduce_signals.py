"""Rescore committed judging records with the current code: same model, candidate and seed, one thread.

Checks that a change of the code (e.g. the issue-16 restructuring) left the scores as they were: prints each pair's
score and target then and now, and writes them as JSON. Scores depend on the thread count (bf16 reductions), so
run it with the thread count the records were made with (one, for dev_signals.py).

    OMP_NUM_THREADS=1 python benchmarks/reproduce_signals.py --zoo runs/zoo-eval \
        --signals benchmarks/results/cifar10-eval/signals.jsonl --out benchmarks/results/cifar10-eval/reproduce.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dev_signals  # noqa: E402  (the candidates' parameters)

from banscan._utils import versions  # noqa: E402
from banscan.detectors import get_detector  # noqa: E402
from banscan.zoo import defender_data, load_manifest, load_zoo_model  # noqa: E402

PAIRS = ["clean-vgg16_bn-w16-s5:ban-negmask", "wanet-resnet18-w16-s16:ban-negmask",
         "clean-resnet18-w16-s1:ban-noise-r5", "badnets-resnet18-w16-s10:ban-noise-r5",
         "blend-vgg16_bn-w16-s15:mmbd-fast", "iad-resnet18-w16-s19:ban-fused"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--signals", required=True)
    ap.add_argument("--pairs", nargs="+", default=PAIRS, metavar="MODEL:CANDIDATE")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    old = {(r["model"], r["candidate"]): r for r in map(json.loads, Path(a.signals).read_text().splitlines())}
    cards = {c["id"]: c for c in load_manifest(a.zoo)["models"]}
    data = defender_data(a.zoo)
    out = []
    for pair in a.pairs:
        mid, cand = pair.split(":")
        if (mid, cand) not in old or mid not in cards:
            raise SystemExit(f"{pair}: not in {a.signals} or not in the zoo {a.zoo}")
        method, params = dev_signals.CANDIDATES[cand]
        o = old[(mid, cand)]
        t = time.perf_counter()
        r = get_detector(method, seed=o["seed"], **params).detect(load_zoo_model(a.zoo, cards[mid]), data, device="cpu")
        rec = {"model": mid, "candidate": cand, "score_then": o["score"], "score_now": r.score,
               "target_then": o["target"], "target_now": r.target,
               "same": r.score == o["score"] and r.target == o["target"], "wall_s": time.perf_counter() - t}
        print(f"{mid:34s} {cand:14s} {o['score']:.6f} -> {r.score:.6f}  target {o['target']} -> {r.target}  "
              f"{'same' if rec['same'] else 'DIFFERENT'}", flush=True)
        out.append(rec)
    Path(a.out).write_text(json.dumps({"records": out, "all_same": all(r["same"] for r in out),
                                       "threads": torch.get_num_threads(), "versions": versions()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
