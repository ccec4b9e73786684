"""Attack library: each attack's poisoning on tiny tensors, plus checks common to every registered attack."""

from __future__ import annotations

import math

import pytest
import torch

from banscan._utils import BanscanError
from banscan.attacks import attack_from_card, get_attack, list_attacks
from banscan.synthetic import make_synthetic

SHAPE = (3, 16, 16)
K = 4
FAST = {"lc": {"surrogate_kwargs": {"base_width": 4}, "surrogate_epochs": 1, "pgd_steps": 2},
        "adap_blend": {"poison_rate": 0.3, "cover_rate": 0.2}}  # its paper rate (0.3%) poisons none of 96


def make(name: str, **kw):
    return get_attack(name, **{**FAST.get(name, {}), **kw})


@pytest.fixture(scope="module")
def data():
    return make_synthetic(96, num_classes=K, size=16, seed=3)


def batch(data, n=48):
    idx = torch.arange(n)
    return data.x[idx].float() / 255, data.y[idx].clone(), idx


def run_hook(attack, data, seed=0, n=48):
    x, y, idx = batch(data, n)
    out = attack.poison_batch(x, y, idx, torch.Generator().manual_seed(seed))
    return x, y, out[0], out[1]


# ------------------------------------------------------------------------------------------ common checks
@pytest.mark.parametrize("name", list_attacks())
def test_apply_keeps_shape_dtype_range(name):
    a = make(name).build(SHAPE, K)
    x = torch.rand(5, *SHAPE)
    out = a.apply(x, torch.arange(5) % K)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x), "the trigger must change the image"
    assert torch.equal(x, x.clone())  # input untouched (apply returns a new tensor)


@pytest.mark.parametrize("name", list_attacks())
def test_poison_batch_contract(name, data):
    a = make(name)
    train = a.prepare(data)
    assert len(train) == len(data) and train.x.dtype == torch.uint8
    x, y, xp, yp = run_hook(a, train)
    assert xp.shape == x.shape and xp.dtype == x.dtype and yp.dtype == torch.int64 and yp.shape == y.shape
    assert xp.min() >= 0 and xp.max() <= 1
    changed_lbl = yp != y
    if a.clean_label:
        assert not changed_lbl.any(), "clean-label attacks keep every label"
    else:
        assert changed_lbl.any()
        # every relabelled sample goes exactly where target_labels says
        assert torch.equal(yp[changed_lbl], a.target_labels(y)[changed_lbl])
        # and a relabelled sample always carries a modified image
        assert ((xp - x).abs().flatten(1).amax(1)[changed_lbl] > 0).all()


@pytest.mark.parametrize("name", list_attacks())
def test_seeded_determinism(name, data):
    a1, a2 = make(name, seed=5), make(name, seed=5)
    a1.prepare(data)
    a2.prepare(data)
    _, _, x1, y1 = run_hook(a1, data, seed=1)
    _, _, x2, y2 = run_hook(a2, data, seed=1)
    assert torch.equal(x1.detach(), x2.detach()) and torch.equal(y1, y2)
    x = torch.rand(4, *SHAPE)
    assert torch.equal(a1.apply(x), a2.apply(x))


@pytest.mark.parametrize("name", list_attacks())
def test_state_roundtrip_and_from_card(name, tmp_path):
    from safetensors.torch import save_file

    a = make(name, seed=1).build(SHAPE, K)
    state = a.state_dict()
    card = {"id": "m", "attack": name, "attack_params": a.get_params(), "num_classes": K, "image_shape": list(SHAPE)}
    if state:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m.attack.safetensors"))
    b = attack_from_card(tmp_path, card)
    x = torch.rand(3, *SHAPE)
    assert torch.allclose(a.apply(x), b.apply(x))
    if state:  # a different seed gives a different trigger, and loading the state restores the first one
        c = make(name, seed=2).build(SHAPE, K)
        assert not torch.allclose(a.apply(x), c.apply(x))
        c.load_state_dict(state)
        assert torch.allclose(a.apply(x), c.apply(x))


@pytest.mark.parametrize("name", list_attacks())
def test_bad_parameters_raise(name):
    with pytest.raises(BanscanError, match="target"):
        make(name, target=K).build(SHAPE, K)
    with pytest.raises(BanscanError, match="poison_rate"):
        make(name, poison_rate=1.5).build(SHAPE, K)
    with pytest.raises(BanscanError, match="not built"):
        make(name).apply(torch.rand(1, *SHAPE))
    with pytest.raises(BanscanError, match="shape"):
        make(name).build(SHAPE, K).apply(torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("name", list_attacks())
def test_get_params_roundtrip(name):
    a = make(name)
    b = get_attack(name, **a.get_params())
    assert a.get_params() == b.get_params()


@pytest.mark.parametrize("kind", ["detector", "mitigation", "attack"])
def test_one_registry_rule_for_every_kind(kind):
    """Detectors, mitigations and attacks refuse unknown names and parameters the same way."""
    from banscan.attacks import list_attacks
    from banscan.detectors import get_detector, list_detectors
    from banscan.mitigation import get_mitigation, list_mitigations

    get, names = {"detector": (get_detector, list_detectors), "mitigation": (get_mitigation, list_mitigations),
                  "attack": (get_attack, list_attacks)}[kind]
    with pytest.raises(BanscanError, match=f"unknown {kind} 'nope'; expected one of"):
        get("nope")
    for name in names():
        assert get(name).name == name
        with pytest.raises(BanscanError, match=rf"{kind} '{name}' does not take \['zzz'\]; it takes \["):
            get(name, zzz=1)


def test_registry_errors():
    with pytest.raises(BanscanError, match="unknown attack"):
        get_attack("nope")
    with pytest.raises(BanscanError, match=r"attack 'badnets' does not take \['size'\]; it takes .*patch_size"):
        get_attack("badnets", size=3)
    with pytest.raises(BanscanError, match="mode"):
        get_attack("sig", mode="all2all")  # clean-label SIG defines no all-to-all mode
    with pytest.raises(BanscanError, match="mode"):
        get_attack("badnets", mode="one2many").build(SHAPE, K)


# ------------------------------------------------------------------------------------------ per attack
def test_poison_count_exact(data):
    a = get_attack("badnets", poison_rate=0.25, target=2)
    a.prepare(data)
    eligible = int((data.y != 2).sum())
    assert int(a.poison_index_.sum()) == round(0.25 * eligible)
    assert not (data.y[a.poison_index_] == 2).any()
    s = get_attack("sig", poison_rate=0.5, target=1)
    s.prepare(data)
    assert int(s.poison_index_.sum()) == round(0.5 * int((data.y == 1).sum()))
    assert (data.y[s.poison_index_] == 1).all()


def test_badnets_checkerboard_bottom_right():
    a = get_attack("badnets").build(SHAPE, K)
    x = torch.full((2, *SHAPE), 0.5)
    out = a.apply(x)
    board = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert torch.equal(out[:, :, -3:, -3:], board.expand(2, 3, 3, 3))
    rest = out.clone()
    rest[:, :, -3:, -3:] = 0.5
    assert torch.equal(rest, x)


def test_badnets_all2all_labels(data):
    a = get_attack("badnets", mode="all2all", poison_rate=1.0)
    a.prepare(data)
    _, y, _, yp = run_hook(a, data)
    assert torch.equal(yp, (y + 1) % K)
    assert a.asr_mask(y).all()


def test_blend_formula():
    a = get_attack("blend", alpha=0.2, seed=3).build(SHAPE, K)
    x = torch.rand(2, *SHAPE)
    assert torch.allclose(a.apply(x), 0.8 * x + 0.2 * a.pattern_)
    b = get_attack("blend", alpha=0.2, seed=3).build(SHAPE, K)
    assert torch.equal(a.pattern_, b.pattern_)


def test_sig_adds_sinusoid_to_target_class_only(data):
    a = get_attack("sig", target=1, poison_rate=1.0)
    a.prepare(data)
    x, y, xp, yp = run_hook(a, data)
    assert torch.equal(y, yp)
    hit = (xp - x).abs().flatten(1).amax(1) > 0
    assert torch.equal(hit, y == 1)
    x0 = torch.full((1, *SHAPE), 0.5)
    diff = a.apply(x0) - x0
    j = torch.arange(16).float()
    expect = 20 / 255 * torch.sin(2 * math.pi * j * 6 / 16)
    assert torch.allclose(diff[0, 1, 7], expect, atol=1e-6)
    assert torch.allclose(diff[0, 0], diff[0, 2])  # same on every row and channel


def test_wanet_warp_and_noise_mode(data):
    a = get_attack("wanet", poison_rate=0.25, cross_ratio=2)
    a.prepare(data)
    x, y, xp, yp = run_hook(a, data, n=40)
    n_bd, n_cross = 10, 20
    assert (yp[:n_bd] == 0).all() and torch.equal(yp[n_bd:], y[n_bd:])
    assert torch.allclose(xp[:n_bd], a.apply(x[:n_bd]))
    assert not torch.allclose(xp[n_bd:n_bd + n_cross], a.apply(x[n_bd:n_bd + n_cross]))  # noise-mode warp
    assert torch.equal(xp[n_bd + n_cross:], x[n_bd + n_cross:])
    # a warp is small: mean pixel change well below the image's own variation
    assert (a.apply(x) - x).abs().mean() < 0.1


def test_bpp_quantises_and_negatives_keep_labels(data):
    a = get_attack("bpp", squeeze_num=8, poison_rate=0.25, neg_rate=0.25)
    a.prepare(data)
    x, y, xp, yp = run_hook(a, data, n=40)
    levels = xp[:10] * 7
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    assert (yp[:10] == 0).all() and torch.equal(yp[10:], y[10:])
    assert not torch.allclose(xp[10:20], a.apply(x[10:20]))  # negatives are not the real trigger
    assert torch.equal(xp[20:], x[20:])
    d = get_attack("bpp", dithering=True).build(SHAPE, K).apply(torch.rand(2, *SHAPE))
    assert torch.allclose(d * 7, (d * 7).round(), atol=1e-5)


def test_adap_blend_partial_trigger_and_cover(data):
    a = get_attack("adap_blend", poison_rate=0.2, cover_rate=0.2, target=0)
    a.prepare(data)
    assert not (a.poison_index_ & a.cover_index_).any()
    x, y, xp, yp = run_hook(a, data, n=96)
    p, c = a.poison_index_[:96], a.cover_index_[:96]
    assert (yp[p] == 0).all() and torch.equal(yp[~p], y[~p])
    touched = (xp - x).abs().flatten(1).amax(1) > 0
    assert torch.equal(touched, p | c)
    # each poisoned image carries only half of the 16 pieces (4x4 px each at 16x16)
    for i in torch.nonzero(p | c).flatten()[:5]:
        changed = ((xp[i] - x[i]).abs().amax(0) > 0).view(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(16, 16)
        assert int(changed.any(1).sum()) <= 8
    full = a.apply(x[:1])
    assert torch.allclose(full, x[:1] + 0.2 * (a.pattern_ - x[:1]))


def test_lc_perturbs_target_images_within_eps(data):
    a = make("lc", target=2, poison_rate=0.5, eps=8 / 255)
    train = a.prepare(data)
    moved = (train.x.int() - data.x.int()).abs().flatten(1).amax(1)
    assert (moved[~a.poison_index_] == 0).all()
    assert (moved[a.poison_index_] <= 9).all() and (moved[a.poison_index_] > 0).any()
    assert torch.equal(train.y, data.y)
    out = a.apply(torch.full((1, *SHAPE), 0.5))
    board = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    for rs in (slice(0, 3), slice(-3, None)):
        for cs in (slice(0, 3), slice(-3, None)):
            assert torch.equal(out[0, :, rs, cs], board.expand(3, 3, 3))


def test_iad_generators_train_and_triggers_are_dynamic(data):
    a = get_attack("iad", poison_rate=0.25, p_cross=0.25)
    a.prepare(data)
    x, y, idx = batch(data, 40)
    xp, yp, aux = a.poison_batch(x, y, idx, torch.Generator().manual_seed(0))
    assert (yp[:10] == 0).all() and torch.equal(yp[10:], y[10:])
    assert aux.dim() == 0 and torch.isfinite(aux)
    (xp.sum() + aux).backward()
    assert all(p.grad is not None for p in a.extra_parameters())
    assert torch.equal(xp[20:], x[20:])
    t = a.apply(x[:2]) - x[:2]
    assert not torch.allclose(t[0], t[1])  # the trigger depends on the input
    assert int((t.abs().amax(1) > 0).flatten(1).sum(1).max()) <= round(0.032 * 16 * 16)  # sparse mask


def test_ssdt_is_source_specific(data):
    a = get_attack("ssdt", victim=1, target=0)
    a.prepare(data)
    x, y, idx = batch(data, 96)
    _, yp, _ = a.poison_batch(x, y, idx, torch.Generator().manual_seed(0))
    changed = yp != y
    assert changed.any() and (y[changed] == 1).all() and (yp[changed] == 0).all()
    assert int(changed.sum()) <= int((y == 1).sum()) // 2
    assert torch.equal(a.asr_mask(y), y == 1)
    with pytest.raises(BanscanError, match="victim"):
        get_attack("ssdt", victim=0, target=0).build(SHAPE, K)
