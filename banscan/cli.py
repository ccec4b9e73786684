"""Command line: ``banscan detect | calibrate | demo | models | zoo | bench | mitigate``.

The CLI only parses arguments, builds the library objects and calls the public API. Bad input exits with
status 2 and one line that says what was wrong; a completed scan exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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


def _detector_from_args(args: argparse.Namespace):
    from .detectors import get_detector

    accepted = get_detector(args.method).get_params()
    params: dict[str, Any] = {"seed": args.seed}
    for key in ("eps", "n_steps", "n_opt", "n_eval", "batch_size", "split_layer", "bn_mode", "amp"):
        val = getattr(args, key, None)
        if val is None:
            continue
        if key not in accepted:
            raise BanscanError(f"--{key.replace('_', '-')} does not apply to --method {args.method}")
        params[key] = val
    if args.threshold is not None:
        params["threshold"] = args.threshold
    elif args.threshold_file:
        cal = json.loads(Path(args.threshold_file).read_text())
        if cal.get("method") != args.method:
            raise BanscanError(f"{args.threshold_file} calibrates {cal.get('method')!r}, not {args.method!r}")
        params["threshold"] = float(cal["threshold"])
    return get_detector(args.method, **params)


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    from .detectors import list_detectors

    p.add_argument("--method", default="ban", choices=list_detectors())
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--n-steps", type=int, default=None)
    p.add_argument("--n-opt", type=int, default=None, help="clean images for optimisation (default 500)")
    p.add_argument("--n-eval", type=int, default=None, help="clean images for the decision (default 5000)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--split-layer", default=None, help="module whose input is the feature map (own models)")
    p.add_argument("--bn-mode", default=None, choices=["recalibrate", "official", "frozen"])
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")


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
                                data_split=args.data_split)
    Path(args.out).write_text(json.dumps(cal, indent=2, sort_keys=True))
    print(f"threshold {cal['threshold']:.4f} for FPR <= {args.fpr} from {cal['n_models']} clean models "
          f"-> {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seed=args.seed, out=args.out)


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


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
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("demo", help="train a small backdoored and a small clean model, scan both (no downloads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="optional folder for the demo's models and results")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list the registered architectures")
    p.set_defaults(func=_cmd_models)

    # Further subcommands register here, each from its own module's `add_cli(sub)`.
    for mod in ("zoo", "bench", "mitigation"):
        try:
            module = __import__(f"banscan.{mod}", fromlist=["add_cli"])
        except ImportError:
            continue
        if hasattr(module, "add_cli"):
            module.add_cli(sub)
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
