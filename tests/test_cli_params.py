"""One parameter syntax on every command: ``--param KEY=VALUE``, ``--params FILE``, ``--preset NAME``; the seed
is ``--seed`` only. Each command's path from its arguments to the algorithm, and the unknown-key error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_ARCH, TINY_CLASSES
from test_bench import RESULTS_NAME, TINY_BAN, _bench_cli, handmade_zoo, stub_zoo  # noqa: F401 (fixtures)

from banscan._utils import BanscanError
from banscan.checkpoints import save_weights
from banscan.cli import _bench_params, _detector_from_args, build_parser, main
from banscan.detectors import BAN, NeuralCleanse
from banscan.params import resolve, resolve_many

TINY = ["n_opt=40", "n_eval=120", "n_steps=2", "mask_steps=5", "batch_size=64"]


def _model_args(tiny_zoo, tmp_path) -> list[str]:
    w = save_weights(tiny_zoo.clean, tmp_path / "m.safetensors")
    np.savez(tmp_path / "clean.npz", x=tiny_zoo.data.x.permute(0, 2, 3, 1).numpy(), y=tiny_zoo.data.y.numpy())
    arch, kw = TINY_ARCH
    return ["--arch", arch, "--arch-kwargs", ",".join(f"{k}={v}" for k, v in kw.items()), "--weights", str(w),
            "--data", str(tmp_path / "clean.npz"), "--num-classes", str(TINY_CLASSES), "--mean", "0.5,0.5,0.5",
            "--std", "0.25,0.25,0.25"]


def test_values_are_typed_from_the_constructor_and_later_sources_win(monkeypatch):
    p = resolve(BAN, "ban", pairs=["eps=1", "restarts=3", "amp=none", "project=no", "statistic=noise"])
    assert p == {"eps": 1.0, "restarts": 3, "amp": None, "project": False, "statistic": "noise"}
    assert isinstance(p["eps"], float)
    monkeypatch.setattr(BAN, "presets", {"p": {"eps": 0.1, "n_steps": 3, "restarts": 2}}, raising=False)
    got = resolve(BAN, "ban", preset="p", file={"n_steps": 4, "restarts": 5}, aliases={"restarts": 6},
                  pairs=["eps=0.2"])
    assert got == {"eps": 0.2, "n_steps": 4, "restarts": 6}
    with pytest.raises(BanscanError, match="restarts='x' is not a int"):
        resolve(BAN, "ban", pairs=["restarts=x"])
    with pytest.raises(BanscanError, match=r"does not take \['nope'\]; valid keys: .*restarts"):
        resolve(BAN, "ban", file={"nope": 1})
    with pytest.raises(BanscanError, match="--seed"):
        resolve(BAN, "ban", pairs=["seed=1"])
    with pytest.raises(BanscanError, match="no preset 'q'; available: p"):
        resolve(BAN, "ban", preset="q")
    many = resolve_many({"ban": BAN, "nc": NeuralCleanse}, presets=["ban.p"], pairs=["nc.n_epochs=2", "ban.eps=0.5"])
    assert many == {"ban": {"eps": 0.5, "n_steps": 3, "restarts": 2}, "nc": {"n_epochs": 2}}
    with pytest.raises(BanscanError, match="must start with a method's name and a dot, one of ban, nc"):
        resolve_many({"ban": BAN, "nc": NeuralCleanse}, pairs=["restarts=2"])


def test_detect_takes_preset_params_file_and_param(tiny_zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(BAN, "presets", {"tiny": {"n_opt": 40, "n_eval": 120, "mask_steps": 5}}, raising=False)
    (tmp_path / "p.toml").write_text('n_steps = 2\nstatistic = "classwise"\n')
    base = ["detect"] + _model_args(tiny_zoo, tmp_path)
    argv = base + ["--preset", "tiny", "--params", str(tmp_path / "p.toml"), "--param", "statistic=noise",
                   "--param", "batch_size=64", "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / "r.json").read_text())["config"]
    got = {k: cfg[k] for k in ("n_opt", "n_eval", "n_steps", "statistic", "batch_size")}
    assert got == {"n_opt": 40, "n_eval": 120, "n_steps": 2, "statistic": "noise", "batch_size": 64}
    assert main(base + ["--param", "nope=1"]) == 2
    assert "valid keys:" in capsys.readouterr().err
    assert main(base + ["--param", "seed=1"]) == 2
    assert "--seed" in capsys.readouterr().err
    # other detectors read the same way; the older BAN-shaped flags stay as aliases below --param
    args = build_parser().parse_args(base + ["--method", "nc", "--param", "n_epochs=5", "--seed", "3"])
    nc = _detector_from_args(args)
    assert nc.get_params()["n_epochs"] == 5 and nc.seed == 3
    args = build_parser().parse_args(base + ["--eps", "0.1", "--n-steps", "3", "--param", "eps=0.2"])
    assert (_detector_from_args(args).eps, _detector_from_args(args).n_steps) == (0.2, 3)


def test_mitigate_takes_params_file_and_param(tiny_zoo, tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps({"batch_size": 64, "epochs": 3}))
    base = ["-q", "mitigate"] + _model_args(tiny_zoo, tmp_path) + ["--method", "ft", "--out",
                                                                    str(tmp_path / "fixed.safetensors")]
    assert main(base + ["--params", str(tmp_path / "p.json"), "--param", "epochs=1"]) == 0
    card = json.loads((tmp_path / "fixed.json").read_text())
    assert card["config"]["epochs"] == 1 and card["config"]["batch_size"] == 64
    capsys.readouterr()
    assert main(base + ["--param", "nope=1"]) == 2
    assert "valid keys:" in capsys.readouterr().err
    assert main(base + ["--preset", "paper"]) == 2
    assert "no preset 'paper'" in capsys.readouterr().err
    assert main(base + ["--params", "seed=2"]) == 2  # the older KEY=VALUE list, same seed rule
    assert "--seed" in capsys.readouterr().err


def test_bench_takes_method_prefixed_params(handmade_zoo, stub_zoo, tmp_path):  # noqa: F811 (fixtures)
    out = tmp_path / "res"
    (tmp_path / "p.toml").write_text("[ban]\nn_opt = 40\nn_eval = 120\n\n[mitigate.ban]\nepochs = 1\n")
    pairs = [a for kv in TINY_BAN["ban"].items() if kv[0] not in ("n_opt", "n_eval")
             for a in ("--param", f"ban.{kv[0]}={kv[1]}")]
    argv = ["bench", "--zoo", str(handmade_zoo), "--methods", "ban", "--out", str(out), "--bootstrap", "0",
            "--params", str(tmp_path / "p.toml"), "--no-report"] + pairs
    assert _bench_cli(argv) == 0
    rec = json.loads((out / RESULTS_NAME).read_text().splitlines()[0])
    assert {k: rec["params"][k] for k in TINY_BAN["ban"]} == TINY_BAN["ban"]
    args = build_parser().parse_args(argv + ["--mitigate", "ban,ft", "--param", "mitigate.ft.epochs=2"])
    assert _bench_params(args, ("ban",), ("ban", "ft")) == (TINY_BAN, {"ban": {"epochs": 1}, "ft": {"epochs": 2}})
    with pytest.raises(BanscanError, match="valid keys:"):
        _bench_cli(argv + ["--param", "ban.nope=1"])
    with pytest.raises(BanscanError, match="must start with a method's name"):
        _bench_cli(argv + ["--param", "restarts=2"])
