"""The budget table of issue 14: each baseline setting's verdict on each model, from ``baseline_budgets.sh`` folders.

One row per setting (a results folder), one column per model: the suspected target, its score in brackets (BTI-DBF:
the top share of its decision images; Neural Cleanse: the anomaly index) and ``*`` where the detector's own rule
flags the model, then its time and the CPU kind (or device) it ran on. Missing runs print as ``-``.

    python benchmarks/budget_table.py benchmarks/results/cifar10-eval3/baseline-budgets \
        benchmarks/results/cifar10-eval/budgets-rebuilt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from banscan.jsonl import read_jsonl

ORDER = ["btidbf-1pct", "btidbf-10pct", "btidbf-100pct", "nc-backdoorbench"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="OUT folders of baseline_budgets.sh")
    args = ap.parse_args()
    rows: dict[str, dict[str, dict]] = {}
    for folder in args.folders:
        for setting in sorted((d for d in folder.iterdir() if (d / "results.jsonl").is_file()),
                              key=lambda d: ORDER.index(d.name) if d.name in ORDER else len(ORDER)):
            for r in read_jsonl(setting / "results.jsonl"):
                if r.get("status") == "ok":
                    rows.setdefault(setting.name, {})[f"{r['model']} ({folder.parent.name}/{folder.name})"] = r
    models = sorted({m for v in rows.values() for m in v}, key=lambda m: (("clean" not in m), m))
    truth = {m: next(v[m] for v in rows.values() if m in v) for m in models}
    head = [f"{m}, {'clean' if truth[m]['true_target'] is None else 'target %d' % truth[m]['true_target']}"
            for m in models]
    print("| setting | " + " | ".join(head) + " |")
    print("|---" * (len(models) + 1) + "|")
    for setting, v in rows.items():
        cells = [f"{v[m]['target']} ({v[m]['score']:.2f}){'*' if v[m]['verdict'] == 'backdoored' else ''}, "
                 f"{v[m]['timings']['total']:,.0f} s ({v[m]['versions'].get('cpu', v[m]['device'])})"
                 if m in v else "-" for m in models]
        print(f"| {setting} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
