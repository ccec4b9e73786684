"""Measure BAN's BatchNorm handling on real CIFAR-10 models (issue 2's BN measurement).

Trains (or reuses) small ResNet-18s (base_width 16) on the zoo's training split of CIFAR-10 -- clean and
BadNets (3x3 checkerboard, bottom-right, target 0, 5% of non-target images) -- then scans each with BAN
under bn_mode = recalibrate / official / frozen, and writes scores, verdicts and targets as JSON.

    python benchmarks/ban_bn_modes.py --out runs/bn_modes --n-clean 2 --n-badnets 2 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from banscan import BAN, ImageData, create_model, load_weights, save_weights
from banscan.train import TrainConfig, predict, train_model

DATA = Path(os.environ.get("BANSCAN_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
PATTERN = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])


def load(split: str) -> ImageData:
    d = np.load(DATA / "cifar10" / f"{split}.npz")
    x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous()
    return ImageData(x, torch.from_numpy(d["y"]).long(), classes=tuple(map(str, d["classes"])), source=split)


def stamp(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, :, -3:, -3:] = PATTERN.to(x)
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bn_modes")
    ap.add_argument("--n-clean", type=int, default=2)
    ap.add_argument("--n-badnets", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--modes", default="recalibrate,official,frozen")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = load("train")
    test = load("test")
    train, defender = full.split(len(full) - 5000, 5000, seed=0)  # 10% held out for the defender
    results = []
    for kind, n in (("clean", args.n_clean), ("badnets", args.n_badnets)):
        for seed in range(n):
            name = f"resnet18w16_{kind}_s{seed}"
            path = out / f"{name}.safetensors"
            model = create_model("resnet18", 10, base_width=16)
            if path.exists():
                load_weights(model, path)
                info = json.loads((out / f"{name}.json").read_text())
            else:
                poison = torch.zeros(len(train), dtype=torch.bool)
                if kind == "badnets":
                    g = torch.Generator().manual_seed(100 + seed)
                    cand = torch.nonzero(train.y != 0).flatten()
                    poison[cand[torch.randperm(len(cand), generator=g)[: int(0.05 * len(cand))]]] = True

                def hook(x, y, idx, gen, poison=poison):
                    m = poison[idx].to(x.device)
                    if m.any():
                        x = x.clone()
                        x[m] = stamp(x[m])
                        y = torch.where(m, torch.zeros_like(y), y)
                    return x, y

                st = train_model(model.to(args.device), train, TrainConfig(epochs=args.epochs, seed=seed),
                                 batch_hook=hook if kind == "badnets" else None)
                model = model.cpu()
                ba = float((predict(model, test) == test.y).float().mean())
                nt = test.subset(torch.nonzero(test.y != 0).flatten())
                asr = float((predict(model, nt, transform=stamp) == 0).float().mean())
                info = {"BA": ba, "ASR": asr, **st}
                save_weights(model, path)
                (out / f"{name}.json").write_text(json.dumps(info, indent=2))
            print(f"{name}: BA {info['BA']:.4f} ASR {info['ASR']:.4f}", flush=True)
            for mode in args.modes.split(","):
                t = time.time()
                r = BAN(bn_mode=mode, seed=0).detect(model.to(args.device), defender)
                rec = {"model": name, "kind": kind, "bn_mode": mode, "score": r.score, "target": r.target,
                       "verdict": r.verdict, "share_noise": r.stats["share_noise"],
                       "acc_noise": r.stats["acc_noise"], "acc_clean": r.stats["acc_clean"],
                       "hist_noise_negmask": r.stats["hist_noise_negmask"], "timings": r.timings,
                       "BA": info["BA"], "ASR": info["ASR"]}
                results.append(rec)
                print(f"  {mode:12s} score {r.score:.4f} target {r.target} share_noise "
                      f"{r.stats['share_noise']:.3f} acc_noise {r.stats['acc_noise']:.3f} "
                      f"({time.time() - t:.0f}s)", flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
