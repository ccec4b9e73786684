"""Command line: ``banscan detect | calibrate | demo | models | zoo | bench | mitigate``.

The CLI only parses arguments, builds the library objects and calls the public API. Bad input exits with
status 2 and one line that says what was wrong; a completed scan exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from ._utils import BanscanError, set_progress

log = logging.getLogger("banscan")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .data import CIFAR10_MEAN, CIFAR10_STD

    p.add_argument("--arch", required=True, help="registered architecture (see `banscan models`) or pkg.module:factory")
    p.add_argument("--arch-kwargs", default="", help="factory keyword arguments, e.g. base_width=16")
    p.add_argument("--weights", required=True, help=".safetensors or PyTorch state-dict file")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--data", required=True, help="clean data: .npz, cifar-10-batches-py folder or class folder")
    p.add_argument("--data-split", default="test", choices=["train", "test"], help="CIFAR batches to read")
    p.add_argument("--mean", type=_floats, default=CIFAR10_MEAN)
    p.add_argument("--std", type=_floats, default=CIFAR10_STD)
    p.add_argument("--input-size", type=int, default=None, help="expected image size (checked against the data)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--seed", type=int, default=0)


def _load_model_and_data(args: argparse.Namespace):
    from .checkpoints import load_weights
    from .data import load_data
    from .models import create_model, parse_kwargs

    model = create_model(args.arch, args.num_classes, **parse_kwargs(args.arch_kwargs))
    load_weights(model, args.weights)
    data = load_data(args.data, args.mean, args.std, split=args.data_split)
    data.check(num_classes=args.num_classes, input_size=args.input_size)
    if args.device:
        model = model.to(args.device)
    return model, data


def _add_param_args(p: argparse.ArgumentParser, per_method: bool = False) -> None:
    """``--param``/``--params``/``--preset``, the one way every command takes algorithm parameters
    (:mod:`banscan.params`); ``per_method``: keys and presets start with the method's name (``ban.restarts=5``)."""
    m = "METHOD." if per_method else ""
    p.add_argument("--param", action="append", default=[], metavar=f"{m}KEY=VALUE",
                   help="an algorithm parameter, typed from its constructor (repeatable; wins over --params)")
    p.add_argument("--params", default=None, metavar="FILE",
                   help="TOML or JSON file of parameters" + (" (one table per method)" if per_method else "")
                        + ("" if per_method else "; also the older KEY=VALUE,KEY=VALUE list"))
    p.add_argument("--preset", action="append" if per_method else "store", default=[] if per_method else None,
                   metavar=f"[{m}]NAME" if per_method else "NAME",
                   help="named parameter set of the algorithm (its class's `presets`), below --params and --param")


def _params_file(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[str]]:
    """``--params``: a file, or (the older spelling) a ``KEY=VALUE,...`` list, returned as pairs."""
    from .params import read_file

    text = args.params
    if not text:
        return None, []
    if Path(text).suffix in (".toml", ".json") or Path(text).is_file():
        return read_file(text), []
    return None, [s.strip() for s in text.split(",") if s.strip()]


def _one_method_params(cls: type, what: str, args: argparse.Namespace,
                       aliases: dict[str, Any]) -> dict[str, Any]:
    """One algorithm's parameters: preset < --params < older flags (``aliases``) < --param."""
    from .params import parse_value, resolve, split_pair

    file, old = _params_file(args)
    old_typed = {k: parse_value(cls, k, v, what) for k, v in map(split_pair, old)}
    return resolve(cls, what, args.preset, file, {**old_typed, **aliases}, args.param)


def _detector_from_args(args: argparse.Namespace):
    from .detectors import get_detector

    default = get_detector(args.method)
    cls, accepted = type(default), default.get_params()
    aliases: dict[str, Any] = {}
    for key in ("eps", "n_steps", "n_opt", "n_eval", "batch_size", "split_layer", "bn_mode", "amp"):
        val = getattr(args, key, None)
        if val is None:
            continue
        if key not in accepted:
            raise BanscanError(f"--{key.replace('_', '-')} does not apply to --method {args.method}")
        aliases[key] = val
    if args.threshold is not None:
        aliases["threshold"] = args.threshold
    elif args.threshold_file:
        cal = json.loads(Path(args.threshold_file).read_text())
        if cal.get("method") != args.method:
            raise BanscanError(f"{args.threshold_file} calibrates {cal.get('method')!r}, not {args.method!r}")
        aliases["threshold"] = float(cal["threshold"])
    params = _one_method_params(cls, f"--method {args.method}", args, aliases)
    return get_detector(args.method, seed=args.seed, **params)


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    from .detectors import list_detectors

    p.add_argument("--method", default="ban", choices=list_detectors())
    _add_param_args(p)
    old = p.add_argument_group("older spellings of --param (BAN-shaped; kept for one release)")
    old.add_argument("--eps", type=float, default=None)
    old.add_argument("--n-steps", type=int, default=None)
    old.add_argument("--n-opt", type=int, default=None, help="clean images for optimisation (the detector's n_opt)")
    old.add_argument("--n-eval", type=int, default=None, help="clean images for the decision (the detector's n_eval)")
    old.add_argument("--batch-size", type=int, default=None)
    old.add_argument("--split-layer", default=None, help="module whose input is the feature map (own models)")
    old.add_argument("--bn-mode", default=None, choices=["recalibrate", "official", "frozen"])
    old.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")


def _cmd_detect(args: argparse.Namespace) -> int:
    model, data = _load_model_and_data(args)
    det = _detector_from_args(args)
    result = det.detect(model, data, device=args.device)
    print(result.summary())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        print(f"result written to {args.json}")
    if args.artifacts:
        result.save(args.artifacts)
    if args.plots:
        from .plots import save_result_plots

        for f in save_result_plots(result, args.plots):
            print(f"plot: {f}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate_from_folder

    args.threshold = args.threshold_file = None
    cal = calibrate_from_folder(args.models, args.data, _detector_from_args(args), fpr=args.fpr,
                                device=args.device, arch=args.arch, arch_kwargs=args.arch_kwargs,
                                num_classes=args.num_classes, mean=args.mean, std=args.std,
                                data_split=args.data_split, need_prior=bool(args.prior_out))
    Path(args.out).write_text(json.dumps(cal, indent=2, sort_keys=True))
    print(f"threshold {cal['threshold']:.4f} for FPR <= {args.fpr} from {cal['n_models']} clean models "
          f"-> {args.out}")
    if args.prior_out:
        Path(args.prior_out).write_text(json.dumps(cal["class_prior"], indent=1))
        print(f"class prior (z threshold {cal['class_prior']['threshold']:.3f}) -> {args.prior_out}; use it with "
              f"`banscan detect --param class_prior={args.prior_out}`")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seed=args.seed, out=args.out)


def _cmd_models(args: argparse.Namespace) -> int:
    import inspect

    from .models import _resolve_factory, list_models

    for name in list_models():  # each with the keyword arguments --arch-kwargs takes, and their defaults
        params = inspect.signature(_resolve_factory(name)).parameters.values()
        print(name, " ".join(f"{p.name}={p.default!r}" for p in params
                             if p.name != "num_classes" and p.default is not inspect.Parameter.empty))
    return 0


# ------------------------------------------------------------------------------------------------ zoo
def _fmt_card(card: Mapping[str, Any]) -> str:
    asr = "-" if card.get("ASR") is None else f"{card['ASR']:.3f}"
    s = f"{card['id']:<40s} {card['status']:<6s} BA {card['BA']:.3f} ASR {asr}"
    return s + (f"  ({card['failure']})" if card.get("failure") else "")


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from .zoo import build_zoo

    def report(i: int, n: int, card: dict[str, Any], reused: bool) -> None:
        extra = "  [already built]" if reused else f"  {card.get('train_time_s', 0):.1f}s"
        print(f"[{i}/{n}] {_fmt_card(card)}{extra}", flush=True)

    shard = None
    if args.shard:
        try:
            k, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise BanscanError(f"--shard takes I/N (e.g. 0/4), got {args.shard!r}") from None
        shard = (k, n)
    m = build_zoo(args.spec, args.out, device=args.device, retry_failed=args.retry_failed, on_model=report,
                  shard=shard, ray=_ray_config(args), only=args.only.split(",") if args.only else None)
    n_ok = sum(c["status"] == "ok" for c in m["models"])
    print(f"zoo written to {args.out}: {n_ok}/{len(m['models'])} models passed the gate "
          f"(defender split: {m['defender_split']['size']} held-out images)"
          + ("" if m["complete"] else "; not complete yet (other shards still building, or --only)"))
    return 0


def _cmd_zoo_eval(args: argparse.Namespace) -> int:
    from .zoo import evaluate_zoo
    from .zoo.store import _write_json

    rows = evaluate_zoo(args.dir, device=args.device, data_dir=args.data_dir)
    for r in rows:
        asr = "-" if r["ASR"] is None else f"{r['ASR']:.3f}"
        casr = "-" if r["card_ASR"] is None else f"{r['card_ASR']:.3f}"
        print(f"{r['id']:<40s} BA {r['BA']:.3f} (card {r['card_BA']:.3f})  ASR {asr} (card {casr})")
    if args.json:
        _write_json(Path(args.json), rows)
    return 0


def _add_zoo_parser(subparsers: argparse._SubParsersAction) -> None:
    from .zoo import shipped_specs

    p = subparsers.add_parser("zoo", help="build or evaluate a zoo of clean and backdoored models")
    sub = p.add_subparsers(dest="zoo_command", required=True)
    b = sub.add_parser("build", help="train the models a spec lists (resumes an interrupted build)")
    b.add_argument("spec", help=f"spec file (.toml/.yaml) or shipped spec name ({', '.join(shipped_specs())})")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cpu)")
    b.add_argument("--retry-failed", action="store_true", help="retrain models the quality gate rejected")
    b.add_argument("--shard", default=None, metavar="I/N",
                   help="train only every N-th model starting at I (0-based), to run N builds in parallel "
                        "into one --out shared by the processes; finish with one run without --shard (or use --ray, "
                        "which needs no shared folder)")
    b.add_argument("--only", default=None, metavar="ID[,ID...]",
                   help="train only these model ids of the spec (e.g. rebuild a few lost ones); the manifest lists "
                        "every model on disk")
    _add_ray_args(b)
    b.set_defaults(func=_cmd_zoo_build)
    e = sub.add_parser("eval", help="recompute BA and ASR of every model in a zoo")
    e.add_argument("dir", help="zoo folder (holding manifest.json)")
    e.add_argument("--device", default=None)
    e.add_argument("--data-dir", default=None, help="dataset folder, if it moved since the build")
    e.add_argument("--json", default=None, help="write the rows here")
    e.set_defaults(func=_cmd_zoo_eval)


# ------------------------------------------------------------------------------------------------ ray
def _add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray (optional: pip install 'banscan[ray]')")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run each model's job as a Ray task: without ADDRESS on a local Ray instance with this "
                        "machine's cores and GPUs, with one (e.g. 10.0.0.1:6379, or auto) on that cluster; only this "
                        "process reads the zoo and writes the results")
    g.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per Ray task (and its torch threads)")
    g.add_argument("--gpus-per-task", type=float, default=0.0,
                   help="GPUs per Ray task; a fraction (0.25) lets several small models share one GPU")
    g.add_argument("--ray-retries", type=int, default=2, help="retries of a task whose worker died (then recorded)")


def _ray_config(args: argparse.Namespace) -> Any:
    if args.ray is None:
        for flag, val, default in (("--cpus-per-task", args.cpus_per_task, 1.0),
                                   ("--gpus-per-task", args.gpus_per_task, 0.0)):
            if val != default:
                raise BanscanError(f"{flag} applies to Ray tasks; add --ray")
        return None
    from .distributed import RayConfig

    cfg = RayConfig(address=args.ray or None, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                    max_retries=args.ray_retries)
    cfg.check()
    return cfg


def _ray_session(cfg: Any) -> Any:
    import contextlib

    if cfg is None:
        return contextlib.nullcontext()
    from .distributed import ray_session

    return ray_session(cfg)


# ---------------------------------------------------------------------------------------------- bench
def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive budget of the clean-fitted threshold")
    p.add_argument("--calibration", default="loo", help="loo | kfold:K | holdout:F (clean models only)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none)")


def _add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="scan a whole zoo with several detectors; metrics and report",
                       description="Scan every model of a zoo with every method (resumable), then write "
                                   "RESULTS/report.md and report.html. `banscan bench report --results R` "
                                   "rebuilds the report from the results alone.")
    p.add_argument("--zoo", help="zoo folder written by `banscan zoo build`")
    p.add_argument("--methods", default="ban", help="comma-separated detectors, e.g. ban,btidbf,nc,featurere")
    p.add_argument("--out", help="results folder (results.jsonl, runs.jsonl, report.*)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cpu)")
    _add_param_args(p, per_method=True)
    p.add_argument("--method-params", default=None,
                   help='older spelling of --params: JSON object (or file) of per-method parameters, e.g. '
                        '\'{"ban": {"n_steps": 10}}\'')
    p.add_argument("--models", default=None, help="comma-separated model ids (default: every model with status ok)")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="write the report at the end")
    p.add_argument("--mitigate", default=None, metavar="METHODS",
                   help="also repair every backdoored model with these mitigations (e.g. ban,ft,anp,btidbf_u); "
                        "BA/ASR before and after go to RESULTS/mitigation.jsonl and the report")
    p.add_argument("--mitigate-images", type=int, default=None,
                   help="repair with this many defender images (the BAN paper: 2500, 5%% of CIFAR-10); default all")
    p.add_argument("--mitigate-params", default=None,
                   help='older spelling of --param mitigate.METHOD.KEY=VALUE (or a `mitigate` table in --params): '
                        'JSON object of per-mitigation parameters, e.g. \'{"ban": {"epochs": 10}}\'')
    p.add_argument("--mitigate-verify", default=None, metavar="DETECTOR",
                   help="scan every model before and after its repair with this detector (e.g. nc), with the "
                        "parameters given for it as one of --methods (--param DETECTOR.KEY=VALUE, --params, "
                        "--method-params), else its defaults; the verdicts go to the records and the report")
    _add_ray_args(p)
    _report_args(p)
    p.set_defaults(func=_cmd_bench)
    bsub = p.add_subparsers(dest="bench_command", metavar="{report}")
    r = bsub.add_parser("report", help="write report.md and report.html from RESULTS/results.jsonl")
    r.add_argument("--results", required=True, help="results folder of `banscan bench`")
    r.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: the runs' seed)")
    _report_args(r)
    r.set_defaults(func=_cmd_report)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench
    from .bench.io import MITIGATION_NAME, RESULTS_NAME
    from .bench.metrics import _parse_scheme

    if not args.zoo or not args.out:
        raise BanscanError("banscan bench needs --zoo DIR and --out RESULTS (or: banscan bench report --results R)")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    mit = tuple(m.strip() for m in (args.mitigate or "").split(",") if m.strip())
    det_params, mit_params = _bench_params(args, methods, mit)
    cfg = BenchConfig(zoo=args.zoo, methods=methods, out=args.out, seed=args.seed, device=args.device,
                      method_params=det_params,
                      models=tuple(s.strip() for s in args.models.split(",")) if args.models else None)
    _parse_scheme(args.calibration)
    ray = _ray_config(args)
    with _ray_session(ray):  # one Ray instance for the scans and the repairs
        counts = run_bench(cfg, argv=_command_line(args), ray=ray)
        print(f"scanned {counts['scanned']}, already done {counts['skipped']}, errors {counts['errors']} "
              f"-> {Path(args.out) / RESULTS_NAME}")
        if args.mitigate:
            from .bench import mitigate_zoo

            recs = mitigate_zoo(args.zoo, mit, out=args.out, params=mit_params, ids=cfg.models, seed=args.seed,
                                device=args.device, n_images=args.mitigate_images, verify=args.mitigate_verify,
                                verify_params=cfg.method_params.get(args.mitigate_verify or "", {}), ray=ray)
            print(f"mitigation: {len(recs)} new records -> {Path(args.out) / MITIGATION_NAME}")
    if args.report:
        return _cmd_report(argparse.Namespace(results=args.out, fpr=args.fpr, calibration=args.calibration,
                                       bootstrap=args.bootstrap, seed=args.seed))
    return 0


def _bench_params(args: argparse.Namespace, methods: tuple[str, ...], mit: tuple[str, ...]
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per-detector and per-mitigation parameters of ``banscan bench``: ``--param ban.KEY=V`` and
    ``mitigate.ban.KEY=V``, ``--preset [METHOD.]NAME``, ``--params FILE`` (tables ``[ban]``, ``[mitigate.ban]``),
    and the older ``--method-params``/``--mitigate-params`` JSON."""
    from .bench.runner import _parse_method_params
    from .detectors import get_detector
    from .mitigation import get_mitigation
    from .params import read_file, resolve_many

    file = read_file(args.params) if args.params else {}
    mit_file = file.pop("mitigate", {})
    out = []
    for names, make, old, flag, prefix, tables in (
            (methods, get_detector, args.method_params, "--method-params", "", file),
            (mit, get_mitigation, args.mitigate_params, "--mitigate-params", "mitigate.", mit_file)):
        def mine(items: list[str]) -> list[str]:
            return [s for s in items if s.startswith("mitigate.") == bool(prefix)]

        if not names:
            if mine(args.param + args.preset):
                raise BanscanError(f"{mine(args.param + args.preset)[0]!r} sets a repair's parameter; add --mitigate")
            out.append({})
            continue
        out.append(resolve_many({m: type(make(m)) for m in names}, mine(args.preset), tables,
                                _parse_method_params(old, names, flag), mine(args.param), prefix))
    return out[0], out[1]


def _command_line(args: argparse.Namespace) -> list[str]:
    """The scan's command line rebuilt from the parsed arguments (equivalent to what was typed)."""
    argv = ["banscan", "bench", "--zoo", args.zoo, "--methods", args.methods, "--out", args.out, "--seed",
            str(args.seed)]
    for flag, val in (("--device", args.device), ("--method-params", args.method_params), ("--models", args.models),
                      ("--mitigate", args.mitigate), ("--mitigate-params", args.mitigate_params),
                      ("--mitigate-images", args.mitigate_images), ("--mitigate-verify", args.mitigate_verify)):
        if val is not None:
            argv += [flag, str(val)]
    if args.ray is not None:
        argv += ["--ray"] + ([args.ray] if args.ray else []) + ["--cpus-per-task", str(args.cpus_per_task),
                                                               "--gpus-per-task", str(args.gpus_per_task)]
    for flag, vals in (("--param", args.param), ("--params", [args.params] if args.params else []),
                       ("--preset", args.preset)):
        for v in vals:
            argv += [flag, v]
    return argv


def _cmd_report(args: argparse.Namespace) -> int:
    from .bench import write_report

    md, html = write_report(args.results, fpr=args.fpr, calibration=args.calibration, n_boot=args.bootstrap,
                            seed=args.seed)
    print(f"report: {md}\nreport: {html}")
    return 0


# ------------------------------------------------------------------------------------------- mitigate
def _cmd_mitigate(args: argparse.Namespace) -> int:
    from .detectors import get_detector
    from .mitigation import get_mitigation, mitigate_file
    from .models import parse_kwargs
    from .params import resolve

    aliases = {} if args.epochs is None else {"epochs": args.epochs}
    params = _one_method_params(type(get_mitigation(args.method)), f"--method {args.method}", args, aliases)
    verify_params = (resolve(type(get_detector(args.verify)), f"--verify {args.verify}",
                             pairs=[s for s in args.verify_params.split(",") if s.strip()]) if args.verify else {})
    data: Any = args.data
    if (Path(args.data) / "manifest.json").is_file():  # a zoo: its defender split, with the zoo's normalisation
        from .zoo import defender_data

        data = defender_data(args.data)
    card = mitigate_file(args.arch, args.weights, data, args.out, method=args.method,
                         arch_kwargs=parse_kwargs(args.arch_kwargs), num_classes=args.num_classes, mean=args.mean,
                         std=args.std, params=params, holdout=args.holdout, seed=args.seed, device=args.device,
                         data_split=args.data_split, input_size=args.input_size, verify=args.verify,
                         verify_params=verify_params)
    ev = card["evaluation"]
    print(f"{args.method}: BA on {ev['n']} held-out images {ev['BA_before']:.4f} -> {ev['BA_after']:.4f}  "
          f"time={card['timings'].get('total', 0):.1f}s")
    ver = card["verification"]
    if ver is not None:
        b, a = ver["before"], ver["after"]
        print(f"{ver['detector']} scan: before {b['verdict']} (score {b['score']:.3f}, class {b['target']}) -> "
              f"after {a['verdict']} (score {a['score']:.3f}, class {a['target']})")
        if ver["still_flagged"]:
            print(f"WARNING: {ver['detector']} still finds a backdoor into class {a['target']}; the repair may "
                  "not have removed it")
        if ver["note"]:
            print(f"NOTE: {ver['note']}")
    print(f"weights written to {args.out}; model card {Path(args.out).with_suffix('.json')}")
    return 0


def _add_mitigate_parser(subparsers: argparse._SubParsersAction) -> None:
    from .detectors import list_detectors
    from .mitigation import list_mitigations

    p = subparsers.add_parser("mitigate", help="remove a backdoor: write a repaired copy of the model")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="repaired weights (.safetensors); the model card goes to OUT.json")
    p.add_argument("--method", default="ban", choices=list_mitigations())
    _add_param_args(p)
    p.add_argument("--epochs", type=int, default=None,
                   help="older spelling of --param epochs=N (ban, ban_scan, ft; default 25)")
    p.add_argument("--verify", default=None, choices=list_detectors(),
                   help="scan before and after the repair with this detector (e.g. nc; not ban for ban repairs)")
    p.add_argument("--verify-params", default="", help="that detector's parameters, KEY=VALUE,..., e.g. n_epochs=5")
    p.add_argument("--holdout", type=float, default=0.1, help="share of --data held out to measure BA (0.1)")
    p.set_defaults(func=_cmd_mitigate)


def build_parser() -> argparse.ArgumentParser:
    from .data import CIFAR10_MEAN, CIFAR10_STD

    parser = argparse.ArgumentParser(prog="banscan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"banscan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("detect", help="scan one model for a backdoor")
    _add_model_args(p)
    _add_detector_args(p)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--threshold-file", default=None, help="JSON written by `banscan calibrate`")
    p.add_argument("--json", default=None, help="write the full result here")
    p.add_argument("--artifacts", default=None, help="folder for result.json + artifacts.safetensors")
    p.add_argument("--plots", default=None, help="folder for PNG plots (histograms, mask)")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("calibrate", help="fit a threshold from a folder of known-clean models")
    p.add_argument("--models", required=True, help="folder of known-clean weight files (.safetensors/.pt/.pth)")
    p.add_argument("--arch", required=True)
    p.add_argument("--arch-kwargs", default="")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--data", required=True)
    p.add_argument("--data-split", default="test", choices=["train", "test"])
    p.add_argument("--mean", type=_floats, default=CIFAR10_MEAN)
    p.add_argument("--std", type=_floats, default=CIFAR10_STD)
    _add_detector_args(p)
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive budget on clean models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="threshold.json")
    p.add_argument("--prior-out", default=None,
                   help="also write a class prior fitted on these clean models (BAN's noise statistic, >= 3 models), "
                        "for data without a shipped prior")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("demo", help="train a small backdoored and a small clean model, scan both (no downloads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="optional folder for the demo's models and results")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list the registered architectures")
    p.set_defaults(func=_cmd_models)

    _add_zoo_parser(sub)
    _add_bench_parser(sub)
    _add_mitigate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    set_progress(not args.quiet and sys.stderr.isatty())
    try:
        return int(args.func(args) or 0)
    except BanscanError as e:
        print(f"banscan: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("banscan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
