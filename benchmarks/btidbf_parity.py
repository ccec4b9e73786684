"""Parity check: the official BTI-DBF code against banscan's ``BTIDBF`` on shared checkpoints (issue 14).

Both sides get the same checkpoint, the same optimisation images (banscan's seeded optimisation split of the
zoo's defender data) and the same reduced budget (epochs scaled down identically; batch 128). They are compared
on the target label and the predicted-label histogram of the generated images.

The official side runs ``pretrain.py`` then ``btidbf.py`` from the local mirror of github.com/xuxiong0214/BTIDBF
(commit recorded in the output), unmodified except for what is listed in ``OFFICIAL_CHANGES``, in a temporary
directory, with a separate interpreter (``--official-python``; torch 2.14.1 / torchvision 0.29.1, outside the
project's install). The two codes' decision images differ by design: the official ``get_target_label`` scores
the augmented optimisation images, banscan its disjoint evaluation images; both add N(0, 0.03^2) noise first.

With several ``--seeds`` each side runs once per seed (a seed picks the optimisation images, shared by both
sides, and each side's own random state), which shows how often a code disagrees with itself: the noise that a
disagreement between the two codes is to be judged against. Resumable: each finished (model, seed) is written to
``--out`` at once and skipped on a rerun.

Run (about 19 min of one CPU thread at the default budget: 3 models, about 3 min per side each):

    python -m venv /tmp/official-env && /tmp/official-env/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        tqdm einops pandas
    OMP_NUM_THREADS=1 python benchmarks/btidbf_parity.py --official-python /tmp/official-env/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MIRROR = Path("/work/.mirror/xuxiong0214+BTIDBF/repo")  # a bare git dir
ZOO = Path(__file__).resolve().parents[1] / "runs" / "zoo-dev"
MODELS = ["clean-resnet18-w16-s50", "badnets-resnet18-w16-s60", "iad-resnet18-w16-s62"]
OUT = Path(__file__).parent / "results" / "btidbf_parity.json"

OFFICIAL_IMPORTS = ["torch", "torchvision", "numpy", "PIL", "tqdm", "einops", "pandas"]
OFFICIAL_CHANGES = [
    "models/resnet.py: width 64 -> 16 (in_planes, conv1, bn1, layer1..4 = 16/32/64/128, linear 128 -> 10), to "
    "match the zoo's base_width=16 ResNet-18; nothing else in the file changed",
    "cifar.py: replaced by a reader with the same CIFAR(path, train, train_type, tf) interface over the shared "
    "images (train_type=0 -> the optimisation images, train=False -> 256 test images for pretrain.py's BA print); "
    "torchvision's CIFAR10 would download, and this machine has no internet",
    "loader.py: DataLoader num_workers 6 -> 0 (one process per the machine's rules)",
    "checkpoint: the banscan state dict, mapped key by key to the official ResNet names and loaded strictly, "
    "saved as checkpoints/cifar-badnets-resnet18-target<k>.pt.tar under 'netC' with placeholder 'mask'/'ptn' "
    "tensors (read by Box.get_state_dict, used only by the poisoned-test path neither script runs)",
    "driver: seeds torch/numpy, runs the two scripts with runpy, and records the histogram that "
    "evaluate.get_target_label passes to np.argmax (through a numpy proxy; the function itself is unchanged)",
]

CIFAR_SHIM = '''
import numpy as np
from torch.utils.data import Dataset
from PIL import Image


class CIFAR(Dataset):
    def __init__(self, path, train, train_type=None, tf=None) -> None:
        d = np.load(path + "/shared.npz")
        key = "opt" if train else "test"
        if train and train_type not in (0, None):
            raise ValueError("only the clean split exists in this parity run")
        self.datas, self.labels, self.tf = list(d[key + "_x"]), [int(v) for v in d[key + "_y"]], tf

    def __len__(self):
        return len(self.datas)

    def __getitem__(self, index):
        img = Image.fromarray(self.datas[index])
        return (self.tf(img) if self.tf is not None else img), self.labels[index]
'''

DRIVER = '''
import json, runpy, sys, time
import numpy
import torch
seed, rounds, out = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(seed)
numpy.random.seed(seed)
sys.path.insert(0, ".")
import evaluate

class _NP:
    def __init__(self):
        self.seen = []
    def __getattr__(self, k):
        return getattr(numpy, k)
    def argmax(self, a, *args, **kw):
        self.seen.append([int(v) for v in a])
        return numpy.argmax(a, *args, **kw)

evaluate.np = proxy = _NP()
common = ["--dataset", "cifar", "--attack", "badnets", "--model", "resnet18", "--device", "cpu",
          "--tlabel", str(rounds["tlabel"]), "--batch_size", "128"]
t0 = time.time()
sys.argv = ["pretrain.py"] + common + ["--preround", str(rounds["preround"])]
runpy.run_path("pretrain.py", run_name="__main__")
t1 = time.time()
sys.argv = ["btidbf.py"] + common + ["--mround", str(rounds["mround"]), "--uround", str(rounds["uround"])]
runpy.run_path("btidbf.py", run_name="__main__")
t2 = time.time()
hist = proxy.seen[-1]
json.dump({"target": int(numpy.argmax(hist)), "hist": hist, "time_pretrain_s": t1 - t0,
           "time_btidbf_s": t2 - t1, "torch": torch.__version__}, open(out, "w"))
'''


def official_key_map(banscan_sd: dict[str, torch.Tensor], official_keys: list[str]) -> dict[str, str]:
    """Official ResNet-18 key -> banscan key. Both follow kuangliu's layout (stem conv1/bn1, layer1..4 of
    BasicBlocks with conv1/bn1/conv2/bn2/shortcut.0/shortcut.1, linear); every key is listed and checked."""
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    mapping = {"conv1.weight": "conv1.weight", **{f"bn1.{p}": f"bn1.{p}" for p in bn},
               "linear.weight": "linear.weight", "linear.bias": "linear.bias"}
    for b in blocks:
        for conv, norm in (("conv1", "bn1"), ("conv2", "bn2"), ("shortcut.0", "shortcut.1")):
            if f"{b}.{conv}.weight" not in official_keys:
                continue  # identity shortcut (no projection) in this block
            mapping[f"{b}.{conv}.weight"] = f"{b}.{conv}.weight"
            mapping.update({f"{b}.{norm}.{p}": f"{b}.{norm}.{p}" for p in bn})
    missing = sorted(set(official_keys) - set(mapping))
    unused = sorted(set(banscan_sd) - set(mapping.values()))
    if missing or unused:
        raise SystemExit(f"key map incomplete: official keys unmapped {missing[:5]}, banscan keys unused {unused[:5]}")
    return mapping


def setup_official(work: Path, sd: dict[str, torch.Tensor], target: int, python: str, opt, test) -> str:
    """Export the mirror's HEAD into ``work`` and apply ``OFFICIAL_CHANGES``; returns the commit."""
    commit = subprocess.run(["git", "--git-dir", str(MIRROR), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    tar = subprocess.run(["git", "--git-dir", str(MIRROR), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=tar, check=True)
    res = work / "models" / "resnet.py"
    src = res.read_text()
    for a, b in [("self.in_planes = 64", "self.in_planes = 16"), ("nn.Conv2d(3, 64,", "nn.Conv2d(3, 16,"),
                 ("self.bn1 = nn.BatchNorm2d(64)", "self.bn1 = nn.BatchNorm2d(16)"),
                 ("_make_layer(block, 64,", "_make_layer(block, 16,"), ("_make_layer(block, 128,", "_make_layer(block, 32,"),
                 ("_make_layer(block, 256,", "_make_layer(block, 64,"), ("_make_layer(block, 512,", "_make_layer(block, 128,"),
                 ("nn.Linear(512 * block.expansion", "nn.Linear(128 * block.expansion")]:
        if src.count(a) != 1:
            raise SystemExit(f"official resnet.py changed: {a!r} found {src.count(a)} times")
        src = src.replace(a, b)
    res.write_text(src)
    (work / "cifar.py").write_text(CIFAR_SHIM)
    loader = work / "loader.py"
    ltxt = loader.read_text()
    if ltxt.count("num_workers=6") != 1:
        raise SystemExit("official loader.py changed: num_workers=6 not found once")
    loader.write_text(ltxt.replace("num_workers=6", "num_workers=0"))
    (work / "datasets" / "cifar10").mkdir(parents=True, exist_ok=True)
    np.savez(work / "datasets" / "cifar10" / "shared.npz", opt_x=opt[0], opt_y=opt[1], test_x=test[0],
             test_y=test[1])
    (work / "checkpoints").mkdir(exist_ok=True)
    (work / "results").mkdir(exist_ok=True)
    # Key-by-key map, checked by a strict load into the (width-changed) official module, in its interpreter.
    keys_py = ("import sys, json; sys.path.insert(0, '.'); from models import resnet; "
               "print(json.dumps(list(resnet.ResNet18(10).state_dict())))")
    okeys = json.loads(subprocess.run([python, "-c", keys_py], cwd=work, capture_output=True, text=True,
                                      check=True).stdout)
    mapping = official_key_map(sd, okeys)
    ckpt = work / "checkpoints" / f"cifar-badnets-resnet18-target{target}.pt.tar"
    torch.save({"netC": {k: sd[v].clone() for k, v in mapping.items()},
                "mask": torch.zeros(1, 32, 32), "ptn": torch.zeros(3, 32, 32)}, ckpt)
    strict_py = ("import sys, torch; sys.path.insert(0, '.'); from models import resnet; m = resnet.ResNet18(10); "
                 f"r = m.load_state_dict(torch.load({str(ckpt)!r}, weights_only=True)['netC'], strict=True); "
                 "print('strict', r)")
    print(subprocess.run([python, "-c", strict_py], cwd=work, capture_output=True, text=True, check=True).stdout.strip())
    return commit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official-python", default="/tmp/official-env/bin/python")
    ap.add_argument("--zoo", type=Path, default=ZOO)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--n-opt", type=int, default=512)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--preround", type=int, default=10, help="pre-training epochs (official saves every 10)")
    ap.add_argument("--mround", type=int, default=5)
    ap.add_argument("--uround", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.preround % 10:
        raise SystemExit("--preround must be a multiple of 10: the official pretrain.py saves its generator every 10")
    torch.set_num_threads(1)
    # What the official scripts import, checked before banscan's side spends its minutes.
    check = subprocess.run([a.official_python, "-c", "import " + ", ".join(OFFICIAL_IMPORTS)], capture_output=True,
                           text=True)
    if check.returncode:
        why = (check.stderr.strip().splitlines() or [f"exit status {check.returncode}"])[-1]
        raise SystemExit(f"{a.official_python} cannot run the official code ({why}); see this file's docstring")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from banscan import __version__
    from banscan.detectors import BTIDBF
    from banscan.zoo import defender_data, load_manifest, load_zoo_model, test_data

    cards = {c["id"]: c for c in load_manifest(a.zoo)["models"]}
    data = defender_data(a.zoo)
    test = test_data(a.zoo)
    to_hwc = lambda d, n: (d.x[:n].permute(0, 2, 3, 1).contiguous().numpy(), d.y[:n].numpy())  # noqa: E731
    budget = {"n_opt": a.n_opt, "n_eval_banscan": a.n_eval, "batch_size": 128, "preround": a.preround,
              "mround": a.mround, "uround": a.uround,
              "official_defaults": {"preround": 50, "mround": 20, "uround": 30, "n_opt": 2500}}
    out = json.loads(a.out.read_text()) if a.out.exists() else {}
    if out and out["budget"] != budget:
        raise SystemExit(f"{a.out} holds another budget ({out['budget']}); pick another --out")
    rows = out.get("rows", [])
    done = {(r["model"], r.get("seed", 0)) for r in rows}
    commit = out.get("official_commit")
    for seed in a.seeds:  # every model at one seed before the next seed: a partial run is still a parity run
        opt, _ = data.split(a.n_opt, a.n_eval, seed=seed)  # exactly banscan's optimisation part at this seed
        for mid in a.models:
            if (mid, seed) in done:
                continue
            card = cards[mid]
            if card["arch"] != "resnet18" or card["arch_kwargs"].get("base_width") != 16:
                raise SystemExit(f"{mid}: this driver maps width-16 ResNet-18s only")
            model = load_zoo_model(a.zoo, card)
            t0 = time.time()
            det = BTIDBF(n_opt=a.n_opt, n_eval=a.n_eval, n_pretrain_epochs=a.preround, n_mask_epochs=a.mround,
                         n_gen_epochs=a.uround, batch_size=128, seed=seed)
            r = det.detect(model, data)
            t_ban = time.time() - t0
            with tempfile.TemporaryDirectory(prefix="btidbf-official-") as tmp:
                work = Path(tmp)
                commit = setup_official(work, model.state_dict(), card["target"] or 0, a.official_python,
                                        to_hwc(opt, a.n_opt), to_hwc(test, 256))
                rounds = {"preround": a.preround, "mround": a.mround, "uround": a.uround,
                          "tlabel": card["target"] or 0}
                t0 = time.time()
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                proc = subprocess.run([a.official_python, "-c", DRIVER, str(seed), json.dumps(rounds), "off.json"],
                                      cwd=work, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"official run failed on {mid}:\n{proc.stderr[-3000:]}")
                off = json.loads((work / "off.json").read_text())
                t_off = time.time() - t0
            h_b = [int(v) for v in r.stats["hist_generated"]]
            rows.append({
                "model": mid, "seed": seed, "attack": card["attack"], "true_target": card["target"],
                "banscan": {"target": r.target, "score": r.score, "hist": h_b, "n": sum(h_b), "time_s": t_ban,
                            "bounds": r.stats["bounds"], "hist_clean": [int(v) for v in r.stats["hist_clean"]]},
                "official": {"target": off["target"], "score": max(off["hist"]) / sum(off["hist"]),
                             "hist": off["hist"], "n": sum(off["hist"]), "time_s": t_off, "torch": off["torch"]},
                "same_target": r.target == off["target"],
                "hist_l1_share": sum(abs(x / sum(h_b) - y / sum(off["hist"])) for x, y in zip(h_b, off["hist"])) / 2,
            })
            print(json.dumps(rows[-1]), flush=True)
            out = {"budget": budget, "seeds": a.seeds, "official_commit": commit, "official_changes": OFFICIAL_CHANGES,
                   "banscan_version": __version__, "banscan_torch": torch.__version__, "zoo": str(a.zoo),
                   "decision_images": "official: the augmented optimisation images; banscan: its disjoint "
                                      "evaluation part", "rows": rows}
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(out, indent=2))
    print(f"\n{'model':28s} {'seed':>4s} {'true':>4s} {'banscan':>7s} {'official':>8s} {'share b/o':>11s} "
          f"{'TV dist':>7s}")
    for row in rows:
        print(f"{row['model']:28s} {row.get('seed', 0):4d} {str(row['true_target']):>4s} "
              f"{row['banscan']['target']:>7d} {row['official']['target']:>8d} "
              f"{row['banscan']['score']:5.2f}/{row['official']['score']:4.2f} {row['hist_l1_share']:7.3f}")
    # How often each code names the same class as itself at another seed, against how often the two codes agree.
    by = {}
    for row in rows:
        by.setdefault(row["model"], {})[row.get("seed", 0)] = row
    pairs = [(s[x], s[y]) for s in by.values() for i, x in enumerate(sorted(s)) for y in sorted(s)[i + 1:]]
    if pairs:
        for side in ("banscan", "official"):
            same = sum(p[side]["target"] == q[side]["target"] for p, q in pairs)
            print(f"{side} against itself at another seed: same target {same}/{len(pairs)}")
    print(f"banscan against official, same seed: same target {sum(r['same_target'] for r in rows)}/{len(rows)}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
