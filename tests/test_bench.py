"""Benchmark harness: metrics against hand-computed values, clean-only thresholds, and an end-to-end run that
resumes, on a tiny zoo written by hand in the layout of docs/CONTRACTS.md."""

from __future__ import annotations

import hashlib
import json
import math
import types
from pathlib import Path

import pytest
import torch

from banscan._utils import BanscanError
from banscan.bench import (BenchConfig, auroc, average_precision, bootstrap_ci, compute_metrics, fit_thresholds,
                           load_records, read_jsonl, roc_points, run_bench, tpr_at_fpr)
from banscan.bench.io import RESULTS_NAME
from banscan.detectors import calibrate_threshold

# ------------------------------------------------------------------------------------------ metrics
POS = [0.9, 0.8, 0.6, 0.4]
NEG = [0.7, 0.5, 0.3, 0.2, 0.1]


def test_auroc_hand_computed():
    # pairs won by the positive: 0.9 -> 5, 0.8 -> 5, 0.6 -> 4, 0.4 -> 3, out of 4 * 5
    assert auroc(POS, NEG) == pytest.approx(17 / 20)
    # ties count one half: (1 > 0.5) + (1 > 0) + (0.5 == 0.5) / 2 + (0.5 > 0) = 3.5 of 4
    assert auroc([1.0, 0.5], [0.5, 0.0]) == pytest.approx(3.5 / 4)
    assert auroc([0.3, 0.3], [0.3]) == pytest.approx(0.5)
    assert auroc([1.0], [0.0]) == 1.0 and auroc([0.0], [1.0]) == 0.0
    assert auroc([], NEG) is None and auroc(POS, []) is None


def test_aupr_hand_computed():
    # ranking P P N P N P N N N: precision at each positive 1, 1, 3/4, 4/6
    assert average_precision(POS, NEG) == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    # tied threshold 0.5 holds one positive and one negative: 0.5 * 1 + 0.5 * 2/3
    assert average_precision([1.0, 0.5], [0.5, 0.0]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(POS, []) == 1.0


def test_roc_and_tpr_at_fpr():
    pts = roc_points(POS, NEG)
    assert pts[0] == (0.0, 0.0) and pts[-1] == (1.0, 1.0)
    assert (0.2, 0.75) in pts  # threshold 0.6: one clean model (0.7) above
    # 5 clean models: a 5% budget allows none above the threshold -> only 0.9 and 0.8 flagged
    assert tpr_at_fpr(POS, NEG, 0.05) == pytest.approx(0.5)
    assert tpr_at_fpr(POS, NEG, 0.2) == pytest.approx(0.75)
    assert tpr_at_fpr(POS, NEG, 1.0) == 1.0
    # the ROC-point definition agrees with a threshold from calibrate_threshold on all clean scores
    thr = calibrate_threshold(NEG, 0.05)
    assert sum(s >= thr for s in POS) / len(POS) == tpr_at_fpr(POS, NEG, 0.05)


def test_non_finite_score_is_an_error():
    with pytest.raises(BanscanError, match="non-finite"):
        auroc([float("nan")], [0.1])


def test_bootstrap_is_seeded_and_brackets_the_value():
    flags = [1, 1, 1, 0, 1, 0, 1, 1]
    ci = bootstrap_ci(lambda g: sum(g) / len(g), [flags], n_boot=500, seed=3)
    assert ci == bootstrap_ci(lambda g: sum(g) / len(g), [flags], n_boot=500, seed=3)
    assert ci[0] <= 6 / 8 <= ci[1] and 0 <= ci[0] < ci[1] <= 1
    assert bootstrap_ci(auroc, [POS, []]) is None
    lo, hi = bootstrap_ci(auroc, [POS, NEG], n_boot=300, seed=0)
    assert lo <= 17 / 20 <= hi


# --------------------------------------------------------------------------------------- thresholds
CLEAN = {"c1": 0.1, "c2": 0.2, "c3": 0.3, "c4": 0.9}


def test_loo_thresholds_use_other_clean_models_only():
    cal = fit_thresholds(CLEAN, ["b1", "b2"], fpr=0.05, scheme="loo")
    for cid in CLEAN:
        tf = cal.per_model[cid]
        assert cid not in tf.fitted_on and set(tf.fitted_on) == set(CLEAN) - {cid}
        assert tf.threshold == calibrate_threshold([v for k, v in CLEAN.items() if k != cid], 0.05)
    assert 0.3 < cal.per_model["c4"].threshold < 0.9  # c4 is judged without itself -> flagged
    assert cal.per_model["c1"].threshold > 0.9
    for b in ("b1", "b2"):
        assert cal.per_model[b].fitted_on == tuple(sorted(CLEAN))  # all clean models, no backdoored one
    assert cal.all_clean.threshold == calibrate_threshold(list(CLEAN.values()), 0.05)


def test_kfold_and_holdout_thresholds():
    cal = fit_thresholds(CLEAN, ["b1"], scheme="kfold:2", seed=1)
    for cid in CLEAN:
        assert cid not in cal.per_model[cid].fitted_on
    assert "b1" not in {m for tf in cal.per_model.values() for m in tf.fitted_on}
    cal = fit_thresholds(CLEAN, ["b1"], scheme="holdout:0.5", seed=0)
    assert len(cal.fit_only) == 2
    assert not set(cal.fit_only) & set(cal.per_model)  # fitting models are not evaluated
    assert {tf.fitted_on for tf in cal.per_model.values()} == {cal.fit_only}


@pytest.mark.parametrize("scheme", ["bogus", "kfold:1", "holdout:1.5", "loo:3"])
def test_bad_calibration_scheme(scheme):
    with pytest.raises(BanscanError, match="calibration scheme"):
        fit_thresholds(CLEAN, [], scheme=scheme)


def test_calibration_needs_clean_models():
    with pytest.raises(BanscanError, match="at least 2 clean"):
        fit_thresholds({"c1": 0.1}, ["b1"])


def _rec(model, score, attack=None, target=None, true_target=None, verdict=None, method="ban", t=1.0):
    return {"model": model, "method": method, "status": "ok", "score": score, "target": target,
            "backdoored": attack is not None, "attack": attack, "true_target": true_target,
            "verdict": verdict or ("backdoored" if score >= 0.5 else "clean"), "timings": {"total": t}}


def test_compute_metrics_hand_computed():
    recs = [_rec(f"c{i}", s, target=0, t=i) for i, s in enumerate([0.1, 0.2, 0.3, 0.9], 1)]
    recs += [_rec("bn1", 0.95, "badnets", 0, 0, t=10), _rec("bn2", 0.5, "badnets", 0, 0, t=10),
             _rec("bl1", 0.99, "blend", 3, 0, t=10), _rec("bl2", 0.05, "blend", 2, 0, t=10)]
    m = compute_metrics(recs, fpr=0.05, calibration="loo", seed=0, n_boot=200)["ban"]
    # clean: c4 (0.9) is judged by the threshold from c1..c3 and flagged; the others pass
    assert m["clean"]["clean_fpr"]["value"] == pytest.approx(0.25)
    assert m["clean"]["clean_pass"]["value"] == pytest.approx(0.75)
    # backdoored: threshold just above 0.9 (all clean models) -> bn1 and bl1 flagged
    bn, bl, o = m["attacks"]["badnets"], m["attacks"]["blend"], m["overall"]
    assert bn["dsr"]["value"] == 0.5 and bl["dsr"]["value"] == 0.5 and o["dsr"]["value"] == 0.5
    assert bn["dsr_target"]["value"] == 0.5 and bl["dsr_target"]["value"] == 0.0
    assert bn["target_acc"]["value"] == 1.0 and bl["target_acc"]["value"] == 0.0
    assert o["acc"] == pytest.approx((2 + 3) / 8)
    assert bn["auroc"]["value"] == pytest.approx(7 / 8)  # 0.95 beats 4 clean, 0.5 beats 3
    assert bl["auroc"]["value"] == pytest.approx(4 / 8)
    assert o["auroc"]["value"] == pytest.approx(auroc([0.95, 0.5, 0.99, 0.05], [0.1, 0.2, 0.3, 0.9]))
    assert o["tpr_at_fpr"] == pytest.approx(0.5)
    # default threshold (verdict in the records): 0.95, 0.5, 0.99 flagged; c4 flagged
    assert o["dsr_default"] == 0.75 and m["clean"]["fpr_default"] == 0.25
    assert o["time_mean"] == pytest.approx((1 + 2 + 3 + 4 + 40) / 8) and o["time_median"] == pytest.approx(7)
    assert o["auroc"]["ci"][0] <= o["auroc"]["value"] <= o["auroc"]["ci"][1]


# ------------------------------------------------------------------------------------ JSON Lines I/O
def test_torn_last_line_is_ignored(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(BanscanError, match="line 2"):
        read_jsonl(p)


# ------------------------------------------------------------------------------------- tiny zoo, E2E
ARCH, KW, K, SIZE = "resnet18", {"base_width": 4}, 4, 16
TARGET = 1


def _patch(x01):
    x = x01.clone()
    x[..., -4:-1, -4:-1] = 1.0
    return x


def _hook(x01, y, idx, gen):
    sel = (idx % 5 == 0).to(x01.device)
    return torch.where(sel[:, None, None, None], _patch(x01), x01), torch.where(sel, torch.full_like(y, TARGET), y)


def _write_tiny_zoo(d: Path) -> None:
    """Two clean and two BadNets-style models, trained for two steps only (the harness, not the detector, is
    under test), in the zoo layout of docs/CONTRACTS.md."""
    from banscan.checkpoints import save_weights
    from banscan.models import create_model
    from banscan.synthetic import make_synthetic
    from banscan.train import TrainConfig, train_model

    train = make_synthetic(128, K, SIZE, seed=0)
    cards = []
    for i, attack in enumerate([None, None, "badnets", "badnets"]):
        torch.manual_seed(i)
        model = create_model(ARCH, K, **KW)
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.1, seed=i, amp=False, channels_last=False)
        info = train_model(model, train, cfg, batch_hook=_hook if attack else None)
        mid = f"m{i}-{attack or 'clean'}"
        save_weights(model, d / f"{mid}.safetensors")
        card = {"id": mid, "file": f"{mid}.safetensors", "arch": ARCH, "arch_kwargs": KW, "num_classes": K,
                "dataset": "synthetic", "attack": attack, "attack_params": {} if attack else None,
                "target": TARGET if attack else None, "poison_rate": 0.2 if attack else 0.0, "seed": i, "BA": None,
                "ASR": None, "status": "ok", "failure": None, "train_time_s": info["train_time_s"], "versions": {},
                "mean": [0.5] * 3, "std": [0.25] * 3}
        (d / f"{mid}.json").write_text(json.dumps(card))
        cards.append(card)
    cards.append({**cards[0], "id": "broken", "status": "failed", "failure": "BA below floor"})
    manifest = {"schema_version": 1, "spec": {"name": "handmade-tiny"}, "dataset": {"name": "synthetic"},
                "defender_split": {"n": 200, "seed": 7}, "models": cards}
    (d / "manifest.json").write_text(json.dumps(manifest))


def _stub_zoo_module() -> types.ModuleType:
    """The documented `banscan.zoo` helpers the benchmark and its command line use, for the handmade zoo (its
    defender data is regenerated)."""
    from banscan.checkpoints import load_weights
    from banscan.models import create_model
    from banscan.synthetic import make_synthetic

    mod = types.ModuleType("banscan.zoo")
    mod.shipped_specs = lambda: []
    mod.load_manifest = lambda d: json.loads((Path(d) / "manifest.json").read_text())
    mod.load_zoo_model = lambda d, c: load_weights(create_model(c["arch"], c["num_classes"], **c["arch_kwargs"]),
                                                   Path(d) / c["file"]).eval()

    def defender_data(d):
        split = mod.load_manifest(d)["defender_split"]
        return make_synthetic(split["n"], K, SIZE, seed=split["seed"])

    mod.defender_data = defender_data
    return mod


@pytest.fixture(scope="module")
def handmade_zoo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("zoo")
    with torch.random.fork_rng(devices=[]):
        _write_tiny_zoo(d)
    return d


@pytest.fixture
def stub_zoo(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "banscan.zoo", _stub_zoo_module())


TINY_BAN = {"ban": {"n_opt": 40, "n_eval": 120, "n_steps": 2, "mask_steps": 5, "batch_size": 64,
                    "statistic": "negmask"}}


def _bench_cli(argv: list[str]) -> int:
    """`banscan bench ...` through the command line's parser, without its logging and error handling."""
    from banscan.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def test_bench_end_to_end_and_resume(handmade_zoo, stub_zoo, tmp_path):
    out = tmp_path / "res"
    argv = ["bench", "--zoo", str(handmade_zoo), "--methods", "ban", "--out", str(out), "--seed", "0",
            "--method-params", json.dumps(TINY_BAN), "--bootstrap", "50"]
    assert _bench_cli(argv) == 0
    lines = (out / RESULTS_NAME).read_text().splitlines()
    assert len(lines) == 4  # the failed model is skipped
    recs = [json.loads(s) for s in lines]
    r = next(x for x in recs if x["attack"] == "badnets")
    assert r["status"] == "ok" and r["backdoored"] and r["true_target"] == TARGET and r["seed"] == 0
    assert {"score", "verdict", "threshold", "target", "timings", "peak_mem_mb", "versions", "load_s"} <= set(r)
    assert r["timings"]["total"] > 0 and "hist_noise_negmask" in r["stats"]
    assert not next(x for x in recs if x["attack"] is None)["backdoored"]
    assert sum(x["first_in_process"] for x in recs) == 1 and r["mem_kind"].startswith("cpu_maxrss_delta")
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "Per attack, methods side by side" in md and "badnets" in md and "fitted on (clean only)" in md
    assert "images opt / eval" in md and "| 40 / 120 |" in md  # the data budget beside the numbers
    assert "x ban per model (min / median / max)" in md and "| 1.0 / 1.0 / 1.0 |" in md  # cost against the first
    assert "data:image/png;base64," in page and "<img" in page and "src='plots/" not in page
    assert (out / "plots" / "roc.png").stat().st_size > 1000 and (out / "plots" / "ban_histograms.png").exists()

    # resume: nothing rescanned, also after a torn line left by an interrupted write
    with open(out / RESULTS_NAME, "a") as f:
        f.write('{"model": "m0-clean", "meth')
    assert _bench_cli(argv + ["--no-report"]) == 0
    assert [json.loads(s) for s in (out / RESULTS_NAME).read_text().splitlines()] == recs
    runs = read_jsonl(out / "runs.jsonl")
    assert len(runs) == 2 and runs[1]["n_todo"] == 0
    assert runs[0]["argv"][:4] == ["banscan", "bench", "--zoo", str(handmade_zoo)]

    # a mitigation engineer's records are merged into the report
    (out / "mitigation.jsonl").write_text(json.dumps(
        {"model": "m2-badnets", "method": "ban_ft", "BA_before": 0.9, "BA_after": 0.88, "ASR_before": 1.0,
         "ASR_after": 0.05, "RA_after": 0.85, "time_s": 3.2}) + "\n" + json.dumps(
        {"model": "m2-badnets", "method": "ft", "BA_before": 0.9, "BA_after": 0.89, "ASR_before": 1.0,
         "ASR_after": 0.97, "RA_after": 0.02, "time_s": 1.1,
         "verify": {"detector": "nc", "before": {"verdict": "backdoored", "target": 0},
                    "after": {"verdict": "backdoored", "target": 0}, "note": None}}) + "\n")
    assert _bench_cli(["bench", "report", "--results", str(out), "--bootstrap", "20"]) == 0
    md = (out / "report.md").read_text()
    assert "## Mitigation" in md and (out / "plots" / "repair_vs_noise.png").stat().st_size > 1000
    # the row shows how strongly BAN's scan of that model activated its true target under noise
    scan = next(r for r in load_records(out) if r["model"] == "m2-badnets")
    h = scan["stats"]["hist_noise"]
    row = next(line for line in md.splitlines() if line.startswith("| m2-badnets | ban_ft"))
    assert row.rstrip(" |").endswith(f"{100 * h[scan['true_target']] / sum(h):.1f}%")
    ft_row = next(line for line in md.splitlines() if line.startswith("| m2-badnets | ft"))
    header = next(line for line in md.splitlines() if line.startswith("| model | method | BA before"))
    col = [c.strip() for c in header.strip("|").split("|")].index("scan after repair")
    assert [c.strip() for c in row.strip("|").split("|")][col] == "–"  # this record was not verified
    assert [c.strip() for c in ft_row.strip("|").split("|")][col] == "nc: backdoored (class 0)"
    assert len(load_records(out)) == 4


def test_bench_refuses_mixed_parameters_and_bad_input(handmade_zoo, stub_zoo, tmp_path):
    out = tmp_path / "res"
    cfg = BenchConfig(zoo=str(handmade_zoo), methods=("ban",), out=str(out), method_params=TINY_BAN,
                      models=("m0-clean",))
    assert run_bench(cfg)["scanned"] == 1
    other = {"ban": {**TINY_BAN["ban"], "n_steps": 3}}
    with pytest.raises(BanscanError, match="other parameters.*n_steps"):
        run_bench(BenchConfig(zoo=str(handmade_zoo), methods=("ban",), out=str(out), method_params=other))
    with pytest.raises(BanscanError, match="seed 0, not 1"):
        run_bench(BenchConfig(zoo=str(handmade_zoo), methods=("ban",), out=str(out), method_params=TINY_BAN, seed=1))
    with pytest.raises(BanscanError, match="unknown methods"):
        run_bench(BenchConfig(zoo=str(handmade_zoo), methods=("nope",), out=str(out)))
    with pytest.raises(BanscanError, match="not among the methods"):
        run_bench(BenchConfig(zoo=str(handmade_zoo), methods=("ban",), out=str(out), method_params={"nc": {}}))
    with pytest.raises(BanscanError, match="no manifest.json"):
        run_bench(BenchConfig(zoo=str(tmp_path), methods=("ban",), out=str(out)))
    with pytest.raises(BanscanError, match="not in"):
        run_bench(BenchConfig(zoo=str(handmade_zoo), methods=("ban",), out=str(out), models=("zzz",)))
    with pytest.raises(BanscanError, match="not valid JSON"):
        _bench_cli(["bench", "--zoo", str(handmade_zoo), "--out", str(out), "--method-params", "{bad"])
    with pytest.raises(BanscanError, match="needs --zoo"):
        _bench_cli(["bench", "--methods", "ban"])
    with pytest.raises(BanscanError, match="has no results.jsonl"):
        _bench_cli(["bench", "report", "--results", str(tmp_path / "nowhere")])
    assert not math.isnan(load_records(out)[0]["score"])


def test_bench_refuses_to_resume_over_a_rebuilt_model(handmade_zoo, stub_zoo, tmp_path):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(handmade_zoo, zoo)
    out = tmp_path / "res"
    cfg = BenchConfig(zoo=str(zoo), methods=("ban",), out=str(out), method_params=TINY_BAN, models=("m0-clean",))
    assert run_bench(cfg)["scanned"] == 1
    rec = load_records(out)[0]
    assert rec["weights_sha256"] == hashlib.sha256((zoo / "m0-clean.safetensors").read_bytes()).hexdigest()
    assert run_bench(cfg)["skipped"] == 1  # same weights: resumed
    shutil.copy(zoo / "m1-clean.safetensors", zoo / "m0-clean.safetensors")  # "rebuilt" with other weights
    with pytest.raises(BanscanError, match="m0-clean made from other weights"):
        run_bench(cfg)


def test_report_from_records_alone(tmp_path):
    """Two methods side by side, a failed scan, an unscored record, and no torch work at all."""
    from banscan.bench import write_report

    recs = [_rec(f"c{i}", s, t=1.0) for i, s in enumerate([0.1, 0.2, 0.3], 1)]
    recs += [_rec("b1", 0.9, "wanet", 0, 0), _rec("b2", 0.4, "blend", 1, 1)]
    recs += [{**r, "method": "nc", "score": 1 - r["score"]} for r in recs]
    for r in recs:
        if r["method"] == "ban":
            r["stats"] = {"hist_clean": [5, 5, 5, 5], "hist_noise_negmask": [17, 1, 1, 1]}
    recs.append({**_rec("c4", 0.0), "status": "error", "error": "RuntimeError: out of memory"})
    recs.append({**_rec("c5", 0.0, method="nc"), "score": None})
    (tmp_path / RESULTS_NAME).write_text("".join(json.dumps(r) + "\n" for r in recs))
    md_path, html_path = write_report(tmp_path, n_boot=20)
    md = md_path.read_text()
    assert "| attack | models | ban | nc |" in md and "wanet" in md and "blend" in md
    assert "out of memory" in md and "no finite score" in md
    assert "BAN: predictions under adversarial neuron noise" in md
    assert html_path.read_text().count("data:image/png;base64,") == 4

    # only one clean model so far: threshold-free metrics, no calibrated verdicts
    (tmp_path / RESULTS_NAME).write_text("".join(json.dumps(r) + "\n" for r in recs[:1] + recs[3:5]))
    md = write_report(tmp_path, n_boot=0)[0].read_text()
    assert "no threshold: calibration 'loo' needs at least 2 clean models" in md


def _has_tiny_spec() -> bool:
    try:
        from banscan.zoo import shipped_specs
    except ImportError:
        return False
    return "tiny" in shipped_specs()


@pytest.mark.skipif(not _has_tiny_spec(), reason="the zoo's shipped 'tiny' spec is not there yet")
def test_bench_on_the_shipped_tiny_zoo(tmp_path):
    """`banscan zoo build tiny`, then `banscan bench` twice through the real CLI: the second run adds nothing."""
    from banscan.cli import main

    zoo, out = tmp_path / "zoo", tmp_path / "res"
    assert main(["-q", "zoo", "build", "tiny", "--out", str(zoo)]) == 0
    # the smoke path: no options; BAN's budget scales down to the 60-image defender split (with a warning)
    assert main(["-q", "bench", "--zoo", str(zoo), "--methods", "ban", "--out", str(tmp_path / "plain"),
                 "--bootstrap", "20"]) == 0
    plain = [json.loads(line) for line in (tmp_path / "plain" / RESULTS_NAME).read_text().splitlines()]
    assert len(plain) == 4 and all(r["status"] == "ok" and r["params"]["n_opt"] == 30 for r in plain)
    from banscan.bench import BenchRecord

    assert all(BenchRecord.from_dict(r).to_dict() == r for r in plain)  # the record type round-trips its lines
    argv = ["-q", "bench", "--zoo", str(zoo), "--methods", "ban", "--out", str(out), "--method-params",
            json.dumps(TINY_BAN), "--bootstrap", "20"]
    assert main(argv) == 0
    first = (out / RESULTS_NAME).read_text()
    cards = json.loads((zoo / "manifest.json").read_text())["models"]
    assert len(first.splitlines()) == sum(c["status"] == "ok" for c in cards)
    assert main(argv) == 0
    assert (out / RESULTS_NAME).read_text() == first
    assert (out / "report.html").is_file()
    # --mitigate repairs the backdoored models and the report gains the mitigation section
    mit = argv + ["--mitigate", "ban", "--mitigate-params", json.dumps({"ban": {"epochs": 1, "batch_size": 16}}),
                  "--mitigate-verify", "ban"]
    assert main(mit) == 0
    recs = [json.loads(line) for line in (out / "mitigation.jsonl").read_text().splitlines()]
    backdoored = {c["id"] for c in cards if c["status"] == "ok" and c["attack"]}
    assert {r["model"] for r in recs} == backdoored and all(r["method"] == "ban" for r in recs)
    assert "ASR_after" in recs[0] and "itigation" in (out / "report.md").read_text()
    # the verification scan ran with the benchmark's BAN parameters, and says it is not independent of the repair
    ver = recs[0]["verify"]
    assert ver["params"]["mask_steps"] == TINY_BAN["ban"]["mask_steps"] and "not independent" in ver["note"]
    assert "scan after repair" in (out / "report.md").read_text()


def test_report_cost_ratio_is_per_model_against_the_first_method():
    from banscan.bench.report import _cost_ratio

    recs = [{"model": m, "method": meth, "timings": {"total": t}}
            for m, meth, t in [("a", "ban", 2.0), ("a", "nc", 4.0), ("b", "ban", 1.0), ("b", "nc", 3.0),
                               ("c", "nc", 9.0)]]  # c has no ban record: left out
    assert _cost_ratio(recs, "nc", "ban") == "2.0 / 2.5 / 3.0"
    assert _cost_ratio(recs, "ban", "nc") == "0.3 / 0.4 / 0.5"
