"""Zoo builder: the tiny spec builds, resumes without retraining, gates, and re-evaluates; spec validation."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from banscan._utils import BanscanError
from banscan.attacks import attack_from_card, list_attacks
from banscan.cli import main
from banscan.zoo import (attack_success_rate, build_zoo, defender_data, evaluate_zoo, load_manifest, load_spec,
                         load_zoo_model, shipped_specs, test_data)
from banscan.zoo.spec import _plan

CARD_FIELDS = {"id", "file", "arch", "arch_kwargs", "num_classes", "dataset", "attack", "attack_params", "target",
               "poison_rate", "seed", "BA", "ASR", "status", "failure", "train_time_s", "versions", "mean", "std"}


def small_spec(**over):
    spec = {"name": "t", "dataset": {"name": "synthetic", "n_train": 200, "n_test": 100, "num_classes": 4,
                                     "size": 16},
            "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
            "models": [{"arch": "resnet18", "arch_kwargs": {"base_width": 4}, "attack": "badnets", "seeds": [0]}]}
    spec.update(over)
    return spec


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "tiny"
    events = []
    m = build_zoo("tiny", out, on_model=lambda i, n, c, r: events.append((i, n, c["id"], r)))
    return out, m, events


def test_tiny_zoo_layout(tiny_zoo):
    out, m, events = tiny_zoo
    assert [e[3] for e in events] == [False] * len(events) and events[-1][0] == events[-1][1] == len(m["models"])
    assert m == load_manifest(out) and m["complete"]
    assert {"schema_version", "spec", "dataset", "defender_split", "models"} <= set(m)
    attacks = [c["attack"] for c in m["models"]]
    assert attacks.count(None) >= 2 and "badnets" in attacks
    for c in m["models"]:
        assert CARD_FIELDS <= set(c)
        assert json.loads((out / f"{c['id']}.json").read_text()) == c
        assert (out / c["file"]).is_file()
        assert c["status"] in ("ok", "failed") and 0 <= c["BA"] <= 1
        if c["attack"] is None:
            assert c["ASR"] is None and c["target"] is None
        else:
            assert 0 <= c["ASR"] <= 1 and c["target"] == c["attack_params"]["target"]
        if c["status"] == "ok":
            assert c["failure"] is None and c["BA"] >= c["gate"]["min_ba"]
    assert not list(out.glob("*.tmp"))
    # the clean models learn the task, and a backdoor is learned
    assert min(c["BA"] for c in m["models"]) > 0.7
    assert max(c["ASR"] or 0 for c in m["models"]) > 0.5
    assert all(c["status"] == "ok" for c in m["models"])  # the smoke test's backdoored models pass its own gate
    assert (out / "blend-resnet18-w4-s0.attack.safetensors").is_file()


def test_defender_split_is_held_out(tiny_zoo):
    out, m, _ = tiny_zoo
    sp = m["defender_split"]
    assert sp["fraction"] == 0.1 and sp["size"] == 60 and sp["seed"] == 0 and sp["n_train_used"] == 540
    assert m["dataset"]["mean"] == [0.5, 0.5, 0.5] and m["dataset"]["std"] == [0.25, 0.25, 0.25]
    dfd = defender_data(out)
    assert len(dfd) == 60 and len(torch.unique(dfd.y)) == 4
    from banscan.zoo.store import _datasets, _split

    full, _, _ = _datasets(m["dataset"])
    _, train = _split(full, 0.1, 0)
    seen = {bytes(r) for r in train.x.flatten(1).numpy()}
    assert not any(bytes(r) in seen for r in dfd.x.flatten(1).numpy())
    assert len(test_data(out)) == 300


def test_resume_never_retrains(tiny_zoo, tmp_path, monkeypatch):
    import banscan.train as tr

    src, m, _ = tiny_zoo
    out = tmp_path / "z"
    shutil.copytree(src, out)
    victim = m["models"][-1]["id"]
    mtimes = {c["id"]: os.stat(out / c["file"]).st_mtime_ns for c in m["models"]}
    (out / f"{victim}.json").unlink()  # interrupted before the card was written
    (out / f"{victim}.safetensors.tmp").write_bytes(b"half")  # and a half-written weights file
    before = load_zoo_model(out, m["models"][-1]).state_dict()
    real_save = tr._save_state

    def save_then_stop(path, state):  # the build is stopped mid-model, after its third epoch's checkpoint
        real_save(path, state)
        if state["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "_save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_zoo("tiny", out)
    monkeypatch.undo()
    assert (out / f"{victim}.train-state.pt").is_file() and not (out / f"{victim}.json").exists()
    events = []
    m2 = build_zoo("tiny", out, on_model=lambda i, n, c, r: events.append((c["id"], r)))
    assert [r for _, r in events] == [True] * (len(events) - 1) + [False]
    for c in m["models"][:-1]:
        assert os.stat(out / c["file"]).st_mtime_ns == mtimes[c["id"]]
    assert [c["id"] for c in m2["models"]] == [c["id"] for c in m["models"]]
    assert m2["models"][-1]["BA"] == m["models"][-1]["BA"]  # seeded: the retrained model is the same ...
    after = load_zoo_model(out, m2["models"][-1]).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ... to the bit, resumed from epoch 3
    assert not list(out.glob("*.train-state.pt"))


def test_eval_recomputes(tiny_zoo):
    out, m, _ = tiny_zoo
    rows = evaluate_zoo(out)
    assert [r["id"] for r in rows] == [c["id"] for c in m["models"]]
    for r in rows:
        assert r["BA"] == pytest.approx(r["card_BA"], abs=1e-4)
        if r["attack"]:
            assert r["ASR"] == pytest.approx(r["card_ASR"], abs=1e-4)
    card = next(c for c in m["models"] if c["attack"] == "blend")
    model = load_zoo_model(out, card)
    assert not model.training
    asr = attack_success_rate(model, test_data(out), attack_from_card(out, card))
    assert asr == pytest.approx(card["ASR"], abs=1e-4)
    assert load_zoo_model(out, card["id"]).state_dict().keys() == model.state_dict().keys()


def test_gate_records_failures(tmp_path):
    spec = small_spec(gate={"min_ba": 1.01, "min_asr": 0.0})
    m = build_zoo(spec, tmp_path / "g")
    (c,) = m["models"]
    assert c["status"] == "failed" and "BA" in c["failure"] and "1.01" in c["failure"]
    assert (tmp_path / "g" / c["file"]).is_file()  # failed models are kept, with their numbers
    events = []
    build_zoo(spec, tmp_path / "g", on_model=lambda i, n, c, r: events.append(r))
    assert events == [True]  # a failed model is finished too ...
    build_zoo(spec, tmp_path / "g", retry_failed=True, on_model=lambda i, n, c, r: events.append(r))
    assert events == [True, False]  # ... unless asked to retry


def test_shards_build_one_zoo(tmp_path):
    spec = small_spec(models=[{"arch": "resnet18", "arch_kwargs": {"base_width": 4}, "seeds": [0, 1, 2]}])
    out = tmp_path / "s"
    m0 = build_zoo(spec, out, shard=(0, 2))  # positions 0 and 2
    assert [c["id"] for c in m0["models"]] == ["clean-resnet18-w4-s0", "clean-resnet18-w4-s2"]
    assert not m0["complete"]
    m1 = build_zoo(spec, out, shard=(1, 2))  # position 1, and lists the other shard's models
    assert m1["complete"] and [c["id"] for c in m1["models"]] == [f"clean-resnet18-w4-s{i}" for i in range(3)]
    events = []
    m = build_zoo(spec, out, on_model=lambda i, n, c, r: events.append(r))
    assert events == [True] * 3 and m["complete"] and m["models"] == m1["models"]
    with pytest.raises(BanscanError, match="shard"):
        build_zoo(spec, out, shard=(2, 2))


def test_only_rebuilds_named_models(tmp_path):
    spec = small_spec(models=[{"arch": "resnet18", "arch_kwargs": {"base_width": 4}, "seeds": [0, 1, 2]}])
    out = tmp_path / "o"
    m = build_zoo(spec, out, only=["clean-resnet18-w4-s1"])
    assert [c["id"] for c in m["models"]] == ["clean-resnet18-w4-s1"] and not m["complete"]
    m = build_zoo(spec, out, only=["clean-resnet18-w4-s2"])  # the manifest keeps what is already on disk
    assert [c["id"] for c in m["models"]] == ["clean-resnet18-w4-s1", "clean-resnet18-w4-s2"]
    with pytest.raises(BanscanError, match="clean-resnet18-w4-s9 not in the spec"):
        build_zoo(spec, out, only=["clean-resnet18-w4-s9"])


def test_resume_refuses_changed_recipe(tmp_path):
    build_zoo(small_spec(), tmp_path / "r")
    with pytest.raises(BanscanError, match="other settings"):
        build_zoo(small_spec(train={"epochs": 2, "batch_size": 32, "lr": 0.05}), tmp_path / "r")


def test_cli_build_and_eval(tiny_zoo, tmp_path, capsys):
    src, m, _ = tiny_zoo
    out = tmp_path / "c"
    shutil.copytree(src, out)
    assert main(["-q", "zoo", "build", "tiny", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "already built" in text and f"[{len(m['models'])}/{len(m['models'])}]" in text
    assert main(["-q", "zoo", "eval", str(out), "--json", str(tmp_path / "e.json")]) == 0
    assert len(json.loads((tmp_path / "e.json").read_text())) == len(m["models"])
    assert main(["-q", "zoo", "build", "no-such-spec", "--out", str(out)]) == 2
    assert "no-such-spec" in capsys.readouterr().err
    assert main(["-q", "zoo", "eval", str(tmp_path)]) == 2


@pytest.mark.parametrize("bad, msg", [
    ({"colour": 1}, "unknown sections"),
    ({"dataset": {"name": "mnist"}}, "dataset"),
    ({"train": {"epoch": 3}}, "unknown \\[train\\] keys"),
    ({"gate": {"min_acc": 0.5}}, "unknown \\[gate\\] keys"),
    ({"models": []}, "at least one"),
    ({"models": [{"arch": "resnet9"}]}, "arch"),
    ({"models": [{"arch": "resnet18", "attack": "trojan"}]}, "attack"),
    ({"models": [{"arch": "resnet18", "seeds": 3}]}, "seeds"),
    ({"defender": {"fraction": 1.5}}, "defender fraction"),
])
def test_spec_validation(bad, msg):
    with pytest.raises(BanscanError, match=msg):
        load_spec(small_spec(**bad))


def test_duplicate_ids_and_bad_attack_params():
    g = {"arch": "resnet18", "attack": "badnets", "seeds": [0]}
    with pytest.raises(BanscanError, match="twice"):
        _plan(load_spec(small_spec(models=[g, g])))
    with pytest.raises(BanscanError, match=r"attack .badnets. does not take \[.size.\]"):
        _plan(load_spec(small_spec(models=[{**g, "attack_params": {"size": 3}}])))


def test_spec_files(tmp_path):
    assert {"tiny", "cifar10-cpu", "cifar10-paper"} <= set(shipped_specs())
    cpu = load_spec("cifar10-cpu")
    plan = _plan(cpu)
    assert cpu["dataset"]["name"] == "cifar10" and cpu["gate"]["min_ba"] >= 0.85
    assert sum(e["attack"] is None for e in plan) >= 8
    for a in list_attacks():
        assert sum(e["attack"] == a for e in plan) >= 2, a
    assert len({e["arch"] for e in plan}) >= 2
    paper = _plan(load_spec("cifar10-paper"))
    assert {"resnet18", "vgg16_bn", "densenet121"} <= {e["arch"] for e in paper}
    p = tmp_path / "s.toml"
    p.write_text('[dataset]\nname = "synthetic"\n[[models]]\narch = "resnet18"\n')
    assert load_spec(p)["models"][0]["arch"] == "resnet18"
    p.write_text("[dataset\n")
    with pytest.raises(BanscanError, match="invalid TOML"):
        load_spec(p)
    yaml = pytest.importorskip("yaml")
    y = tmp_path / "s.yaml"
    y.write_text(yaml.safe_dump(small_spec()))
    assert load_spec(y)["models"][0]["attack"] == "badnets"


def test_cifar10_npz_loader(tmp_path, monkeypatch):
    from banscan.zoo.store import _datasets

    d = tmp_path / "cifar10"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        np.savez(d / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 y=np.arange(n) % 10, classes=np.array([f"c{i}" for i in range(10)]))
    monkeypatch.setenv("BANSCAN_DATA_DIR", str(tmp_path))
    train, test, info = _datasets({"name": "cifar10"})
    assert train.x.shape == (40, 3, 32, 32) and len(test) == 20
    assert info["path"] == str(tmp_path.resolve()) and info["mean"] == [0.4914, 0.4822, 0.4465]
    monkeypatch.setenv("BANSCAN_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(BanscanError, match="BANSCAN_DATA_DIR"):
        _datasets({"name": "cifar10"})


def test_gtsrb_zoo_splits_its_one_file(tmp_path):
    """GTSRB ships only its test set: a seeded, stratified part of it is the zoo's test set, the rest trains, with
    the training part's own channel statistics; a zoo builds on it and its cards name the data."""
    from banscan.zoo.store import _datasets

    d = tmp_path / "gtsrb"
    d.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 16, 16, 3), dtype=np.uint8)
    x[..., 0] //= 2  # channels with different statistics
    y = np.repeat(np.arange(5), [80, 40, 40, 20, 20])  # imbalanced, as GTSRB is
    np.savez(d / "test.npz", x=x, y=rng.permutation(y), classes=np.array([f"sign{i}" for i in range(5)]))
    ds = {"name": "gtsrb", "path": str(tmp_path), "test_fraction": 0.25, "seed": 3}
    train, test, info = _datasets(ds)
    assert (len(train), len(test)) == (150, 50) and info["num_classes"] == 5 and info["name"] == "gtsrb"
    assert torch.bincount(test.y).tolist() == [20, 10, 10, 5, 5]  # each class keeps its share
    both = torch.cat([train.x, test.x]).flatten(1).numpy()
    assert len({r.tobytes() for r in both}) == 200  # disjoint, nothing lost
    px = train.x.double().div(255)
    assert train.mean == test.mean == pytest.approx(px.mean((0, 2, 3)).tolist())
    assert train.mean[0] < train.mean[1] and train.std[0] < train.std[1]
    again, _, _ = _datasets({**ds, "path": str(tmp_path)})
    assert torch.equal(again.x, train.x)
    assert not torch.equal(_datasets({**ds, "seed": 4})[0].x, train.x)
    spec = small_spec(dataset=ds, defender={"fraction": 0.2})
    m = build_zoo(spec, tmp_path / "z")
    assert m["dataset"]["name"] == "gtsrb" and m["models"][0]["num_classes"] == 5
    assert m["dataset"]["classes"] == [f"sign{i}" for i in range(5)]
    with pytest.raises(BanscanError, match="test_fraction"):
        load_spec(small_spec(dataset={**ds, "test_fraction": 1.5}))
