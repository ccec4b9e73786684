"""Candidate detector signals on a development zoo: one scan per (model, candidate), full statistics kept.

Used to choose banscan's default verdict (issue 13) on `cifar10-dev` only; every record keeps the detector's
whole ``stats`` (e.g. the class-wise rate matrix), so that aggregations can be compared without rescanning.
Resumable: a (model, candidate) pair already in the output is skipped. One thread per process is the rule here.

    OMP_NUM_THREADS=1 python benchmarks/dev_signals.py --zoo runs/zoo-dev --out benchmarks/results/cifar10-dev/signals.jsonl \
        [--candidates ban-noise-r5,ban-classwise,...] [--analyze]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from banscan.bench import auroc, bootstrap_ci
from banscan.detectors.ban import load_class_prior

# The schedule every candidate was scanned with unless it says otherwise: the paper's 30 steps at batch 128 and 5,000
# decision images (BAN's defaults until the cheaper schedule below was chosen).
_PAPER_SCHEDULE = {"n_steps": 30, "batch_size": 128, "n_eval": 5000}


def _ban(**params) -> tuple[str, dict]:
    return "ban", {**_PAPER_SCHEDULE, **params}


CANDIDATES = {
    # fused, chosen from the candidates below: the default (1,000 judging images, step batch 128), and cheaper forms
    "ban-fused": _ban(statistic="fused", class_eps=0.5, n_class_eval=1000, class_batch=128),
    "ban-fused-n500": _ban(statistic="fused", class_eps=0.5, n_class_eval=500, class_batch=128),
    "ban-fused-b64": _ban(statistic="fused", class_eps=0.5, n_class_eval=500, class_batch=64),
    # half the aimed-noise steps (twice the step size): the speed target on a full-width ResNet-18 (issue 13)
    "ban-fused-s5": _ban(statistic="fused", class_eps=0.5, n_class_eval=1000, class_batch=128, class_steps=5),
    "ban-fused-s5-mm5": _ban(statistic="fused", class_eps=0.5, n_class_eval=1000, class_batch=128, class_steps=5,
                             mm_images=5),
    # BAN() as shipped since the cifar10-eval3 pre-registration: the noise-only share's per-class z-score against
    # the shipped CIFAR-10 class prior (its own threshold 4.3); derived() adds the plain share and other forms
    "ban-default": ("ban", {}),
    "ban-negmask": _ban(statistic="negmask", restarts=1),
    "ban-noise-r5": _ban(statistic="noise", restarts=5),
    # cheaper noise schedules for the 60 s target (benchmarks/results/cifar10-eval2/preregistration.md); the one
    # with ``-e2500`` became BAN's default
    "ban-noise-r5-s10-b64": _ban(statistic="noise", restarts=5, n_steps=10, batch_size=64),
    "ban-noise-r5-s10-b64-e2500": _ban(statistic="noise", restarts=5, n_steps=10, batch_size=64, n_eval=2500),
    "ban-noise-r3-s10": _ban(statistic="noise", restarts=3, n_steps=10),
    "ban-noise-r10-s5-b64": _ban(statistic="noise", restarts=10, n_steps=5, batch_size=64),
    "ban-classwise": _ban(statistic="classwise", class_eps=0.3, n_class_eval=1000, class_batch=128),
    "ban-classwise-s30": _ban(statistic="classwise", class_eps=0.3, n_class_eval=1000, class_batch=128,
                              class_steps=30),
    "ban-classwise-e05": _ban(statistic="classwise", class_eps=0.5, n_class_eval=1000, class_batch=128),
    "mmbd": ("mmbd", {}),
    "mmbd-fast": ("mmbd", {"n_images": 10, "n_steps": 100}),
    "weights": (None, {}),
}


CLEAN_LABEL = ("sig", "lc")
# Verdict thresholds fixed with the candidates: -log10(0.05) for p-value scores, the paper's 0.9 for its share;
# the noise-only share has none (ranking only).
THRESHOLDS = {"ban-negmask": 0.9, "ban-noise-r5": None, "ban-noise-r5-s10-b64-e2500": 0.16, "ban-default": 4.3,
              "ban-default:share": 0.16}
P_THRESHOLD = -math.log10(0.05)


def weight_signal(model: torch.nn.Module) -> dict:
    """Per-class statistics of the last linear layer (no data, no optimisation)."""
    from banscan.detectors._outlier import mad_index, max_class_pvalue

    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    w = lin.weight.detach().float()
    norms = w.norm(dim=1)
    out = {"row_norm": norms.tolist(), "bias": None if lin.bias is None else lin.bias.detach().float().tolist()}
    p = max_class_pvalue(norms.tolist())
    out.update(pvalue=p, mad_index=mad_index(norms.tolist()))
    return {"score": -math.log10(max(p, 1e-300)), "target": int(norms.argmax()), "stats": out, "timings": {}}


def scan(zoo: str, out: Path, names: list[str], seed: int) -> None:
    from banscan.detectors import get_detector
    from banscan.zoo import defender_data, load_manifest, load_zoo_model

    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["model"], r["candidate"]))
    cards = [c for c in load_manifest(zoo)["models"] if c.get("status") == "ok"]
    data = defender_data(zoo)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        method, params = CANDIDATES[name]
        for card in cards:
            if (card["id"], name) in done:
                continue
            model = load_zoo_model(zoo, card)
            t0 = time.perf_counter()
            if method is None:
                r = weight_signal(model)
            else:
                res = get_detector(method, seed=seed, **params).detect(model, data, device="cpu")
                r = {"score": res.score, "target": res.target, "stats": res.stats, "timings": res.timings,
                     "config": res.config, "threshold": res.threshold, "threshold_source": res.threshold_source,
                     "versions": res.versions}
            rec = {"model": card["id"], "candidate": name, "attack": card["attack"], "true_target": card["target"],
                   "arch": card["arch"], "BA": card["BA"], "ASR": card["ASR"], "wall_s": time.perf_counter() - t0,
                   "seed": seed, **r}
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
            print(f"{name:20s} {card['id']:34s} score={r['score']:.3f} target={r['target']} "
                  f"(true {card['target']}) {rec['wall_s']:.1f}s", flush=True)


def _rates(r: dict) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in r["stats"]["classwise"]["rates"]])


def _score(values: np.ndarray, rule: str) -> tuple[float, int]:
    from banscan.detectors._outlier import mad_index, max_class_pvalue

    v = np.asarray(values, dtype=np.float64)
    s = -math.log10(max(max_class_pvalue(v.tolist()), 1e-300)) if rule == "p" else mad_index(v.tolist())
    return s, int(v.argmax())


def derived(recs: list[dict]) -> list[dict]:
    """Aggregations of stored per-class evidence, computed without rescanning.

    From a class-wise rate matrix R[t, j] (share of class-j images sent to t by noise aimed at t):
    ``mean``/``median``/``min`` over sources j; ``rel``: each source's rates divided by that source's mean over
    targets (a per-source baseline: some classes, e.g. cat, are easily sent anywhere), then the mean over
    sources of the log ratio. Each under MM-BD's gamma p-value (``p``) or the MAD index (``mad``).
    ``fisher``: Fisher's combination of the class-wise (mean or min, p) and MM-BD p-values.
    """
    from scipy import stats as st

    out = []
    for r in recs:  # the default's per-class evidence under other forms (ban-default records with a class prior)
        if r["candidate"] != "ban-default" or not r["stats"].get("class_prior"):
            continue
        mu = np.asarray(load_class_prior(r["stats"]["class_prior"]["name"])["mean"])
        share = np.asarray(r["stats"]["hist_noise"], float) / r["stats"]["n_eval"]
        for name, v in {"share": share, "share-mu": share - mu, "log(share/mu)": np.log(share / mu)}.items():
            out.append({**r, "candidate": f"ban-default:{name}", "score": float(v.max()), "target": int(v.argmax())})
    by_model = {}
    for r in recs:
        by_model.setdefault(r["model"], {})[r["candidate"]] = r
    for model, cands in by_model.items():
        for base in ("ban-classwise", "ban-classwise-s30", "ban-classwise-e05"):
            if base not in cands:
                continue
            r = cands[base]
            R = _rates(r)
            with np.errstate(all="ignore"):
                rel = np.nanmean(np.log((R + 1e-3) / (np.nanmean(R, axis=0, keepdims=True) + 1e-3)), axis=1)
            aggs = {"mean": np.nanmean(R, 1), "median": np.nanmedian(R, 1), "min": np.nanmin(R, 1),
                    "rel": rel - rel.min()}
            for agg, v in aggs.items():
                for rule in ("p", "mad"):
                    s, t = _score(v, rule)
                    out.append({**r, "candidate": f"{base}:{agg}:{rule}", "score": s, "target": t})
        for mm in ("mmbd", "mmbd-fast"):
            if "ban-classwise" not in cands or mm not in cands:
                continue
            R = _rates(cands["ban-classwise"])
            for agg in ("mean", "min"):  # over the eps-0.3 class-wise rates
                s1, t1 = _score(np.nanmean(R, 1) if agg == "mean" else np.nanmin(R, 1), "p")
                s2 = cands[mm]["score"]
                comb = st.combine_pvalues([10 ** -s1, 10 ** -s2], method="fisher").pvalue
                tgt = t1 if s1 >= s2 else cands[mm]["target"]
                out.append({**cands[mm], "candidate": f"fisher(classwise-{agg},{mm})",
                            "score": -math.log10(max(comb, 1e-300)), "target": tgt})
    return out


def _binom_ci(k: int, n: int) -> list[float] | None:
    """Exact (Clopper-Pearson) 95% interval of a rate k/n; a bootstrap of 0/n would collapse to [0, 0]."""
    from scipy import stats as st

    if not n:
        return None
    ci = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return [round(ci.low, 4), round(ci.high, 4)]


def _rate(flags: list[bool]) -> dict:
    return {"k": int(sum(flags)), "n": len(flags), "value": sum(flags) / len(flags) if flags else None,
            "ci": _binom_ci(int(sum(flags)), len(flags))}


def _auroc_ci(pos: list[float], neg: list[float], seed: int) -> dict:
    return {"value": auroc(pos, neg), "ci": bootstrap_ci(auroc, [pos, neg], n_boot=2000, seed=seed)}


def summarize(rs: list[dict], threshold: float | None, seed: int = 0) -> dict:
    """One candidate's verdict metrics: AUROC (bootstrap over models), rates at its fixed threshold (exact
    binomial intervals), target right, and the same per attack, per architecture and for the long-trained probe."""
    clean = [r for r in rs if not r["attack"]]
    bd = [r for r in rs if r["attack"]]
    dirty = [r for r in bd if r["attack"] not in CLEAN_LABEL]
    cs = [r["score"] for r in clean]

    def flagged(r: dict) -> bool:
        return threshold is not None and r["score"] >= threshold

    def group(b: list[dict], c: list[dict]) -> dict:
        out = {"n_backdoored": len(b), "n_clean": len(c),
               "auroc": _auroc_ci([r["score"] for r in b], [r["score"] for r in c], seed),
               "target_right": _rate([r["target"] == r["true_target"] for r in b])}
        if threshold is not None:
            out["tpr"] = _rate([flagged(r) for r in b])
            out["tpr_target"] = _rate([flagged(r) and r["target"] == r["true_target"] for r in b])
            out["fpr"] = _rate([flagged(r) for r in c])
        return out

    long = [r for r in rs if "-e30-" in r["model"]]
    return {
        "threshold": threshold, "all": group(bd, clean), "dirty": group(dirty, clean),
        "attacks": {a: group([r for r in bd if r["attack"] == a], clean) for a in sorted({r["attack"] for r in bd})},
        "archs": {a: group([r for r in bd if r["arch"] == a], [r for r in clean if r["arch"] == a])
                  for a in sorted({r["arch"] for r in rs})},
        "probe_long": group([r for r in long if r["attack"]], [r for r in long if not r["attack"]]),
        "probe_short": group([r for r in bd if r not in long], [r for r in clean if r not in long]),
        "s_per_model": {"mean": float(np.mean([r["wall_s"] for r in rs])),
                        "median": float(np.median([r["wall_s"] for r in rs]))},
        "clean_scores": sorted(cs, reverse=True),
    }


def _fmt(d: dict) -> str:
    v, ci = d["value"], d["ci"]
    return "-" if v is None else f"{v:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def analyze(out: Path, summary: Path | None = None, verbose: bool = True, thresholds: dict | None = None) -> None:
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    recs += derived(recs)
    by = {}
    for r in recs:
        by.setdefault(r["candidate"], []).append(r)
    result = {}
    for name, rs in by.items():
        thr = {**THRESHOLDS, **(thresholds or {})}.get(name, P_THRESHOLD)
        m = result[name] = summarize(rs, thr)
        a = m["all"]
        flags = (f"at score >= {thr:.2f}: {a['tpr']['k']}/{a['tpr']['n']} flagged, "
                 f"clean FPR {a['fpr']['k']}/{a['fpr']['n']} = {_fmt(a['fpr'])}; " if thr is not None else "")
        print(f"\n== {name}: {flags}AUROC {_fmt(a['auroc'])} (dirty-label {_fmt(m['dirty']['auroc'])}), "
              f"target right {a['target_right']['k']}/{a['target_right']['n']}, "
              f"{m['s_per_model']['mean']:.1f} s/model")
        for att, g in m["attacks"].items():
            hit = f"{g['tpr']['k']}/{g['tpr']['n']} flagged ({g['tpr_target']['k']} with target), " if thr else ""
            print(f"   {att:12s} {hit}AUROC {_fmt(g['auroc'])}, target right {g['target_right']['k']}")
        if verbose:
            for r in sorted(rs, key=lambda r: -r["score"]):
                print(f"  {r['model']:36s} {r['score']:8.3f}  target {r['target']} (true {r['true_target']})")
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps({"signals": str(out), "p_threshold": P_THRESHOLD, "candidates": result},
                                      indent=1) + "\n")
        print(f"\nsummary written to {summary}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--analyze", action="store_true", help="only print the table of what is in --out")
    ap.add_argument("--summary", help="write the metrics of every candidate to this JSON file")
    ap.add_argument("--brief", action="store_true", help="leave out the per-model score lists")
    ap.add_argument("--threshold", action="append", default=[], metavar="CANDIDATE=VALUE",
                    help="a verdict threshold for one candidate instead of its fixed one (repeatable)")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.analyze:
        names = [n for n in args.candidates.split(",") if n]
        bad = [n for n in names if n not in CANDIDATES]
        if bad:
            raise SystemExit(f"unknown candidates {bad}; expected some of {sorted(CANDIDATES)}")
        scan(args.zoo, out, names, args.seed)
    try:
        thresholds = {k: float(v) for k, v in (t.split("=", 1) for t in args.threshold)}
    except ValueError:
        raise SystemExit(f"--threshold takes CANDIDATE=VALUE with a number, got {args.threshold}") from None
    analyze(out, Path(args.summary) if args.summary else None, verbose=not args.brief, thresholds=thresholds)


if __name__ == "__main__":
    main()
