"""Core: models, checkpoints, data, BAN invariants, CLI errors. CPU only, generated data, no downloads."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from banscan import BAN, BanscanError, ImageData, create_model, list_models, load_data, load_weights, save_weights
from banscan.cli import main
from banscan.models import SplitModel, norm_layers
from banscan.synthetic import make_synthetic

FAST = dict(n_opt=48, n_eval=96, n_steps=3, mask_steps=5, batch_size=32, statistic="negmask")
# the "fused" statistic (class-wise noise + MM-BD margins) at a tiny budget
FAST_FUSED = dict(n_opt=48, n_eval=96, class_steps=2, n_class_eval=48, mm_images=2, mm_steps=3, batch_size=32,
                  statistic="fused")
# the default statistic (noise-only share, 5 restarts) at a tiny budget
FAST_DEFAULT = dict(n_opt=48, n_eval=100, n_steps=3, mask_steps=5, batch_size=32)


@pytest.fixture(scope="module")
def data() -> ImageData:
    return make_synthetic(200, 4, 16, seed=3)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model("resnet18", 4, base_width=4)
    # non-trivial BN statistics so that mode changes would show
    with torch.no_grad():
        m.train()
        m(torch.randn(32, 3, 16, 16))
    return m.eval()


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("arch", list_models())
def test_model_split_matches_forward(arch: str) -> None:
    kw = {"resnet18": {"base_width": 4}, "resnet34": {"base_width": 4}, "preact_resnet18": {"base_width": 4},
          "vgg16_bn": {"width": 4}, "mobilenetv2": {"width_mult": 0.25}, "densenet121": {"growth_rate": 4}}[arch]
    m = create_model(arch, 7, **kw).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        z = m.forward_features(x)
        assert out.shape == (2, 7)
        assert torch.allclose(m.forward_head(z), out, atol=1e-5)
        assert m.forward_head(z, pre_logits=True).shape == (2, m.num_features)
    assert norm_layers(m)


def test_resnet_keys_match_paper_layout() -> None:
    keys = create_model("resnet18", 10).state_dict().keys()
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight",
              "layer2.0.shortcut.1.weight", "linear.weight"):
        assert k in keys
    assert create_model("resnet18", 10).linear.in_features == 512


def test_unknown_arch_and_kwargs() -> None:
    with pytest.raises(BanscanError, match="unknown architecture"):
        create_model("resnet999")
    with pytest.raises(BanscanError, match="does not take"):
        create_model("resnet18", 10, widthh=3)
    with pytest.raises(BanscanError, match="num_classes"):
        create_model("resnet18", 1)


class PlainNet(nn.Module):
    """A user model without forward_features/forward_head."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


def plain_factory(num_classes: int = 4) -> nn.Module:
    return PlainNet(num_classes)


def test_fx_split_for_user_model() -> None:
    m = PlainNet().eval()
    s = SplitModel(m, (0.0,) * 3, (1.0,) * 3)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        z = s.features(x)
        assert z.shape == (3, 8, 16, 16)
        assert torch.allclose(s.head(z), m(x), atol=1e-6)
    with pytest.raises(BanscanError, match="not found"):
        SplitModel(m, (0.0,) * 3, (1.0,) * 3, split_layer="nope").features(x)


def test_user_factory_via_import_path() -> None:
    m = create_model("tests.test_core:plain_factory", 5)
    assert m.fc.out_features == 5


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_roundtrip_and_module_prefix(tmp_path, model) -> None:
    p = save_weights(model, tmp_path / "m.safetensors")
    m2 = load_weights(create_model("resnet18", 4, base_width=4), p)
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "m.pth")
    m3 = load_weights(create_model("resnet18", 4, base_width=4), tmp_path / "m.pth")
    assert torch.equal(m3.linear.weight, model.linear.weight)
    torch.save({"netC": model.state_dict(), "epoch": 3}, tmp_path / "netc.pt")
    load_weights(create_model("resnet18", 4, base_width=4), tmp_path / "netc.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/banscan_pwned",))


def test_bad_checkpoints(tmp_path, model) -> None:
    fresh = lambda: create_model("resnet18", 4, base_width=4)  # noqa: E731
    with pytest.raises(BanscanError, match="not found"):
        load_weights(fresh(), tmp_path / "missing.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(BanscanError, match="safetensors"):
        load_weights(fresh(), tmp_path / "corrupt.safetensors")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(BanscanError, match="not a readable"):
        load_weights(fresh(), tmp_path / "corrupt.pt")
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Evil()}, fh)
    if os.path.exists("/tmp/banscan_pwned"):
        os.remove("/tmp/banscan_pwned")
    with pytest.raises(BanscanError, match="refused"):
        load_weights(fresh(), evil)
    assert not os.path.exists("/tmp/banscan_pwned")
    save_weights(model, tmp_path / "r18.safetensors")
    with pytest.raises(BanscanError, match="missing keys|unexpected keys"):
        load_weights(create_model("vgg16_bn", 4, width=4), tmp_path / "r18.safetensors")
    with pytest.raises(BanscanError, match="number of classes"):
        load_weights(create_model("resnet18", 10, base_width=4), tmp_path / "r18.safetensors")
    with pytest.raises(BanscanError, match="conv1.weight has 4 output channels in the file and 8 in the model"):
        load_weights(create_model("resnet18", 4, base_width=8), tmp_path / "r18.safetensors")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_weights(sd, tmp_path / "nan.safetensors")
    with pytest.raises(BanscanError, match="non-finite"):
        load_weights(fresh(), tmp_path / "nan.safetensors")


# ------------------------------------------------------------------ data
def test_data_formats(tmp_path) -> None:
    x = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b"]))
    d = load_data(tmp_path / "d.npz")
    assert d.x.shape == (20, 3, 8, 8) and d.classes == ("a", "b")
    assert torch.equal(d.x.permute(0, 2, 3, 1), torch.from_numpy(x))

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    with open(cifar / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, fh)
    assert load_data(cifar).x.shape == (4, 3, 32, 32)

    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(x[i]).save(tmp_path / "folder" / c / f"{i}.png")
    d = load_data(tmp_path / "folder")
    assert len(d) == 6 and d.classes == ("cat", "dog") and d.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_bad_data(tmp_path) -> None:
    with pytest.raises(BanscanError, match="not found"):
        load_data(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BanscanError, match="unsupported data file"):
        load_data(tmp_path / "notes.txt")
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4, int))
    with pytest.raises(BanscanError, match="uint8"):
        load_data(tmp_path / "float.npz")
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(b"not an image")
    with pytest.raises(BanscanError, match="not a readable image"):
        load_data(tmp_path / "imgs")
    from PIL import Image

    (tmp_path / "mixed" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "a" / "0.png")
    Image.new("RGB", (9, 9)).save(tmp_path / "mixed" / "a" / "1.png")
    with pytest.raises(BanscanError, match="same size"):
        load_data(tmp_path / "mixed")
    cifar = tmp_path / "cifar-evil"
    cifar.mkdir()
    with open(cifar / "test_batch", "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(BanscanError, match="refusing to unpickle"):
        load_data(cifar)
    d = make_synthetic(20, 2, 8)
    with pytest.raises(BanscanError, match="expects 16x16"):
        d.check(input_size=16)
    with pytest.raises(BanscanError, match="empty"):
        d.subset([]).check()
    with pytest.raises(BanscanError, match="1 class"):
        d.subset(torch.nonzero(d.y == 0).flatten()).check()


def test_split_is_disjoint_stratified_seeded() -> None:
    d = make_synthetic(400, 4, 8)
    a, b = d.split(100, 200, seed=5)
    a2, _ = d.split(100, 200, seed=5)
    assert torch.equal(a.x, a2.x)
    assert len(a) == 100 and len(b) == 200
    assert torch.bincount(a.y).tolist() == [25] * 4
    flat = lambda t: {bytes(v.numpy()) for v in t.x.reshape(len(t), -1)}  # noqa: E731
    assert not flat(a) & flat(b)


# ------------------------------------------------------------------ BAN invariants and errors
def test_ban_leaves_model_untouched_and_is_deterministic(model, data) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    r1 = BAN(seed=1, **FAST).detect(model, data)
    assert model.training
    model.eval()
    r2 = BAN(seed=1, **FAST).detect(model, data)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not hasattr(m, "parametrizations")
    assert r1.score == r2.score and r1.stats == r2.stats and r1.target == r2.target
    d = r1.to_dict()
    json.dumps(d)
    assert type(r1).from_dict(d).to_dict() == d
    assert set(r1.timings) >= {"mask", "noise", "decision", "total"}
    assert sum(r1.stats["hist_noise_negmask"]) == r1.stats["n_eval"] == 96
    assert r1.artifacts["mask"].shape == (32, 2, 2)


@pytest.mark.parametrize("net,params", [("resnet", FAST_DEFAULT), ("groupnorm", FAST_DEFAULT),
                                        ("resnet", FAST_FUSED), ("groupnorm", FAST_FUSED)])
def test_ban_statistics_leave_model_untouched_and_are_deterministic(model, data, net, params, caplog) -> None:
    m = model if net == "resnet" else PlainNet(4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    r1 = BAN(seed=1, **params).detect(m, data)
    assert m.training
    r2 = BAN(seed=1, **params).detect(m.eval(), data)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert r1.score == r2.score and r1.stats == r2.stats and r1.target == r2.target
    if params is FAST_FUSED:
        assert set(r1.timings) >= {"classwise", "margins", "total"}
    else:  # the default: the noise-only share pooled over 5 restarts, with its built-in threshold
        assert r1.config["statistic"] == "noise" and r1.config["restarts"] == 5
        assert len(r1.stats["restart_targets"]) == 5 and r1.score == r1.stats["share_noise"]
        assert r1.threshold == BAN.noise_threshold and "cifar10-dev" in r1.threshold_source
        assert "fitted on 10-class models" in caplog.text  # these models have 4 classes
        assert "fitted for the default schedule; with n_steps=3" in caplog.text  # and a shortened schedule
    assert type(r1).from_dict(json.loads(json.dumps(r1.to_dict()))) == r1


@pytest.mark.parametrize("mode", ["official", "frozen"])
def test_ban_bn_modes_run(model, data, mode) -> None:
    r = BAN(bn_mode=mode, **FAST).detect(model, data)
    assert 0 < r.score <= 1 and r.config["bn_mode"] == mode


def test_ban_bad_inputs(model, data) -> None:
    with pytest.raises(BanscanError, match="no normalisation layer"):
        BAN(**FAST).detect(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                         nn.Linear(4, 4)), data)
    with pytest.raises(BanscanError, match="only 4 outputs|labels go up"):
        BAN(**FAST).detect(model, make_synthetic(200, 6, 16))
    with pytest.raises(BanscanError, match="statistic"):
        BAN(**{**FAST, "statistic": "median"}).detect(model, data)
    with pytest.raises(BanscanError, match="bn_mode"):
        BAN(bn_mode="weird", **FAST).detect(model, data)
    with pytest.raises(BanscanError, match="more than n_opt"):
        BAN(**{**FAST, "n_opt": 500}).detect(model, data)
    with pytest.raises(BanscanError, match="1 class"):
        BAN(**FAST).detect(model, data.subset(torch.nonzero(data.y == 2).flatten()))
    with pytest.raises(BanscanError, match="failed on images"):
        BAN(**FAST).detect(create_model("vgg16_bn", 4, width=4), ImageData(data.x[:, :1], data.y,
                                                                           mean=(0.5,), std=(0.25,)))
    with pytest.raises(BanscanError, match="ImageData"):
        BAN(**FAST).detect(model, data.x)


def test_ban_noise_statistic_reports_the_noise_only_share(model, data) -> None:
    r = BAN(**{**FAST, "statistic": "noise"}).detect(model, data)
    assert r.score == r.stats["share_noise"] and r.target == r.stats["target_noise"]


def test_ban_class_prior_scores_the_largest_z(model, data, tmp_path) -> None:
    import json

    k = int(data.y.max()) + 1
    prior = {"name": "mine", "mean": [0.2] * k, "sd": [0.05] * k, "sd_floor": 0.0, "threshold": 1.5,
             "threshold_source": "my clean models"}
    (tmp_path / "p.json").write_text(json.dumps(prior))
    params = {**FAST, "statistic": "noise"}
    plain = BAN(**params).detect(model, data)
    r = BAN(**params, class_prior=str(tmp_path / "p.json")).detect(model, data)
    z = [(h / FAST["n_eval"] - 0.2) / 0.05 for h in r.stats["hist_noise"]]
    assert r.score == pytest.approx(max(z)) and r.target == z.index(max(z)) == plain.target
    assert (r.threshold, r.threshold_source) == (1.5, "my clean models") and r.stats["class_prior"]["name"] == "mine"
    assert plain.threshold == BAN.noise_threshold and "class_prior" not in plain.stats
    (tmp_path / "bad.json").write_text(json.dumps({**prior, "sd": [0.05]}))
    with pytest.raises(BanscanError, match="one value per class"):
        BAN(**params, class_prior=str(tmp_path / "bad.json")).detect(model, data)
    (tmp_path / "k.json").write_text(json.dumps({**prior, "mean": [0.1] * (k + 1), "sd": [0.1] * (k + 1)}))
    with pytest.raises(BanscanError, match=f"{k + 1} classes, the model {k}"):
        BAN(**params, class_prior=str(tmp_path / "k.json")).detect(model, data)
    with pytest.raises(BanscanError, match="neither a JSON file nor a shipped prior"):
        BAN(**params, class_prior="imagenet").detect(model, data)


def test_ban_auto_prior_needs_cifar10_classes_and_its_schedule(caplog) -> None:
    from banscan.detectors.ban import load_class_prior

    cifar = tuple(load_class_prior("cifar10")["classes"])
    assert len(cifar) == 10 and cifar[3] == "cat"
    assert BAN()._prior(cifar, 10)["name"] == "cifar10"
    assert BAN()._prior(tuple(c.capitalize() for c in cifar), 10)["name"] == "cifar10"  # names match in any case
    assert BAN()._prior(tuple("abcdefghij"), 10) is None and "names no classes" not in caplog.text
    assert BAN()._prior(None, 10) is None and "pass class_prior=cifar10" in caplog.text
    caplog.clear()
    assert BAN()._prior(None, 7) is None and "names no classes" not in caplog.text  # no 7-class prior to point to
    assert BAN(class_prior=None)._prior(cifar, 10) is None and BAN(statistic="negmask")._prior(cifar, 10) is None
    assert BAN(n_steps=30)._prior(cifar, 10) is None and "not used here" in caplog.text


def test_ban_restarts_pool_disjoint_slices(model, data) -> None:
    r = BAN(**{**FAST, "statistic": "noise"}, restarts=3).detect(model, data)
    assert len(r.stats["restart_targets"]) == 3 and r.stats["n_eval"] == FAST["n_eval"]
    assert sum(r.stats["hist_noise"]) == FAST["n_eval"] and r.score == max(r.stats["hist_noise"]) / FAST["n_eval"]
    assert r.stats["restart_agreement"] == r.stats["restart_targets"].count(r.target) / 3
    assert BAN(**{**FAST, "statistic": "noise"}, restarts=3).detect(model, data).score == r.score
    with pytest.raises(BanscanError, match="restarts"):
        BAN(restarts=0, **FAST).detect(model, data)


def test_ban_restarts_agree_on_the_tiny_backdoor(tiny_zoo) -> None:
    r = BAN(statistic="noise", restarts=3, seed=0, n_opt=200, n_eval=300).detect(tiny_zoo.backdoored, tiny_zoo.data)
    assert r.target == tiny_zoo.target and r.stats["restart_agreement"] >= 2 / 3, r.stats["restart_targets"]


def test_ban_works_on_groupnorm_user_model(data) -> None:
    r = BAN(**FAST).detect(PlainNet(4), data)
    assert r.stats["n_noise_params"] == 16


# ------------------------------------------------------------------ training and precision on the CPU
def test_channels_last_avoids_the_cpu_patterns_that_crash_torch() -> None:
    """Training a ResNet with 4-channel strided shortcuts in channels-last corrupted the heap (torch 2.13, AVX2)."""
    from banscan.train import TrainConfig, channels_last_ok, train_model

    cpu = torch.device("cpu")
    assert channels_last_ok(create_model("resnet18", 4, base_width=16), cpu)
    assert not channels_last_ok(create_model("resnet18", 4, base_width=4), cpu)
    assert channels_last_ok(create_model("resnet18", 4, base_width=4), torch.device("cuda"))
    assert not channels_last_ok(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)), cpu)
    assert not channels_last_ok(nn.Linear(4, 2), cpu)
    model = create_model("resnet18", 4, base_width=4)
    stats = train_model(model, make_synthetic(64, num_classes=4, size=16, seed=0),
                        TrainConfig(epochs=2, batch_size=16, channels_last=True))
    assert stats["final_loss"] == stats["final_loss"]  # finished, finite
    assert all(p.is_contiguous() for p in model.parameters())


def test_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path) -> None:
    """A run stopped mid-training and resumed from its per-epoch checkpoint ends where an unbroken run ends:
    model weights (channels-last), jointly trained extra parameters, optimiser, schedule and random streams."""
    from banscan.train import TrainConfig, train_model

    data = make_synthetic(96, num_classes=4, size=16, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, amp=False, channels_last=True, seed=3)

    def run(ckpt=None, stop_at=None):
        torch.manual_seed(0)
        model = create_model("resnet18", 4, base_width=16)
        trigger = nn.Parameter(torch.zeros(3, 16, 16))
        batches = [0]

        def hook(x, y, idx, gen):  # a trainable trigger (as IAD's generators are) and a stop after some batches
            batches[0] += 1
            if batches[0] == stop_at:
                raise KeyboardInterrupt
            poisoned = torch.rand(len(x), 1, 1, 1, generator=gen) < 0.3
            return (x + trigger * poisoned).clamp(0, 1), y, trigger.abs().mean()

        stats = train_model(model, data, cfg, batch_hook=hook, extra_params=[trigger], checkpoint=ckpt)
        return model.state_dict(), trigger.detach().clone(), stats

    ref_state, ref_trigger, _ = run()
    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, stop_at=8)  # 6 batches an epoch: stopped in the second epoch, after the first's checkpoint
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    state, trigger, stats = run(ckpt)
    assert torch.equal(trigger, ref_trigger) and not torch.equal(trigger, torch.zeros_like(trigger))
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert stats["images_per_s"] > 0
    with pytest.raises(BanscanError, match="another run"):
        train_model(create_model("resnet18", 4, base_width=16), data, TrainConfig(epochs=4, batch_size=16),
                    checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(BanscanError, match="cannot read"):
        train_model(create_model("resnet18", 4, base_width=16), data, cfg, checkpoint=ckpt)


def test_amp_on_a_cpu_without_native_bf16_warns_once(monkeypatch, caplog) -> None:
    import banscan.train as tr

    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: False)
    tr._warn_emulated_bf16.cache_clear()
    cpu = torch.device("cpu")
    assert tr.amp_enabled(True, cpu) and tr.amp_enabled(True, cpu) and not tr.amp_enabled(None, cpu)
    assert sum("emulated" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(tr, "cpu_has_bf16", lambda: True)
    assert tr.amp_enabled(None, cpu) and not tr.amp_enabled(False, cpu)
    tr._warn_emulated_bf16.cache_clear()


# ------------------------------------------------------------------ CLI
def test_cli_models_lists_each_architectures_arguments(capsys) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "resnet18 base_width=64 in_chans=3" in lines and "vgg16_bn width=64 in_chans=3" in lines
    assert len(lines) == len(list_models())


def test_cli_detect_and_errors(tmp_path, model, data, capsys) -> None:
    w = save_weights(model, tmp_path / "m.safetensors")
    np.savez(tmp_path / "clean.npz", x=data.x.permute(0, 2, 3, 1).numpy(), y=data.y.numpy())
    base = ["detect", "--arch", "resnet18", "--arch-kwargs", "base_width=4", "--num-classes", "4",
            "--data", str(tmp_path / "clean.npz"), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
            "--n-opt", "48", "--n-eval", "96", "--n-steps", "2"]
    rc = main(base + ["--weights", str(w), "--json", str(tmp_path / "r.json"), "--plots", str(tmp_path / "p")])
    assert rc == 0
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["verdict"] in ("clean", "backdoored") and {"score", "threshold", "target", "timings"} <= set(out)
    assert (tmp_path / "p" / "histograms.png").stat().st_size > 0  # the default statistic's plot
    assert main(base + ["--weights", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("banscan: error:") and "not found" in err[-1]
    assert main(base[:5] + ["--num-classes", "10"] + base[7:] + ["--weights", str(w)]) == 2
    assert "number of classes" in capsys.readouterr().err


def test_cli_calibrate_then_detect_with_threshold_file(tmp_path, model, data) -> None:
    folder = tmp_path / "clean_models"
    save_weights(model, folder / "a.safetensors")
    torch.manual_seed(1)
    other = create_model("resnet18", 4, base_width=4).eval()
    save_weights(other, folder / "b.safetensors")
    np.savez(tmp_path / "clean.npz", x=data.x.permute(0, 2, 3, 1).numpy(), y=data.y.numpy())
    common = ["--arch", "resnet18", "--arch-kwargs", "base_width=4", "--num-classes", "4",
              "--data", str(tmp_path / "clean.npz"), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
              "--n-opt", "48", "--n-eval", "96", "--n-steps", "2"]
    cal_file = tmp_path / "thr.json"
    assert main(["calibrate", "--models", str(folder), "--fpr", "0", "--out", str(cal_file)] + common) == 0
    cal = json.loads(cal_file.read_text())
    assert cal["method"] == "ban" and cal["n_models"] == 2 and set(cal["scores"]) == {"a.safetensors", "b.safetensors"}
    assert cal["threshold"] > max(cal["scores"].values())
    assert main(["detect", "--weights", str(folder / "a.safetensors"), "--threshold-file", str(cal_file),
                 "--json", str(tmp_path / "r.json")] + common) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["threshold"] == cal["threshold"] and r["verdict"] == "clean" and r["threshold_source"] == "user"
    assert main(["calibrate", "--models", str(tmp_path / "nothing"), "--out", str(cal_file)] + common) == 2


def test_cli_calibrate_fits_a_class_prior_that_detect_uses(tmp_path, data) -> None:
    folder = tmp_path / "clean_models"
    for seed in range(3):
        torch.manual_seed(seed)
        save_weights(create_model("resnet18", 4, base_width=4).eval(), folder / f"m{seed}.safetensors")
    np.savez(tmp_path / "clean.npz", x=data.x.permute(0, 2, 3, 1).numpy(), y=data.y.numpy())
    common = ["--arch", "resnet18", "--arch-kwargs", "base_width=4", "--num-classes", "4",
              "--data", str(tmp_path / "clean.npz"), "--param", "n_opt=48", "--param", "n_eval=96",
              "--param", "n_steps=2", "--param", "restarts=2", "--param", "mask_steps=2"]
    prior_file = tmp_path / "prior.json"
    assert main(["calibrate", "--models", str(folder), "--fpr", "0", "--out", str(tmp_path / "thr.json"),
                 "--prior-out", str(prior_file)] + common) == 0
    prior = json.loads(prior_file.read_text())
    assert prior["n_models"] == 3 and len(prior["mean"]) == 4 and prior["threshold"] > max(prior["loo_z"])
    assert prior["schedule"]["restarts"] == 2
    assert main(["detect", "--weights", str(folder / "m0.safetensors"), "--param", f"class_prior={prior_file}",
                 "--json", str(tmp_path / "r.json")] + common) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["threshold"] == prior["threshold"] and "class prior 'calibrated'" in r["threshold_source"]
    assert r["stats"]["class_prior"]["name"] == "calibrated"
    assert main(["calibrate", "--models", str(folder), "--out", str(tmp_path / "t2.json"), "--prior-out",
                 str(tmp_path / "p2.json"), "--param", "statistic=negmask"] + common) == 2  # refused before any scan
    assert not (tmp_path / "t2.json").exists()


def test_evaluation_restores_every_submodules_mode(model, data) -> None:
    """A train-mode wrapper around an eval-mode network: predicting must not switch the inner one to train."""
    from banscan.train import predict

    inner = model.eval()
    wrapper = nn.Sequential(inner)  # a new module is in train mode
    predict(wrapper, data)
    assert wrapper.training and not inner.training and not any(m.training for m in inner.modules())
