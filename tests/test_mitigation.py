"""Mitigation: BAN's noise fine-tuning removes a tiny BadNets backdoor; every method honours the contract
(input untouched, same state-dict keys, strict reload); bad input is a BanscanError. CPU, generated data."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import TINY_ARCH, TINY_CLASSES, TINY_SIZE, badnets_patch

from banscan._utils import BanscanError
from banscan.checkpoints import load_weights, save_weights
from banscan.cli import main
from banscan.data import ImageData
from banscan.detectors import get_detector
from banscan.bench import MitigationRecord, mitigate_zoo
from banscan.mitigation import (MitigationResult, evaluate_mitigation, get_mitigation, list_mitigations,
                                mitigate_file, verify_repair)
from banscan.models import create_model
from banscan.noise import bn_batch_stats
from banscan.synthetic import make_synthetic

# Few epochs and a higher learning rate than BAN's defaults: seconds on a CPU, same procedure. 4 epochs proved
# fragile (BA after 0.91-0.96 over seeds 0-1); 8 epochs at lr 0.02 kept BA after >= 0.995, ASR after <= 0.003 on
# seeds 0-5.
FAST = {
    "ban": {"epochs": 8, "lr": 0.02, "batch_size": 64},
    "ban_scan": {"epochs": 8, "lr": 0.02, "batch_size": 64},
    "ft": {"epochs": 1, "batch_size": 64},
    "anp": {"n_iters": 8, "batch_size": 64},
    "btidbf_u": {"n_rounds": 1, "n_unlearn_epochs": 1, "n_pretrain_epochs": 1, "n_mask_epochs": 1,
                 "n_gen_epochs": 1, "unet_filters": 4, "unet_blocks": 2, "batch_size": 64},
}

# BAN at the tiny budget of test_detectors_common.
BAN_QUICK = {"n_opt": 200, "n_eval": 300, "mask_steps": 100, "batch_size": 50}


class PatchAttack:
    """The tiny zoo's trigger in the attack interface (``apply``, ``target_labels``)."""

    def __init__(self, target: int) -> None:
        self.target = target

    def apply(self, x01: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return badnets_patch(x01)

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, self.target)


def _fresh() -> torch.nn.Module:
    arch, kw = TINY_ARCH
    return create_model(arch, TINY_CLASSES, **kw)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def test_set() -> ImageData:
    return make_synthetic(400, TINY_CLASSES, TINY_SIZE, seed=7)


@pytest.fixture(scope="module")
def verify_params(tiny_zoo) -> dict:
    """BAN_QUICK with a threshold half-way between the tiny twins' scores, so that the verification checks below
    test verify_repair's bookkeeping whatever the tiny models' exact scores on this CPU (the detector's own
    efficacy is checked in test_detectors_common)."""
    bd, cl = (get_detector("ban", **BAN_QUICK).detect(m, tiny_zoo.data).score for m in (tiny_zoo.backdoored,
                                                                                      tiny_zoo.clean))
    assert bd > cl
    return {**BAN_QUICK, "threshold": (bd + cl) / 2}


@pytest.fixture(scope="module")
def ban_run(tiny_zoo):
    bd = tiny_zoo.backdoored
    before, mode = _state(bd), bd.training
    return before, mode, get_mitigation("ban", seed=0, **FAST["ban"]).repair(bd, tiny_zoo.data)


def test_ban_removes_the_backdoor_and_keeps_accuracy(tiny_zoo, test_set, ban_run):
    bd = tiny_zoo.backdoored
    before, mode, res = ban_run
    assert isinstance(res, MitigationResult) and res.method == "ban"
    ev = evaluate_mitigation(bd, res.model, test_set, PatchAttack(tiny_zoo.target))
    assert ev["ASR_before"] > 0.9
    assert ev["ASR_after"] < 0.2, ev
    assert ev["BA_after"] >= ev["BA_before"] - 0.05, ev
    assert ev["RA_after"] > 0.5, ev
    # the caller's model is untouched
    assert bd.training == mode
    assert all(torch.equal(before[k], v) for k, v in bd.state_dict().items())
    json.dumps(res.to_dict())
    assert res.config["eps"] == 0.3 and res.stats["epochs_run"] == FAST["ban"]["epochs"]


class _Relabel(torch.nn.Module):
    """The same network with its output classes rolled by one: the backdoor now points at target + 1."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).roll(1, dims=1)


def test_asr_any_catches_a_backdoor_moved_to_another_label(tiny_zoo, test_set):
    bd = tiny_zoo.backdoored
    ev = evaluate_mitigation(bd, _Relabel(bd), test_set, PatchAttack(tiny_zoo.target))
    assert ev["ASR_any_class_before"] == tiny_zoo.target and ev["ASR_any_before"] >= ev["ASR_before"] > 0.9
    assert ev["ASR_after"] < 0.1, ev  # the ASR on the original target says "removed" ...
    assert ev["ASR_any_class_after"] == (tiny_zoo.target + 1) % TINY_CLASSES and ev["ASR_any_after"] > 0.9, ev


def test_noise_aimed_at_the_scans_target_activates_the_backdoor_and_removes_it(tiny_zoo, test_set):
    """``target=t``: the noise climbs log p_t; aimed at the backdoor's class, it sends more images there than the
    paper's untargeted noise, and the repair still removes the backdoor. The shares are read as the repair's loss
    sees them, with BatchNorm on batch statistics (``bn_mode="clean"``); with the running statistics the noise
    was not fitted for, the comparison is a coin toss (it failed on an AVX2 CPU, passed on an AVX512 one)."""
    bd, t = tiny_zoo.backdoored, tiny_zoo.target
    ban = get_mitigation("ban", **FAST["ban"], target=t)
    net, dev, _ = ban.prepare(bd, tiny_zoo.data)
    run = ban._setup(net, tiny_zoo.data, torch.Generator(), dev)
    noise = run.noise
    x, y = tiny_zoo.data.x[:256].float().div(255), tiny_zoo.data.y[:256]
    share = {}
    for aim in (None, t):
        ban._loss(net, run._replace(target=aim), x, y, torch.Generator().manual_seed(0), dev)  # fits the noise
        with torch.no_grad(), noise.enabled(True), bn_batch_stats(net):
            share[aim] = float((net(x).argmax(1) == t).float().mean())
    assert share[t] > share[None] + 0.1, share
    # ban_scan: BAN's scan names the class, then the repair aims at it
    res = get_mitigation("ban_scan", **FAST["ban_scan"]).repair(bd, tiny_zoo.data)
    assert res.config["target"] == "scan" and res.stats["target"] == res.stats["scan"]["target_noise"] == t
    assert res.timings["setup"] >= res.stats["scan"]["seconds"] > 0
    ev = evaluate_mitigation(bd, res.model, test_set, PatchAttack(t))
    assert ev["ASR_after"] < 0.2 and ev["BA_after"] >= ev["BA_before"] - 0.05, ev


@pytest.mark.parametrize("name", list_mitigations())
def test_every_method_runs_and_keeps_the_contract(name, tiny_zoo):
    bd = tiny_zoo.backdoored
    before = _state(bd)
    res = get_mitigation(name, seed=1, **{**FAST[name], "epochs": 1} if name.startswith("ban") else FAST[name]).repair(
        bd, tiny_zoo.data)
    assert res.method == name
    assert list(res.model.state_dict()) == list(bd.state_dict())
    assert not res.model.training
    assert all(torch.equal(before[k], v) for k, v in bd.state_dict().items())
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values() if v.is_floating_point())
    fresh = _fresh()
    fresh.load_state_dict(res.model.state_dict(), strict=True)
    d = res.to_dict()
    assert d["schema_version"] == 1 and json.loads(json.dumps(d))["method"] == name
    assert "total" in res.timings


def test_same_seed_same_model(tiny_zoo):
    a = get_mitigation("ban", seed=3, epochs=1, batch_size=64).repair(tiny_zoo.backdoored, tiny_zoo.data)
    b = get_mitigation("ban", seed=3, epochs=1, batch_size=64).repair(tiny_zoo.backdoored, tiny_zoo.data)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_anp_accuracy_rule_chooses_a_threshold(tiny_zoo):
    res = get_mitigation("anp", prune_by="accuracy", n_iters=8, batch_size=64).repair(
        tiny_zoo.backdoored, tiny_zoo.data)
    assert res.stats["threshold_used"] in [0.0] + [round(0.05 * i, 2) for i in range(1, 20)]
    assert len(res.stats["holdout_curve"]) == 19
    assert 0 <= res.stats["pruned_fraction"] <= 1


def test_verify_repair_flags_a_repair_that_kept_the_backdoor(tiny_zoo, verify_params):
    bd, data = tiny_zoo.backdoored, tiny_zoo.data
    kept = copy.deepcopy(bd)  # a "repair" that changed nothing keeps the backdoor
    ver = verify_repair(bd, kept, data, "ban", verify_params, method="ft")
    assert ver["before"]["verdict"] == ver["after"]["verdict"] == "backdoored", ver
    assert ver["before"]["target"] == ver["after"]["target"] == tiny_zoo.target
    assert ver["still_flagged"] and ver["note"] is None  # flagged before: informative; BAN is not FT's family
    again = verify_repair(bd, kept, data, "ban", verify_params, method="ft", before=ver["before"])
    assert again["before"] == ver["before"]  # reused as given
    assert {**again["after"], "seconds": 0} == {**ver["after"], "seconds": 0}  # same seed, same scan
    # a clean model is not flagged before, so there is nothing left to flag after
    clean = verify_repair(tiny_zoo.clean, tiny_zoo.clean, data, "ban", verify_params, method="ft")
    assert clean["before"]["verdict"] == "clean" and not clean["still_flagged"]
    assert clean["note"].startswith("uninformative")
    few, _ = data.split(400, seed=0)
    own = verify_repair(bd, bd, few, "ban", {"n_eval": 200, "mask_steps": 5}, method="ban_scan")
    assert own["params"]["n_opt"] == 200  # 400 images cannot hold BAN's default n_opt=500: halved
    assert "not independent" in own["note"]
    with pytest.raises(BanscanError, match="unknown detector"):
        verify_repair(bd, kept, data, "nope")


def _write_npz(path, data: ImageData) -> None:
    np.savez(path, x=data.x.permute(0, 2, 3, 1).numpy(), y=data.y.numpy())


def test_cli_writes_new_file_and_card_and_leaves_input_alone(tiny_zoo, tmp_path, capsys):
    src = save_weights(tiny_zoo.backdoored, tmp_path / "in.safetensors")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    raw = src.read_bytes()
    npz = tmp_path / "clean.npz"
    _write_npz(npz, tiny_zoo.data)
    out = tmp_path / "out" / "fixed.safetensors"
    arch, kw = TINY_ARCH
    argv = ["-q", "mitigate", "--arch", arch, "--arch-kwargs", ",".join(f"{k}={v}" for k, v in kw.items()),
            "--weights", str(src), "--data", str(npz), "--out", str(out), "--num-classes", str(TINY_CLASSES),
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--epochs", "1", "--params", "batch_size=64",
            "--verify", "nc", "--verify-params", "n_opt=100,n_eval=200,n_epochs=1,batch_size=50"]
    assert main(argv) == 0
    assert src.read_bytes() == raw
    fresh = load_weights(_fresh(), out)  # strict: same keys and shapes, finite
    assert set(fresh.state_dict()) == set(tiny_zoo.backdoored.state_dict())
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["source"]["sha256"] == digest and card["source"]["path"] == str(src.resolve())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["procedure"]["method"] == "ban" and card["config"]["epochs"] == 1
    assert card["data"]["n_heldout"] == 60 and card["data"]["n_repair"] == 540
    assert 0 <= card["evaluation"]["BA_before"] <= 1 and 0 <= card["evaluation"]["BA_after"] <= 1
    assert {"banscan", "torch"} <= set(card["versions"]) and "total" in card["timings"]
    ver = card["verification"]
    assert ver["detector"] == "nc" and ver["params"]["n_epochs"] == 1
    assert (ver["note"] is None) == (ver["before"]["verdict"] == "backdoored")  # a clean "before" says nothing
    assert {"verdict", "score", "threshold", "target", "seconds"} <= set(ver["before"]) == set(ver["after"])
    assert "nc scan: before" in capsys.readouterr().out


def test_bad_input_is_a_banscan_error(tiny_zoo, tmp_path, capsys):
    bd, data = tiny_zoo.backdoored, tiny_zoo.data
    with pytest.raises(BanscanError, match="unknown mitigation"):
        get_mitigation("nope")
    with pytest.raises(BanscanError, match="does not take"):
        get_mitigation("ban", epoch=3)
    with pytest.raises(BanscanError, match="eps"):
        get_mitigation("ban", eps=-1).repair(bd, data)
    with pytest.raises(BanscanError, match="bn_mode"):
        get_mitigation("ban", bn_mode="weird").repair(bd, data)
    with pytest.raises(BanscanError, match=f"target {TINY_CLASSES} is not a class"):
        get_mitigation("ban", target=TINY_CLASSES).repair(bd, data)
    with pytest.raises(BanscanError, match="target must be an integer"):
        get_mitigation("ban", target="0").repair(bd, data)
    with pytest.raises(BanscanError, match="prune_by"):
        get_mitigation("anp", prune_by="asr").repair(bd, data)
    with pytest.raises(BanscanError, match="ImageData"):
        get_mitigation("ft").repair(bd, (data.x, data.y))
    with pytest.raises(BanscanError, match="nn.Module"):
        get_mitigation("ft").repair("model.pt", data)
    wrong_k = ImageData(data.x, data.y + TINY_CLASSES, data.mean, data.std)
    with pytest.raises(BanscanError, match="outputs"):
        get_mitigation("ft").repair(bd, wrong_k)
    with pytest.raises(BanscanError, match="apply"):
        evaluate_mitigation(bd, bd, data, attack=object())
    src = save_weights(bd, tmp_path / "in.safetensors")
    arch, kw = TINY_ARCH
    with pytest.raises(BanscanError, match="safetensors"):
        mitigate_file(arch, src, data, tmp_path / "out.pt", arch_kwargs=kw, num_classes=TINY_CLASSES)
    with pytest.raises(BanscanError, match="input"):
        mitigate_file(arch, src, data, src, arch_kwargs=kw, num_classes=TINY_CLASSES)
    with pytest.raises(BanscanError, match="unknown detector"):
        mitigate_file(arch, src, data, tmp_path / "o.safetensors", arch_kwargs=kw, num_classes=TINY_CLASSES,
                      verify="nope")
    assert not (tmp_path / "o.safetensors").exists()  # refused before the repair
    with pytest.raises(BanscanError, match="not a zoo"):
        mitigate_zoo(tmp_path)
    with pytest.raises(BanscanError, match="unknown mitigation"):
        mitigate_zoo(tmp_path, methods=["nope"])
    rc = main(["mitigate", "--arch", arch, "--weights", str(tmp_path / "missing.safetensors"), "--data",
               str(tmp_path), "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2 and "banscan: error:" in capsys.readouterr().err


def test_mitigate_zoo_appends_records_and_resumes(tiny_zoo, test_set, tmp_path, monkeypatch, verify_params):
    import banscan.attacks
    import banscan.zoo
    from dataclasses import fields

    zoo = tmp_path / "zoo"
    arch, kw = TINY_ARCH
    cards = []
    for mid, model, attack in [("bd0", tiny_zoo.backdoored, "badnets"), ("clean0", tiny_zoo.clean, None)]:
        save_weights(model, zoo / f"{mid}.safetensors")
        cards.append({"id": mid, "file": f"{mid}.safetensors", "arch": arch, "arch_kwargs": kw,
                      "num_classes": TINY_CLASSES, "attack": attack, "target": tiny_zoo.target if attack else None,
                      "status": "ok"})
    (zoo / "manifest.json").write_text(json.dumps({"schema_version": 1, "models": cards}))
    monkeypatch.setattr(banscan.zoo, "defender_data", lambda d, data_dir=None: tiny_zoo.data)
    monkeypatch.setattr(banscan.zoo, "test_data", lambda d, data_dir=None: test_set)
    monkeypatch.setattr(banscan.attacks, "attack_from_card", lambda d, c, device=None: PatchAttack(c["target"]))

    res = tmp_path / "RESULTS"
    recs = mitigate_zoo(zoo, methods=["ft"], out=res, params={"ft": FAST["ft"]})
    assert [r["model"] for r in recs] == ["bd0"]  # clean models are skipped
    lines = (res / "mitigation.jsonl").read_text().splitlines()
    assert len(lines) == 1 and set(json.loads(lines[0])) == {f.name for f in fields(MitigationRecord)} | {
        "schema_version"}
    assert MitigationRecord.from_dict(json.loads(lines[0])).model == "bd0"
    assert json.loads(lines[0])["ASR_before"] > 0.9 and json.loads(lines[0])["attack"] == "badnets"
    assert mitigate_zoo(zoo, methods=["ft"], out=res, params={"ft": FAST["ft"]}) == []  # resumed: nothing to do
    with open(res / "mitigation.jsonl", "a") as fh:
        fh.write('{"model": "bd0", "meth')  # an interrupted write
    recs = mitigate_zoo(zoo, methods=["ft", "anp"], out=res, params={"ft": FAST["ft"], "anp": FAST["anp"]})
    assert [r["method"] for r in recs] == ["anp"]
    assert [json.loads(x)["method"] for x in (res / "mitigation.jsonl").read_text().splitlines()] == ["ft", "anp"]
    assert all(r["verify"] is None for r in recs)
    (zoo / "bd0.safetensors").write_bytes((zoo / "clean0.safetensors").read_bytes())  # a rebuilt/replaced model
    with pytest.raises(BanscanError, match="bd0 made from other weights"):
        mitigate_zoo(zoo, methods=["ft", "anp"], out=res, params={"ft": FAST["ft"], "anp": FAST["anp"]})
    save_weights(tiny_zoo.backdoored, zoo / "bd0.safetensors")
    recs = mitigate_zoo(zoo, methods=["ft", "ban"], out=tmp_path / "VERIFIED", verify="ban",
                        verify_params=verify_params, params={"ft": FAST["ft"], "ban": {**FAST["ban"], "epochs": 1}})
    first, second = (r["verify"] for r in recs)
    assert first["before"] == second["before"] and first["detector"] == "ban"  # one scan of the unrepaired model
    assert first["before"]["target"] == tiny_zoo.target and first["before"]["verdict"] == "backdoored"
    assert first["still_flagged"] == (first["after"]["verdict"] == "backdoored"
                                      and first["after"]["target"] == tiny_zoo.target)
    assert "not independent" in second["note"]  # BAN's repair judged by BAN's own scan
