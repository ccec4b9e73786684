"""The trigger-inversion baselines' building blocks: the generator must keep the official architecture."""

from __future__ import annotations

import torch
from torch import nn

from banscan.detectors._inversion import UNet, unit_tanh


def test_unet_official_structure():
    u = UNet(3, 32, 4)
    # The official network's parameters minus its unused bilinear branch (14,121,411 - 3,134,400).
    assert sum(p.numel() for p in u.parameters()) == 10_987_011
    mods = list(u.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
    norms = [m for m in mods if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 18 and all(m.affine and not m.track_running_stats for m in norms)
    ups = [m for m in mods if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.stride, m.output_padding) for m in ups] == [
        (512, 512, (2, 2), (1, 1)), (256, 256, (2, 2), (1, 1)), (128, 128, (2, 2), (1, 1)), (64, 64, (2, 2), (1, 1))]
    convs = [m for m in mods if type(m) is nn.Conv2d]
    assert len(convs) == 19 and all(m.bias is not None for m in convs)
    enc_widths = [m.out_channels for m in u.enc.modules() if type(m) is nn.Conv2d]
    assert enc_widths == [32, 32, 64, 64, 128, 128, 256, 256]
    seen = {}
    u.bottleneck.register_forward_hook(lambda m, i, o: seen.update(b=o.shape))
    out = u(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and seen["b"] == (2, 512, 2, 2)


def test_unet_per_sample_and_leaky():
    torch.manual_seed(0)
    u = UNet(3, 4, 2).eval()
    x = torch.randn(3, 3, 16, 16)
    # Instance normalisation: a sample's output does not depend on the rest of the batch.
    assert torch.allclose(u(x)[:1], u(x[:1]), atol=1e-5)
    # LeakyReLU, not ReLU: negative pre-activations still pass gradient.
    act = u.enc[0].norm1(u.enc[0].conv1(x))
    assert (torch.nn.functional.leaky_relu(act) < 0).any()
    # Odd sizes are padded and cropped back; residual starts at the identity.
    r = UNet(3, 4, 3, residual=True)
    y = torch.randn(1, 3, 28, 30)
    assert torch.equal(r(y), y)


def test_unit_tanh_range():
    t = torch.tensor([-50.0, 0.0, 50.0])
    m = unit_tanh(t)
    assert 0 <= float(m[0]) < 1e-6 and float(m[1]) == 0.5 and 1 - 1e-6 < float(m[2]) <= 1


# ---------------------------------------------------------------- BTI-DBF and Neural Cleanse: detector contract

import copy  # noqa: E402

import pytest  # noqa: E402

from banscan import ImageData, create_model  # noqa: E402
from banscan._utils import BanscanError  # noqa: E402
from banscan.detectors import BTIDBF, NeuralCleanse  # noqa: E402
from banscan.models import SplitModel  # noqa: E402
from banscan.params import resolve  # noqa: E402

TINY_BTI = dict(n_opt=32, n_eval=32, n_pretrain_epochs=1, n_mask_epochs=1, n_gen_epochs=1, unet_filters=4,
                unet_blocks=2, batch_size=16)
TINY_NC = dict(n_opt=32, n_eval=32, n_epochs=2, batch_size=16)


def _data(n: int = 96, k: int = 4) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(n) % k)


def _model(training: bool) -> nn.Module:
    torch.manual_seed(0)
    m = create_model("resnet18", 4, base_width=4)
    m.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        m(torch.randn(8, 3, 16, 16))
    return m.train(training)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("det", [BTIDBF(**TINY_BTI), NeuralCleanse(**TINY_NC)], ids=["btidbf", "nc"])
def test_scan_leaves_callers_model_unchanged(det, training):
    model = _model(training)
    before = copy.deepcopy(model.state_dict())
    det.detect(model, _data())
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():  # BatchNorm running statistics and counters included
        assert torch.equal(after[k], v), k
    assert all(m.training is training for m in model.modules())


def test_btidbf_mask_phase_runs_the_copy_in_train_mode():
    """As the official code: BatchNorm statistics of the copy it is given change; the copy ends in eval mode."""
    data = _data()
    net = SplitModel(copy.deepcopy(_model(False)), data.mean, data.std).eval().requires_grad_(False)
    rm = net.model.bn1.running_mean.clone()
    seen = []
    hook = net.model.bn1.register_forward_hook(lambda m, i, o: seen.append(m.training))
    BTIDBF(**TINY_BTI).fit_mask(net, data, torch.Generator().manual_seed(0), torch.device("cpu"))
    hook.remove()
    assert True in seen and not net.training
    assert not torch.equal(net.model.bn1.running_mean, rm)


def test_btidbf_bounds_and_budget_recorded():
    r = BTIDBF(**{**TINY_BTI, "n_pretrain_epochs": 10, "n_gen_epochs": 3}, budget=0.2,
               batches_per_epoch=1).detect(_model(False), _data())
    b = r.stats["bounds"]
    for key in ("norm_mse", "benign_feat_mse", "clean_feat_mean_square"):
        assert b[key] >= 0
    assert b["norm_bound_held"] == (b["norm_mse"] <= b["norm_bound"] == 0.3)
    assert b["feat_bound_held"] == (b["benign_feat_mse"] <= b["feat_bound"] == 3.0)
    assert r.stats["epochs_used"] == {"pretrain": 2, "mask": 1, "generator": 1}
    assert r.config["budget"] == 0.2 and r.config["batches_per_epoch"] == 1
    for bad in (dict(budget=0), dict(budget=True), dict(batches_per_epoch=0)):
        with pytest.raises(BanscanError):
            BTIDBF(**TINY_BTI, **bad).detect(_model(False), _data())


def test_btidbf_official_epsilon():
    from banscan.detectors._inversion import TANH_EPS

    assert TANH_EPS == 1e-7  # models/mask.py: tanh(theta) / (2 + 1e-7) + 0.5


def test_nc_presets_reachable_and_defaults_are_backdoorbench():
    d = NeuralCleanse().get_params()
    assert (d["n_epochs"], d["batch_size"], d["n_opt"], d["patience"], d["success_threshold"]) == (80, 256, 2500, 5,
                                                                                                   0.98)
    assert d["early_stop"] and d["augment"] and not d["cost_from_zero"]
    orig = resolve(NeuralCleanse, "nc", preset="original")
    assert orig["n_epochs"] * orig["batches_per_epoch"] == 31_000 and orig["batch_size"] == 32
    assert orig["cost_from_zero"] and orig["success_threshold"] == 0.99
    fast = resolve(NeuralCleanse, "nc", preset="fast", pairs=["n_epochs=3"])
    assert fast["n_epochs"] == 3 and fast["batch_size"] == 128 and fast["patience"] == 2
    NeuralCleanse(**fast)
    from banscan.cli import _detector_from_args, build_parser

    args = build_parser().parse_args(["detect", "--arch", "resnet18", "--weights", "w.safetensors", "--data", "d",
                                      "--method", "nc", "--preset", "original", "--param", "n_epochs=7"])
    det = _detector_from_args(args)
    assert isinstance(det, NeuralCleanse) and det.cost_from_zero and det.batches_per_epoch == 31
    assert det.n_epochs == 7
    with pytest.raises(BanscanError):
        resolve(NeuralCleanse, "nc", preset="official")


def test_nc_cost_from_zero_stays_zero_until_patience():
    r = NeuralCleanse(**TINY_NC, cost_from_zero=True, patience=5).detect(_model(False), _data())
    assert r.stats["final_cost"] == [0.0] * 4


@pytest.mark.parametrize("thr, expect", [(-1e9, [0, 1, 2, 3]), (1e9, [])])
def test_nc_flagged_classes_honour_the_threshold(thr, expect):
    r = NeuralCleanse(**TINY_NC, threshold=thr).detect(_model(False), _data())
    assert r.stats["flagged_classes"] == expect and r.stats["flag_threshold"] == thr
    idx = r.stats["anomaly_indices"]
    default = NeuralCleanse(**TINY_NC).detect(_model(False), _data()).stats
    assert default["flagged_classes"] == [i for i, v in enumerate(idx) if v >= 2.0]
