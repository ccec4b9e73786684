"""BTI-DBF at (at most) 10 times BAN's default scan cost, beside BAN, on eval-zoo models (issue 14, part 3).

Per model: BAN with its defaults (timed), then BTI-DBF with its epoch counts scaled by ``--budget`` and at most
``--batches-per-epoch`` batches per epoch (the generator and data budget otherwise official: 2,500 optimisation
images, batch 128), and ``--n-eval`` decision images. Each record holds both results, both configs, the timings,
the cost ratio and whether it met the 10x limit, and the library versions. The budget is fixed before the run
(not tuned per model); a record over the limit is kept and marked, not rerun.

``--all`` takes every gated model of the zoo instead of the 12-model subset. Resumable: models already in the output file are skipped. One thread; run in the background:

    OMP_NUM_THREADS=1 nohup python benchmarks/btidbf_equal_cost.py > runs/equal-cost.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ZOO = Path(__file__).resolve().parents[1] / "runs" / "zoo-eval"
OUT = Path(__file__).parent / "results" / "cifar10-eval" / "btidbf-equal-cost.jsonl"
# 2 clean, then one backdoored model per attack where the zoo has a ResNet-18 of it.
MODELS = ["clean-resnet18-w16-s0", "clean-resnet18-w16-s1", "badnets-resnet18-w16-s10", "blend-resnet18-w16-s13",
          "wanet-resnet18-w16-s16", "iad-resnet18-w16-s19", "bpp-resnet18-w16-s22", "lc-resnet18-w16-s25",
          "sig-resnet18-w16-s28", "adap_blend-resnet18-w16-s31", "ssdt-resnet18-w16-s34", "clean-resnet18-w16-s2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=ZOO)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--all", action="store_true", help="every model of the zoo that passed its gate")
    ap.add_argument("--budget", type=float, default=0.02, help="factor on BTI-DBF's 50/20/30 epochs")
    ap.add_argument("--batches-per-epoch", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--limit", type=float, default=10.0, help="allowed BTI-DBF/BAN time ratio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from banscan._utils import versions
    from banscan.detectors import BAN, BTIDBF
    from banscan.zoo import defender_data, load_manifest, load_zoo_model

    cards = {c["id"]: c for c in load_manifest(a.zoo)["models"]}
    data = defender_data(a.zoo)
    if a.all:
        a.models = [mid for mid, c in cards.items() if c["status"] == "ok"]
    done = set()
    if a.out.exists():
        done = {json.loads(line)["model"] for line in a.out.read_text().splitlines() if line.strip()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for mid in a.models:
        if mid in done:
            continue
        card = cards[mid]
        model = load_zoo_model(a.zoo, card)
        ban = BAN(seed=a.seed)
        t0 = time.perf_counter()
        rb = ban.detect(model, data)
        t_ban = time.perf_counter() - t0
        bti = BTIDBF(budget=a.budget, batches_per_epoch=a.batches_per_epoch, n_eval=a.n_eval, seed=a.seed)
        t0 = time.perf_counter()
        rt = bti.detect(model, data)
        t_bti = time.perf_counter() - t0
        rec = {
            "model": mid, "attack": card["attack"], "arch": card["arch"], "true_target": card["target"],
            "ban": {"verdict": rb.verdict, "score": rb.score, "threshold": rb.threshold, "target": rb.target,
                    "time_s": t_ban, "timings": rb.timings, "config": rb.config},
            "btidbf": {"verdict": rt.verdict, "score": rt.score, "threshold": rt.threshold, "target": rt.target,
                       "time_s": t_bti, "timings": rt.timings, "config": rt.config,
                       "epochs_used": rt.stats["epochs_used"], "bounds": rt.stats["bounds"],
                       "hist_generated": rt.stats["hist_generated"]},
            "cost_ratio": t_bti / t_ban, "within_limit": t_bti <= a.limit * t_ban, "limit": a.limit,
            "versions": versions(), "threads": torch.get_num_threads(), "zoo": str(a.zoo),
        }
        with a.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{mid}: BAN {rb.verdict} t={rb.target} {t_ban:.1f}s | BTI-DBF {rt.verdict} t={rt.target} "
              f"score={rt.score:.3f} {t_bti:.1f}s (x{t_bti / t_ban:.1f})", flush=True)


if __name__ == "__main__":
    main()
