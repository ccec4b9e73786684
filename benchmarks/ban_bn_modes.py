"""BAN's BatchNorm handling measured on real models (issue 2): scan every model of a zoo under each bn_mode.

For each model (clean and backdoored, from `banscan zoo build`), runs BAN with bn_mode = recalibrate (ours),
official (the official code's train-mode procedure) and frozen (eval mode throughout) on the zoo's held-out
defender split, and writes score, verdict, suspected target, noise-only share and timings as JSON.

    banscan zoo build benchmarks/specs/cifar10-mini.toml --out runs/zoo-mini
    python benchmarks/ban_bn_modes.py --zoo runs/zoo-mini --out benchmarks/results/bn_modes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from banscan import BAN
from banscan._utils import versions
from banscan.zoo import defender_data, load_manifest, load_zoo_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--out", default="benchmarks/results/bn_modes.json")
    ap.add_argument("--modes", default="recalibrate,official,frozen")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    manifest = load_manifest(args.zoo)
    data = defender_data(args.zoo)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []  # resume: keep finished scans
    done = {(r["model"], r["bn_mode"]) for r in rows}
    for card in manifest["models"]:
        if card["status"] != "ok":
            continue
        model = load_zoo_model(args.zoo, card, device=args.device)
        for mode in args.modes.split(","):
            if (card["id"], mode) in done:
                continue
            r = BAN(**BAN.presets["paper"], bn_mode=mode, seed=args.seed).detect(model, data)  # as measured
            rows.append({"model": card["id"], "attack": card["attack"], "true_target": card["target"],
                         "BA": card["BA"], "ASR": card["ASR"], "bn_mode": mode, "score": r.score,
                         "target": r.target, "share_noise": r.stats["share_noise"],
                         "target_noise": r.stats["target_noise"], "acc_noise": r.stats["acc_noise"],
                         "mask_mean": r.stats["mask_mean"], "noise_gain": r.stats["noise_gain_on_target"],
                         "share_negmask_clean": r.stats["share_negmask_clean_on_target"],
                         "time_s": r.timings["total"]})
            print(f"{card['id']:<28s} {mode:<12s} score {r.score:.3f} target {r.target} (true {card['target']}) "
                  f"noise-only {r.stats['share_noise']:.3f} mask {r.stats['mask_mean']:.2f} "
                  f"negmask-clean {r.stats['share_negmask_clean_on_target']:.3f} "
                  f"{r.timings['total']:.0f}s", flush=True)
            out.write_text(json.dumps({"zoo": args.zoo, "seed": args.seed, "versions": versions(), "rows": rows},
                                      indent=1))


if __name__ == "__main__":
    main()
