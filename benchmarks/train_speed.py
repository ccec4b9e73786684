"""Training throughput (images/s) of the zoo recipe on this machine, for the zoo's architectures.

Runs a few dozen batches of CIFAR-sized (3x32x32) random images through ``banscan.train.train_model`` (batched
augmentation, channels-last, bf16 autocast where it pays off, one-cycle SGD) after one warm-up batch.

    python benchmarks/train_speed.py [--batches 30] [--batch-size 256] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from banscan.data import ImageData
from banscan.models import create_model
from banscan.train import TrainConfig, train_model

ARCHS = [("resnet18", {"base_width": 16}), ("preact_resnet18", {"base_width": 16}), ("vgg16_bn", {"width": 16})]


def measure(arch: str, kwargs: dict, batches: int, batch_size: int, device: str, amp: bool | None) -> dict:
    gen = torch.Generator().manual_seed(0)
    n = batch_size * batches
    data = ImageData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                     torch.randint(0, 10, (n,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(arch, 10, **kwargs).to(device)
    warm = data.subset(torch.arange(batch_size))
    train_model(model, warm, TrainConfig(epochs=1, batch_size=batch_size, amp=amp), device=device)
    t0 = time.perf_counter()
    stats = train_model(model, data, TrainConfig(epochs=1, batch_size=batch_size, amp=amp), device=device)
    wall = time.perf_counter() - t0
    return {"arch": arch, "kwargs": kwargs, "images_per_s": stats["images_per_s"], "images": n,
            "wall_s": round(wall, 2), "amp": stats["amp"], "device": stats["device"],
            "est_10_epochs_45k_min": round(10 * 45000 / stats["images_per_s"] / 60, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--arch", action="append", default=None, help="arch[:key=value,...]; repeatable")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    archs = ARCHS
    if args.arch:
        from banscan.models import parse_kwargs

        archs = [(a.split(":")[0], parse_kwargs(a.split(":", 1)[1]) if ":" in a else {}) for a in args.arch]
    rows = []
    for arch, kw in archs:
        r = measure(arch, kw, args.batches, args.batch_size, args.device, args.amp)
        rows.append(r)
        print(f"{arch:<16s} {json.dumps(kw):<22s} {r['images_per_s']:>8.1f} img/s  (amp={r['amp']}, "
              f"{r['images']} images in {r['wall_s']}s; 10 epochs of 45k images ~ {r['est_10_epochs_45k_min']} min)",
              flush=True)
    info = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "results": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(info, fh, indent=2)


if __name__ == "__main__":
    main()
