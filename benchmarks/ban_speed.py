"""Time one BAN scan of a full-width ResNet-18 on real CIFAR-10: banscan's default, or ``--preset paper``.

The detector's own image counts (by default 500 optimisation and 2,500 evaluation images, all from the CIFAR-10
test set, disjoint); ``--param`` sets any BAN parameter. Prints the time of every phase, the total and the peak
memory, and writes JSON. Weights: random initialisation unless ``--weights`` is given (the cost does not depend on
the weights).

    python benchmarks/ban_speed.py --out runs/ban_speed.json [--preset paper] [--device cuda] [--bn-mode official]
        [--amp/--no-amp] [--param n_steps=10 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from banscan import BAN, ImageData, create_model, load_weights
from banscan._utils import versions
from banscan.params import resolve

DATA = Path(os.environ.get("BANSCAN_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bn-mode", default="recalibrate")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", choices=sorted(BAN.presets), default=None, help="default: banscan's default")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="any BAN parameter")
    ap.add_argument("--out", default="runs/ban_speed.json")
    args = ap.parse_args()

    d = np.load(DATA / "cifar10" / "test.npz")
    data = ImageData(torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(d["y"]).long(),
                     source="cifar10/test.npz")
    model = create_model("resnet18", 10)
    if args.weights:
        load_weights(model, args.weights)
    model = model.to(args.device)
    params = {"bn_mode": args.bn_mode, "amp": args.amp, "seed": args.seed}
    params.update(resolve(BAN, "ban", preset=args.preset, pairs=args.param))
    det = BAN(**params)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r = det.detect(model, data)
    wall = time.perf_counter() - t0
    peak = {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "max_rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}
    if args.device.startswith("cuda"):
        peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out = {"wall_s": round(wall, 2), "timings": r.timings, "peak_memory": peak, "device": r.device,
           "amp": r.stats["amp"], "preset": args.preset, "threads": torch.get_num_threads(), "params": det.get_params(),
           "score": r.score, "target": r.target, "weights": args.weights or "random init", "versions": versions()}
    for k, v in r.timings.items():
        print(f"{k:>12s}: {v:8.2f} s")
    print(f"{'wall':>12s}: {wall:8.2f} s   peak RSS {peak['max_rss_mib']:.0f} MiB   amp {r.stats['amp']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
