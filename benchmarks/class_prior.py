"""Exploratory, not a judgement: does a per-class clean prior help BAN's noise-only share? (issue 13)

The default's score is the largest share of noisy predictions on one class. Clean CIFAR-10 models' noise favours
some classes (class 3, cat, most), which is where the blind judgement's false alarms came from. This rescans
nothing: it reads the stored signals of the default (candidate ``ban-noise-r5-s10-b64-e2500``) on the three
CIFAR-10 zoos and, leaving one zoo out at a time, scores each model by its pooled noisy class shares ``s`` against
the mean ``mu`` and spread ``sd`` of the clean models of the two other zoos (all architectures pooled):
``max(s - mu)`` and ``max((s - mu) / sd)``. Every zoo has been seen before, so these numbers choose nothing; a
statistic built on them needs a new blind zoo.

``--write-prior`` writes the prior BAN ships for CIFAR-10 (``class_prior="cifar10"``, the default's ``"auto"`` on
CIFAR-10): mean and spread of all clean development models' shares, and the threshold of
``results/cifar10-eval3/preregistration.md``: the smallest multiple of 0.1 strictly above every clean development
model's leave-one-zoo-out z-score.

    python benchmarks/class_prior.py --out benchmarks/results/class_prior.json --write-prior banscan/priors/cifar10.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from banscan.bench import auroc
from banscan.detectors.ban import _NOISE_SCHEDULE as SCHEDULE
from banscan.jsonl import read_jsonl
from dev_signals import CLEAN_LABEL

R = Path(__file__).resolve().parent / "results"
CANDIDATE = "ban-noise-r5-s10-b64-e2500"
SD_FLOOR = 1e-3
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ZOOS = {"cifar10-dev": R / "cifar10-dev/signals-schedule.jsonl",
        "cifar10-eval": R / "cifar10-eval/signals-schedule.jsonl",
        "cifar10-eval2": R / "cifar10-eval2/signals.jsonl"}


def shares(r: dict) -> np.ndarray:
    h = np.asarray(r["stats"]["hist_noise"], float)
    return h / h.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=R / "class_prior.json")
    ap.add_argument("--write-prior", type=Path, help="write the CIFAR-10 prior fitted on every clean model here")
    args = ap.parse_args()
    zoos = {z: [r for r in read_jsonl(p) if r["candidate"] == CANDIDATE] for z, p in ZOOS.items()}
    out = {"candidate": CANDIDATE, "held_out": {}}
    for held, rs in zoos.items():
        ref = np.array([shares(r) for z, v in zoos.items() if z != held for r in v if not r["attack"]])
        mu, sd = ref.mean(0), ref.std(0) + SD_FLOOR
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
        out["held_out"][held]["clean_z"] = {r["model"]: float(((shares(r) - mu) / sd).max()) for r in cl}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.write_prior:
        write_prior(zoos, out, args.write_prior)


def write_prior(zoos: dict[str, list[dict]], out: dict, path: Path) -> None:
    clean = [r for v in zoos.values() for r in v if not r["attack"]]
    ref = np.array([shares(r) for r in clean])
    loz = {m: z for res in out["held_out"].values() for m, z in res["clean_z"].items()}
    thr = math.floor(max(loz.values()) * 10 + 1) / 10  # smallest multiple of 0.1 strictly above all
    worst = max(loz, key=loz.get)
    cfg = clean[0]["config"]
    assert all({k: r["config"][k] for k in SCHEDULE} == {k: cfg[k] for k in SCHEDULE} for r in clean)
    prior = {
        "name": "cifar10", "classes": CIFAR10, "statistic": "noise",
        "schedule": {k: cfg[k] for k in SCHEDULE},
        "mean": ref.mean(0).round(5).tolist(), "sd": ref.std(0).round(5).tolist(), "sd_floor": SD_FLOOR,
        "threshold": thr,
        "threshold_source": (f"{thr}: class prior 'cifar10', above all {len(loz)} clean width-16 CIFAR-10 development "
                             f"models' leave-one-zoo-out z (largest {loz[worst]:.2f}, {worst}); fitted for FPR ~0; "
                             "calibrate on your own clean models for other data"),
        "fitted_on": {"zoos": list(zoos), "candidate": CANDIDATE, "n_clean": len(clean),
                      "models": sorted(r["model"] for r in clean),
                      "command": "python benchmarks/class_prior.py --write-prior banscan/priors/cifar10.json"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prior, indent=1) + "\n")
    print(f"wrote {path}: threshold {thr} (largest leave-one-zoo-out clean z {loz[worst]:.3f}, {worst})")


if __name__ == "__main__":
    main()
