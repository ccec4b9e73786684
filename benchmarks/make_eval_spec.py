"""Derive a new evaluation zoo's spec from ``cifar10-eval2`` by one rule, so that a blind judgement gets models no
choice was made on (issue 13):

* every seed + ``--seed-offset``;
* target classes drawn again, balanced, in file order:
  ``numpy.random.default_rng(R).permutation(np.tile(np.arange(10), 3))`` (27 backdoored + 3 probe models);
* SSDT victims from ``default_rng(R + 1)``, never the target;
* the probe's groups named ``<attack|clean>-resnet18-w16-e30`` (cifar10-eval2 named them all ``cifar10-eval2``).

Models, recipes, poison rates and gates stay cifar10-eval2's (which are cifar10-eval's); comments are kept.

    python benchmarks/make_eval_spec.py --name cifar10-eval3 --seed-offset 200 --rng 33
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from banscan.zoo import load_spec
from banscan.zoo.spec import _plan

SPECS = Path(__file__).resolve().parents[1] / "banscan/specs"
SOURCE = "cifar10-eval2"


def derive(text: str, name: str, offset: int, rng: int) -> str:
    targets = iter(np.random.default_rng(rng).permutation(np.tile(np.arange(10), 3)).tolist())
    victims = np.random.default_rng(rng + 1)
    head, *blocks = re.split(r"(?m)^(?=\[\[models\]\])", text)
    out = []
    for b in blocks:
        b = re.sub(r"(?m)^seeds = \[(.*)\]$",
                   lambda m: f"seeds = [{', '.join(str(int(s) + offset) for s in m.group(1).split(','))}]", b)
        if "attack_params" in b:
            t = next(targets)
            b = re.sub(r"target = \d+", f"target = {t}", b)
            b = re.sub(r"victim = \d+", lambda m: f"victim = {victims.choice([c for c in range(10) if c != t])}", b)
        a = re.search(r'(?m)^attack = "(\w+)"', b)
        b = b.replace(f'name = "{SOURCE}"', f'name = "{a.group(1) if a else "clean"}-resnet18-w16-e30"')
        out.append(b)
    body = head[head.index("[dataset]"):]
    header = (f"# {name}: derived from {SOURCE}.toml by benchmarks/make_eval_spec.py (seeds + {offset}, targets from "
              f"default_rng({rng}),\n# SSDT victims from default_rng({rng + 1})), a blind zoo for issue 13: nothing "
              f"is chosen on it. Same models, recipes,\n# poison rates and gates as {SOURCE}.\n"
              f'name = "{name}"\ndescription = "CIFAR-10 evaluation zoo {name}: {SOURCE} with new seeds and targets '
              f'(24 clean + 27 backdoored + 6 trained 30 epochs)"\n\n')
    return header + body + "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed-offset", type=int, required=True)
    ap.add_argument("--rng", type=int, required=True)
    args = ap.parse_args()
    text = derive((SPECS / f"{SOURCE}.toml").read_text(), args.name, args.seed_offset, args.rng)
    path = SPECS / f"{args.name}.toml"
    path.write_text(text)
    n_new, n_old = len(_plan(load_spec(path))), len(_plan(load_spec(SOURCE)))
    assert n_new == n_old, (n_new, n_old)
    print(f"wrote {path}: {n_new} models")


if __name__ == "__main__":
    main()
