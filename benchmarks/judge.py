"""Blind judgements of BAN's default (issue 13), each as pre-registered in
``benchmarks/results/<zoo>/preregistration.md``: cifar10-eval2 (the default frozen at 1c098a7) and cifar10-eval3
(the default with the CIFAR-10 class prior, frozen at the commit named in ``JUDGES``).

A zoo takes about 15 CPU-hours to build (more on a CPU without bf16) and ``runs/`` is often lost between sessions,
so every model is judged as soon as it is built and its card and signal are committed; only the weights are ever
lost. The detector is the frozen one: ``benchmarks/dev_signals.py`` and banscan of the frozen commit (a worktree
under ``runs/``), one candidate, seed 0, one thread. Metrics are computed once, when every model of the spec has
a card (failed gates included) and every gated model a signal.

    python benchmarks/judge.py ZOO build [--shard K/N] [--only ID,...]  # build what has no card yet (build commit)
    python benchmarks/judge.py ZOO scan [--watch]       # judge built models not judged yet; record their cards
    python benchmarks/judge.py ZOO merge --from DIR     # add a judgement made elsewhere (benchmarks/gpu_judge.sh)
    python benchmarks/judge.py ZOO baselines            # issue 14: BAN, BTI-DBF, NC at equal cost on judged models
    python benchmarks/judge.py ZOO summary              # the metrics, once all are in

On this 2-core machine (resumable; after a loss of runs/ only what has no card is built again):
    for k in 0 1; do
        nohup python benchmarks/judge.py cifar10-eval3 build --shard $k/2 > runs/build-eval3/shard$k.log 2>&1 &
    done
    nohup python benchmarks/judge.py cifar10-eval3 scan --watch > runs/build-eval3/judge.log 2>&1 &
    python benchmarks/judge.py cifar10-eval3 baselines > runs/build-eval3/baselines.log 2>&1  # now and then
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# frozen: the detector's commit; build: the zoo's; bf16: force bf16 autocast in the scan (cifar10-eval2's first 51
# models were scanned on a CPU with native bf16, see its addendum of 2026-12-06); the threshold is the candidate's.
JUDGES = {
    "cifar10-eval2": {"frozen": "1c098a7", "build": "af1c253", "candidate": "ban-noise-r5-s10-b64-e2500",
                      "threshold": 0.16, "bf16": True},
    # eval3's first 16 models were built at 43753a3; 8acf2ff adds only per-epoch checkpoints to the same build path
    # (its pre-registration's addendum of 2026-12-06, sixth session)
    "cifar10-eval3": {"frozen": "43753a3", "build": "8acf2ff", "candidate": "ban-default", "threshold": 4.3,
                      "bf16": False},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "BANSCAN_DATA_DIR": os.environ.get("BANSCAN_DATA_DIR", str(ROOT.parent / "shared/data"))}
NAME = OUT = SIGNALS = CARDS = FROZEN_SRC = BUILD_SRC = ZOO = None
J: dict = {}
FROZEN_ENV: dict = {}


def _select(name: str) -> None:
    """Point the module's paths at one zoo's judgement."""
    global NAME, OUT, SIGNALS, CARDS, FROZEN_SRC, BUILD_SRC, ZOO, J, FROZEN_ENV
    NAME, J = name, JUDGES[name]
    OUT = ROOT / "benchmarks/results" / name
    SIGNALS, CARDS = OUT / "signals.jsonl", OUT / "cards.json"
    FROZEN_SRC, BUILD_SRC = ROOT / f"runs/src-judge-{name}", ROOT / f"runs/src-build-{name}"
    ZOO = ROOT / f"runs/zoo-{name.removeprefix('cifar10-')}"
    FROZEN_ENV = {**ENV, "PYTHONPATH": str(FROZEN_SRC)}


def _worktree(path: Path, commit: str) -> None:
    if not path.is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(path), commit], check=True)
    elif (path / ".git").exists() and _rev(path, "HEAD") != _rev(ROOT, commit):
        # a worktree of an earlier commit (an unpacked archive, gpu_judge.sh, is kept); shards start together, so
        # only a worktree at another commit is touched
        subprocess.run(["git", "-C", str(path), "checkout", "-q", "--detach", commit], check=True)


def _rev(repo: Path, rev: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", f"{rev}^{{commit}}"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _spec() -> dict:
    return tomllib.loads((BUILD_SRC / f"banscan/specs/{NAME}.toml").read_text())


def _plan_ids(groups: list[dict]) -> list[list[str]]:
    """Model ids of each spec group, by the build commit's own plan expansion."""
    code = ("import json, sys; from banscan.zoo.spec import _plan, load_spec; s = load_spec(json.load(sys.stdin)); "
            "print(json.dumps([[e['id'] for e in _plan({**s, 'models': [g]})] for g in s['models']]))")
    spec = {**_spec(), "models": groups}
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec), text=True, capture_output=True,
                       cwd=BUILD_SRC, env={**ENV, "PYTHONPATH": str(BUILD_SRC)}, check=True)
    return json.loads(r.stdout)


def _cards() -> dict:
    return json.loads(CARDS.read_text()) if CARDS.is_file() else {}


def _write_cards(cards: dict) -> None:
    CARDS.write_text(json.dumps(dict(sorted(cards.items())), indent=1) + "\n")


def _judged() -> set[str]:
    return {json.loads(x)["model"] for x in SIGNALS.read_text().splitlines() if x.strip()} if SIGNALS.is_file() \
        else set()


def scan() -> int:
    """Judge every built model not judged yet; record the card of each judged (or gate-failed) model."""
    if not (ZOO / "manifest.json").is_file():
        print(f"no models built yet in {ZOO}")
        return 0
    _worktree(FROZEN_SRC, J["frozen"])
    # amp=None means bf16 autocast on CPUs with native bf16 only; where J["bf16"] the judge turns it on whatever the
    # CPU, as the zoo's first records had it.
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import dev_signals; "
            "import banscan.train; " + ("banscan.train.cpu_has_bf16 = lambda: True; " if J["bf16"] else "") +
            "dev_signals.scan(sys.argv[2], Path(sys.argv[3]), [sys.argv[4]], 0)")
    # cwd: `python -c` puts its working directory first on sys.path, ahead of PYTHONPATH
    subprocess.run([sys.executable, "-c", code, str(FROZEN_SRC / "benchmarks"), str(ZOO), str(SIGNALS),
                    J["candidate"]], cwd=FROZEN_SRC, env=FROZEN_ENV, check=True)
    manifest = json.loads((ZOO / "manifest.json").read_text())
    judged, cards = _judged(), _cards()
    new = {c["id"]: c for c in manifest["models"] if c["id"] not in cards
           and (c["id"] in judged or c.get("status") == "failed")}
    if new:
        cards.update(new)
        _write_cards(cards)
    print(f"{len(cards)} models judged or gate-failed so far ({len(new)} new)")
    return len(new)


def build(shard: str | None, device: str = "cpu", only: str | None = None) -> None:
    """Build, with the zoo's build commit, the models of the zoo that have no card here yet; ``shard`` K/N takes
    every N-th of the spec's models from K (positions in the whole spec, so that shards started at different times
    never build the same model); ``only`` (ids or id suffixes, comma-separated) balances the last few models by
    hand between processes."""
    _worktree(BUILD_SRC, J["build"])
    spec, done = _spec(), set(_cards())
    k, n = (int(x) for x in shard.split("/")) if shard else (0, 1)
    ids = [i for group in _plan_ids(spec["models"]) for i in group]
    todo = [i for pos, i in enumerate(ids) if i not in done and pos % n == k]
    if only:
        wanted = only.split(",")
        unknown = [w for w in wanted if not any(i.endswith(w) for i in ids)]
        if unknown:
            sys.exit(f"--only: no model of {NAME} ends with {', '.join(unknown)}")
        todo = [i for i in todo if any(i.endswith(w) for w in wanted)]
    print(f"{len(todo)} models of {NAME} in shard {k}/{n} have no card yet", flush=True)
    if not todo:
        return
    code = ("import json, logging, sys; from banscan.zoo import build_zoo; logging.basicConfig(level=logging.INFO); "
            "a = json.loads(sys.argv[1]); build_zoo(a['spec'], a['out'], device=a['device'], only=a['only'])")
    arg = json.dumps({"spec": spec, "out": str(ZOO), "only": todo, "device": device})
    env = {**ENV, "PYTHONPATH": str(BUILD_SRC)}
    subprocess.run([sys.executable, "-c", code, arg], cwd=BUILD_SRC, env=env, check=True)


def merge(other: Path) -> None:
    """Add the cards and signals of a judgement made elsewhere (``other``: a folder with its ``cards.json`` and
    ``signals.jsonl``, e.g. from ``benchmarks/gpu_judge.sh``) for the models judged here not yet; a model's card and
    signal always come from the same place."""
    theirs = json.loads((other / "cards.json").read_text())
    signals = {json.loads(x)["model"]: x for x in (other / "signals.jsonl").read_text().splitlines() if x.strip()}
    cards, judged = _cards(), _judged()
    new = {i: c for i, c in theirs.items() if i not in cards and i not in judged
           and (c.get("status") == "failed" or i in signals)}
    with SIGNALS.open("a") as f:
        f.writelines(signals[i] + "\n" for i in sorted(new) if i in signals)
    cards.update(new)
    _write_cards(cards)
    print(f"{len(new)} models added from {other}; {len(cards)} judged or gate-failed so far")


# Issue 14's equal-cost run, with the budgets fixed for cifar10-eval before its run (each baseline under 10 times BAN's
# default scan: BTI-DBF 1/1/1 epochs of 4 batches, NC 1 epoch of 10 batches per class); BAN is the frozen default.
EQUAL_COST = ["--methods", "ban,btidbf,nc", "--seed", "0", "--param", "btidbf.budget=0.02",
              "--param", "btidbf.batches_per_epoch=4", "--param", "btidbf.n_eval=500", "--param", "nc.n_epochs=1",
              "--param", "nc.batches_per_epoch=10", "--param", "nc.n_eval=1000"]


def baselines() -> None:
    """Scan every judged model that is on disk with BAN, BTI-DBF and Neural Cleanse at equal cost (the frozen
    commit's code, one thread; resumable). No report until ``summary``: the BAN records are the judged default's."""
    ids = sorted(i for i, c in _cards().items() if c.get("status") == "ok" and (ZOO / f"{i}.safetensors").is_file())
    if not ids:
        print("no judged model on disk yet")
        return
    _worktree(FROZEN_SRC, J["frozen"])
    subprocess.run([sys.executable, "-m", "banscan", "bench", "--zoo", str(ZOO), "--models", ",".join(ids),
                    "--out", str(OUT / "equal-cost"), "--no-report", *EQUAL_COST],
                   cwd=FROZEN_SRC, env=FROZEN_ENV, check=True)


def _equal_cost_report() -> None:
    """The equal-cost report (issue 14), once every gated model has its three records; only ``summary`` calls it,
    after checking that every model of the spec has a card (the report shows BAN's judged scores)."""
    res = OUT / "equal-cost/results.jsonl"
    gated = {i for i, c in _cards().items() if c.get("status") == "ok"}
    done = set() if not res.is_file() else \
        {(r["model"], r["method"]) for r in map(json.loads, res.read_text().splitlines()) if r.get("model")}
    missing = {i for i in gated for m in ("ban", "btidbf", "nc") if (i, m) not in done}
    if missing:
        print(f"equal-cost report not written: {len(missing)} models lack records (python benchmarks/judge.py "
              f"{NAME} baselines)")
        return
    subprocess.run([sys.executable, "-m", "banscan", "bench", "report", "--results", str(OUT / "equal-cost")],
                   cwd=FROZEN_SRC, env=FROZEN_ENV, check=True)


def summary() -> None:
    spec, cards, judged = _spec(), _cards(), _judged()
    ids = [i for group in _plan_ids(spec["models"]) for i in group]
    missing = [i for i in ids if i not in cards or (cards[i].get("status") == "ok" and i not in judged)]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(ids)} models are not judged yet (e.g. {missing[:3]}): the metrics "
                         "are computed once, on the whole zoo")
    _worktree(FROZEN_SRC, J["frozen"])
    subprocess.run([sys.executable, str(FROZEN_SRC / "benchmarks/dev_signals.py"), "--zoo", str(ZOO),
                    "--out", str(SIGNALS), "--analyze", "--brief", "--threshold", f"{J['candidate']}={J['threshold']}",
                    "--summary", str(OUT / "summary.json")], env=FROZEN_ENV, check=True)
    if (OUT / "equal-cost").is_dir():  # a zoo whose baselines step has run
        _equal_cost_report()
    if NAME != "cifar10-eval2":
        return
    # The frozen analysis finds the training-length probe by "-e30-" in the model id, but cifar10-eval2's probe
    # models are named cifar10-eval2-s400..s405 (its spec's generator rewrote their names): split by the cards'
    # epochs instead, with the same frozen summarize().
    long = sorted(i for i, c in cards.items() if c["train"]["epochs"] == 30)  # the probe: 3x the clean recipe
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import dev_signals as d; a = json.loads(sys.argv[1]); "
            "rs = [json.loads(x) for x in open(a['signals']) if x.strip()]; "
            "f = lambda keep: d.summarize([r for r in rs if (r['model'] in a['long']) == keep], a['thr'])['all']; "
            "s = json.load(open(a['summary'])); s['probe_by_epochs'] = {'long_ids': a['long'], 'long': f(True), "
            "'short': f(False)}; json.dump(s, open(a['summary'], 'w'), indent=1); "
            "print('probe (30 epochs):', json.dumps(s['probe_by_epochs']['long']))")
    arg = {"signals": str(SIGNALS), "summary": str(OUT / "summary.json"), "thr": J["threshold"], "long": long}
    subprocess.run([sys.executable, "-c", code, json.dumps(arg)], cwd=FROZEN_SRC, env=FROZEN_ENV, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", choices=list(JUDGES))
    ap.add_argument("step", choices=["build", "scan", "merge", "baselines", "summary"])
    ap.add_argument("--shard", metavar="K/N", help="build: only every N-th model from K, for N parallel processes")
    ap.add_argument("--only", metavar="ID,...", help="build: only these models (ids or their ends, e.g. s600)")
    ap.add_argument("--watch", action="store_true", help="scan: repeat every 5 minutes while a zoo build runs")
    ap.add_argument("--device", default="cpu", help="build: where to train (cuda on a GPU machine)")
    ap.add_argument("--from", dest="other", type=Path, help="merge: a folder with cards.json and signals.jsonl")
    args = ap.parse_args()
    _select(args.zoo)
    if args.step == "scan":
        scan()
        building = ["pgrep", "-f", "zoo build|build_zoo"]
        while args.watch and subprocess.run(building, capture_output=True).returncode == 0:
            time.sleep(300)
            try:
                scan()
            except subprocess.CalledProcessError as e:  # e.g. a model file caught mid-write: retry next round
                print(f"scan failed ({e}); retrying in 5 minutes", flush=True)
        if args.watch:
            scan()  # the models finished in the last interval
    elif args.step == "build":
        build(args.shard, args.device, args.only)
    elif args.step == "baselines":
        baselines()
    elif args.step == "merge":
        if args.other is None:
            ap.error("merge needs --from DIR")
        merge(args.other)
    else:
        summary()


if __name__ == "__main__":
    main()
