"""Exploratory, not a judgement: does a per-class clean prior help BAN's noise-only share? (issue 13)

The default's score is the largest share of noisy predictions on one class. Clean CIFAR-10 models' noise favours
some classes (class 3, cat, most), which is where the blind judgement's false alarms came from. This rescans
nothing: it reads the stored signals of the default (candidate ``ban-noise-r5-s10-b64-e2500``) on the three
CIFAR-10 zoos and, leaving one zoo out at a time, scores each model by its pooled noisy class shares ``s`` against
the mean ``mu`` and spread ``sd`` of the clean models of the two other zoos (all architectures pooled):
``max(s - mu)`` and ``max((s - mu) / sd)``. Every zoo has been seen before, so these numbers choose nothing; a
statistic built on them needs a new blind zoo.

    python benchmarks/class_prior.py --out benchmarks/results/class_prior.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from banscan.bench import auroc
from banscan.jsonl import read_jsonl
from dev_signals import CLEAN_LABEL

R = Path(__file__).resolve().parent / "results"
CANDIDATE = "ban-noise-r5-s10-b64-e2500"
ZOOS = {"cifar10-dev": R / "cifar10-dev/signals-schedule.jsonl",
        "cifar10-eval": R / "cifar10-eval/signals-schedule.jsonl",
        "cifar10-eval2": R / "cifar10-eval2/signals.jsonl"}


def shares(r: dict) -> np.ndarray:
    h = np.asarray(r["stats"]["hist_noise"], float)
    return h / h.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=R / "class_prior.json")
    args = ap.parse_args()
    zoos = {z: [r for r in read_jsonl(p) if r["candidate"] == CANDIDATE] for z, p in ZOOS.items()}
    out = {"candidate": CANDIDATE, "held_out": {}}
    for held, rs in zoos.items():
        ref = np.array([shares(r) for z, v in zoos.items() if z != held for r in v if not r["attack"]])
        mu, sd = ref.mean(0), ref.std(0) + 1e-3
        scores = {"share (default)": lambda s: s, "share - mu": lambda s: s - mu,
                  "(share - mu) / sd": lambda s: (s - mu) / sd}
        bd, cl = [r for r in rs if r["attack"]], [r for r in rs if not r["attack"]]
        dirty = [r for r in bd if r["attack"] not in CLEAN_LABEL]
        res = out["held_out"][held] = {"n_clean": len(cl), "n_backdoored": len(bd), "n_reference_clean": len(ref)}
        for name, f in scores.items():
            top = lambda r: float(f(shares(r)).max())  # noqa: E731
            res[name] = {"auroc": auroc([top(r) for r in bd], [top(r) for r in cl]),
                         "auroc_dirty": auroc([top(r) for r in dirty], [top(r) for r in cl]),
                         "target_right": float(np.mean([int(f(shares(r)).argmax()) == r["true_target"] for r in bd]))}
            print(f"{held:14s} {name:18s} AUROC {res[name]['auroc']:.3f}  dirty-label {res[name]['auroc_dirty']:.3f}  "
                  f"target right {res[name]['target_right']:.2f}")
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
