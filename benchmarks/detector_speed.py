"""Time every registered detector on one CIFAR-10 ResNet-18 with the same clean-data budget.

Usage (from the repository root):

    python benchmarks/detector_speed.py                      # full-width ResNet-18, each detector's defaults
    python benchmarks/detector_speed.py --weights m.safetensors --device cuda --out speed.json
    python benchmarks/detector_speed.py --quick              # seconds-long smoke run (narrow model, tiny budgets)
    python benchmarks/detector_speed.py --set featurere.n_epochs=50 --set nc.n_epochs=5
    python benchmarks/detector_speed.py --epoch-scale 0.02   # 2% of every epoch count, extrapolated to 100%

The model is ``create_model("resnet18", 10)`` (full width 64) with random weights unless ``--weights`` gives a
safetensors state dict; random weights time the same work per step, but detectors with early exits or
data-dependent branches (BTI-DBF's bound switch) may take different paths on a trained model. Images are the
first ``n_opt + n_eval`` of ``../shared/data/cifar10/test.npz``; every detector gets the same ``n_opt``
(optimisation) and ``n_eval`` (decision) images (the official BTI-DBF budget, 5% of CIFAR-10 = 2,500, by
default). The defaults are the official ones for BTI-DBF and FeatureRE and BackdoorBench's for Neural Cleanse
(the keys of its ``original`` and ``fast`` presets can be given with ``--set nc.KEY=VALUE``). Prints per-phase
timings and the forward/backward passes the official BTI-DBF defaults imply, and writes everything as JSON.

``--epoch-scale S`` runs every epoch-counted phase with ``max(1, round(S * epochs))`` epochs and also reports
the time extrapolated to the full epoch counts (each such phase's measured time times full/run epochs; the other
phases as measured). The per-epoch cost of these phases does not depend on the epoch count, so this is how the
official procedures' times are obtained where running them in full would take hours on a CPU. FeatureRE's
inversion loops over the candidate targets: ``--set 'featurere.targets=[0]'`` runs one and scales by 10.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from banscan.data import CIFAR10_MEAN, CIFAR10_STD, ImageData
from banscan.detectors import get_detector, list_detectors
from banscan.models import create_model

QUICK = {
    "ban": dict(n_steps=2, mask_steps=5),
    "btidbf": dict(n_pretrain_epochs=1, n_mask_epochs=1, n_gen_epochs=1, unet_filters=8),
    "nc": dict(n_epochs=1),
    "featurere": dict(n_warmup_epochs=1, n_epochs=1, unet_filters=8, targets=[0, 1]),
}


# The epoch-counted phases of each detector: timing phase -> the parameters whose sum counts its epochs.
EPOCH_PHASES = {
    "btidbf": {"pretrain": ("n_pretrain_epochs",), "mask": ("n_mask_epochs",), "generator": ("n_gen_epochs",)},
    "nc": {"reverse": ("n_epochs",)},
    "featurere": {"inversion": ("n_warmup_epochs", "n_epochs")},
}
# Phases that loop over candidate target classes (``targets``): run on a subset, extrapolated to all classes.
CLASS_PHASES = {"featurere": "inversion"}


def btidbf_passes(n_opt: int = 2500, n_eval: int = 5000, batch_size: int = 128, pre: int = 50, mask: int = 20,
                  gen: int = 30) -> dict[str, dict[str, int]]:
    """Image passes (forward/backward, classifier and UNet) that BTI-DBF's official defaults imply.

    Per optimisation image and epoch: pre-training runs the classifier forward on the clean and the generated
    image and backward through the generated one, plus the UNet forward and backward; the mask phase runs the
    feature extractor forward once (the head twice, negligible); the generator phase is like pre-training.
    The decision runs the UNet and the classifier on every evaluation image (plus a clean pass for the stats).
    """
    steps = math.ceil(n_opt / batch_size)
    out = {
        "pretrain": {"epochs": pre, "steps": pre * steps, "clf_fwd": 2 * pre * n_opt, "clf_bwd": pre * n_opt,
                     "unet_fwd": pre * n_opt, "unet_bwd": pre * n_opt},
        "mask": {"epochs": mask, "steps": mask * steps, "clf_fwd": mask * n_opt, "clf_bwd": 0,
                 "unet_fwd": 0, "unet_bwd": 0},
        "generator": {"epochs": gen, "steps": gen * steps, "clf_fwd": 2 * gen * n_opt, "clf_bwd": gen * n_opt,
                      "unet_fwd": gen * n_opt, "unet_bwd": gen * n_opt},
        "decision": {"epochs": 1, "steps": math.ceil(n_eval / batch_size), "clf_fwd": 2 * n_eval, "clf_bwd": 0,
                     "unet_fwd": n_eval, "unet_bwd": 0},
    }
    out["total"] = {k: sum(v[k] for v in out.values()) for k in out["pretrain"]}
    return out


def ban_passes(n_opt: int = 500, n_eval: int = 5000, batch_size: int = 128, n_steps: int = 30) -> dict[str, int]:
    """The same count for BAN's defaults (recalibrate mode), for comparison."""
    return {"clf_fwd": n_opt + n_steps * batch_size + n_opt + 2 * n_eval, "clf_bwd": n_steps * batch_size,
            "head_only_steps": 400}


def _parse_sets(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for it in items:
        key, _, val = it.partition("=")
        name, _, param = key.partition(".")
        if not param or not val:
            raise SystemExit(f"--set expects detector.param=value, got {it!r}")
        try:
            v = json.loads(val)
        except json.JSONDecodeError:
            v = val
        out.setdefault(name, {})[param] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10/test.npz")
    p.add_argument("--weights", default=None, help="safetensors state dict of resnet18 (10 classes)")
    p.add_argument("--detectors", nargs="*", default=None, help=f"subset of {list_detectors()}")
    p.add_argument("--n-opt", type=int, default=2500)
    p.add_argument("--n-eval", type=int, default=5000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="override: detector.param=value (JSON value)")
    p.add_argument("--quick", action="store_true", help="narrow model, 128+256 images, one epoch per phase")
    p.add_argument("--epoch-scale", type=float, default=None,
                   help="run epoch-counted phases at this fraction of their epochs and extrapolate to 100%%")
    p.add_argument("--out", default="detector_speed.json")
    args = p.parse_args(argv)

    names = args.detectors or list_detectors()
    n_opt, n_eval = (128, 256) if args.quick else (args.n_opt, args.n_eval)
    arrays = np.load(args.data, allow_pickle=False)
    x = torch.from_numpy(np.ascontiguousarray(arrays["x"][: n_opt + n_eval].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(arrays["y"][: n_opt + n_eval].astype(np.int64))
    data = ImageData(x, y, CIFAR10_MEAN, CIFAR10_STD, source=str(args.data))

    model = create_model("resnet18", 10, **({"base_width": 8} if args.quick else {}))
    weights = "random"
    if args.weights:
        from banscan.checkpoints import load_weights

        load_weights(model, args.weights)
        weights = str(args.weights)
    model = model.to(args.device).eval()

    overrides = _parse_sets(args.set)
    records = []
    for name in names:
        params = {"seed": args.seed, "n_opt": n_opt, "n_eval": n_eval}
        if args.quick:
            params.update(QUICK.get(name, {}))
        params.update(overrides.get(name, {}))
        full = get_detector(name, **params).get_params()
        scaled = {}
        if args.epoch_scale:
            for keys in EPOCH_PHASES.get(name, {}).values():
                scaled.update({k: max(1, round(args.epoch_scale * full[k])) for k in keys})
        det = get_detector(name, **{**params, **scaled})
        t0 = time.perf_counter()
        r = det.detect(model, data, device=args.device)
        wall = time.perf_counter() - t0
        phases = "  ".join(f"{k}={v:.2f}s" for k, v in r.timings.items())
        print(f"{name:10s} wall={wall:8.2f}s  score={r.score:.4f} target={r.target}  {phases}")
        rec = {"detector": name, "wall_s": wall, "timings": r.timings, "score": r.score, "target": r.target,
               "params": det.get_params()}
        if scaled:
            factor = {ph: sum(full[k] for k in keys) / sum(scaled[k] for k in keys)
                      for ph, keys in EPOCH_PHASES[name].items()}
            if name in CLASS_PHASES and det.get_params().get("targets"):
                factor[CLASS_PHASES[name]] *= 10 / len(det.get_params()["targets"])  # CIFAR-10: 10 classes
            est = {ph: t * factor.get(ph, 1.0) for ph, t in r.timings.items() if ph != "total"}
            rec.update(epochs_run=scaled, epochs_full={k: full[k] for k in scaled}, phase_factor=factor,
                       timings_extrapolated=est, wall_s_extrapolated=wall + sum(est.values())
                       - sum(t for ph, t in r.timings.items() if ph != "total"))
            print(f"{'':10s} extrapolated to {rec['epochs_full']}: {rec['wall_s_extrapolated']:.1f}s")
        records.append(rec)

    ban_t = next((rec["wall_s"] for rec in records if rec["detector"] == "ban"), None)
    if ban_t:
        for rec in records:
            rec["x_ban"] = rec.get("wall_s_extrapolated", rec["wall_s"]) / ban_t
            print(f"{rec['detector']:10s} {rec['x_ban']:7.2f}x BAN's time"
                  + (" (extrapolated)" if "wall_s_extrapolated" in rec else ""))

    passes = btidbf_passes()
    print("BTI-DBF official defaults (2,500 images, batch 128, 50 + 20 + 30 epochs) imply:")
    for phase, v in passes.items():
        print(f"  {phase:10s} " + "  ".join(f"{k}={v[k]:,}" for k in v))
    print(f"BAN defaults (500 + 5,000 images, 30 noise steps, 400 mask steps on cached features): {ban_passes()}")

    out = {"device": str(args.device), "torch": torch.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "model": "resnet18" + (" base_width=8" if args.quick else ""),
           "weights": weights, "n_opt": n_opt, "n_eval": n_eval, "quick": args.quick, "epoch_scale": args.epoch_scale,
           "records": records, "amp": "detector default (bf16 autocast where the CPU/GPU supports it)",
           "btidbf_official_passes": passes, "ban_default_passes": ban_passes()}
    if torch.cuda.is_available() and str(args.device).startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
